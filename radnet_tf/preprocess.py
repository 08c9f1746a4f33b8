"""The paper's preprocessing in TensorFlow ops, with a NumPy reference.

Steps (Section 2.2.1 of the paper), each a small parameterised function:
  1. `head_center`: the centre of the head from a body mask over the whole study (one
     centre for all slices, so the slices of a study stay aligned for the LSTM).
  2. `resample_to_fov`: in-plane resampling to `out_spacing` mm (1 mm by default) of a
     `fov_mm` (250 mm) field of view centred on the head, padded to `out_size` (256) so the
     three 2x down-samplings of the network divide it. Anti-aliased triangle filter
     (`ScaleAndTranslate`), air outside the FOV and outside the scanned image. No z change.
  3. `brain_window`: clip to the window (centre 40 HU, width 80 HU) and scale to [0, 1];
     `window_channels` stacks one such channel per window (the brain window first, then
     any `extra_windows`, e.g. a subdural window).

Everything here is core TF ops, so the same code runs in tf.data, in the trainer and inside
the serving signature. `*_np` functions are an independent NumPy implementation that the
tests compare against.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from radnet_tf.contract import AIR_HU
from radnet_tf.errors import UserError

BODY_THRESHOLD_HU = -300.0


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing parameters. No defaults here: they live in `radnet_tf.config.Config`
    (`Config().preprocess_config()` is the paper's setting).

    Attributes:
      window_center: brain window centre, HU.
      window_width: brain window width, HU.
      extra_windows: further (centre, width) windows in HU, one input channel each after
        the brain window; () = the paper's single brain window.
      out_spacing: output in-plane pixel spacing, mm.
      fov_mm: field of view kept around the head centre, mm.
      out_size: output matrix (square), pixels; must be >= fov_mm / out_spacing.
    """

    window_center: float
    window_width: float
    extra_windows: tuple
    out_spacing: float
    fov_mm: float
    out_size: int

    def __post_init__(self):
        for center, width in self.windows:
            if width <= 0:
                raise ValueError(f"window widths must be > 0. Received: windows={self.windows}")
        if self.out_spacing <= 0:
            raise ValueError(f"out_spacing must be > 0. Received: out_spacing={self.out_spacing}")
        if self.out_size <= 0 or self.out_size % 8:
            raise ValueError(
                f"out_size must be a positive multiple of 8 (three 2x down-samplings). "
                f"Received: out_size={self.out_size}"
            )

    @property
    def windows(self):
        """((centre, width), ...) HU: the brain window, then `extra_windows`."""
        return ((float(self.window_center), float(self.window_width)),) + tuple(
            (float(c), float(w)) for c, w in self.extra_windows
        )


# ----------------------------------------------------------------------------- TensorFlow


def brain_window(hu, center, width):
    """Clips HU to a window and scales it to [0, 1].

    Args:
      hu: numeric tensor, any shape, Hounsfield units.
    Returns:
      float32 tensor of the same shape in [0, 1].
    """
    hu = tf.cast(hu, tf.float32)
    low = center - width / 2.0
    return tf.clip_by_value((hu - low) / width, 0.0, 1.0)


def window_channels(hu, windows):
    """HU -> one `brain_window` channel per (centre, width) window.

    Args:
      hu: numeric tensor [...], HU. windows: sequence of (centre, width) in HU.
    Returns:
      float32 tensor [..., len(windows)] in [0, 1].
    """
    return tf.stack([brain_window(hu, c, w) for c, w in windows], axis=-1)


def head_center(hu, threshold=BODY_THRESHOLD_HU):
    """Centre (row, col) in pixels of the body mask over all slices of a study.

    Args:
      hu: tensor [S, H, W], HU (int16 or float).
    Returns:
      float32 tensor [2]: (row, col) of the mask centroid; the image centre if no voxel
      exceeds `threshold`. Voxels are counted exactly (int32 per pixel, float64 sums).
    """
    hu = tf.convert_to_tensor(hu)
    if hu.dtype.is_unsigned:  # a negative threshold would wrap around
        hu = tf.cast(hu, tf.int32)
    limit = np.floor(threshold) if hu.dtype.is_integer else threshold  # x > t: x > floor(t)
    counts = tf.reduce_sum(tf.cast(hu > tf.cast(limit, hu.dtype), tf.int32), axis=0)  # [H, W]
    rows = tf.cast(tf.reduce_sum(counts, axis=1), tf.float64)  # [H]
    cols = tf.cast(tf.reduce_sum(counts, axis=0), tf.float64)  # [W]
    total = tf.reduce_sum(rows)
    r = tf.reduce_sum(rows * tf.range(tf.size(rows, out_type=tf.int32), dtype=tf.float64))
    c = tf.reduce_sum(cols * tf.range(tf.size(cols, out_type=tf.int32), dtype=tf.float64))
    center = tf.stack([r, c]) / tf.maximum(total, 1.0)
    fallback = tf.cast(tf.stack([tf.size(rows), tf.size(cols)]), tf.float64) / 2.0 - 0.5
    return tf.cast(tf.where(total > 0, center, fallback), tf.float32)


