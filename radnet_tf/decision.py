"""The CT-level decision rule, in one place (evaluation, export and prediction use it).

Paper (Section 2.3): a CT is positive when at least K = 3 consecutive slices are predicted
positive. With a slice threshold t:

  longest_positive_run = the longest run of consecutive slices with probability >= t
  ct_positive          = longest_positive_run >= K
  ct_score             = max over windows of K consecutive slices of the window's minimum
                         probability: the highest probability sustained over K slices.

`ct_positive(t) == (ct_score >= t)` for every t, so ct_score gives CT-level ROC curves that
agree with the rule.

Studies shorter than K (a single slice, a 2-D image data set): the rule is applied with
K' = min(K, S) (`applied_min_run`), so a one-slice study is positive when its slice is, and
every caller reports K' beside the verdict (`min_run_applied`). K and t have no defaults
here: they come from `Config` (ct_min_run, slice_threshold) or an export's metadata.

The served lesion mask follows the same slice verdict (`lesion_mask`): mask pixels at or
above `mask_threshold` on slices at or above the slice threshold, optionally opened
in-plane (3 x 3); `choose_mask_threshold` picks `mask_threshold` on training studies.
"""

import numpy as np

# Candidates for the calibrated mask threshold (`choose_mask_threshold`): 0.01-0.04, then
# 0.05, 0.10, ..., 0.95 (a short run's aux heads can stay below 0.1 on blood).
MASK_THRESHOLD_CANDIDATES = (0.01, 0.02, 0.03, 0.04) + tuple(
    round(0.05 * i, 2) for i in range(1, 20)
)


def applied_min_run(num_slices, min_run):
    """K' = min(K, S) for a study of S >= 1 slices (K for an empty study)."""
    return int(min_run) if num_slices < 1 else int(min(int(min_run), int(num_slices)))


def longest_run_np(positive):
    """Longest run of True in a 1-D boolean array (int)."""
    best = run = 0
    for p in np.asarray(positive, bool):
        run = run + 1 if p else 0
        best = max(best, run)
    return best


def ct_score_np(probs, min_run):
    """Highest probability sustained over K' = min(min_run, S) consecutive slices (float;
    0 for an empty study)."""
    probs = np.asarray(probs, np.float64)
    if probs.size == 0:
        return 0.0
    windows = np.lib.stride_tricks.sliding_window_view(probs, applied_min_run(probs.size, min_run))
    return float(windows.min(axis=1).max())


