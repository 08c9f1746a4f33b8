"""Synthetic head-CT cohort: a digital head phantom written as real DICOM series.

No labelled head-CT volumes can be downloaded here, so the built-in default trains on
phantoms. Each study is an axial slab through an ellipsoidal head (random size, position
and in-plane rotation) with scalp, a skull of varying thickness (> 700 HU), a CSF layer,
grey-matter cortex with CSF sulci, white matter, lateral and third ventricles, optional
calcifications (bright, not hemorrhage: hard negatives) and CT-like noise. About half the
studies carry 1-3 hemorrhages of the five types, each with its typical shape and place:

  EDH  epidural: biconvex lens against the inner skull
  SDH  subdural: long thin crescent along the inner skull
  IPH  intraparenchymal: irregular blob in the brain (large ones with an oedema rim)
  IVH  intraventricular: blood filling part of a ventricle
  SAH  subarachnoid: blood in the sulci and surface CSF of a region

Blood is 50-90 HU; sizes run from a few mm (1-2 slices) to several cm.

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
its mask covers at least `min_lesion_area_mm2` (default 5 mm^2). The DICOM headers carry
realistic but fake patient identifiers so de-identification can be tested.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import time
from pathlib import Path

import numpy as np

from radnet_tf import atomic
from radnet_tf.cli import add_verbose, cli_main, say
from radnet_tf.cli import progress as show_progress
from radnet_tf.contract import SUBTYPES
from radnet_tf.errors import UserError

TYPES = ("EDH", "SDH", "IPH", "IVH", "SAH")
# Bumped whenever the same seed would give different studies (caches key on it).
# 3: InstanceNumber no longer in z order; slice_labels.csv carries per-slice subtypes.
GENERATOR_VERSION = 3
AIR = -1000.0


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Phantom parameters.

    Attributes:
      matrix: in-plane matrix size (square), pixels.
      num_slices: slices per study.
      pixel_spacing_range: (min, max) in-plane spacing, mm (drawn per study).
      slice_thickness_range: (min, max) slice thickness = spacing, mm (drawn per study).
      positive_fraction: fraction of studies with hemorrhage.
      noise_hu_range: (min, max) standard deviation of voxel noise, HU.
      calcification_prob: probability that a study has calcifications (hard negatives).
      min_lesion_area_mm2: mask area that makes a slice positive.
    """

    matrix: int = 512
    num_slices: int = 32
    pixel_spacing_range: tuple = (0.4, 0.5)
    slice_thickness_range: tuple = (1.0, 2.0)
    positive_fraction: float = 0.5
    noise_hu_range: tuple = (3.0, 6.0)
    calcification_prob: float = 0.5
    min_lesion_area_mm2: float = 5.0


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
        + 1; where lesions overlap, the one drawn last).
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


