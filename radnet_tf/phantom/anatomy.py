"""A whole-head anatomical atlas for the phantom, built from two installed templates.

- Brain: the ICBM152 2009a symmetric templates at 1 mm that ship inside nilearn's wheel
  (grey and white matter probability maps; Fonov et al. 2009/2011, Collins et al. 1999;
  copyright McGill University, see README). Read with nibabel from the installed package
  (nilearn itself is not imported: it pulls in scikit-learn).
- Skull, skull base, orbits, sinuses and scalp: Rorden et al.'s scct head-CT template
  (2 mm, BSD-2, radnet_tf/phantom/assets/scct.nii.gz with its SCCT-LICENSE; Rorden C,
  Bonilha L, Fridriksson J, Bender B, Karnath HO (2012) NeuroImage 61(4):957-65).

`atlas()` returns an `Atlas` on the ICBM 1 mm grid extended 24 mm down to the second
cervical vertebra (RAS, mm; 197 x 233 x 213 voxels, origin (-98, -134, -96); below the
templates' last slice, z = -72, the scct neck level is continued): per-voxel channels the
phantom samples after a per-study warp (`radnet_tf.phantom.generate`), and labels that say where
each
kind of lesion can sit. Built from the templates in ~7 s and cached (float16, ~120 MB)
under `$RADNET_CACHE` (default ~/.cache/radnet_tf), keyed by ATLAS_VERSION.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from pathlib import Path

import numpy as np

# Bumped whenever the atlas channels change (the on-disk cache keys on it).
# 4: air is one value (AIR_HU below -900 HU), so trilinear samples in air are skipped.
ATLAS_VERSION = 4
_DATA = Path(__file__).resolve().parent / "assets"
ICBM_FILES = {
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
}
# Channel names of `Atlas.channels`, in order (last axis).
CHANNELS = ("frame", "icv", "gm", "wm", "dense", "depth", "vent", "fascia")
# The grid continues this far (mm) below the ICBM templates' lowest slice (z = -72): the
# neck and face levels at which real head CT series start.
BELOW_MM = 24
NECK_MM = -66.0
# The frame's value in air: the templates' air (anything below AIR_BELOW_HU: -1024 to
# -900 HU of averaging noise) is set to it, so air is one channel vector (`Atlas.solid`).
AIR_HU, AIR_BELOW_HU = -1024.0, -900.0
# Edge of the blocks of voxels `Atlas.solid` marks as air, voxels.
_AIR_BLOCK = 4
# Integer labels of `Atlas.labels`: candidate places for each lesion type.
LABEL_PARENCHYMA, LABEL_VENTRICLE, LABEL_CISTERN, LABEL_SULCUS, LABEL_SURFACE, LABEL_FALX = (
    1,
    2,
    3,
    4,
    5,
    6,
)


@dataclasses.dataclass
class Atlas:
    """Channels on the 1 mm RAS grid (index i, j, k -> mm = origin + (i, j, k)).

    Attributes:
      channels: float32 [X, Y, Z, C] in CHANNELS order:
        frame: HU outside the intracranial space (scalp, skull, face, sinuses, air);
          0 inside it.
        icv: intracranial fraction in [0, 1].
        gm, wm: grey / white matter fraction in [0, 1] (CSF = icv - gm - wm).
        dense: hyperdense dura (falx, tentorium) and dural venous sinuses (superior
          sagittal, transverse, straight, with the vein of Galen), fraction in [0, 1].
        depth: distance below the inner table of the skull, mm (0 outside the icv).
        vent: ventricle fraction in [0, 1] (lateral, third, fourth).
        fascia: fat-plane fraction in [0, 1] in the soft tissue outside the skull (the
          fat between muscles of the face, jaw and neck); 0 elsewhere.
      labels: uint8 [X, Y, Z] LABEL_* (0 elsewhere).
      origin: float64 [3] mm of voxel (0, 0, 0).
    """

    channels: np.ndarray
    labels: np.ndarray
    origin: np.ndarray

    def __post_init__(self):
        self._points = {}
        self._extent = None
        self._air_blocks = None

    def air_value(self):
        """float32 [C]: the channels in air (frame AIR_HU, every other channel 0)."""
        value = np.zeros(self.channels.shape[-1], np.float32)
        value[CHANNELS.index("frame")] = AIR_HU
        return value

    def _air_block_map(self):
        """bool [bx, by, bz]: blocks of _AIR_BLOCK^3 voxels whose points' trilinear corners
        (the block and one voxel beyond it on each axis) are all air."""
        if self._air_blocks is None:
            air = np.all(self.channels == self.air_value(), axis=-1)
            b = _AIR_BLOCK
            nb = [-(-n // b) for n in air.shape]
            air = np.pad(air, [(0, k * b + 1 - n) for k, n in zip(nb, air.shape)], mode="edge")
            blocks = np.ones(nb, bool)
            for d in itertools.product(range(b + 1), repeat=3):  # voxel offsets 0..b
                blocks &= air[tuple(slice(o, o + b * k, b) for o, k in zip(d, nb))]
            self._air_blocks = blocks
        return self._air_blocks

    def _clipped_index(self, mm):
        """float32 [3, N]: continuous voxel indices of points in mm, clipped to the grid
        (points outside take the nearest edge)."""
        ijk = mm - self.origin.astype(np.float32)[:, None]
        top = np.array(self.labels.shape, np.float32)[:, None] - np.float32(1.001)
        return np.clip(ijk, 0, top)

    def _corner_index(self, mm):
        """(int64 [N] flat index of each point's lowest trilinear corner, float32 [3, N]
        its fractions along each axis)."""
        shape = self.labels.shape
        c = self._clipped_index(mm)
        f = np.floor(c)
        base = f.astype(np.int64)
        return (base[0] * shape[1] + base[1]) * shape[2] + base[2], c - f

    def solid(self, mm):
        """bool [N]: False where `sample` at the point is exactly `air_value()` (all its
        trilinear corners are air), True elsewhere.

        Args:
          mm: float32 [3, N] RAS mm.
        """
        b = self._clipped_index(mm).astype(np.int64) // _AIR_BLOCK
        return ~self._air_block_map()[b[0], b[1], b[2]]

    def head_extent(self):
        """(lo, hi) float32 [3] atlas mm bounding the head (anything denser than -500 HU)."""
        if self._extent is None:
            head = np.argwhere(self.channels[::2, ::2, ::2, CHANNELS.index("frame")] > -500) * 2
            icv = np.argwhere(self.channels[::2, ::2, ::2, CHANNELS.index("icv")] > 0.5) * 2
            both = np.concatenate([head, icv])
            lo, hi = both.min(0) + self.origin - 2, both.max(0) + self.origin + 2
            self._extent = lo.astype(np.float32), hi.astype(np.float32)
        return self._extent

    def points(self, label):
        """float32 [N, 3] mm (RAS) of the voxels with this label (cached)."""
        if label not in self._points:
            self._points[label] = (np.argwhere(self.labels == label) + self.origin).astype(
                np.float32
            )
        return self._points[label]

    def sample(self, mm):
        """Trilinear samples of every channel at points given in mm.

        Args:
          mm: float32 [3, N] RAS mm; points outside the grid take the nearest edge.
        Returns:
          float32 [N, C] in CHANNELS order.
        """
        shape = self.labels.shape
        index, frac = self._corner_index(mm)
        flat = self.channels.reshape(-1, self.channels.shape[-1])
        out = np.zeros((mm.shape[1], flat.shape[1]), np.float32)
        strides = (shape[1] * shape[2], shape[2], 1)
        for dx in (0, 1):
            wx = frac[0] if dx else 1 - frac[0]
            for dy in (0, 1):
                wxy = wx * (frac[1] if dy else 1 - frac[1])
                for dz in (0, 1):
                    corner = flat.take(index + (dx * strides[0] + dy * strides[1] + dz), axis=0)
                    corner *= (wxy * (frac[2] if dz else 1 - frac[2]))[:, None]
                    out += corner
        return out


def _icbm_dir():
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        from radnet_tf.errors import UserError

        raise UserError(
            "the phantom needs the ICBM152 templates of the nilearn package: pip install nilearn"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _scct_hu():
    """scct template in HU on its own grid, and its affine."""
    import nibabel as nib

    img = nib.load(str(_DATA / "scct.nii.gz"))
    value = np.asarray(img.get_fdata(), np.float32)
    # Rorden's Clinical toolbox inverse transform (anatomy/scct/README.md).
    c = value - 900.0
    c = np.where((c > 0) & (c <= 2200), c / 11.0, np.where(c > 2200, c - 2200 + 200, c))
    return c - 124.0, img.affine


def _resample_to_icbm(vol, affine, shape, origin, order=1, z_min=None):
    """`vol` (on `affine`'s grid) resampled to the 1 mm grid; below `z_min` (mm) the
    level z_min is repeated."""
    from scipy import ndimage

    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    mm = ijk + origin.astype(np.float32)[:, None]
    if z_min is not None:
        mm[2] = np.maximum(mm[2], np.float32(z_min))
    inv = np.linalg.inv(affine)
    src = inv[:3, :3].astype(np.float32) @ mm + inv[:3, 3:].astype(np.float32)
    out = ndimage.map_coordinates(vol, src, order=order, mode="nearest")
    return out.reshape(shape).astype(np.float32)


def build_atlas() -> Atlas:
    """Builds the atlas from the templates (see the module docstring)."""
    gm, wm, t1, frame, origin = _templates()
    X, Y, Z = np.meshgrid(
        *[np.arange(n, dtype=np.float32) + o for n, o in zip(gm.shape, origin)], indexing="ij"
    )
    tissue = np.clip(gm + wm, 0, 1)
    icv, icv_f, depth = _intracranial(tissue, t1, frame, origin, Z)
    gm = np.minimum(gm, icv_f)
    wm = np.minimum(wm, icv_f - gm)
    csf = np.clip(icv_f - gm - wm, 0, 1)
    frame = _sharpened_bone(frame, icv, Z)
    vent, vent_f = _ventricles(csf, depth, X, Y, Z)
    dense, falx = _dense_structures(icv, icv_f, csf, vent, tissue, depth, X, Y, Z)
    fascia = _fascia(frame, icv, Z)
    labels = _labels(icv, tissue, csf, vent, falx, depth, Z)
    channels = np.stack(
        [frame, icv_f, gm, wm, dense, np.minimum(depth, 60.0), vent_f, fascia], axis=-1
    )
    air = (frame < AIR_BELOW_HU) & (icv_f == 0)
    channels[air] = 0.0
    channels[air, CHANNELS.index("frame")] = AIR_HU
    # float16 precision whether built or read from the cache: the same cohort either way.
    channels = channels.astype(np.float16).astype(np.float32)
    return Atlas(channels=channels, labels=labels, origin=origin)


def _templates():
    """ICBM grey, white and T1 (float32 in [0, 1], padded BELOW_MM below) and the scct head
    in HU resampled onto that grid; and the grid's origin (mm)."""
    import nibabel as nib

    d = _icbm_dir()
    gm_img = nib.load(str(d / ICBM_FILES["gm"]))

    def icbm(name):  # padded below: no brain at the neck levels
        v = np.asarray(nib.load(str(d / ICBM_FILES[name])).dataobj, np.float32) / 255.0
        return np.pad(v, ((0, 0), (0, 0), (BELOW_MM, 0)))

    origin = np.asarray(gm_img.affine[:3, 3], np.float64) - (0.0, 0.0, BELOW_MM)
    gm, wm, t1 = icbm("gm"), icbm("wm"), icbm("t1")
    hu, aff = _scct_hu()
    # The template fades out over its last few mm (an average of heads scanned from
    # different levels): below NECK_MM its level NECK_MM is continued (the first two
    # cervical vertebrae, jaw and pharynx look alike at this scale).
    frame = _resample_to_icbm(hu, aff, gm.shape, origin, z_min=NECK_MM)
    return gm, wm, t1, frame, origin


def _intracranial(tissue, t1, frame, origin, Z):
    """The intracranial space: the brain, its CSF, and the thin space between brain and
    skull. The template's blurred skull is thick; the icv is the non-bone space within
    6 mm of the brain, cut at the foramen magnum. Returns (icv bool, smoothed icv float32,
    depth below the inner table mm)."""
    from scipy import ndimage

    brain = (t1 > 0.12) | (tissue > 0.3)
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(brain, iterations=2))
    near = ndimage.distance_transform_edt(~brain) <= 6.0
    icv = near & (frame < 180.0) & (Z > -68)
    icv = ndimage.binary_opening(icv, iterations=1)
    lab, _ = ndimage.label(icv)
    centre = lab[tuple(np.round(-origin + np.array([0, -15, 15])).astype(int))]
    icv = ndimage.binary_fill_holes(lab == centre)
    icv_f = ndimage.gaussian_filter(icv.astype(np.float32), 0.6)
    depth = ndimage.distance_transform_edt(icv).astype(np.float32)
    return icv, icv_f, depth


