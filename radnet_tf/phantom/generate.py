"""Synthetic head-CT cohort: an anatomical digital head phantom written as real DICOM series.

No labelled head-CT volumes can be downloaded here, so the built-in default trains on
phantoms that are built to look like real head CT at the model's input:

- Anatomy (radnet_tf.phantom.anatomy): a whole-head atlas, upper neck to vertex, from the
  ICBM152 brain templates (grey/white matter, CSF, folded cortex and sulci, lateral, third
  and fourth ventricles, basal cisterns, cerebellum, brainstem) inside the scct head-CT
  template (skull, skull base, petrous bones, mastoid and paranasal air, orbits, scalp,
  neck muscles with fat planes), with hyperdense falx, tentorium, dural venous sinuses,
  straight sinus and vein of Galen. Per study: pose (rotation about all three axes,
  scaling, off-centre), a smooth warp, ventricle enlargement and sulcal widening (age),
  tissue attenuations (grey 33-42 HU, white 5-11 HU darker, CSF 0-10 HU, dura and
  sinuses 48-75 HU, bone gain, scalp and muscle 35-70 HU, fat -90 HU).
- Scanner (radnet_tf.phantom.scanner): slice thickness 0.6-5 mm (log-uniform) with partial
  volume across it, pixel spacing / field of view, noise with a correlated grain that
  grows for thin slices, the brain brightening toward the skull (4-14 HU 3 mm under the
  inner table, as real scanners show), streaks and the dark
  interpetrous band at the skull base, a head holder and its pad; a quarter of the
  studies with gantry tilt (5-25 degrees, anterior up, in place of head flexion: the
  planes keep the orbits out of the beam), written with the sheared geometry a tilted
  scanner exports.
- Bleeds (radnet_tf.phantom.lesions) where each type sits: EDH lens under the convexity
  that stops at the sutures,
  SDH crescent along the convexity or along the falx, SAH in cisterns, fissures and
  sulci, IPH with an oedema rim, IVH in a ventricle (often layering posteriorly); 4-32 mm,
  50-90 HU with texture and mixed density, mass effect (midline shift, compressed
  ventricles) for large ones. Hard negatives: choroid plexus, pineal, basal ganglia and
  falx calcifications, dense dura and sinuses, streaks, thick bone.

Slabs are centred anywhere from the foramen magnum to the top of the skull, so cohorts
hold neck, skull-base and vertex-cap slices as real series do; a slab longer than the head
covers it whole.

Output layout of `python -m radnet_tf.synth --out DIR --studies N --seed S`:

  DIR/dicom/synth-0000/IM00017.dcm ...  one folder per study, file names shuffled
  DIR/masks/synth-0000.npz              mask: uint8 [S, H, W] (1 = blood), slices in
                                        ascending position; mask_classes: uint8 [S, H, W]
                                        (0, or 1..5 = EDH, IPH, IVH, SAH, SDH);
                                        sop_instance_uids: [S] str
  DIR/labels.csv                        study_id, label, types, num_slices,
                                        slice_thickness_mm, pixel_spacing_mm
  DIR/slice_labels.csv                  study_id, slice_index, sop_instance_uid, label,
                                        EDH, IPH, IVH, SAH, SDH (0/1 per slice)

`study_id` is the study folder relative to DIR/dicom. A slice is labelled positive when
its mask covers at least `min_lesion_area_mm2` (default 10 mm^2). Like a reader's labels,
the mask holds only blood that can be seen: a bleed counts on a slice where it leaves at
least that area `visible_hu` (8 HU) denser than it would be without it and than grey
matter (blood diluted by CSF or by a thick slice until it looks like cortex does not).
The DICOM headers carry realistic but fake patient identifiers so de-identification can
be tested.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from radnet_tf import atomic
from radnet_tf.phantom import lesions as synth_lesions
from radnet_tf.phantom import scanner as synth_scanner
from radnet_tf.phantom import anatomy
from radnet_tf.phantom.dicom_writer import SeriesEncoder
from radnet_tf.cli import progress as show_progress
from radnet_tf.contract import SUBTYPES

# Bumped whenever the same seed would give different studies (caches key on it).
# 3: InstanceNumber no longer in z order; slice_labels.csv carries per-slice subtypes.
# 4: the anatomical whole-head phantom (atlas, scanner, lesions on anatomy).
# 5: slabs reach down to the foramen magnum and neck; fat planes in the face and neck
#    muscles; straight sinus and vein of Galen.
# 6: slab centres reach the top of the skull (vertex slices with little or no brain).
# 7: only visible blood is labelled (SynthConfig.visible_hu).
# 8: partial volume from planes <= 1 mm apart (was 2 mm); muscle 35-70 HU (was 30-60).
# 9: a quarter of the studies acquired with gantry tilt (5-25 degrees; sheared DICOM geometry).
# 10: epidural bleeds stop at the cranial sutures.
# 11: the tilt takes the place of head flexion (version 9 tilted the planes on top of the
#     head's own pitch, widening the anatomy's obliquity): the planes cut the head as an
#     untilted study's do; the head drifts across the raw images; the table moves along z.
# 12: the brain brightens toward the inner table as on real scanners (4-14 HU at 3 mm,
#     fading over 3-8 mm; was 0-10 HU at the table fading over 3 mm); blood is labelled
#     where it is visibly denser than grey matter brightened as much.
# 13: air in the atlas is one value (below -900 HU: -1024), so points whose samples are
#     all air are not rendered (the skin edge blends with -1024 HU, not -1009 to -900 HU).
GENERATOR_VERSION = 13
AIR = -1000.0
FAT_HU = -90.0


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Phantom parameters.

    Attributes:
      matrix: in-plane matrix size (square), pixels.
      num_slices: slices per study.
      pixel_spacing_range: (min, max) in-plane spacing, mm (drawn per study; with
        `matrix` it sets the field of view).
      slice_thickness_range: (min, max) slice thickness = spacing, mm (drawn per study,
        log-uniform: thin and thick series equally often).
      positive_fraction: fraction of studies with hemorrhage.
      noise_hu_range: (min, max) voxel noise at 5 mm slices, HU (thinner slices are
        noisier by (5 / thickness) ** 0.25: scanners raise the dose and smooth the kernel
        for thin slices, so the full sqrt is not seen).
      min_lesion_area_mm2: mask area that makes a slice positive.
      visible_hu: a bleed is labelled on a slice only where a reader could see it: where
        it raises the noise-free attenuation by at least this much and leaves the pixel at
        least this much denser than the study's grey matter there (brightened under the
        skull like the cortex: `synth_scanner.cupping_profile`), over `min_lesion_area_mm2`
        of the slice (blood diluted by CSF or by a thick slice's partial volume until it
        looks like cortex is not labelled), HU; 0 labels every pixel that is >= 40% blood.
      anatomy_mm: the in-plane step at which anatomy is sampled before linear
        interpolation to the pixel grid (an integer fraction of it), mm.
      subslice_mm: the largest step between the planes averaged into one slice (partial
        volume across the slice thickness), mm.
      tilt_fraction: fraction of studies acquired with a tilted gantry (head CT is often
        tilted, instead of flexing the neck, to lay the planes along the orbitomeatal line
        and keep the orbits out of the beam): the planes cut the head as those of an
        untilted study do (the tilt takes the place of head flexion, so the anatomy the
        model sees is drawn as before), but the planes are tilted about the left-right
        axis, anterior up, and the table moves along z: the DICOM geometry is sheared
        (ImageOrientationPatient, ImagePositionPatient, GantryDetectorTilt) and the head
        drifts across the raw images from slice to slice, as in hospital exports; readers
        shear it back (`dicom_io.read_series`).
      tilt_deg_range: (min, max) gantry tilt of those studies, degrees (uniform).
    """

    matrix: int = 512
    num_slices: int = 32
    pixel_spacing_range: tuple = (0.4, 0.5)
    slice_thickness_range: tuple = (0.6, 5.0)
    positive_fraction: float = 0.5
    noise_hu_range: tuple = (2.0, 5.0)
    min_lesion_area_mm2: float = 10.0
    visible_hu: float = 8.0
    anatomy_mm: float = 1.25
    subslice_mm: float = 1.0
    tilt_fraction: float = 0.25
    tilt_deg_range: tuple = (5.0, 25.0)