class _Head:
    """Geometry of one head: maps voxel coordinates to anatomical fields."""

    def __init__(self, rng, spacing, matrix):
        self.a = rng.uniform(66, 78)  # lateral semi-axis, mm
        self.b = rng.uniform(84, 98)  # antero-posterior
        self.c = rng.uniform(90, 105)  # cranio-caudal
        self.dx, self.dy = rng.uniform(-12, 12, size=2)
        self.theta = np.deg2rad(rng.uniform(-15, 15))
        self.scalp = rng.uniform(3.5, 6.0)
        self.skull0 = rng.uniform(5.0, 7.5)
        self.skull1 = rng.uniform(0.5, 2.0)
        self.skull_phase = rng.uniform(0, 2 * np.pi)
        self.n_sulci = int(rng.integers(26, 40))
        self.sulci_phase = rng.uniform(0, 2 * np.pi)
        self.vent_scale = rng.uniform(0.7, 1.4)
        coords = (np.arange(matrix, dtype=np.float32) - (matrix - 1) / 2) * spacing
        x, y = np.meshgrid(coords - self.dx, coords - self.dy)  # x right, y posterior
        ct, st = np.float32(np.cos(self.theta)), np.float32(np.sin(self.theta))
        # z-independent fields, computed once per study, on the head's bounding box only.
        u = ct * x + st * y
        v = -st * x + ct * y
        inside = (u / self.a) ** 2 + (v / self.b) ** 2 <= 1.0
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        self.box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        self.u, self.v = u[self.box], v[self.box]
        self.q = (self.u / self.a) ** 2 + (self.v / self.b) ** 2
        self.ruv2 = self.u * self.u + self.v * self.v
        self.phi = np.arctan2(self.v, self.u)
        self.skull = self.skull0 + self.skull1 * np.cos(2 * self.phi + self.skull_phase)
        self.diploe_mid = self.scalp + self.skull / 2  # depth of the diploe's centre
        self.diploe_half = self.skull / 4
        # Central region (ventricles, basal ganglia: |u|, |v| < 45 mm) as a sub-box of the
        # head box, so their ellipsoids are evaluated on ~1/4 of the pixels.
        central = (np.abs(self.u) < 45.0) & (np.abs(self.v) < 45.0)
        rows, cols = np.flatnonzero(central.any(axis=1)), np.flatnonzero(central.any(axis=0))
        self.cbox = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        self.uc, self.vc = self.u[self.cbox], self.v[self.cbox]
        self.sulcus_arg = self.n_sulci / 2 * self.phi + self.sulci_phase
        self.sin3, self.cos3 = np.sin(3 * self.phi), np.cos(3 * self.phi)

    def fields(self, z):
        """Depth below the skin and below the inner skull table at height z, mm [H, W]."""
        rho = np.sqrt(self.q + np.float32((z / self.c) ** 2))
        r = np.sqrt(self.ruv2 + np.float32(z * z))
        depth = r / np.maximum(rho, 1e-6) - r
        inner = depth - self.scalp - self.skull
        return depth, inner


_OUTSIDE = np.float32(2.0)


def _ellipsoid(u, v, z, center, radii):
    """Normalised ellipsoid radius (< 1 inside); Python-float constants keep float32 maps.

    A slice that misses the ellipsoid gets the scalar 2.0 (outside everywhere; it
    broadcasts in the callers' comparisons and masks) and no per-pixel work.
    """
    (cu, cv, cz), (ru, rv, rz) = map(float, center), map(float, radii)
    zterm = float(((z - cz) / rz) ** 2)
    if zterm >= 1.0:
        return _OUTSIDE
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 + zterm


def _misses(z, cz, rz):
    """Whether the slice at height z misses a body centred at cz with z-radius rz."""
    return abs(float(z) - float(cz)) >= float(rz)


def _in_central(head, sub_mask):
    """Embeds a mask computed on the central sub-box into a head-box mask."""
    if np.ndim(sub_mask) == 0:
        return np.bool_(sub_mask)
    full = np.zeros(head.u.shape, bool)
    full[head.cbox] = sub_mask
    return full


def _ventricles(head, u, v, z):
    """Ventricle mask on the central sub-box (u, v = head.uc, head.vc)."""
    s = head.vent_scale
    lat = np.minimum(
        _ellipsoid(u, v, z, (-10 * s, -2, 10), (6 * s, 26, 16)),
        _ellipsoid(u, v, z, (10 * s, -2, 10), (6 * s, 26, 16)),
    )
    third = _ellipsoid(u, v, z, (0, 8, 0), (1.5 * s, 10, 8))
    return np.minimum(lat, third) < 1.0


def _surface_point(rng, head, z_range):
    """A point on the inner skull: (u, v, z) and its outward angle."""
    phi = rng.uniform(-np.pi, np.pi)
    z = rng.uniform(*z_range)
    scale = np.sqrt(max(1e-3, 1 - (z / head.c) ** 2))
    skull = head.skull0 + head.skull1 * np.cos(2 * phi + head.skull_phase)
    # Radius of the ellipse at angle phi, less scalp and skull.
    rad = scale / np.sqrt((np.cos(phi) / head.a) ** 2 + (np.sin(phi) / head.b) ** 2)
    rad -= head.scalp + skull
    return (float(rad * np.cos(phi)), float(rad * np.sin(phi)), float(z))