def _sharpened_bone(frame, icv, Z):
    """The template's bone is a blurred average (peak ~600 HU); real cortical bone is
    > 1000 HU with a darker diploe. HU above 250 maps to 700..1900; below the skull base
    (vertebrae, jaw: fainter still) anything above 120 HU is bone. 0 inside the icv."""
    floor = np.where(Z < -58.0, 120.0, 250.0).astype(np.float32)
    bone = frame > floor
    sharpened = np.where(bone, 700.0 + (frame - floor) * 3.0, frame)
    return np.where(icv, 0.0, np.minimum(sharpened, 1900.0)).astype(np.float32)


def _ventricles(csf, depth, X, Y, Z):
    """CSF deep in the brain (lateral, third, fourth), not the basal cisterns: (bool, fraction)."""
    from scipy import ndimage

    deep_csf = (csf > 0.5) & (depth > 14.0)
    central = (np.abs(X) < 30) & (Y > -50) & (Y < 35) & (Z > -2) & (Z < 40)
    fourth = (np.abs(X) < 9) & (Y > -58) & (Y < -35) & (Z > -45) & (Z < -18)
    vent = ndimage.binary_opening(deep_csf & (central | fourth), iterations=1)
    return vent, np.minimum(ndimage.gaussian_filter(vent.astype(np.float32), 0.5), csf)