@dataclasses.dataclass
class Phantom:
    """One synthetic study.

    Attributes:
      hu: int16 [S, H, W] HU, slices in ascending z.
      mask: uint8 [S, H, W], 1 where blood.
      slice_labels: int64 [S].
      pixel_spacing: float, mm. slice_thickness: float, mm.
      z_positions: float64 [S], mm.
      types: list of hemorrhage type codes present.
      slice_subtypes: int64 [S, 5], 1 where a lesion of that type (contract.SUBTYPES
        order) covers at least `min_lesion_area_mm2` of the slice.
      class_mask: uint8 [S, H, W], 0 background, 1..5 the lesion's type (SUBTYPES order
        + 1; where lesions overlap, the denser share).
      tilt_deg: gantry tilt t, degrees (0: none). z_positions are then the slices'
        positions along their normal; the table moved (z_k - z_0) / cos t between them,
        and the head drifts d_k = (z_k - z_0) tan t posteriorly across the raw images
        (`position`, `orientation`).
    """

    hu: np.ndarray
    mask: np.ndarray
    slice_labels: np.ndarray
    pixel_spacing: float
    slice_thickness: float
    z_positions: np.ndarray
    types: list
    slice_subtypes: np.ndarray
    class_mask: np.ndarray
    tilt_deg: float = 0.0

    def orientation(self):
        """ImageOrientationPatient: float [6], row then column direction cosines (LPS)."""
        t = np.deg2rad(self.tilt_deg)
        return [1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(-np.sin(t))]

    def drift(self, k):
        """How far the head has drifted across the raw image of slice k since slice 0
        (gantry tilt), mm along the image's column direction (posterior)."""
        return float(tilt_drifts(self.tilt_deg, self.z_positions)[k])

    def position(self, k):
        """ImagePositionPatient of slice k (its first pixel's centre, LPS mm): float [3].

        Untilted: (-(W - 1) / 2 sp, -(H - 1) / 2 sp, z_k). Tilted by t: the plane of
        slice k is the untilted one turned by t about x and moved by the drift d_k, so
        its position along the normal (0, sin t, cos t) is still z_k and from slice to
        slice only the table's z changes (by (z_k - z_0) / cos t)."""
        h, w = self.hu.shape[1:]
        t, sp = np.deg2rad(self.tilt_deg), self.pixel_spacing
        c, s, v = float(np.cos(t)), float(np.sin(t)), (h - 1) / 2 * sp + self.drift(k)
        z = float(self.z_positions[k])
        return [-(w - 1) / 2 * sp, -c * v + s * z, s * v + c * z]


