"""The CT-level decision rule, in one place (evaluation, export and prediction use it).

Paper (Section 2.3): a CT is positive when at least K = 3 consecutive slices are predicted
positive. With a slice threshold t:

  longest_positive_run = the longest run of consecutive slices with probability >= t
  ct_positive          = longest_positive_run >= K
  ct_score             = max over windows of K consecutive slices of the window's minimum
                         probability: the highest probability sustained over K slices.

`ct_positive(t) == (ct_score >= t)` for every t, so ct_score gives CT-level ROC curves that
agree with the rule. A study with fewer than K slices scores 0 (never positive).
"""

import numpy as np

DEFAULT_MIN_RUN = 3
DEFAULT_THRESHOLD = 0.5


def longest_run_np(positive):
    """Longest run of True in a 1-D boolean array (int)."""
    best = run = 0
    for p in np.asarray(positive, bool):
        run = run + 1 if p else 0
        best = max(best, run)
    return best


def ct_score_np(probs, min_run=DEFAULT_MIN_RUN):
    """Highest probability sustained over `min_run` consecutive slices (float)."""
    probs = np.asarray(probs, np.float64)
    if probs.size < min_run:
        return 0.0
    windows = np.lib.stride_tricks.sliding_window_view(probs, min_run)
    return float(windows.min(axis=1).max())


def ct_decision_np(probs, threshold=DEFAULT_THRESHOLD, min_run=DEFAULT_MIN_RUN):
    """dict(ct_positive bool, ct_score float, longest_positive_run int) for one study."""
    run = longest_run_np(np.asarray(probs) >= threshold)
    return {
        "ct_positive": bool(run >= min_run),
        "ct_score": ct_score_np(probs, min_run),
        "longest_positive_run": int(run),
    }


def ct_decision(probs, threshold=DEFAULT_THRESHOLD, min_run=DEFAULT_MIN_RUN):
    """TF version (core ops only, servable) for one study.

    Args:
      probs: float32 [S] slice probabilities.
    Returns:
      dict: ct_positive bool [], ct_score float32 [], longest_positive_run int32 [].
    """
    import tensorflow as tf  # the NumPy half of this module works without TensorFlow

    probs = tf.convert_to_tensor(probs, tf.float32)
    positive = tf.cast(probs >= threshold, tf.int32)
    runs = tf.scan(lambda run, p: (run + 1) * p, positive, initializer=tf.constant(0, tf.int32))
    longest = tf.reduce_max(tf.concat([runs, [0]], 0))
    windows = tf.signal.frame(probs, min_run, 1)  # [S - K + 1, K]; empty when S < K
    score = tf.reduce_max(tf.concat([tf.reduce_min(windows, axis=1), [0.0]], 0))
    return {"ct_positive": longest >= min_run, "ct_score": score, "longest_positive_run": longest}


def choose_threshold(scores, labels, lo=0.05, hi=0.95) -> float:
    """Threshold t on CT scores that maximises balanced accuracy of `score >= t`.

    `ct_score >= t` is exactly the CT rule run with slice threshold t (module docstring),
    so this picks the rule's slice threshold. Candidates are the
    midpoints between consecutive distinct scores (and 0.5), clipped to [lo, hi]; ties go
    to the candidate closest to 0.5. Use it on studies that are not then evaluated on
    (the trainer uses the training studies).

    Args:
      scores: float [N] CT scores. labels: int [N] 0/1 (both classes present).
    Returns:
      float threshold.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.int64)
    if labels.min() == labels.max():
        raise ValueError("choose_threshold needs positive and negative studies")
    distinct = np.unique(scores)
    candidates = np.unique(np.clip(np.concatenate([(distinct[1:] + distinct[:-1]) / 2, [0.5]]), lo, hi))
    pred = scores[None, :] >= candidates[:, None]
    tpr = (pred & (labels == 1)).sum(1) / (labels == 1).sum()
    tnr = (~pred & (labels == 0)).sum(1) / (labels == 0).sum()
    balanced = (tpr + tnr) / 2
    best = np.flatnonzero(balanced == balanced.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])
