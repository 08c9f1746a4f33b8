"""Whole-study prediction and scoring: the one path the trainer's end-of-run evaluation,
its threshold calibration and `radnet_tf.evaluate` all use.

    fn = keras_slice_fn(model, cfg)            # or a SavedModel's serving_default
    preds = predict_studies(fn, files, cfg, "validation")
    scored = score_studies(preds, threshold, min_run)

A slice function maps one padded study float32 [1, S, N, N, C] to its slice probabilities
float [S]. The CT rule is `radnet_tf.decision` (through `metrics.study_table`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from radnet_tf.contract import IGNORE_LABEL, OUTPUT_SLICE
from radnet_tf.errors import UserError


@dataclasses.dataclass
class StudyPredictions:
    """Per-study predictions of one split.

    Attributes:
      keys: list[str] pseudonymous study keys. labels: list[int] study labels (1/0).
      probs: list of float32 arrays [S] (slice probabilities, padding removed).
      slice_labels: list of float arrays [S] (1/0, IGNORE_LABEL = unknown).
    """

    keys: list
    labels: list
    probs: list
    slice_labels: list


def keras_slice_fn(model, cfg):
    """A traced slice function for a Keras model: float32 [1, S, N, N, C] -> numpy [S]
    (one graph for every study length instead of an eager call per study)."""
    import tensorflow as tf

    n = cfg.input_size
    fn = tf.function(
        lambda x: model(x, training=False)[OUTPUT_SLICE][0],
        input_signature=[tf.TensorSpec([1, None, n, n, cfg.input_channels], tf.float32)],
    )
    return lambda x: fn(x).numpy()


def predict_studies(slice_fn, files, cfg, split="validation") -> StudyPredictions:
    """Runs `slice_fn` over every whole study of `split` ("validation", "train", "all").

    Raises:
      UserError: the split holds no study.
    """
    from radnet_tf import data

    out = StudyPredictions([], [], [], [])
    for x, y, meta in data.eval_dataset(files, cfg, 1, with_masks=False, split=split, with_keys=True):
        s = int(x.shape[1])
        out.probs.append(np.asarray(slice_fn(x))[:s])
        out.keys.append(meta["study_key"].numpy()[0].decode())
        out.labels.append(int(meta["label"].numpy()[0]))
        out.slice_labels.append(y[OUTPUT_SLICE].numpy()[0][:s])
    if not out.keys:
        raise UserError(f"no studies in the {split!r} split of the data")
    return out


def score_studies(preds: StudyPredictions, threshold, min_run) -> dict:
    """Slice- and CT-level tables and metrics at one operating point.

    Returns:
      dict: studies (metrics.study_table frame), slices (metrics.slice_table frame),
      slice_metrics, ct_metrics (metrics.binary_metrics dicts), short_studies (int:
      studies with fewer than `min_run` slices, scored with K' = their length).
    """
    from radnet_tf.metrics import binary_metrics, ct_metrics, slice_table, study_table

    studies = study_table(preds.keys, preds.labels, preds.probs, threshold, min_run)
    slices = slice_table(preds.keys, preds.probs, preds.slice_labels)
    known = slices[slices.label != IGNORE_LABEL]
    return {
        "studies": studies,
        "slices": slices,
        "slice_metrics": binary_metrics(known.label, known.probability >= threshold, known.probability),
        "ct_metrics": ct_metrics(studies),
        "short_studies": int((studies.num_slices < min_run).sum()),
    }


def short_study_note(short, total, min_run) -> str | None:
    """The line every command prints when some studies are shorter than K (else None)."""
    if not short:
        return None
    return (
        f"{short} of {total} studies have fewer than K={min_run} slices; the CT rule was applied "
        f"to them with K = their slice count"
    )