def tilt_drifts(tilt_deg, z_positions):
    """float64 [S]: the head's drift across the raw images of a gantry tilted by
    `tilt_deg` (slices at `z_positions` along their normal, mm), from the first slice:
    (z_k - z_0) tan(tilt), mm."""
    z = np.asarray(z_positions, np.float64)
    return np.tan(np.deg2rad(tilt_deg)) * (z - z[0])


# Atlas point at the patient-space origin of a pose (between the ventricles), mm.
_HEAD_CENTRE = np.array([0.0, -18.0, 12.0], np.float32)
# Atlas levels that bound the slab centres: the foramen magnum (real series start at the
# first or second cervical vertebra) and the top of the skull (real series end above it).
_LOWEST, _HIGHEST = (
    np.array([0.0, -35.0, -68.0], np.float32),
    np.array([0.0, -18.0, 90.0], np.float32),
)
_VENTRICLE_CENTRE = np.array([0.0, -10.0, 15.0], np.float32)


def _rotation(yaw, roll, pitch):
    cz, sz, cy, sy, cx, sx = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(roll),
        np.sin(roll),
        np.cos(pitch),
        np.sin(pitch),
    )
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


class _Pose:
    """Where one head sits and how it differs from the atlas.

    patient = A (atlas - HEAD_CENTRE) + t, then (patient -> atlas only) a smooth warp
    (three sinusoids, <= 2.5 mm) and a ventricle inflation (age / hydrocephalus).
    """

    def __init__(self, rng):
        deg = np.deg2rad
        rot = _rotation(
            deg(rng.uniform(-10, 10)), deg(rng.uniform(-8, 8)), deg(rng.uniform(-25, 12))
        )
        scale = rng.uniform(0.9, 1.08) * (1 + rng.uniform(-0.04, 0.04, size=3))
        self.a = (rot @ np.diag(scale)).astype(np.float32)
        self.a_inv = np.linalg.inv(self.a).astype(np.float32)
        self.t = np.array([rng.uniform(-15, 15), rng.uniform(-20, 12), 0.0], np.float32)
        waves = rng.normal(size=(3, 3))
        self.wave = (
            waves
            / np.linalg.norm(waves, axis=1, keepdims=True)
            * (2 * np.pi / rng.uniform(40, 90, size=(3, 1)))
        ).astype(np.float32)
        self.wave_phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
        self.wave_amp = rng.uniform(0, 2.5, size=3).astype(np.float32)
        self.inflate = float(rng.uniform(0, 0.25))
        self.atrophy = float(rng.uniform(0, 0.3))
        self.radius = float(96.0 * scale[1])  # centre to occiput scalp, mm

    def to_patient(self, mm):
        """float32 [N, 3] atlas mm -> [N, 3] patient RAS mm (without the warp)."""
        return (mm - _HEAD_CENTRE) @ self.a.T + self.t

    def to_atlas(self, p):
        """float32 [3, N] patient RAS mm -> [3, N] atlas mm (with the warp)."""
        m = self.a_inv @ (p - self.t[:, None]) + _HEAD_CENTRE[:, None]
        m += self.wave_amp[:, None] * np.sin(self.wave @ m + self.wave_phase[:, None])
        if self.inflate > 0:
            d = m - _VENTRICLE_CENTRE[:, None]
            r2 = np.einsum("ij,ij->j", d, d)
            m -= d * (self.inflate * np.exp(r2 * np.float32(-0.5 / 30.0**2)))
        return m


