"""Slice- and CT-level metrics (scikit-learn), bootstrap CIs, tidy pandas tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from radnet_tf.decision import ct_decision_np


def binary_metrics(y_true, y_pred, y_score=None) -> dict:
    """Accuracy, recall (sensitivity), precision, F1, specificity, confusion counts and,
    when scores are given and both classes occur, ROC AUC and PR AUC."""
    y_true = np.asarray(y_true, int)
    y_pred = np.asarray(y_pred, int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    out = {
        "n": int(y_true.size),
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "recall": skm.recall_score(y_true, y_pred, zero_division=0),
        "precision": skm.precision_score(y_true, y_pred, zero_division=0),
        "f1": skm.f1_score(y_true, y_pred, zero_division=0),
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
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
        rows.append({"study_key": key, "label": int(label), "num_slices": len(probs), **ct_decision_np(probs, threshold, min_run)})
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