def _fov_geometry(in_shape, pixel_spacing, center, cfg):
    """Scale, translation (ScaleAndTranslate convention) and the valid-output mask."""
    n = float(cfg.out_size)
    spacing = tf.cast(pixel_spacing, tf.float32)
    center = tf.cast(center, tf.float32)
    scale = spacing / cfg.out_spacing  # output pixels per input pixel, (row, col)
    translation = n / 2.0 - scale * (center + 0.5)
    # Valid output pixels: inside the FOV and inside the scanned image.
    offset_mm = (tf.range(n) - (n - 1.0) / 2.0) * cfg.out_spacing  # [N]
    in_fov = tf.abs(offset_mm) <= cfg.fov_mm / 2.0
    in_h = tf.cast(in_shape[0], tf.float32)
    in_w = tf.cast(in_shape[1], tf.float32)
    src_r = center[0] + offset_mm / spacing[0]
    src_c = center[1] + offset_mm / spacing[1]
    ok_r = in_fov & (src_r >= -0.5) & (src_r <= in_h - 0.5)
    ok_c = in_fov & (src_c >= -0.5) & (src_c <= in_w - 0.5)
    valid = tf.logical_and(ok_r[:, None], ok_c[None, :])  # [N, N]
    return scale, translation, valid


def resample_to_fov(images, pixel_spacing, center, cfg, fill=AIR_HU):
    """Resamples slices to `cfg.out_spacing` mm over a `cfg.fov_mm` FOV around `center`.

    Args:
      images: tensor [S, H, W] (HU or mask values).
      pixel_spacing: float tensor [2], (row, col) mm of the input.
      center: float tensor [2], (row, col) input pixel mapped to the output centre.
      cfg: `PreprocessConfig`.
      fill: value outside the FOV and outside the input image.
    Returns:
      float32 tensor [S, out_size, out_size].
    """
    images = tf.convert_to_tensor(images)
    if images.dtype not in (tf.int16, tf.uint8, tf.float32):
        images = tf.cast(images, tf.float32)
    scale, translation, valid = _fov_geometry(tf.shape(images)[1:3], pixel_spacing, center, cfg)
    # The op weighs only input pixels (its kernel is renormalised at the image's edges) and
    # takes int16 / uint8 as they are: no float copy of the full-resolution study.
    out = tf.raw_ops.ScaleAndTranslate(
        images=images[..., None],
        size=tf.constant([cfg.out_size, cfg.out_size], tf.int32),
        scale=scale,
        translation=translation,
        kernel_type="triangle",
        antialias=True,
    )[..., 0]
    return tf.where(valid[None], out, tf.cast(fill, tf.float32))


def preprocess_study(hu, pixel_spacing, cfg, center=None):
    """HU slices of a study -> windowed, 1 mm, 250 mm FOV slices for the model.

    Args:
      hu: int16/float tensor [S, H, W], HU.
      pixel_spacing: float tensor [2], (row, col) mm.
      center: optional float tensor [2] (row, col); default `head_center(hu)`.
    Returns:
      float32 tensor [S, out_size, out_size, C] in [0, 1], C = len(cfg.windows) (1 =
      the paper's brain window).
    """
    hu = tf.convert_to_tensor(hu)  # once: a NumPy study is copied into TF once
    if center is None:
        center = head_center(hu)
    resampled = resample_to_fov(hu, pixel_spacing, center, cfg)
    return window_channels(resampled, cfg.windows)


def resample_hu(hu, pixel_spacing, cfg, center=None):
    """Geometry only (for records, where the window stays a training-time choice).

    Returns:
      (int16 tensor [S, out_size, out_size] HU, float32 tensor [2] centre used).
    """
    hu = tf.convert_to_tensor(hu)
    if center is None:
        center = head_center(hu)
    out = resample_to_fov(hu, pixel_spacing, center, cfg)
    return tf.cast(tf.round(tf.clip_by_value(out, AIR_HU, 32767.0)), tf.int16), center


def resample_mask(mask, pixel_spacing, center, cfg):
    """Resamples a binary mask [S, H, W] like the image; uint8 [S, N, N] (>= 0.5 -> 1)."""
    mask = tf.convert_to_tensor(mask)
    if mask.dtype == tf.bool:  # else as it is: a sheared mask holds fractions
        mask = tf.cast(mask, tf.uint8)
    out = resample_to_fov(mask, pixel_spacing, center, cfg, fill=0.0)
    return tf.cast(out >= 0.5, tf.uint8)