def _dense_structures(icv, icv_f, csf, vent, tissue, depth, X, Y, Z):
    """Hyperdense dura (falx, tentorium) and venous sinuses: (fraction float32, falx bool)."""
    from scipy import ndimage

    # Falx: a midline sheet in the interhemispheric CSF above the corpus callosum.
    falx = icv & (np.abs(X) < 1.0) & (csf > 0.3) & ~vent & (Z > 5)
    # Tentorium: the CSF gap with brain both above and below, behind the brainstem.
    above = ndimage.maximum_filter1d((tissue > 0.5).astype(np.uint8), 7, axis=2, origin=-3) > 0
    below = ndimage.maximum_filter1d((tissue > 0.5).astype(np.uint8), 7, axis=2, origin=3) > 0
    tent = icv & (csf > 0.35) & (Y < -40) & (Z > -35) & (Z < 12) & above & below & (np.abs(X) > 3)
    dura = np.minimum(1.5 * ndimage.gaussian_filter((falx | tent).astype(np.float32), 0.5), icv_f)
    # Superior sagittal (midline, under the vault) and transverse (along the occipital
    # inner table at tentorium level) sinuses.
    sss = icv & (np.abs(X) < 4) & (depth < 5) & (Z > 0) & (Y < 60)
    transverse = icv & (depth < 5) & (Y < -70) & (Z > -25) & (Z < -5)
    # Straight sinus and vein of Galen: where falx meets tentorium, the midline CSF gap
    # between the occipital lobes above and the cerebellum below, from behind the splenium.
    straight = (
        icv & (np.abs(X) < 2.5) & (csf > 0.3) & (Y < -38) & (Z > -30) & (Z < 15) & above & below
    )
    straight = ndimage.binary_dilation(straight, iterations=1) & icv
    sinus = np.minimum(
        ndimage.gaussian_filter((sss | transverse | straight).astype(np.float32), 0.7), icv_f
    )
    return np.maximum(dura, sinus), falx