def negative_stretches(probs, labels, min_run) -> list:
    """The slice probabilities (float arrays) of each maximal run of `min_run` or more
    consecutive slices labelled 0 (unknown labels, -1, end a run): the normal stretches of
    a study that the CT rule must not fire on."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    out, start = [], None
    for i, label in enumerate(list(labels) + [1]):
        if label == 0 and start is None:
            start = i
        elif label != 0 and start is not None:
            if i - start >= min_run:
                out.append(probs[start:i])
            start = None
    return out


def ct_decision_np(probs, threshold, min_run):
    """The rule for one study (NumPy).

    Args:
      probs: float [S] slice probabilities. threshold: slice threshold t. min_run: K.
    Returns:
      dict: ct_positive bool, ct_score float, longest_positive_run int, min_run_applied
      int (K' = min(K, S)).
    """
    probs = np.asarray(probs, np.float64)
    k = applied_min_run(probs.size, min_run)
    run = longest_run_np(probs >= threshold)
    return {
        "ct_positive": bool(probs.size > 0 and run >= k),
        "ct_score": ct_score_np(probs, min_run),
        "longest_positive_run": int(run),
        "min_run_applied": k,
    }


def ct_decision(probs, threshold, min_run):
    """TF version (core ops only, servable) for one study.

    Args:
      probs: float32 [S] slice probabilities. threshold: float t. min_run: int K.
    Returns:
      dict: ct_positive bool [], ct_score float32 [], longest_positive_run int32 [],
      min_run_applied int32 [] (K' = min(K, S)).
    """
    import tensorflow as tf  # the NumPy half of this module works without TensorFlow

    probs = tf.convert_to_tensor(probs, tf.float32)
    num = tf.size(probs)
    k = tf.where(num > 0, tf.minimum(tf.constant(int(min_run), tf.int32), num), int(min_run))
    positive = tf.cast(probs >= threshold, tf.int32)
    runs = tf.scan(lambda run, p: (run + 1) * p, positive, initializer=tf.constant(0, tf.int32))
    longest = tf.reduce_max(tf.concat([runs, [0]], 0))
    windows = tf.signal.frame(probs, k, 1)  # [S - K' + 1, K']; empty when S = 0
    score = tf.reduce_max(tf.concat([tf.reduce_min(windows, axis=1), [0.0]], 0))
    return {
        "ct_positive": tf.logical_and(num > 0, longest >= k),
        "ct_score": score,
        "longest_positive_run": longest,
        "min_run_applied": k,
    }


def series_scale(series_slices, study_slices, min_run) -> float:
    """How many studies of `study_slices` slices one series of `series_slices` holds, as
    counted by the CT rule: its windows of K consecutive slices over theirs,
    (N - K + 1) / (S - K + 1), at least 1 (float). 100-slice series judged by a rule
    calibrated on 16-slice studies, K = 3: 98 / 14 = 7."""
    k = int(min_run)
    return max(1.0, (float(series_slices) - k + 1) / max(1.0, float(study_slices) - k + 1))


def series_rates(recall, false_positive_rate, scale):
    """Sensitivity and specificity of the CT rule on series `scale` times as long as the
    studies whose rates are given (each series modelled as `scale` independent stretches
    like them, a positive one holding its bleed in one): (1 - (1 - r)(1 - f)^(scale - 1),
    (1 - f)^scale). Floats or float arrays (broadcast)."""
    r, f = np.asarray(recall, np.float64), np.asarray(false_positive_rate, np.float64)
    return 1 - (1 - r) * (1 - f) ** (scale - 1), (1 - f) ** scale


def choose_threshold(scores, labels, lo=0.05, hi=0.95, scale=1.0) -> float:
    """Threshold t on CT scores that maximises balanced accuracy of `score >= t`.

    `ct_score >= t` is exactly the CT rule run with slice threshold t (module docstring),
    so this picks the rule's slice threshold. Candidates are the
    midpoints between consecutive distinct scores (and 0.5), clipped to [lo, hi]; ties go
    to the candidate closest to 0.5. Use it on studies that are not then evaluated on
    (the trainer uses the training studies).

    `scale` > 1 chooses t for series `scale` times as long as these studies
    (`series_scale`): the rule has `scale` times as many windows of K slices in which to
    fire, so a series is modelled as `scale` independent stretches like these studies. With
    f(t) and r(t) the fractions of negative and positive studies at or above t, a negative
    series is called positive with probability 1 - (1 - f)^scale and a positive one (one
    stretch with the bleed, the rest normal) with 1 - (1 - r)(1 - f)^(scale - 1)
    (`series_rates`); t maximises the mean of sensitivity and specificity. `scale` = 1 is
    plain balanced accuracy on these studies. A threshold chosen on short studies and
    applied to whole heads of many more slices would otherwise call most normal heads
    positive.

    Args:
      scores: float [N] CT scores. labels: int [N] 0/1 (both classes present).
      lo, hi: float, the range t is clipped to. scale: float >= 1.
    Returns:
      float threshold.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.int64)
    if labels.min() == labels.max():
        raise ValueError("choose_threshold needs positive and negative studies")
    if not scale >= 1:
        raise ValueError(f"scale must be >= 1. Received: {scale}")
    distinct = np.unique(scores)
    candidates = np.unique(
        np.clip(np.concatenate([(distinct[1:] + distinct[:-1]) / 2, [0.5]]), lo, hi)
    )
    pred = scores[None, :] >= candidates[:, None]
    r = (pred & (labels == 1)).sum(1) / (labels == 1).sum()
    f = (pred & (labels == 0)).sum(1) / (labels == 0).sum()
    tpr, tnr = series_rates(r, f, scale)
    balanced = np.round((tpr + tnr) / 2, 12)  # equal values stay equal under the powers
    best = np.flatnonzero(balanced == balanced.max())
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def ct_decision_labels_np(probs, thresholds, min_run):
    """The rule per label (NumPy): probs float [S, L], thresholds L floats, K.

    Returns:
      dict: ct_positive bool [L], ct_score float [L], longest_positive_run int [L].
    """
    probs = np.asarray(probs, np.float64).reshape(-1, len(thresholds))
    per_label = [ct_decision_np(probs[:, j], t, min_run) for j, t in enumerate(thresholds)]
    return {
        "ct_positive": np.array([d["ct_positive"] for d in per_label], bool),
        "ct_score": np.array([d["ct_score"] for d in per_label], np.float64),
        "longest_positive_run": np.array([d["longest_positive_run"] for d in per_label], np.int64),
    }


def ct_decision_labels(probs, thresholds, min_run):
    """The rule per label (TF, servable): probs float32 [S, L], one threshold per label.

    Returns:
      dict: ct_positive bool [L], ct_score float32 [L], longest_positive_run int32 [L].
    """
    import tensorflow as tf

    probs = tf.convert_to_tensor(probs, tf.float32)
    per_label = [ct_decision(probs[:, j], float(t), min_run) for j, t in enumerate(thresholds)]
    return {
        key: tf.stack([d[key] for d in per_label])
        for key in ("ct_positive", "ct_score", "longest_positive_run")
    }


def open_np(mask):
    """In-plane morphological opening with a 3 x 3 square (NumPy): erosion, then dilation,
    each slice (and label) on its own; pixels outside the image are ignored, as in
    `open_tf`. Removes specks and lines thinner than 3 pixels; keeps anything a 3 x 3
    square fits in.

    On a float mask it is the grey-level opening (minimum, then maximum filter), which
    thresholding commutes with: `open_np(p) >= t` equals `open_np(p >= t)` for every t.

    Args:
      mask: bool or float [S, N, N] or [S, N, N, L].
    Returns:
      array of the mask's dtype (bool for anything not floating), same shape.
    """
    mask = np.asarray(mask)
    if not np.issubdtype(mask.dtype, np.floating):
        mask = mask.astype(bool)
    return _square3(_square3(mask, np.minimum), np.maximum)


def _square3(x, op):
    """`op` (np.minimum: erosion, np.maximum: dilation) over each pixel's 3 x 3 in-plane
    neighbourhood (axes 1 and 2), outside pixels ignored: as two 3-pixel passes, one per
    axis (a square is separable). Returns a new array like `x`."""
    for axis in (1, 2):
        ahead = (slice(None),) * axis + (slice(1, None),)
        behind = (slice(None),) * axis + (slice(None, -1),)
        y = x.copy()
        op(y[ahead], x[behind], out=y[ahead])
        op(y[behind], x[ahead], out=y[behind])
        x = y
    return x


def open_tf(mask):
    """TF version of `open_np` (core ops: max pooling with SAME padding); bool tensor."""
    import tensorflow as tf

    x = tf.cast(mask, tf.float32)
    rank3 = x.shape.rank == 3
    if rank3:
        x = x[..., None]
    eroded = -tf.nn.max_pool2d(-x, 3, 1, "SAME")
    opened = tf.nn.max_pool2d(eroded, 3, 1, "SAME")
    return (opened[..., 0] if rank3 else opened) > 0.5


def lesion_mask_np(masks, probs, mask_threshold, slice_threshold, opening=False):
    """The served lesion mask (NumPy): a pixel is hemorrhage when its mask probability is
    >= `mask_threshold` and its slice's probability is >= `slice_threshold` (the same
    threshold the CT rule uses for that slice); with `opening`, the cut mask is then opened
    in-plane (`open_np`: specks thinner than 3 pixels dropped). The auxiliary heads answer
    "where" on a slice the classifier calls positive; on the other slices they give no mask.

    Args:
      masks: float [S, N, N] with probs float [S] and one slice_threshold, or float
        [S, N, N, L] with probs float [S, L] and L slice thresholds (one per label).
      mask_threshold: float. opening: bool.
    Returns:
      bool array, the shape of `masks`.
    """
    masks, probs = np.asarray(masks), np.asarray(probs)

    def cut(x, value):  # compare in the array's own float type, as the served graph does
        return x >= np.asarray(value, x.dtype if x.dtype.kind == "f" else np.float64)

    on = cut(probs, slice_threshold)
    on = on[:, None, None, :] if masks.ndim == 4 else on.reshape(-1, 1, 1)
    cut_mask = cut(masks, mask_threshold)
    return (open_np(cut_mask) if opening else cut_mask) & on


def lesion_mask(masks, probs, mask_threshold, slice_threshold, opening=False):
    """TF version of `lesion_mask_np` (core ops only, servable); same arguments, bool tensor."""
    import tensorflow as tf

    masks = tf.convert_to_tensor(masks, tf.float32)
    on = tf.convert_to_tensor(probs, tf.float32) >= tf.constant(slice_threshold, tf.float32)
    on = on[:, None, None, :] if masks.shape.rank == 4 else on[:, None, None]
    cut_mask = masks >= float(mask_threshold)
    return tf.logical_and(open_tf(cut_mask) if opening else cut_mask, on)


def choose_mask_threshold(counts, thresholds, fallback) -> float:
    """Mask threshold maximising pixel Dice, 2|P and T| / (|P| + |T|), on these studies.

    Args:
      counts: int [T, 3] pixel counts (predicted and true, predicted, true) pooled over the
        studies, one row per candidate in `thresholds` (float [T]), taken after the slice
        gate of `lesion_mask_np` (metrics.gate_mask_counts).
      fallback: float, returned when no candidate finds a true pixel (Dice 0 throughout).
    Returns:
      float threshold; ties go to the candidate closest to 0.5.
    """
    counts = np.asarray(counts, np.float64)
    thresholds = np.asarray(thresholds, np.float64)
    denom = counts[:, 1] + counts[:, 2]
    dice = np.round(
        np.divide(2 * counts[:, 0], denom, out=np.zeros(len(thresholds)), where=denom > 0), 12
    )
    if dice.max() <= 0:
        return float(fallback)
    best = np.flatnonzero(dice == dice.max())
    return float(thresholds[best[np.argmin(np.abs(thresholds[best] - 0.5))]])
