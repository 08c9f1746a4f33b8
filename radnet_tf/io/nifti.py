"""NIfTI CT volumes with masks (PhysioNet CT-ICH, INSTANCE-2022, BHSD) -> conversion tasks.

    VOLUMES/<id>.nii[.gz]              CT volumes, HU as stored (scl_slope / scl_inter applied)
    MASKS/<id>.nii[.gz]                optional, same grid: binary (1 = blood) or class
                                       labels (0 background, 1 EDH, 2 IPH, 3 IVH, 4 SAH, 5 SDH)
    slice CSV (optional)               PhysioNet CT-ICH style: PatientNumber, SliceNumber
                                       (1-based along the stored third axis), Intraventricular,
                                       Intraparenchymal, Subarachnoid, Epidural, Subdural,
                                       No_Hemorrhage

Orientation comes from the affine: the volume is turned to the closest canonical (RAS)
axes with nibabel, then to the DICOM path's array order — slices inferior to superior,
rows anterior to posterior, columns right to left (what `dicom_io.read_series` returns
for an axial series) — so the same head as DICOM or as NIfTI gives the same records. An
oblique affine is taken at its closest axes (no resampling); the in-plane spacing is the
canonical voxel size.

Labels: from the slice CSV when given (any = not No_Hemorrhage; the five subtypes by
column name), else from the mask (a slice is positive when its mask has a voxel; subtypes
from class labels). Study label = any slice positive. Class masks are kept per voxel
(records' `mask_classes`); the binary `mask` feeds the auxiliary heads as for DICOM.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from radnet_tf.contract import SUBTYPES
from radnet_tf.errors import UserError

PHYSIONET_COLUMNS = {
    "Epidural": "EDH",
    "Intraparenchymal": "IPH",
    "Intraventricular": "IVH",
    "Subarachnoid": "SAH",
    "Subdural": "SDH",
}
SUFFIXES = (".nii.gz", ".nii")


@dataclasses.dataclass(frozen=True)
class NiftiStudyTask:
    """One NIfTI study (picklable). slice_rows: {stored slice index (0-based): (any, EDH,
    IPH, IVH, SAH, SDH)} from a slice CSV, or None (labels from the mask). mask_kind:
    "binary", "classes", or "auto" (class labels when the mask holds a value above 1; a
    class mask whose only class is 1, EDH, is then read as binary: say "classes")."""

    study_id: str
    volume_path: str
    mask_path: str | None = None
    slice_rows: dict | None = None
    mask_kind: str = "auto"

    def has_classes(self, mask) -> bool:
        return self.mask_kind == "classes" or (self.mask_kind == "auto" and int(mask.max()) > 1)


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise UserError("NIfTI input needs nibabel: pip install 'radnet-tf[nifti]'") from None
    return nibabel


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def to_reader_order(image):
    """A nibabel image -> (array [S, H, W] in the DICOM reader's order, (row_mm, col_mm),
    slice positions [S] in mm (superior positive), stored slice index [S] of each output
    slice, or None when the stored third axis is not the slice axis)."""
    nib = _nibabel()
    canonical = nib.as_closest_canonical(image)
    data = np.asanyarray(canonical.dataobj)
    if data.ndim != 3:
        raise UserError(f"expected a 3-D volume, got shape {data.shape}")
    zooms = canonical.header.get_zooms()[:3]
    out = np.ascontiguousarray(data[::-1, ::-1, :].transpose(2, 1, 0))  # [k, -j, -i]: S, P, L
    positions = canonical.affine[2, 3] + canonical.affine[2, 2] * np.arange(data.shape[2])
    axes = nib.io_orientation(image.affine)  # stored axis -> (canonical axis, flip)
    stored_index = None
    if int(axes[2, 0]) == 2:
        n = data.shape[2]
        stored_index = np.arange(n)[::-1] if axes[2, 1] < 0 else np.arange(n)
    return out, (float(zooms[1]), float(zooms[0])), positions, stored_index


def read_volume(path):
    """A NIfTI CT volume -> (hu int16 [S, H, W], (row_mm, col_mm), positions [S], stored
    slice index [S] or None). Raises UserError for unreadable files or implausible HU."""
    nib = _nibabel()
    from radnet_tf.io.dicom import plausible_hu

    try:
        image = nib.load(str(path))
        scaled = nib.Nifti1Image(np.asarray(image.get_fdata(dtype=np.float32)), image.affine)
    except Exception as err:  # nibabel raises many types for bad files
        raise UserError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err})") from None
    values, spacing, positions, stored = to_reader_order(scaled)
    return plausible_hu(values, path), spacing, positions, stored


def read_mask(path, shape):
    """A mask volume on the CT's grid -> uint8 [S, H, W] in reader order."""
    nib = _nibabel()
    try:
        image = nib.load(str(path))
        values, _, _, _ = to_reader_order(
            nib.Nifti1Image(np.rint(np.asarray(image.dataobj)).astype(np.int16), image.affine)
        )
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{path}: cannot read NIfTI mask ({type(err).__name__}: {err})") from None
    if values.shape != tuple(shape):
        raise UserError(
            f"{path}: mask shape {values.shape} differs from the volume's {tuple(shape)}"
        )
    if values.min() < 0 or values.max() > len(SUBTYPES):
        raise UserError(f"{path}: mask values must be 0/1 or class labels 0..{len(SUBTYPES)}")
    return values.astype(np.uint8)


