"""Whole-study prediction and scoring: the one path the trainer's end-of-run evaluation,
its threshold calibration and `radnet_tf.evaluation.evaluate` all use.

    fn = keras_slice_fn(model, cfg)            # or a SavedModel's serving_default
    preds = predict_studies(fn, files, cfg, "validation")
    scored = score_studies(preds, threshold, min_run)

A slice function maps one padded study float32 [1, S, N, N, C] to its slice probabilities
float [S], or to a dict of them (OUTPUT_SLICE) with subtype probabilities (OUTPUT_SUBTYPES,
[S, 5]) and/or the fused mask (MASKS, [S, N, N]: the mean of the auxiliary heads, as the
export serves it). The CT rule is `radnet_tf.decision` (through `metrics.study_table`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from radnet_tf.contract import (
    IGNORE_LABEL,
    MASK_OUTPUTS,
    MASKS,
    OUTPUT_SLICE,
    OUTPUT_SUBTYPES,
    SUBTYPES,
)
from radnet_tf.errors import UserError


@dataclasses.dataclass
class StudyPredictions:
    """Per-study predictions of one split.

    Attributes:
      keys: list[str] pseudonymous study keys. labels: list[int] study labels (1/0).
      probs: list of float32 arrays [S] (slice probabilities, padding removed).
      slice_labels: list of float arrays [S] (1/0, IGNORE_LABEL = unknown).
      subtype_probs: list of float32 arrays [S, 5] (models with targets: subtypes; else []).
      subtype_labels: list of int arrays [5]: each study's label per subtype (1/0/-1),
        from the whole-study reads when the records have them, else any slice positive.
      mask_counts: list of int64 [S, T, 3] arrays (`metrics.mask_counts` of the fused mask
        at each of the T `mask_thresholds`, before the slice gate; None for a study without
        a reference mask), when predicted with masks; else [].
      mask_thresholds: the T mask thresholds of `mask_counts` (floats).
    """

    keys: list
    labels: list
    probs: list
    slice_labels: list
    subtype_probs: list = dataclasses.field(default_factory=list)
    subtype_labels: list = dataclasses.field(default_factory=list)
    slice_subtype_labels: list = dataclasses.field(default_factory=list)
    mask_counts: list = dataclasses.field(default_factory=list)
    mask_thresholds: tuple = ()


def keras_slice_fn(model, cfg, masks=False):
    """A traced slice function for a Keras model: float32 [1, S, N, N, C] -> numpy [S], or
    a dict {OUTPUT_SLICE: [S], OUTPUT_SUBTYPES: [S, 5]} for subtype models, plus MASKS
    ([S, N, N], the mean of the auxiliary heads' hemorrhage channel) with `masks` for a
    model that has the heads (one graph for every study length instead of an eager call
    per study)."""
    import tensorflow as tf

    n = cfg.input_size
    names = [k for k in (OUTPUT_SLICE, OUTPUT_SUBTYPES) if k in model.output_names]
    heads = [k for k in MASK_OUTPUTS if k in model.output_names] if masks else []

    def run(x):
        out = model(x, training=False)
        result = {k: out[k][0] for k in names}
        if heads:
            result[MASKS] = tf.add_n([out[k][0, ..., 0] for k in heads]) / len(heads)
        return result

    fn = tf.function(
        run, input_signature=[tf.TensorSpec([1, None, n, n, cfg.input_channels], tf.float32)]
    )
    if names == [OUTPUT_SLICE] and not heads:
        return lambda x: fn(x)[OUTPUT_SLICE].numpy()
    return lambda x: {k: v.numpy() for k, v in fn(x).items()}


def predict_studies(
    slice_fn, files, cfg, split="validation", with_masks=False, mask_thresholds=None
) -> StudyPredictions:
    """Runs `slice_fn` over every whole study of `split` ("validation", "train",
    "calibration" or "all"): `predict_splits` for one split.

    Raises:
      UserError: the split holds no study.
    """
    return predict_splits(slice_fn, files, cfg, (split,), with_masks, mask_thresholds)[split]


def predict_splits(slice_fn, files, cfg, splits, with_masks=False, mask_thresholds=None) -> dict:
    """Runs `slice_fn` over every whole study of each of `splits` (names in
    `records.dataset.SPLITS`, or just ("all",)) in one read of the records, one study per
    call (on a CPU, batches of 2-8 studies measured 1.1-1.5x slower per study).

    With `with_masks`, also compares each study's fused mask (the slice function's MASKS)
    with its reference mask, per slice, at each of `mask_thresholds` (default: just
    `cfg.mask_threshold`; opened as `cfg.mask_opening` says): `StudyPredictions.mask_counts`
    (None where either is absent); `mask_scores` applies the slice gate and sums them.

    Returns:
      dict {split: StudyPredictions}, in the records' order within each split.
    Raises:
      UserError: one of the splits holds no study.
    """
    from radnet_tf.records import dataset as data

    splits = tuple(splits)
    thresholds = tuple(float(t) for t in (mask_thresholds or (cfg.mask_threshold,)))
    out = {name: StudyPredictions([], [], [], []) for name in splits}
    for preds in out.values():
        preds.mask_thresholds = thresholds if with_masks else ()
    which = "all" if splits == ("all",) else splits
    for x, y, meta in data.eval_dataset(
        files, cfg, 1, with_masks=with_masks, split=which, with_keys=True
    ):
        name = "all" if which == "all" else data.SPLITS[int(meta["split"][0])]
        _add_study(out[name], slice_fn(x), int(x.shape[1]), y, meta, cfg.mask_opening)
    for name, preds in out.items():
        if not preds.keys:
            raise UserError(f"no studies in the {name!r} split of the data")
    return out


def _add_study(out: StudyPredictions, result, s, y, meta, opening):
    """Appends one study's predictions (`result` of a slice function on a padded study of
    `s` slices) and its targets (`y`, `meta` of `eval_dataset` with keys) to `out`."""
    from radnet_tf.evaluation.metrics import mask_counts

    if out.mask_thresholds:  # a model without aux heads serves no mask: nothing to compare
        truth = y[MASK_OUTPUTS[0]].numpy()[0, :s, ..., 0]
        known = (
            truth.size and truth.min() >= 0 and isinstance(result, dict) and MASKS in result
        )  # -1: no mask
        out.mask_counts.append(
            mask_counts(result[MASKS][:s], truth, out.mask_thresholds, opening) if known else None
        )
    if isinstance(result, dict):
        if OUTPUT_SUBTYPES in result:
            out.subtype_probs.append(np.asarray(result[OUTPUT_SUBTYPES])[:s])
        result = result[OUTPUT_SLICE]
    out.probs.append(np.asarray(result)[:s])
    out.keys.append(meta["study_key"].numpy()[0].decode())
    out.labels.append(int(meta["label"].numpy()[0]))
    out.slice_labels.append(y[OUTPUT_SLICE].numpy()[0][:s])
    out.subtype_labels.append(meta["subtype_labels"].numpy()[0])
    if OUTPUT_SUBTYPES in y:
        out.slice_subtype_labels.append(y[OUTPUT_SUBTYPES].numpy()[0][:s])


def score_studies(preds: StudyPredictions, threshold, min_run) -> dict:
    """Slice- and CT-level tables and metrics at one operating point.

    Returns:
      dict: studies (metrics.study_table frame), slices (metrics.slice_table frame),
      slice_metrics, ct_metrics (metrics.binary_metrics dicts), short_studies (int:
      studies with fewer than `min_run` slices, scored with K' = their length).
    """
    from radnet_tf.evaluation.metrics import binary_metrics, ct_metrics, slice_table, study_table

    studies = study_table(preds.keys, preds.labels, preds.probs, threshold, min_run)
    slices = slice_table(preds.keys, preds.probs, preds.slice_labels)
    known = slices[slices.label != IGNORE_LABEL]
    return {
        "studies": studies,
        "slices": slices,
        "slice_metrics": binary_metrics(
            known.label, known.probability >= threshold, known.probability
        ),
        "ct_metrics": ct_metrics(studies),
        "short_studies": int((studies.num_slices < min_run).sum()),
    }


def mask_scores(preds: StudyPredictions, slice_threshold, mask_threshold=None) -> dict:
    """Held-out quality of the served lesion mask (`decision.lesion_mask_np`: the fused mask
    at `mask_threshold`, default the first of `preds.mask_thresholds`, on slices at or above
    `slice_threshold`): `metrics.mask_metrics` of the predictions' mask counts."""
    from radnet_tf.evaluation.metrics import gate_mask_counts, mask_metrics

    j = 0 if mask_threshold is None else preds.mask_thresholds.index(float(mask_threshold))
    sums = [
        None if c is None else gate_mask_counts(c[:, j], p, slice_threshold).sum(0)
        for c, p in zip(preds.mask_counts, preds.probs)
    ]
    return mask_metrics(sums, preds.labels)


def calibrate_mask_threshold(preds: StudyPredictions, slice_threshold, fallback) -> float:
    """The mask threshold, among `preds.mask_thresholds`, with the highest pixel Dice of the
    gated lesion mask over these studies (`decision.choose_mask_threshold`); `fallback`
    when there is no reference mask or no candidate finds a true pixel."""
    from radnet_tf.decision import choose_mask_threshold
    from radnet_tf.evaluation.metrics import gate_mask_counts

    gated = [
        gate_mask_counts(c, p, slice_threshold).sum(0)
        for c, p in zip(preds.mask_counts, preds.probs)
        if c is not None
    ]
    if not gated:
        return float(fallback)
    return choose_mask_threshold(np.sum(gated, axis=0), preds.mask_thresholds, fallback)


def calibrate_subtype_thresholds(preds: StudyPredictions, min_run, fallback, scale=1.0):
    """Per-subtype slice thresholds maximising CT-level balanced accuracy on these studies
    (`decision.choose_threshold` per label, for series `scale` times as long); `fallback`
    for a subtype without both positive and negative studies. Returns (5 floats, list of
    subtypes that used the fallback)."""
    from radnet_tf.decision import choose_threshold, ct_score_np

    thresholds, fell_back = [], []
    for j, name in enumerate(SUBTYPES):
        pairs = [
            (ct_score_np(p[:, j], min_run), int(lab[j]))
            for p, lab in zip(preds.subtype_probs, preds.subtype_labels)
            if lab[j] in (0, 1)
        ]
        if len({y for _, y in pairs}) < 2:
            thresholds.append(float(fallback))
            fell_back.append(name)
        else:
            thresholds.append(
                choose_threshold([s for s, _ in pairs], [y for _, y in pairs], scale=scale)
            )
    return thresholds, fell_back


def rsna_log_loss(preds: StudyPredictions, eps=1e-7) -> float:
    """RSNA-2019's metric on slices: the weighted mean of per-label binary log losses,
    weight 2 for "any" and 1 for each subtype, over slices whose label is known."""
    any_p = np.concatenate(preds.probs)
    any_y = np.concatenate(preds.slice_labels)
    sub_p = np.concatenate(preds.subtype_probs)
    sub_y = np.concatenate(preds.slice_subtype_labels)
    columns = [(any_p, any_y, 2.0)] + [
        (sub_p[:, j], sub_y[:, j], 1.0) for j in range(len(SUBTYPES))
    ]
    total = weight = 0.0
    for p, y, w in columns:
        known = y >= 0
        if known.any():
            p, y = np.clip(p[known], eps, 1 - eps), y[known]
            total += w * float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
            weight += w
    return total / weight if weight else float("nan")


def subtype_tables(preds: StudyPredictions, thresholds, min_run, n_boot=200):
    """Per-subtype metrics and the subtype confusion table for a subtype model.

    Returns:
      (metrics DataFrame: one row per subtype with slice and CT ROC AUC / PR AUC (the CT
      ROC AUC with a bootstrap 95% CI over studies, `ct_roc_auc_lo` / `_hi`), CT
      sensitivity and specificity at its threshold, positives, studies; confusion
      DataFrame [5 x 5]: studies with true subtype (row) called as subtype (column)).
    """
    import pandas as pd
    from sklearn.metrics import average_precision_score, roc_auc_score

    from radnet_tf.decision import ct_decision_labels_np
    from radnet_tf.evaluation.metrics import bootstrap_ci

    decisions = [ct_decision_labels_np(p, thresholds, min_run) for p in preds.subtype_probs]
    called = np.array([d["ct_positive"] for d in decisions], bool).reshape(-1, len(SUBTYPES))
    scores = np.array([d["ct_score"] for d in decisions]).reshape(-1, len(SUBTYPES))
    truth = np.array(preds.subtype_labels).reshape(-1, len(SUBTYPES))
    slice_p = (
        np.concatenate(preds.subtype_probs) if preds.subtype_probs else np.zeros((0, len(SUBTYPES)))
    )
    slice_y = (
        np.concatenate(preds.slice_subtype_labels)
        if preds.slice_subtype_labels
        else np.full(slice_p.shape, -1)
    )
    rows = []
    for j, name in enumerate(SUBTYPES):
        known = truth[:, j] >= 0
        y, s, c = truth[known, j], scores[known, j], called[known, j]
        ks = slice_y[:, j] >= 0
        both = len(set(y)) == 2
        ci = (np.nan, np.nan)
        if both and n_boot:
            frame = pd.DataFrame({"label": y, "score": s})

            def auc(t):
                return {
                    "auc": roc_auc_score(t.label, t.score) if t.label.nunique() == 2 else np.nan
                }

            ci = bootstrap_ci(frame, auc, n_boot=n_boot)["auc"]
        slice_both = len(set(slice_y[ks, j])) == 2
        rows.append(
            {
                "subtype": name,
                "threshold": float(thresholds[j]),
                "studies": int(known.sum()),
                "positive_studies": int((y == 1).sum()),
                "slice_roc_auc": roc_auc_score(slice_y[ks, j], slice_p[ks, j])
                if slice_both
                else np.nan,
                "slice_pr_auc": average_precision_score(slice_y[ks, j], slice_p[ks, j])
                if slice_both
                else np.nan,
                "ct_roc_auc": roc_auc_score(y, s) if both else np.nan,
                "ct_roc_auc_lo": ci[0],
                "ct_roc_auc_hi": ci[1],
                "ct_pr_auc": average_precision_score(y, s) if both else np.nan,
                "ct_sensitivity": float(c[y == 1].mean()) if (y == 1).any() else np.nan,
                "ct_specificity": float((~c[y == 0]).mean()) if (y == 0).any() else np.nan,
            }
        )
    confusion = pd.DataFrame(0, index=list(SUBTYPES), columns=list(SUBTYPES))
    for t_row, c_row in zip(truth, called):
        for a in np.flatnonzero(t_row == 1):
            for b in np.flatnonzero(c_row):
                confusion.iloc[a, b] += 1
    confusion.index.name = "true \\ called"
    return pd.DataFrame(rows), confusion


def short_study_note(short, total, min_run) -> str | None:
    """The line every command prints when some studies are shorter than K (else None)."""
    if not short:
        return None
    return (
        f"{short} of {total} studies have fewer than K={min_run} slices; the CT rule was applied "
        f"to them with K = their slice count"
    )