@dataclasses.dataclass(frozen=True)
class _Tissue:
    """Per-study attenuation of the normal tissues, HU."""

    gm: float
    wm: float
    csf: float
    dense: float
    bone_gain: float
    soft: float

    @classmethod
    def draw(cls, rng):
        gm = rng.uniform(33, 42)
        return cls(
            gm=gm,
            wm=gm - rng.uniform(5, 11),
            csf=rng.uniform(0, 10),
            dense=rng.uniform(48, 75),
            bone_gain=rng.uniform(0.85, 1.2),
            soft=rng.uniform(35, 70),
        )


_CH = {name: i for i, name in enumerate(anatomy.CHANNELS)}
_BRAIN_CHANNELS = [_CH[c] for c in ("gm", "wm", "dense", "vent")]


def _normal_hu(ch, tissue, pose, cupping):
    """HU of normal anatomy from sampled atlas channels, float32 [N]; `cupping`: float32
    [N], the HU the scanner adds to the brain there (`synth_scanner.cupping_profile` x icv)."""
    frame, icv = ch[:, _CH["frame"]], ch[:, _CH["icv"]]
    gm, wm = ch[:, _CH["gm"]], ch[:, _CH["wm"]]
    if pose.atrophy > 0:  # wider sulci: partial-volume brain loses tissue to CSF
        b = gm + wm
        keep = np.clip((b - pose.atrophy) / (1 - pose.atrophy), 0, 1) / np.maximum(b, 1e-3)
        gm, wm = gm * keep, wm * keep
    csf = np.clip(icv - gm - wm, 0, 1)
    dense = ch[:, _CH["dense"]]
    brain = gm * tissue.gm + wm * tissue.wm + csf * tissue.csf
    brain = brain * (1 - dense) + dense * tissue.dense * icv
    brain += cupping
    bone = frame > 200
    frame = np.where(bone, 200 + (frame - 200) * tissue.bone_gain, frame)
    # Scalp, muscle and globes are 35-70 HU; the averaged template blurs them toward fat
    # and air. Fat (-100) and air keep the template's values; the atlas's fascia channel
    # cuts fat planes through the muscle.
    soft = (frame > -60) & (frame <= 200) & (icv < 0.5)
    fat = ch[:, _CH["fascia"]]  # fat planes between the muscles
    frame = np.where(soft, (tissue.soft + 0.3 * (frame - 40.0)) * (1 - fat) + FAT_HU * fat, frame)
    return (frame + brain).astype(np.float32)