def resample_class_mask(classes, pixel_spacing, center, cfg, present):
    """Resamples a class mask [S, H, W] (0 background, else a class number) like the image.

    Each class in `present` (the nonzero class numbers the mask holds; others are not
    resampled) is resampled as a binary mask; an output pixel takes the class with the
    largest weight when that weight is >= 0.5 (the binary rule of `resample_mask`), else 0.

    Returns:
      uint8 tensor [S, N, N].
    """
    classes = tf.convert_to_tensor(classes)
    if not present:
        n = cfg.out_size
        return tf.zeros(tf.stack([tf.shape(classes)[0], n, n]), tf.uint8)
    weights = tf.stack(
        [
            resample_to_fov(
                tf.cast(tf.equal(classes, k), tf.uint8), pixel_spacing, center, cfg, fill=0.0
            )
            for k in present
        ],
        axis=-1,
    )  # [S, N, N, len(present)]
    best = tf.gather(
        tf.constant(list(present), tf.int32), tf.argmax(weights, axis=-1, output_type=tf.int32)
    )
    return tf.cast(tf.where(tf.reduce_max(weights, axis=-1) >= 0.5, best, 0), tf.uint8)


# ----------------------------------------------------------------------------- NumPy reference


def brain_window_np(hu, center, width):
    """NumPy reference of `brain_window`."""
    return np.clip((np.asarray(hu, np.float64) - (center - width / 2.0)) / width, 0, 1).astype(
        np.float32
    )


def head_center_np(hu, threshold=BODY_THRESHOLD_HU):
    """NumPy reference of `head_center` (scipy's centre of mass)."""
    from scipy import ndimage

    mask = np.asarray(hu) > threshold
    if not mask.any():
        return (np.array(mask.shape[1:], np.float64) - 1) / 2
    return np.array(ndimage.center_of_mass(mask.sum(axis=0)))


def _triangle_weights(in_len, out_len, scale, translation):
    """[out_len, in_len] anti-aliased triangle-filter weights (rows sum to 1)."""
    kernel_scale = max(1.0 / scale, 1.0)
    sample = (np.arange(out_len) + 0.5 - translation) / scale  # continuous input coordinate
    centers = np.arange(in_len) + 0.5
    x = (centers[None, :] - sample[:, None]) / kernel_scale
    w = np.clip(1.0 - np.abs(x), 0.0, None)
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def resample_to_fov_np(images, pixel_spacing, center, cfg, fill=AIR_HU):
    """NumPy reference of `resample_to_fov`: separable weight matrices Wr @ img @ Wc^T."""
    images = np.asarray(images, np.float64) - fill
    _, h, w = images.shape
    n = cfg.out_size
    scale = np.asarray(pixel_spacing, np.float64) / cfg.out_spacing
    translation = n / 2.0 - scale * (np.asarray(center, np.float64) + 0.5)
    wr = _triangle_weights(h, n, scale[0], translation[0])
    wc = _triangle_weights(w, n, scale[1], translation[1])
    out = wr @ images @ wc.T
    offset = (np.arange(n) - (n - 1) / 2.0) * cfg.out_spacing
    in_fov = np.abs(offset) <= cfg.fov_mm / 2.0
    src_r = center[0] + offset / pixel_spacing[0]
    src_c = center[1] + offset / pixel_spacing[1]
    ok_r = in_fov & (src_r >= -0.5) & (src_r <= h - 0.5)
    ok_c = in_fov & (src_c >= -0.5) & (src_c <= w - 0.5)
    out = np.where(ok_r[:, None] & ok_c[None, :], out, 0.0) + fill
    return out.astype(np.float32)


def preprocess_study_np(hu, pixel_spacing, cfg, center=None):
    """NumPy reference of `preprocess_study`; float32 [S, N, N, C]."""
    if center is None:
        center = head_center_np(hu)
    resampled = resample_to_fov_np(hu, pixel_spacing, center, cfg)
    return np.stack([brain_window_np(resampled, c, w) for c, w in cfg.windows], axis=-1)


def hu_span(window) -> tuple:
    """(lowest, highest) HU a (centre, width) window shows."""
    c, w = float(window[0]), float(window[1])
    return c - w / 2.0, c + w / 2.0


def _windows_text(windows) -> str:
    return ", ".join(f"{float(c):g}/{float(w):g}" for c, w in windows)


def check_windows_available(windows, rendered, what, tolerance_hu=1.0):
    """Refuses a model whose input windows need HU that rendered images do not hold.

    Args:
      windows: the model's (centre, width) windows in HU, one per input channel.
      rendered: the (centre, width) display windows the images were rendered with (8-bit
        PNG/JPEG: only HU inside one are real); empty for HU as scanned.
      what: what holds the images, for the message (e.g. "records runs/x").
    Raises:
      UserError (one line naming both) when a model window reaches past a rendered window
      by more than `tolerance_hu` at either end.
    """
    for image_window in rendered:
        lo, hi = hu_span(image_window)
        need = [
            w
            for w in windows
            if hu_span(w)[0] < lo - tolerance_hu or hu_span(w)[1] > hi + tolerance_hu
        ]
        if need:
            spans = [hu_span(w) for w in windows]
            raise UserError(
                f"{what} were rendered with window {_windows_text([image_window])} (HU {lo:g} "
                f"to {hi:g} only) but the model's windows {_windows_text(windows)} need HU "
                f"{min(s[0] for s in spans):g} to {max(s[1] for s in spans):g}; use a model "
                "with windows inside the rendered one (the built-in brain-window model: "
                "init_from=builtin-brain extra_windows=[]) or images in HU"
            )