def _fascia(frame, icv, Z):
    """Fat planes between the muscles of the face, jaw and neck (the averaged template
    blurs muscle and fat into one grey): thin sheets where a smooth random field (fixed
    seed, ~1 cm bundles) crosses zero, in extracranial soft tissue. float32 in [0, 1]."""
    from scipy import ndimage

    rng = np.random.default_rng(20260)
    field = ndimage.gaussian_filter(rng.standard_normal(frame.shape, dtype=np.float32), 5.0)
    field /= field.std()
    soft_tissue = (frame > -60.0) & (frame < 200.0) & ~icv
    below_orbits = np.clip((-35.0 - Z) / 15.0, 0, 1)
    return np.where(soft_tissue, np.exp(-((field / 0.15) ** 2)) * below_orbits, 0.0).astype(
        np.float32
    )


def _labels(icv, tissue, csf, vent, falx, depth, Z):
    """Candidate places for each lesion type (LABEL_*), uint8."""
    labels = np.zeros(icv.shape, np.uint8)
    labels[icv & (tissue > 0.8) & (depth > 4)] = LABEL_PARENCHYMA
    cistern = (csf > 0.6) & ~vent & (depth > 12) & (Z < 5) & (Z > -40)
    labels[cistern] = LABEL_CISTERN
    labels[(csf > 0.5) & ~vent & ~cistern & (depth > 2) & (depth <= 12)] = LABEL_SULCUS
    # Convexity (EDH, SDH): supratentorial and middle fossa; posterior fossa collections
    # are rare and the narrow fossa makes the shapes below meaningless there.
    labels[icv & (depth > 0.5) & (depth < 2.0) & (Z > -25)] = LABEL_SURFACE
    labels[vent] = LABEL_VENTRICLE
    labels[falx & (depth > 3)] = LABEL_FALX
    return labels


def _cache_path():
    root = Path(os.environ.get("RADNET_CACHE", Path.home() / ".cache" / "radnet_tf"))
    return root / f"atlas-v{ATLAS_VERSION}.npz"


@functools.lru_cache(maxsize=1)
def atlas() -> Atlas:
    """The atlas, built once per process and cached on disk (see the module docstring)."""
    path = _cache_path()
    if path.exists():
        try:
            with np.load(path) as z:
                return Atlas(
                    channels=z["channels"].astype(np.float32),
                    labels=z["labels"],
                    origin=z["origin"],
                )
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    result = build_atlas()
    try:
        from radnet_tf import atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                channels=result.channels.astype(np.float16),
                labels=result.labels,
                origin=result.origin,
            )
    except OSError:
        pass  # a read-only home: build per process
    return result