def _box(pose, spacing, matrix, factor, scanner, atlas, drift=0.0):
    """Pixel box (rows, cols) holding the head and the holder, aligned to `factor` (on
    every slice: the head drifts by up to `drift` mm along -y with a tilted gantry)."""
    lo, hi = atlas.head_extent()
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])],
        np.float32,
    )
    p = pose.to_patient(corners)
    reach = (
        scanner.holder[0] + scanner.holder[1] if scanner.holder else pose.radius
    ) + 2  # holder's outer edge
    xs = np.concatenate([p[:, 0], [pose.t[0] - reach, pose.t[0] + reach]])
    ys = np.concatenate([p[:, 1], [pose.t[1] - reach]])
    half = (matrix - 1) / 2
    # pixel column c sits at patient x = -(c - half) * spacing; row r at y = -(r - half) * spacing.
    cols = np.sort(half - xs / spacing)
    rows = np.sort(half - np.concatenate([ys, ys - drift]) / spacing)

    def span(v):
        a = max(0, int(np.floor(v[0])) // factor * factor)
        b = min(matrix, -(-int(np.ceil(v[-1]) + 1) // factor) * factor)
        return slice(a, max(b, a + factor))

    return span(rows), span(cols)


def make_phantom(
    rng: np.random.Generator, cfg: SynthConfig = SynthConfig(), positive=None
) -> Phantom:
    """Draws one synthetic study.

    Args:
      rng: NumPy generator (the study is a deterministic function of its state).
      cfg: `SynthConfig`.
      positive: force a positive/negative study; default draws with cfg.positive_fraction.
        A positive draw whose lesions all miss the slab is redrawn (up to 10 times).
    Returns:
      A `Phantom`.
    """
    if positive is None:
        positive = bool(rng.uniform() < cfg.positive_fraction)
    for _ in range(10):
        phantom = _draw(rng, cfg, positive)
        if phantom.slice_labels.any() == positive:
            break
    return phantom


def _draw(rng, cfg, positive):
    """One study drawn from `rng`: the head, its bleeds and the scanner, rendered slice by
    slice. Returns a Phantom."""
    atlas = anatomy.atlas()
    study = _draw_study(rng, cfg, positive, atlas)
    grid = _work_grid(study, cfg, atlas)
    min_px = cfg.min_lesion_area_mm2 / (study.spacing * study.spacing)
    shape = (cfg.num_slices, cfg.matrix, cfg.matrix)
    hu = np.full(shape, AIR, np.int16)
    class_mask = np.zeros(shape, np.uint8)
    type_px = np.zeros((cfg.num_slices, len(SUBTYPES)), np.int64)
    for k, z in enumerate(study.z_positions):
        img, brain, near_table, frac, raise_hu = _render_plane(study, grid, atlas, k, z)
        level = float(
            study.pose.to_atlas(np.array([[study.pose.t[0]], [study.pose.t[1]], [z]], np.float32))[
                2, 0
            ]
        )
        if -50.0 < level < -5.0:  # skull base: petrous bones, clivus
            synth_scanner.add_bone_artifacts(img, img > 1000, brain, grid.step, rng, study.scanner)
        # the holder is fixed to the table: where it is on slice 0, on every raw image
        synth_scanner.add_holder(
            img, grid.px.astype(np.float32), grid.py.astype(np.float32), study.pose.t, study.scanner
        )
        img = grid.full(img)
        clean = img.copy()
        img += synth_scanner.noise(rng, img.shape, study.scanner, grid.factor)
        hu[k][grid.rows, grid.cols] = np.clip(np.rint(img), -1024, 3071)
        owner = _slice_owner(
            study, grid, cfg, frac, raise_hu, clean, near_table, min_px, type_px[k]
        )
        class_mask[k][grid.rows, grid.cols] = owner
    mask = (class_mask > 0).astype(np.uint8)
    slice_labels = (mask.reshape(cfg.num_slices, -1).sum(axis=1) >= min_px).astype(np.int64)
    slice_subtypes = (type_px >= min_px).astype(np.int64)
    types = (
        sorted(SUBTYPES[j] for j in np.flatnonzero(slice_subtypes.any(axis=0)))
        if slice_labels.any()
        else []
    )
    return Phantom(
        hu,
        mask,
        slice_labels,
        study.spacing,
        study.thickness,
        study.z_positions,
        types,
        slice_subtypes,
        class_mask,
        study.tilt_deg,
    )


@dataclasses.dataclass
class _Study:
    """What one study draws before rendering (in the order it draws it from the rng)."""

    spacing: float
    thickness: float
    pose: object
    tissue: object
    scanner: object
    z_positions: np.ndarray
    lesions: list
    calcs: list
    tilt_deg: float
    drifts: np.ndarray


def _draw_study(rng, cfg, positive, atlas) -> _Study:
    """Draws geometry, tissue, scanner, slab, bleeds, calcifications and tilt from `rng`."""
    spacing = float(rng.uniform(*cfg.pixel_spacing_range))
    lo_t, hi_t = cfg.slice_thickness_range
    thickness = float(np.round(np.exp(rng.uniform(np.log(lo_t), np.log(hi_t))), 2))
    pose = _Pose(rng)
    tissue = _Tissue.draw(rng)
    scanner = synth_scanner.draw_scanner(rng, thickness, pose.radius, cfg.noise_hu_range)
    # The slab: its centre anywhere from the foramen magnum to the top of the skull; a
    # slab longer than that (a whole-head series) is centred on it.
    z_low, z_high = sorted(float(pose.to_patient(v[None])[0, 2]) for v in (_LOWEST, _HIGHEST))
    length = thickness * (cfg.num_slices - 1)
    centre = (z_low + z_high) / 2 if length >= z_high - z_low else rng.uniform(z_low, z_high)
    z_positions = centre + thickness * (np.arange(cfg.num_slices) - (cfg.num_slices - 1) / 2)
    z_range = (float(z_positions[0]), float(z_positions[-1]))
    lesions = []
    if positive:
        for _ in range(int(rng.choice([1, 1, 1, 2, 2, 3]))):
            for _attempt in range(4):
                les = synth_lesions.draw_lesion(rng, atlas, pose.to_patient, z_range)
                if les is not None:
                    lesions.append(les)
                    break
    calcs = synth_lesions.draw_calcifications(rng)
    tilt_deg = float(
        np.round(rng.uniform(*cfg.tilt_deg_range), 1)
    )  # both drawn always: the rest of the
    tilt_deg = (
        tilt_deg if rng.uniform() < cfg.tilt_fraction else 0.0
    )  # study is the same with or without
    # drawn after the anatomy, bleeds and tilt (those of version 11 for the same seed)
    scanner = dataclasses.replace(scanner, cupping_mm=synth_scanner.draw_cupping_mm(rng))
    # the head's drift across the raw images (gantry tilt; `Phantom.drift`), mm
    drifts = tilt_drifts(tilt_deg, z_positions).astype(np.float32)
    return _Study(
        spacing, thickness, pose, tissue, scanner, z_positions, lesions, calcs, tilt_deg, drifts
    )


@dataclasses.dataclass
class _Grid:
    """The work grid: blocks of factor x factor output pixels inside the head's box
    (rows, cols of the output matrix); px, py: patient x of work columns / y of work rows."""

    rows: slice
    cols: slice
    factor: int
    hw: int
    ww: int
    px: np.ndarray
    py: np.ndarray
    step: float
    offsets: np.ndarray

    def full(self, work):
        """A work-grid image [hw, ww] on the output box [box rows, box cols]."""
        box_h, box_w = self.rows.stop - self.rows.start, self.cols.stop - self.cols.start
        return synth_scanner.upsample(work, self.factor)[:box_h, :box_w]


def _work_grid(study, cfg, atlas) -> _Grid:
    factor = max(1, int(round(cfg.anatomy_mm / study.spacing)))
    rows, cols = _box(
        study.pose, study.spacing, cfg.matrix, factor, study.scanner, atlas, float(study.drifts[-1])
    )
    hw, ww = -(-(rows.stop - rows.start) // factor), -(-(cols.stop - cols.start) // factor)
    half = (cfg.matrix - 1) / 2
    # Centres of factor x factor pixel blocks; with a tilted gantry, slice k shows patient
    # y + drift k at row y.
    px = (-(cols.start + (factor - 1) / 2 - half) - np.arange(ww) * factor) * study.spacing
    py = (-(rows.start + (factor - 1) / 2 - half) - np.arange(hw) * factor) * study.spacing
    n_sub = max(1, int(np.ceil(study.thickness / cfg.subslice_mm - 1e-6)))
    offsets = study.thickness * ((np.arange(n_sub) + 0.5) / n_sub - 0.5)
    return _Grid(rows, cols, factor, hw, ww, px, py, study.spacing * factor, offsets)


def _render_plane(study, grid, atlas, k, z):
    """Slice k at height z averaged over its sub-slices, on the work grid: (HU [hw, ww],
    intracranial fraction [hw, ww], cupping on the output box, each bleed's fraction
    [L, hw * ww] and the attenuation it adds [L, hw * ww]). Points whose atlas samples are
    all air are air (`anatomy.Atlas.solid`): only the others are rendered."""
    n = grid.hw * grid.ww
    img, brain, near_table = (np.zeros(n, np.float32) for _ in range(3))
    frac = np.zeros((len(study.lesions), n), np.float32)
    raise_hu = np.zeros((len(study.lesions), n), np.float32)  # attenuation each bleed adds
    p = np.empty((3, n), np.float32)
    p[0] = np.broadcast_to(grid.px[None, :], (grid.hw, grid.ww)).ravel()
    p[1] = np.broadcast_to(
        grid.py.astype(np.float32)[:, None] + study.drifts[k], (grid.hw, grid.ww)
    ).ravel()
    for off in grid.offsets:
        p[2] = z + off
        m = study.pose.to_atlas(p)
        live = np.flatnonzero(atlas.solid(m))
        img += np.float32(anatomy.AIR_HU)
        if live.size == 0:
            continue
        sub, icv, cupping, f, r = _render_points(study, atlas, m[:, live], p[:, live])
        img[live] += sub - np.float32(anatomy.AIR_HU)
        brain[live] += icv
        near_table[live] += cupping
        frac[:, live] += f
        raise_hu[:, live] += r
    n_sub = len(grid.offsets)
    near_table = grid.full((near_table / n_sub).reshape(grid.hw, grid.ww))
    return (
        (img / n_sub).reshape(grid.hw, grid.ww),
        (brain / n_sub).reshape(grid.hw, grid.ww),
        near_table,
        frac / n_sub,
        raise_hu / n_sub,
    )


def _render_points(study, atlas, m, p):
    """One sub-slice at points off air: atlas mm m and patient mm p, float32 [3, N].

    Returns (HU [N], intracranial fraction [N], cupping [N], each bleed's fraction [L, N],
    the attenuation each bleed adds [L, N]), float32."""
    ch = atlas.sample(m)
    src = synth_lesions.displacement(study.lesions, m)
    if src is not None:  # mass effect: the brain channels from displaced points
        ch[:, _BRAIN_CHANNELS] = atlas.sample(src)[:, _BRAIN_CHANNELS]
    cupping = ch[:, _CH["icv"]] * synth_scanner.cupping_profile(ch[:, _CH["depth"]], study.scanner)
    sub = _normal_hu(ch, study.tissue, study.pose, cupping)
    for centre_mm, radius, value in _calcs_near(study, float(p[2, 0]), study.calcs):
        d = m - centre_mm.astype(np.float32)[:, None]
        sub = np.where(np.einsum("ij,ij->j", d, d) < radius * radius, np.float32(value), sub)
    frac = np.zeros((len(study.lesions), m.shape[1]), np.float32)
    raise_hu = np.zeros_like(frac)
    sub = _add_lesions(study.lesions, m, ch, p, sub, frac, raise_hu)
    return sub, ch[:, _CH["icv"]], cupping, frac, raise_hu


def _calcs_near(study, z, calcs):
    """The calcifications that can reach the plane at patient height z (mm): within their
    radius plus the warp's reach (<= 2.5 mm per axis, ventricle inflation <= 4.6 mm),
    times the pose's largest scale (< 1.2)."""
    near = []
    for calc in calcs:
        cz = float(study.pose.to_patient(calc[0].astype(np.float32)[None])[0, 2])
        if abs(cz - z) < 1.2 * (calc[1] + 10.0):
            near.append(calc)
    return near


def _add_lesions(lesions, m, ch, p, sub, frac, raise_hu):
    """One sub-slice's HU with oedema and bleeds drawn in; accumulates each bleed's
    fraction and added attenuation into `frac` and `raise_hu` [L, n]."""
    for j, les in enumerate(lesions):
        f = les.fraction(m, ch, p[1])
        oedema = les.oedema(m, ch)
        if oedema is not None:
            sub -= np.float32(les.params["oedema_hu"]) * oedema * (1 - f)
        if f.any():
            before = sub
            sub = sub * (1 - f) + f * les.hu(m)
            frac[j] += f
            raise_hu[j] += sub - before
    return sub


def _slice_owner(study, grid, cfg, frac, raise_hu, clean, near_table, min_px, type_px):
    """The class mask of one slice on the output box (0 background, 1 + subtype index),
    each pixel to the bleed filling most of it; adds visible pixels per subtype to
    `type_px` [5]. A bleed that cannot be told from brain on this slice is left out."""
    best, owner = np.zeros(clean.shape, np.float32), np.zeros(clean.shape, np.uint8)
    for j, les in enumerate(study.lesions):
        if not frac[j].any():
            continue
        f = grid.full(frac[j].reshape(grid.hw, grid.ww))
        on = f >= 0.4
        if cfg.visible_hu > 0:
            seen = grid.full(raise_hu[j].reshape(grid.hw, grid.ww)) >= cfg.visible_hu
            # denser than grey matter there: the cortex under the skull is brighter too
            seen &= clean >= study.tissue.gm + near_table + cfg.visible_hu
            if np.count_nonzero(on & seen) < min_px:
                continue
        type_px[SUBTYPES.index(les.kind)] += int(np.count_nonzero(on))
        take = on & (f > best)
        best[take] = f[take]
        owner[take] = SUBTYPES.index(les.kind) + 1
    return owner


# ----------------------------------------------------------------------------- DICOM output

_FIRST = ["Jane", "John", "Maria", "Wei", "Aisha", "Lars", "Ana", "Kenji", "Olu", "Priya"]
_LAST = ["Doe", "Smith", "Garcia", "Chen", "Khan", "Berg", "Silva", "Sato", "Adeyemi", "Rao"]


def fake_identity(rng):
    """Realistic but fake PHI for one patient (a dict of DICOM keyword -> value)."""
    year = int(rng.integers(1935, 2005))
    return {
        "PatientName": f"{_LAST[int(rng.integers(10))]}^{_FIRST[int(rng.integers(10))]}",
        "PatientID": f"MRN{int(rng.integers(10**7, 10**8))}",
        "PatientBirthDate": f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "PatientSex": str(rng.choice(["F", "M"])),
        "AccessionNumber": f"ACC{int(rng.integers(10**6, 10**7))}",
        "StudyDate": f"2025{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "StudyTime": "101500",
        "InstitutionName": "Synthetic General Hospital",
        "ReferringPhysicianName": f"{_LAST[int(rng.integers(10))]}^Dr",
    }


# The elements that differ between the slices of a series, (keyword, VR), in the order
# write_dicom_series passes their values.
PER_SLICE = (
    ("SOPInstanceUID", "UI"),
    ("InstanceNumber", "IS"),
    ("ImagePositionPatient", "DS"),
    ("PixelData", "OW"),
)


def write_dicom_series(phantom: Phantom, folder, rng, identity=None):
    """Writes a phantom as an uncompressed CT Image Storage series, file names shuffled.

    Returns:
      list of SOPInstanceUIDs in slice (ascending z) order.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seed = [str(int(x)) for x in rng.integers(0, 2**62, size=2)]
    study_uid = generate_uid(entropy_srcs=seed + ["study"])
    series_uid = generate_uid(entropy_srcs=seed + ["series"])
    frame_uid = generate_uid(entropy_srcs=seed + ["frame"])
    s, h, w = phantom.hu.shape
    order = rng.permutation(s)
    ident = identity or fake_identity(rng)
    sp = phantom.pixel_spacing
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()  # one template per series; per-slice fields are updated in the loop
    ds.file_meta = meta
    for key, value in ident.items():
        setattr(ds, key, value)
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "CT"
    ds.Manufacturer = "radnet-tf synthetic phantom"
    ds.SeriesDescription = "Synthetic head CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesNumber = 2
    ds.ImageOrientationPatient = [round(v, 8) for v in phantom.orientation()]
    ds.GantryDetectorTilt = phantom.tilt_deg
    ds.PixelSpacing = [round(sp, 6), round(sp, 6)]
    ds.SliceThickness = phantom.slice_thickness
    ds.KVP = 120
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 80
    stored = (phantom.hu.astype(np.int32) + 1024).astype(np.uint16)
    encoder = SeriesEncoder(ds, PER_SLICE)  # the shared elements encoded once
    uids = []
    for k in range(s):
        sop_uid = generate_uid(entropy_srcs=seed + ["sop", str(k)])
        uids.append(sop_uid)
        values = [
            sop_uid,
            int(order[k]) + 1,  # InstanceNumber, not in z order: readers must sort by position
            [round(v, 6) for v in phantom.position(k)],
            stored[k].tobytes(),
        ]
        (folder / f"IM{int(order[k]):05d}.dcm").write_bytes(encoder.encode(sop_uid, values))
    return uids


def _atomic_csv(path: Path, header, rows):
    with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _save_npz(path, **arrays):
    """`np.savez_compressed` at zlib level 1 (a third of its time on masks that are
    mostly zero; any npz reader reads it)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def _write_study(args):
    """Worker: draws study i and writes it (skipped when already complete).

    Returns (study label row, slice label rows)."""
    out, seed, i, cfg = args
    study_id = f"synth-{i:04d}"
    rng = np.random.default_rng([seed, i])
    phantom = make_phantom(rng, cfg)
    final = out / "dicom" / study_id
    mask_path = out / "masks" / f"{study_id}.npz"
    if not (final.exists() and mask_path.exists()):
        # The mask first, the DICOM folder last: the folder's rename marks the study complete.
        with atomic.atomic_path(final) as tmp:
            uids = write_dicom_series(phantom, tmp, rng)
            with atomic.atomic_path(mask_path) as mask_tmp:
                _save_npz(
                    mask_tmp,
                    mask=phantom.mask,
                    mask_classes=phantom.class_mask,
                    sop_instance_uids=np.array(uids),
                )
    else:
        uids = [str(u) for u in np.load(mask_path)["sop_instance_uids"]]
    label = int(phantom.slice_labels.any())
    row = [
        study_id,
        label,
        ";".join(phantom.types),
        len(uids),
        phantom.slice_thickness,
        round(phantom.pixel_spacing, 6),
    ]
    slice_rows = [
        [study_id, k, uid, int(lab), *map(int, types)]
        for k, (uid, lab, types) in enumerate(
            zip(uids, phantom.slice_labels, phantom.slice_subtypes)
        )
    ]
    return row, slice_rows


def generate_cohort(
    out, num_studies, seed=0, cfg: SynthConfig = SynthConfig(), progress=False, workers=1
):
    """Writes `num_studies` phantoms under `out` (layout in the module docstring).

    Study i is drawn from `np.random.default_rng([seed, i])`, so the cohort is deterministic
    and the same for any number of `workers` (processes). Existing complete studies are
    kept (a study folder is written under a temporary name and renamed when complete).

    Returns:
      list of label rows [study_id, label, types, num_slices, slice_thickness_mm,
      pixel_spacing_mm], in study order.
    """
    out = Path(out)
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    atomic.clean_stale(out / "dicom")  # leftovers of a killed run
    atomic.clean_stale(out / "masks")
    jobs = [(out, seed, i, cfg) for i in range(num_studies)]
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers)  # spawn: callers may have TF loaded
        results = pool.imap(_write_study, jobs, chunksize=2)
    else:
        pool, results = None, map(_write_study, jobs)
    results = show_progress(results, progress, num_studies, "synth", "study")
    try:
        study_rows, slice_rows = [], []
        for row, rows in results:
            study_rows.append(row)
            slice_rows.extend(rows)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    _atomic_csv(
        out / "labels.csv",
        ["study_id", "label", "types", "num_slices", "slice_thickness_mm", "pixel_spacing_mm"],
        study_rows,
    )
    _atomic_csv(
        out / "slice_labels.csv",
        ["study_id", "slice_index", "sop_instance_uid", "label", *SUBTYPES],
        slice_rows,
    )
    return study_rows