def _lesion_sampler(rng, head, z_range):
    """Returns (type, f(u, v, z, inner, sulci, vent) -> bool mask) for one random lesion."""
    kind = TYPES[int(rng.integers(len(TYPES)))]
    size = float(np.exp(rng.uniform(np.log(2.5), np.log(30.0))))  # characteristic mm
    zmid = 0.5 * (z_range[0] + z_range[1])
    zspan = 0.5 * (z_range[1] - z_range[0])
    if kind in ("EDH", "SDH"):
        q = _surface_point(rng, head, (zmid - zspan, zmid + zspan))
        if kind == "EDH":
            length, thick, power = 1.5 * size + 6, min(0.5 * size + 2, 18), 2
        else:
            length, thick, power = 2.5 * size + 15, min(0.2 * size + 2, 10), 4

        def f(u, v, z, inner, sulci, vent):
            if _misses(z, q[2], length):
                return np.False_
            d2 = _ellipsoid(u, v, z, q, (length,) * 3)  # squared normalised distance
            return (inner >= 0) & (d2 < 1) & (inner < thick * (1 - d2 ** (power // 2)))

    elif kind == "IPH":
        center = np.array([rng.uniform(-35, 35), rng.uniform(-45, 45), rng.uniform(zmid - zspan, zmid + zspan)])
        radii = size * rng.uniform(0.5, 1.0, size=3)
        k, phase, amp = int(rng.integers(2, 5)), rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.25)

        def f(u, v, z, inner, sulci, vent):
            if _misses(z, center[2], radii[2] * (1 + amp)):
                return np.False_
            ang = np.arctan2(v - float(center[1]), u - float(center[0]))
            e = _ellipsoid(u, v, z, center, radii) * (1 + amp * np.sin(k * ang + phase))
            return (e < 1.0) & (inner > 2)

    elif kind == "IVH":
        s = head.vent_scale
        side = rng.choice([-1, 1])
        center = np.array([side * 9 * s, rng.uniform(-20, 20), rng.uniform(6, 18)])
        radius = 0.6 * size + 4

        def f(u, v, z, inner, sulci, vent):
            if _misses(z, center[2], radius):
                return np.False_
            return vent & (_ellipsoid(u, v, z, center, (radius,) * 3) < 1.0)

    else:  # SAH
        q = _surface_point(rng, head, (zmid - zspan, zmid + zspan))
        radius = 1.5 * size + 10

        def f(u, v, z, inner, sulci, vent):
            if _misses(z, q[2], radius):
                return np.False_
            near = _ellipsoid(u, v, z, q, (radius,) * 3) < 1.0
            return near & (inner >= 0) & (sulci | (inner < 1.5))

    return kind, f


def make_phantom(rng: np.random.Generator, cfg: SynthConfig = SynthConfig(), positive=None) -> Phantom:
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
    spacing = float(rng.uniform(*cfg.pixel_spacing_range))
    thickness = float(np.round(rng.uniform(*cfg.slice_thickness_range), 2))
    head = _Head(rng, spacing, cfg.matrix)
    slab = cfg.num_slices * thickness
    z0 = rng.uniform(-10.0, 30.0) - slab / 2  # slab around the ventricles
    z_positions = z0 + thickness * np.arange(cfg.num_slices)
    z_range = (z_positions[0], z_positions[-1])
    lesions = [_lesion_sampler(rng, head, z_range) for _ in range(int(rng.integers(1, 4)) if positive else 0)]
    blood_hu = [rng.uniform(50, 90) for _ in lesions]
    calcs = []
    if rng.uniform() < cfg.calcification_prob:
        calcs.append(((0.0, 22.0, rng.uniform(-2, 6)), rng.uniform(1.5, 3.0), rng.uniform(150, 500)))
        for side in (-1, 1):
            if rng.uniform() < 0.6:
                c = (side * 10 * head.vent_scale, 14.0, rng.uniform(8, 16))
                calcs.append((c, rng.uniform(1.0, 2.5), rng.uniform(120, 400)))
    noise = rng.uniform(*cfg.noise_hu_range)
    shape = (cfg.num_slices, cfg.matrix, cfg.matrix)
    hu = np.empty(shape, np.int16)
    mask = np.zeros(shape, np.uint8)
    class_mask = np.zeros(shape, np.uint8)
    type_px = np.zeros((cfg.num_slices, len(SUBTYPES)), np.int64)  # lesion pixels per type
    gm, wm, csf = rng.uniform(35, 40), rng.uniform(25, 30), rng.uniform(2, 12)
    scalp_hu = rng.uniform(25, 45)
    hardening = rng.uniform(0, 12)
    for k, z in enumerate(z_positions):
        u, v = head.u, head.v
        depth, inner = head.fields(z)
        img = np.full(head.u.shape, AIR, np.float32)  # the head's bounding box
        np.copyto(img, np.float32(scalp_hu), where=depth >= 0)
        bone = (depth >= head.scalp) & (inner < 0)
        mid = np.abs(depth - head.diploe_mid) < head.diploe_half  # diploe
        np.copyto(img, np.float32(1300.0), where=bone)
        np.copyto(img, np.float32(750.0), where=bone & mid)
        brain = inner >= 0
        np.copyto(img, np.float32(wm), where=brain)
        cortex = brain & (inner < 4.5)
        np.copyto(img, np.float32(gm), where=cortex)
        # Deep grey matter (basal ganglia) beside the ventricles, and beam hardening that
        # brightens the brain just under the skull (a classic SDH mimic).
        uc, vc = head.uc, head.vc
        deep = np.minimum(
            _ellipsoid(uc, vc, z, (-20, 4, 0), (7, 12, 10)), _ellipsoid(uc, vc, z, (20, 4, 0), (7, 12, 10))
        )
        np.copyto(img, np.float32(gm - 2), where=brain & _in_central(head, deep < 1.0))
        # (exp and sin are evaluated only where they matter: the first 15 mm of brain under
        # the skull, where the term is > 0.1 HU, and the cortex.)
        near = brain & (inner < 15.0)
        shade = np.zeros(img.shape, np.float32)
        np.exp(inner * np.float32(-1 / 3), out=shade, where=near)
        img += np.float32(hardening) * shade
        wobble = np.float32(0.6 * np.cos(z / 9.0)) * head.sin3 + np.float32(0.6 * np.sin(z / 9.0)) * head.cos3
        wave = np.ones(img.shape, np.float32)
        np.sin(head.sulcus_arg + wobble, out=wave, where=cortex)
        sulci = cortex & (np.abs(wave) < 0.14)
        np.copyto(img, np.float32(csf), where=sulci | (brain & (inner < 1.2)))
        vent = brain & _in_central(head, _ventricles(head, uc, vc, z))
        np.copyto(img, np.float32(csf), where=vent)
        for center, radius, value in calcs:
            if not _misses(z, center[2], radius):
                np.copyto(img, np.float32(value), where=_ellipsoid(u, v, z, center, (radius,) * 3) < 1.0)
        m = np.zeros(u.shape, bool)
        classes = np.zeros(u.shape, np.uint8)
        for (kind, f), value in zip(lesions, blood_hu):
            les = f(u, v, z, inner, sulci, vent)
            np.copyto(img, np.float32(value), where=les)
            m |= les
            type_px[k, SUBTYPES.index(kind)] += int(np.count_nonzero(les))
            classes[les] = SUBTYPES.index(kind) + 1
        # Noise on the head's bounding box only: the air around it is clipped away by any
        # brain window, and drawing it cost a third of the phantom's time.
        img += np.float32(noise) * rng.standard_normal(size=img.shape, dtype=np.float32)
        hu[k] = AIR
        hu[k][head.box] = np.clip(np.rint(img), -1024, 3071)
        mask[k][head.box] = m
        class_mask[k][head.box] = classes
    min_px = cfg.min_lesion_area_mm2 / (spacing * spacing)
    slice_labels = (mask.reshape(cfg.num_slices, -1).sum(axis=1) >= min_px).astype(np.int64)
    types = sorted({kind for kind, _ in lesions}) if slice_labels.any() else []
    slice_subtypes = (type_px >= min_px).astype(np.int64)
    return Phantom(hu, mask, slice_labels, spacing, thickness, z_positions, types, slice_subtypes, class_mask)


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
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
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
    uids = []
    for k in range(s):
        sop_uid = generate_uid(entropy_srcs=seed + ["sop", str(k)])
        uids.append(sop_uid)
        meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = int(order[k]) + 1  # not in z order: readers must sort by position
        ds.ImagePositionPatient = [-(w - 1) / 2 * sp, -(h - 1) / 2 * sp, float(phantom.z_positions[k])]
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"IM{int(order[k]):05d}.dcm", enforce_file_format=True)
    return uids


def _atomic_csv(path: Path, header, rows):
    with atomic.atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


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
                np.savez_compressed(mask_tmp, mask=phantom.mask, mask_classes=phantom.class_mask,
                                    sop_instance_uids=np.array(uids))
    else:
        uids = [str(u) for u in np.load(mask_path)["sop_instance_uids"]]
    label = int(phantom.slice_labels.any())
    row = [study_id, label, ";".join(phantom.types), len(uids), phantom.slice_thickness, round(phantom.pixel_spacing, 6)]
    slice_rows = [
        [study_id, k, uid, int(lab), *map(int, types)]
        for k, (uid, lab, types) in enumerate(zip(uids, phantom.slice_labels, phantom.slice_subtypes))
    ]
    return row, slice_rows


def generate_cohort(out, num_studies, seed=0, cfg: SynthConfig = SynthConfig(), progress=False, workers=1):
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
    _atomic_csv(out / "slice_labels.csv", ["study_id", "slice_index", "sop_instance_uid", "label", *SUBTYPES], slice_rows)
    return study_rows


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m radnet_tf.synth", description="Write a synthetic head-CT cohort as DICOM."
    )
    add_verbose(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--studies", type=int, default=20, help="number of studies (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slices", type=int, default=SynthConfig.num_slices, help="slices per study")
    parser.add_argument("--matrix", type=int, default=SynthConfig.matrix, help="in-plane matrix")
    parser.add_argument(
        "--thickness", type=float, nargs=2, default=SynthConfig.slice_thickness_range, metavar=("MIN", "MAX")
    )
    parser.add_argument("--positive-fraction", type=float, default=SynthConfig.positive_fraction)
    parser.add_argument("--workers", type=int, default=1, help="processes (the cohort does not depend on it)")
    parser.add_argument("--layout", default="folders", choices=["folders", "rsna", "cq500", "nifti"],
                        help="folders: one folder per study + labels.csv (default); rsna: the RSNA-2019 flat layout "
                             "with its known defects planted; cq500: zips/folders with several series and "
                             "reads.csv; nifti: volumes + masks + slice CSV (radnet_tf.synth_layouts)")
    args = parser.parse_args(argv)
    if args.studies < 1 or args.slices < 1 or args.matrix < 32:
        raise UserError("--studies and --slices must be >= 1 and --matrix >= 32")
    if not 0 <= args.positive_fraction <= 1:
        raise UserError(f"--positive-fraction must be in [0, 1], got {args.positive_fraction}")
    cfg = SynthConfig(
        matrix=args.matrix,
        num_slices=args.slices,
        slice_thickness_range=tuple(args.thickness),
        positive_fraction=args.positive_fraction,
    )
    start = time.perf_counter()
    if args.layout != "folders":
        from radnet_tf.synth_layouts import write_layout

        write_layout(args.out, args.layout, args.studies, args.seed, cfg)
        say(f"wrote {args.studies} studies in the {args.layout} layout to {args.out} in {time.perf_counter() - start:.1f} s")
        return
    rows = generate_cohort(args.out, args.studies, args.seed, cfg, progress=True, workers=max(1, args.workers))
    positives = sum(r[1] for r in rows)
    say(f"wrote {len(rows)} studies ({positives} positive) to {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