def load_slice_csv(path):
    """PhysioNet CT-ICH slice table -> {study id (str of PatientNumber, also zero-padded to
    3 digits): {stored slice index: (any, EDH, IPH, IVH, SAH, SDH)}}."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read slice labels {path}: {err}") from None
    needed = {"PatientNumber", "SliceNumber", "No_Hemorrhage", *PHYSIONET_COLUMNS}
    missing = sorted(needed - set(table.columns))
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}")
    out = {}
    order = [c for c, t in sorted(PHYSIONET_COLUMNS.items(), key=lambda kv: SUBTYPES.index(kv[1]))]
    for number, group in table.groupby("PatientNumber"):
        rows = {}
        for _, r in group.iterrows():
            rows[int(r.SliceNumber) - 1] = (int(1 - r.No_Hemorrhage), *(int(r[c]) for c in order))
        out[str(int(number))] = rows
        out[f"{int(number):03d}"] = rows
    return out


def nifti_tasks(volumes_dir, masks_dir=None, slice_csv=None, mask_kind="auto"):
    """(tasks sorted by study id, skipped rows) for every volume under `volumes_dir`."""
    if mask_kind not in ("auto", "binary", "classes"):
        raise UserError(
            f"--nifti-mask-kind must be auto, binary or classes. Received: {mask_kind!r}"
        )
    volumes_dir = Path(volumes_dir)
    if not volumes_dir.is_dir():
        raise UserError(f"NIfTI volume folder not found: {volumes_dir}")
    volumes = {_stem(p): p for p in sorted(volumes_dir.iterdir()) if p.name.endswith(SUFFIXES)}
    if not volumes:
        raise UserError(f"{volumes_dir}: no .nii or .nii.gz files")
    masks = {}
    if masks_dir:
        masks = {
            _stem(p): p for p in sorted(Path(masks_dir).iterdir()) if p.name.endswith(SUFFIXES)
        }
    rows = load_slice_csv(slice_csv) if slice_csv else {}
    tasks, skipped = [], []
    for sid, path in volumes.items():
        if slice_csv and sid not in rows:
            skipped.append((sid, "volume has no rows in the slice label CSV"))
            continue
        if not slice_csv and sid not in masks:
            skipped.append((sid, "volume has neither a mask nor slice labels"))
            continue
        tasks.append(
            NiftiStudyTask(
                sid, str(path), str(masks[sid]) if sid in masks else None, rows.get(sid), mask_kind
            )
        )
    skipped += [(sid, "mask has no volume") for sid in sorted(set(masks) - set(volumes))]
    return tasks, skipped
