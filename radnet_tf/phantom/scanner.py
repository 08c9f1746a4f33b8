"""What the scanner adds to the phantom: noise with a kernel's texture, the brain's
brightening toward the skull, streaks and the dark interpetrous band from dense bone,
and the head holder and its pad.

All functions work on one slice in HU (float32 [H, W]) on a grid of `spacing` mm whose
pixel (r, c) sits at patient RAS (px[c], py[r]).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Scanner:
    """Per-study acquisition parameters.

    Attributes:
      noise_hu: voxel noise standard deviation at this slice thickness, HU.
      grain: fraction of the noise variance that is spatially correlated (smooth
        kernels: high; sharp bone kernels: low), in [0, 1].
      cupping_hu: brightening of the brain 3 mm below the inner table of the skull, HU
        (`cupping_profile`).
      cupping_mm: how fast that brightening fades with depth below the table, mm.
      streak_hu: amplitude of streaks from dense bone, HU.
      band_hu: darkening of the interpetrous (Hounsfield) band, HU (>= 0).
      holder: None, or (radius mm, thickness mm, half-angle rad, HU, pad HU, pad gap mm).
    """

    noise_hu: float
    grain: float
    cupping_hu: float
    streak_hu: float
    band_hu: float
    holder: tuple | None
    cupping_mm: float = 5.0


def draw_scanner(rng, thickness_mm, head_radius_mm, noise_range=(2.5, 5.0)):
    """Draws a study's acquisition; thinner slices are noisier (sigma ~ T ** -0.25).

    Args:
      noise_range: (min, max) noise at 5 mm slices, HU.
    """
    noise = float(np.clip(rng.uniform(*noise_range) * (5.0 / thickness_mm) ** 0.25, 1.5, 16.0))
    holder = None
    if rng.uniform() < 0.85:
        gap = float(rng.uniform(2, 14))
        holder = (
            head_radius_mm + gap,
            float(rng.uniform(2.5, 6.0)),
            float(np.deg2rad(rng.uniform(35, 110))),
            float(rng.uniform(60, 300)),
            float(rng.uniform(-900, -600)),
            gap,
        )
    # cupping_mm: drawn by the caller (`draw_cupping_mm`), after the study's anatomy
    return Scanner(
        noise_hu=noise,
        grain=float(rng.uniform(0.3, 0.9)),
        cupping_hu=float(rng.uniform(4, 14)),
        streak_hu=float(rng.uniform(0, 25)),
        band_hu=float(rng.uniform(0, 30)),
        holder=holder,
    )


def draw_cupping_mm(rng):
    """How fast the brightening under the skull fades with depth, mm (`Scanner.cupping_mm`)."""
    return float(rng.uniform(3.0, 8.0))


def cupping_profile(depth_mm, scanner):
    """HU the scanner adds to the brain at a depth below the inner table of the skull.

    Real head CT reads the brain denser toward the skull: 3 mm under the inner table the
    brain is 7-10 HU above its value 15 mm deep, fading over several mm (measured on three
    scanners, BENCHMARKS.md), from the bone correction's residual, scatter and the
    kernel's tails, and from cortex denser than an averaged template's. The profile is
    `cupping_hu * exp(-(depth - 3) / cupping_mm)`; depth is the 3-D distance to the
    table, so slices near the vertex, close to it everywhere, are brighter throughout.

    Args:
      depth_mm: float32 array, mm (0 at the table).
    Returns:
      float32 array like depth_mm, HU.
    """
    return np.float32(scanner.cupping_hu) * np.exp(
        (3.0 - depth_mm) / np.float32(scanner.cupping_mm)
    )


def add_holder(img, px, py, centre, scanner):
    """Draws the head holder (an arc behind the head) and its foam pad where there is air.

    Args:
      img: float32 [H, W] HU, modified in place.
      px, py: float32 [W], [H] patient x (right) and y (anterior) of the columns / rows, mm.
      centre: (x, y) of the head, patient mm.
    """
    if scanner.holder is None:
        return
    radius, thick, half_angle, hu, pad_hu, gap = scanner.holder
    dx = px[None, :] - centre[0]
    dy = py[:, None] - centre[1]
    r = np.sqrt(dx * dx + dy * dy)
    behind = np.arctan2(np.abs(dx), -dy) < half_angle  # angle from the posterior direction
    air = img < -500
    shell = behind & (r >= radius) & (r < radius + thick) & air
    pad = behind & (r >= radius - gap) & (r < radius) & air
    img[pad] = pad_hu
    img[shell] = hu


def add_bone_artifacts(img, bone, brain, spacing, rng, scanner):
    """Streaks from dense bone and the interpetrous dark band, inside the brain.

    Args:
      img: float32 [H, W] HU, modified in place.
      bone: bool [H, W] dense bone (> ~1000 HU).
      brain: float32 [H, W] intracranial fraction.
      spacing: mm per pixel.
    """
    n_bone = int(np.count_nonzero(bone))
    if n_bone * spacing * spacing < 150.0 or (scanner.streak_hu <= 0 and scanner.band_hu <= 0):
        return
    rows, cols = np.nonzero(bone)
    h, w = img.shape
    rr = np.arange(h, dtype=np.float32)[:, None]
    cc = np.arange(w, dtype=np.float32)[None, :]

    def line_distance(p, q):
        d = np.array(q, np.float32) - np.array(p, np.float32)
        n = float(np.hypot(*d)) + 1e-6
        return np.abs((rr - p[0]) * d[1] - (cc - p[1]) * d[0]) / n * spacing

    inside = brain > 0.5
    # The band: between the two densest lateral bone masses (petrous pyramids).
    left, right = cols < np.median(cols), cols >= np.median(cols)
    if scanner.band_hu > 0 and left.any() and right.any() and n_bone * spacing * spacing > 600.0:
        p = (rows[left].mean(), cols[left].mean())
        q = (rows[right].mean(), cols[right].mean())
        width = float(rng.uniform(2.0, 6.0))
        img -= (
            np.float32(scanner.band_hu) * np.exp(-0.5 * (line_distance(p, q) / width) ** 2) * inside
        )
    for _ in range(int(rng.integers(0, 5))):
        k = int(rng.integers(rows.size))
        p = (float(rows[k]), float(cols[k]))
        ang = rng.uniform(0, np.pi)
        q = (p[0] + np.sin(ang), p[1] + np.cos(ang))
        amp = scanner.streak_hu * rng.uniform(-1.0, 1.0)
        dist_from_source = np.hypot(rr - p[0], cc - p[1]) * spacing
        img += (
            np.float32(amp)
            * np.exp(-0.5 * (line_distance(p, q) / 0.8) ** 2 - dist_from_source / 60.0)
            * inside
        )


def upsample(a, factor):
    """Linear interpolation of a 2-D array by an integer factor, pixel areas aligned.

    Output pixel j of input pixel i sits at input coordinate i + (j + 0.5) / factor - 0.5
    (scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest"), ~4x faster).

    Args:
      a: float32 [H, W].
    Returns:
      float32 [H * factor, W * factor].
    """
    if factor == 1:
        return a
    for axis in (0, 1):
        a = np.moveaxis(a, axis, 0)
        prev = np.concatenate([a[:1], a[:-1]])
        nxt = np.concatenate([a[1:], a[-1:]])
        parts = []
        for j in range(factor):
            o = (j + 0.5) / factor - 0.5
            other = prev if o < 0 else nxt
            parts.append(np.float32(1 - abs(o)) * a + np.float32(abs(o)) * other)
        a = np.stack(parts, axis=1).reshape(a.shape[0] * factor, *a.shape[1:])
        a = np.moveaxis(a, 0, axis)
    return np.ascontiguousarray(a)


def _grain_std(factor):
    """Standard deviation of unit white noise after `upsample(., factor)` (its mean
    over the output phases of the squared interpolation weights, per axis)."""
    offs = [abs((j + 0.5) / factor - 0.5) for j in range(factor)]
    per_axis = np.mean([(1 - o) ** 2 + o**2 for o in offs])  # variance factor, one axis
    return float(per_axis)  # separable: variance per_axis ** 2, std per_axis


def noise(rng, shape, scanner, factor):
    """Noise of one slice, float32 [H, W]: correlated grain (drawn at 1/`factor`
    resolution and interpolated) plus white noise, total standard deviation noise_hu.
    """
    h, w = shape
    white = np.sqrt(1.0 - scanner.grain) * scanner.noise_hu
    out = rng.standard_normal(size=shape, dtype=np.float32) * np.float32(white)
    if factor > 1:
        coarse = rng.standard_normal(size=(-(-h // factor), -(-w // factor)), dtype=np.float32)
        fine = upsample(coarse, factor)[:h, :w]
        out += fine * np.float32(np.sqrt(scanner.grain) * scanner.noise_hu / _grain_std(factor))
    else:
        out += rng.standard_normal(size=shape, dtype=np.float32) * np.float32(
            np.sqrt(scanner.grain) * scanner.noise_hu
        )
    return out
