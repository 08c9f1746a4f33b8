"""Slice- and CT-level metrics (scikit-learn), bootstrap CIs, tidy pandas tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from radnet_tf.decision import ct_decision_np, open_np


def binary_metrics(y_true, y_pred, y_score=None) -> dict:
    """Accuracy, recall (sensitivity), precision, F1, specificity, confusion counts and,
    when scores are given and both classes occur, ROC AUC and PR AUC. Recall is NaN when
    no case is positive, specificity NaN when none is negative (undefined, not 0)."""
    y_true = np.asarray(y_true, int)
    y_pred = np.asarray(y_pred, int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    out = {
        "n": int(y_true.size),
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "recall": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "precision": skm.precision_score(y_true, y_pred, zero_division=0),
        "f1": skm.f1_score(y_true, y_pred, zero_division=0),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
    }
    if y_score is not None and len(np.unique(y_true)) == 2:
        out["roc_auc"] = skm.roc_auc_score(y_true, y_score)
        out["pr_auc"] = skm.average_precision_score(y_true, y_score)
    return out


def study_table(study_keys, labels, slice_probs, threshold, min_run) -> pd.DataFrame:
    """One row per study: study_key, label, num_slices, ct_positive, ct_score,
    longest_positive_run, min_run_applied (K' = min(K, S): the rule for short studies)."""
    rows = []
    for key, label, probs in zip(study_keys, labels, slice_probs):
        rows.append(
            {
                "study_key": key,
                "label": int(label),
                "num_slices": len(probs),
                **ct_decision_np(probs, threshold, min_run),
            }
        )
    return pd.DataFrame(rows)


def slice_table(study_keys, slice_probs, slice_labels) -> pd.DataFrame:
    """One row per slice: study_key, slice_index, label (-1 = unknown), probability."""
    return pd.DataFrame(
        [
            {"study_key": k, "slice_index": i, "label": int(lab), "probability": float(p)}
            for k, ps, ls in zip(study_keys, slice_probs, slice_labels)
            for i, (p, lab) in enumerate(zip(ps, ls))
        ],
        columns=["study_key", "slice_index", "label", "probability"],
    )


def mask_counts(predicted, truth, thresholds, opening=False) -> np.ndarray:
    """Per-slice pixel counts of one study's masks at each threshold.

    Args:
      predicted: float [S, N, N] mask probabilities. truth: [S, N, N] reference mask (1/0).
      thresholds: T floats; a predicted pixel is one >= the threshold (and, with `opening`,
        still set after the lesion mask's in-plane opening, `decision.open_np`), compared
        in the predictions' dtype.
    Returns:
      int64 [S, T, 3]: (predicted and true, predicted, true) per slice and threshold.
    """
    predicted, t = np.asarray(predicted), np.asarray(truth) > 0.5
    if opening:  # the grey opening once: thresholding commutes with it (decision.open_np)
        predicted = open_np(predicted)
    dtype = predicted.dtype if np.issubdtype(predicted.dtype, np.floating) else np.float64
    thresholds = np.asarray(thresholds, dtype)
    order = np.argsort(thresholds, kind="stable")
    level = _levels(predicted, thresholds[order]).reshape(len(t), -1)
    s, n = level.shape[0], len(thresholds) + 1
    rows = np.arange(s)[:, None] * n
    above = _counts_above(np.bincount((level + rows).ravel(), minlength=s * n), s, n)
    both = _counts_above(np.bincount((level + rows)[t.reshape(s, -1)], minlength=s * n), s, n)
    out = np.zeros((s, len(thresholds), 3), np.int64)
    out[:, order, 0], out[:, order, 1] = both, above
    out[..., 2] = np.count_nonzero(t, axis=(1, 2))[:, None]
    return out


def _levels(values, ascending):
    """intp array like `values`: how many of the `ascending` thresholds each value is at or
    above (0..T); only the values at or above the lowest are searched (in a trained model's
    mask, few pixels are)."""
    level = np.zeros(values.shape, np.intp)
    if len(ascending):
        hit = values >= ascending[0]
        level[hit] = np.searchsorted(ascending, values[hit], side="right")
    return level


def _counts_above(histogram, s, n):
    """int64 [S, n - 1]: per slice, the pixels at level > j for j < n - 1, from a flat
    per-slice histogram of levels (length s * n)."""
    per_slice = histogram.reshape(s, n)
    return np.cumsum(per_slice[:, ::-1], axis=1)[:, ::-1][:, 1:]


def gate_mask_counts(counts, probs, slice_threshold) -> np.ndarray:
    """`mask_counts` under the served lesion mask's slice gate (decision.lesion_mask_np):
    predicted pixels count only on slices with probability >= `slice_threshold`.

    Args:
      counts: int [S, ..., 3]. probs: float [S] slice probabilities.
    Returns:
      int64 array like `counts`, the first two columns zeroed on the other slices.
    """
    counts = np.array(counts, np.int64)
    on = (np.asarray(probs) >= slice_threshold).reshape((-1,) + (1,) * (counts.ndim - 1))
    counts[..., :2] *= on
    return counts


def mask_metrics(overlaps, labels) -> dict:
    """Held-out segmentation quality from per-study pixel counts.

    Args:
      overlaps: list of int [3] arrays, (predicted and true, predicted, true) summed over a
        study's slices (`mask_counts`, gated or not), or None: no reference mask.
      labels: study labels (1/0), same order.
    Returns:
      dict: n (studies with a reference mask), dice (2|P and T| / (|P| + |T|) over every
      pixel of those studies), study_dice (mean Dice of the positive studies), recall
      (|P and T| / |T|), precision (|P and T| / |P|; NaN when nothing is predicted),
      negative_studies_with_mask (fraction of negative studies with any predicted pixel).
    """
    known = [(np.asarray(o), int(y)) for o, y in zip(overlaps, labels) if o is not None]
    if not known:
        return {"n": 0}
    inter, pred, true = np.sum([o for o, _ in known], axis=0).astype(float)
    pos = [o for o, y in known if y == 1 and o[2] > 0]
    neg = [o for o, y in known if y == 0]
    return {
        "n": len(known),
        "dice": 2 * inter / (pred + true) if pred + true else float("nan"),
        "study_dice": float(np.mean([2 * o[0] / (o[1] + o[2]) for o in pos]))
        if pos
        else float("nan"),
        "recall": inter / true if true else float("nan"),
        "precision": inter / pred if pred else float("nan"),
        "negative_studies_with_mask": float(np.mean([o[1] > 0 for o in neg]))
        if neg
        else float("nan"),
    }


def bootstrap_ci(table: pd.DataFrame, fn, n_boot=1000, seed=0, alpha=0.05) -> dict:
    """Percentile CIs of `fn(resampled_table) -> dict of floats`, resampling studies."""
    rng = np.random.default_rng(seed)
    samples = []
    idx = np.arange(len(table))
    for _ in range(n_boot):
        samples.append(fn(table.iloc[rng.choice(idx, size=len(idx), replace=True)]))
    frame = pd.DataFrame(samples)
    lo, hi = frame.quantile(alpha / 2), frame.quantile(1 - alpha / 2)
    return {k: (float(lo[k]), float(hi[k])) for k in frame.columns}


def ct_metrics(table: pd.DataFrame) -> dict:
    """CT-level metrics from a `study_table`."""
    return binary_metrics(table["label"], table["ct_positive"].astype(int), table["ct_score"])


def slice_auc_ci(slices: pd.DataFrame, n_boot=500, seed=0, alpha=0.05):
    """Percentile CI of the slice ROC AUC, resampling whole studies (slices of one study
    are not independent). `slices`: a `slice_table` frame (label -1 rows are ignored).
    Returns (lo, hi) floats, or None when the slices do not hold both classes."""
    known = slices[slices.label >= 0]
    if known.label.nunique() < 2:
        return None
    groups = [g for _, g in known.groupby("study_key", sort=True)]
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_boot):
        sample = pd.concat([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        if sample.label.nunique() == 2:
            aucs.append(skm.roc_auc_score(sample.label, sample.probability))
    lo, hi = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
