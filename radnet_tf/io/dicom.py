"""DICOM series ingest: a folder of files -> one HU volume per CT series, with geometry.

Why pydicom and not tensorflow-io: tensorflow-io 0.37 is built for TF 2.16 and its ops
raise under TF 2.21; its `decode_dicom_image` returned wrong values (2*stored+65536) or
empty arrays, and TF Serving cannot load its custom ops anyway. pydicom with the pylibjpeg
plugins decodes uncompressed, JPEG Lossless, JPEG 2000 and RLE pixel data exactly.

What the reader guarantees:
  * files are grouped by SeriesInstanceUID and one axial CT image series is chosen by a
    stated `SeriesPolicy` (default: soft-tissue reconstructions only, i.e. no bone/lung/
    sharp kernels or descriptions, slice thickness 0.5-5.5 mm; among those the most
    slices); every series considered is listed with the decision in `series_choice`;
    localizers, dose reports, non-CT and non-image objects are skipped and listed;
  * an enhanced (multi-frame) CT object is read frame by frame, each frame a slice with
    the position, orientation, pixel spacing, rescale and frame type of its functional
    groups (`FrameView`); a series may mix such objects and classic single-slice files;
  * slices are sorted by ImagePositionPatient projected on the slice normal (never by file
    name or InstanceNumber), inferior to superior;
  * voxels are HU through the modality LUT, int16, with padding (PixelPaddingValue and
    anything below -1024 HU, e.g. -1500/-2000/-3024 outside the scan field of view) set to
    air (-1024 HU) so it cannot leak into a window; a slice whose HU leave the plausible
    CT range (`HU_MAX`, or nothing above `HU_FLOOR`: a broken RescaleSlope/Intercept) is
    refused naming the file; missing rescale tags are read as slope 1, intercept 0 and
    reported in `warnings`;
  * PixelSpacing must be two positive numbers;
  * a slice whose orientation differs from the rest of its series is skipped and listed;
  * gantry tilt is detected from the geometry and, by default, corrected by shearing each
    slice in-plane (as dcm2niix does) so the stack lies on a grid orthogonal to the slices;
    `tilt="reject"` refuses tilted series instead;
  * irregular slice spacing and missing slices (gaps) are detected and reported;
  * patient identifiers never leave this module: a `CTSeries` carries a pseudonymous
    `study_key` (salted HMAC-SHA256 of StudyInstanceUID), not names, IDs, dates or
    accession numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from radnet_tf.contract import AIR_HU
from radnet_tf.errors import DicomReadError
from radnet_tf.io.uid_warnings import counted_uid_warnings, uid_line

ENHANCED_CT_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage (multi-frame)
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage (multi-frame)
}
CT_IMAGE_STORAGE = {"1.2.840.10008.5.1.4.1.1.2", *ENHANCED_CT_STORAGE}  # + classic CT Image Storage
DEFAULT_SALT_ENV = "RADNET_PSEUDONYM_SALT"
_DEFAULT_SALT = "radnet-tf-default-salt"  # sites should set RADNET_PSEUDONYM_SALT
# Kernels and descriptions of reconstructions that are not for brain soft tissue (GE BONE,
# BONEPLUS, LUNG, EDGE; Siemens B/H/I 60-99 sharp kernels; Philips YC/YD/D; Toshiba FC5x+
# bone kernels; MIP slabs), matched case-insensitively anywhere in either tag.
DEFAULT_SERIES_EXCLUDE = r"bone|lung|edge|sharp|\b[bhi][6-9]\d|\by[cd]\b|\bfc[5-9]\d|\bmip\b"


@dataclasses.dataclass(frozen=True)
class SeriesPolicy:
    """Which series of a study to read.

    Attributes:
      thickness_mm: (min, max) SliceThickness accepted (a series without the tag passes).
      exclude: regular expression (case-insensitive) matched against ConvolutionKernel and
        SeriesDescription; a match rejects the series.
    Among the series that pass, the one with the most slices is read (ties: the thinner).
    """

    thickness_mm: tuple = (0.5, 5.5)
    exclude: str = DEFAULT_SERIES_EXCLUDE

    @classmethod
    def parse(cls, text: str) -> "SeriesPolicy":
        """From "thickness=MIN-MAX,exclude=REGEX" (either part optional, `exclude` last as
        the expression may hold commas; "any" = no filter).

        Raises:
          UserError for a malformed policy.
        """
        import re

        from radnet_tf.errors import UserError

        text = text.strip()
        if text == "any":
            return cls(thickness_mm=(0.0, float("inf")), exclude="")
        head, _, exclude = text.partition("exclude=")
        policy = cls()
        for part in filter(None, (p.strip() for p in head.split(","))):
            key, _, value = part.partition("=")
            if key.strip() != "thickness":
                raise UserError(f"series policy keys are thickness and exclude. Received: {text!r}")
            try:
                low, high = (float(v) for v in value.split("-"))
            except ValueError:
                raise UserError(
                    f"series policy thickness must be MIN-MAX in mm. Received: {value!r}"
                ) from None
            policy = dataclasses.replace(policy, thickness_mm=(low, high))
        if "exclude=" in text:
            try:
                re.compile(exclude)
            except re.error as err:
                raise UserError(
                    f"series policy exclude is not a regular expression ({err})"
                ) from None
            policy = dataclasses.replace(policy, exclude=exclude)
        return policy

    def rejects(self, description: str, kernel: str, thickness: float) -> str | None:
        """Why this policy rejects a series (None when it passes)."""
        import re

        for name, text in (("kernel", kernel), ("description", description)):
            if self.exclude and text and re.search(self.exclude, text, re.IGNORECASE):
                return f"{name} {text!r} is not a soft-tissue reconstruction"
        low, high = self.thickness_mm
        if np.isfinite(thickness) and not low <= thickness <= high:
            return f"slice thickness {thickness:g} mm outside {low:g}-{high:g} mm"
        return None


HU_MAX = 32767  # int16; extended-scale CT reaches ~30,000 HU on metal
HU_FLOOR = -2048  # a slice with no voxel above this is not CT in HU
TILT_TOLERANCE_DEG = 0.5
SPACING_TOLERANCE = 0.1  # relative deviation from the median that counts as irregular


@dataclasses.dataclass
class CTSeries:
    """One CT series as a HU volume with its geometry. Carries no patient identifiers.

    Attributes:
      hu: int16 array [S, H, W], Hounsfield units, slices ordered inferior to superior.
      pixel_spacing: (row_mm, col_mm) floats: distance between rows, between columns.
      slice_positions: float64 array [S], mm along the slice normal (sorted ascending).
      slice_spacing: median distance between consecutive slices, mm.
      orientation: float64 array [6], ImageOrientationPatient (row then column cosines).
      study_key: pseudonymous study key (hex string), stable for a salt.
      series_key: pseudonymous series key (hex string).
      sop_instance_uids: per-slice SOPInstanceUIDs, in slice order (instance identifiers,
        not patient identifiers; used to align label files). Never written to records.
      tilt_deg: gantry tilt measured from the geometry, degrees.
      tilt_corrected: whether the slices were sheared to remove the tilt.
      irregular_spacing: whether slice spacing varies by more than 10% (gaps excluded).
      gaps: list of (index_before_gap, missing_slice_count).
      skipped: list of (file_name, reason) for every file not used.
      slice_thickness: SliceThickness in mm (nan if absent).
      warnings: list of str, things accepted but worth knowing (e.g. missing rescale tags).
      corrected_files: names of files whose pixel values a named correction changed (e.g.
        `fix_12bit_intercept`).
      series_choice: one dict per axial CT series considered (series_key, description,
        kernel, thickness_mm, slices, decision: "chosen" or the reason it was not).
      invalid_uids: how many UID values were not DICOM-conformant (pydicom's warnings,
        counted by `radnet_tf.io.uid_warnings`).
      frame_numbers: per-slice 1-based frame number within its enhanced (multi-frame) CT
        object, None for an object that holds one image (a classic slice or a single-frame
        enhanced object: `sop_instance_uids[i]` alone names it); None for the whole field
        in series built elsewhere.
      shear_px: float64 [S, 2], the in-plane (row, col) shift applied to each slice by the
        tilt correction, in pixels (zeros when not corrected): source pixel (r, c) of slice
        i is at (r + shear_px[i, 0], c + shear_px[i, 1]) of `hu[i]`.
    """

    hu: np.ndarray
    pixel_spacing: tuple
    slice_positions: np.ndarray
    slice_spacing: float
    orientation: np.ndarray
    study_key: str
    series_key: str
    sop_instance_uids: list
    tilt_deg: float = 0.0
    tilt_corrected: bool = False
    irregular_spacing: bool = False
    gaps: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    slice_thickness: float = float("nan")
    warnings: list = dataclasses.field(default_factory=list)
    corrected_files: list = dataclasses.field(default_factory=list)
    series_choice: list = dataclasses.field(default_factory=list)
    shear_px: np.ndarray | None = None
    frame_numbers: list | None = None
    invalid_uids: int = 0

    @property
    def num_slices(self) -> int:
        return int(self.hu.shape[0])

    def summary(self) -> dict:
        """A JSON-friendly description of the series geometry (no identifiers)."""
        return {
            "study_key": self.study_key,
            "series_key": self.series_key,
            "num_slices": self.num_slices,
            "matrix": [int(self.hu.shape[1]), int(self.hu.shape[2])],
            "pixel_spacing_mm": [round(float(s), 4) for s in self.pixel_spacing],
            "slice_spacing_mm": round(float(self.slice_spacing), 4),
            "slice_thickness_mm": None
            if np.isnan(self.slice_thickness)
            else round(float(self.slice_thickness), 4),
            "tilt_deg": round(float(self.tilt_deg), 3),
            "tilt_corrected": bool(self.tilt_corrected),
            "irregular_spacing": bool(self.irregular_spacing),
            "gaps": [[int(i), int(n)] for i, n in self.gaps],
            "skipped_files": len(self.skipped),
            "warnings": list(self.warnings),
            "corrected_files": len(self.corrected_files),
            "series_choice": list(self.series_choice),
        }


def pseudonymize(uid: str, salt: str | None = None) -> str:
    """Salted HMAC-SHA256 of a UID, 16 hex characters.

    The salt comes from `salt`, else the RADNET_PSEUDONYM_SALT environment variable, else a
    fixed project default (fine for synthetic data; a site should set its own secret salt).
    """
    salt = salt if salt is not None else os.environ.get(DEFAULT_SALT_ENV, _DEFAULT_SALT)
    return hmac.new(salt.encode(), uid.encode(), hashlib.sha256).hexdigest()[:16]


def _iter_files(root: Path):
    for dirpath, _, filenames in os.walk(root):
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _skip_reason(ds) -> str | None:
    """Why a dataset is not a slice of an axial CT image series (None if it is)."""
    if "PixelData" not in ds:
        return "no pixel data"
    modality = str(ds.get("Modality", ""))
    if modality != "CT":
        return f"modality {modality or 'missing'} is not CT"
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class and sop_class not in CT_IMAGE_STORAGE:
        return f"SOP class {sop_class} is not a CT image"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "localizer/scout image"
    if (
        _frame_count(ds) > 1
    ):  # a FrameView counts 1: only non-enhanced multi-frame objects land here
        return "multi-frame object that is not an enhanced CT image"
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if tag not in ds:
            return f"missing {tag}"
    return None


def _frame_count(ds) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


class FrameView:
    """One frame of an enhanced (multi-frame) CT object, read like a classic CT slice.

    Enhanced CT keeps what a classic slice has in its own header in functional groups: one
    group per frame (PerFrameFunctionalGroupsSequence) and one for all frames
    (SharedFunctionalGroupsSequence). A view answers `get`, `in` and attribute access for
    the attributes the reader uses from the frame's group, else the shared group, else the
    object itself: ImagePositionPatient (Plane Position), ImageOrientationPatient (Plane
    Orientation), PixelSpacing and SliceThickness (Pixel Measures), RescaleSlope and
    RescaleIntercept (Pixel Value Transformation), ImageType (the CT Image Frame Type's
    FrameType) and ConvolutionKernel (CT Reconstruction); a Legacy Converted object's
    unassigned converted attributes are looked up too. Everything else (Rows, UIDs,
    PixelPaddingValue, ...) is the object's.

    Attributes:
      dataset: the whole pydicom Dataset. index: 0-based frame index.
      frame_number: 1-based frame number (what DICOM references use).
    """

    _GROUPS = {
        "ImagePositionPatient": "PlanePositionSequence",
        "ImageOrientationPatient": "PlaneOrientationSequence",
        "PixelSpacing": "PixelMeasuresSequence",
        "SliceThickness": "PixelMeasuresSequence",
        "RescaleSlope": "PixelValueTransformationSequence",
        "RescaleIntercept": "PixelValueTransformationSequence",
        "ImageType": "CTImageFrameTypeSequence",
        "ConvolutionKernel": "CTReconstructionSequence",
    }
    _IN_GROUP = {"ImageType": "FrameType"}  # the keyword inside the group, where it differs
    _MISSING = object()

    def __init__(self, dataset, index: int):
        self.dataset, self.index = dataset, int(index)
        self.frame_number = self.index + 1

    def _groups(self):
        per_frame = self.dataset.get("PerFrameFunctionalGroupsSequence") or []
        if self.index < len(per_frame):
            yield per_frame[self.index], "UnassignedPerFrameConvertedAttributesSequence"
        shared = self.dataset.get("SharedFunctionalGroupsSequence") or []
        if shared:
            yield shared[0], "UnassignedSharedConvertedAttributesSequence"

    def get(self, keyword, default=None):
        if keyword == "NumberOfFrames":
            return 1
        if keyword in self._GROUPS:
            inner = self._IN_GROUP.get(keyword, keyword)
            for group, unassigned in self._groups():
                for sequence, name in (
                    (group.get(self._GROUPS[keyword]), inner),
                    (group.get(unassigned), keyword),
                ):
                    if sequence and name in sequence[0]:
                        return sequence[0].get(name)
        return self.dataset.get(keyword, default)

    def __contains__(self, keyword):
        return self.get(keyword, self._MISSING) is not self._MISSING

    def __getattr__(self, keyword):
        if keyword.startswith("_"):
            raise AttributeError(keyword)
        value = self.get(keyword, self._MISSING)
        if value is self._MISSING:
            raise AttributeError(f"frame {self.frame_number} has no {keyword}")
        return value

    @property
    def pixel_array(self) -> np.ndarray:
        """This frame's stored values, [Rows, Columns] (decoded alone, not the whole object)."""
        from pydicom.pixels import pixel_array

        return pixel_array(self.dataset, index=self.index)


def _slices_of(ds):
    """The slices one dataset holds: [ds] for a classic image, one `FrameView` per frame for
    an enhanced (multi-frame) CT object."""
    if (
        str(ds.get("SOPClassUID", "")) in ENHANCED_CT_STORAGE and "PixelData" in ds
    ):  # 1 frame or more
        return [FrameView(ds, i) for i in range(_frame_count(ds))]
    return [ds]


def _frame_number(ds):
    """The 1-based frame a slice is within a multi-frame object; None when the object holds
    one image (a classic slice, or a single-frame enhanced object): its UID names it."""
    return ds.frame_number if isinstance(ds, FrameView) and _frame_count(ds.dataset) > 1 else None


def _where(path, ds) -> str:
    """A slice's file path (and frame) for error messages."""
    return f"{path} frame {ds.frame_number}" if isinstance(ds, FrameView) else str(path)


def _name(path: Path, ds) -> str:
    """How a slice is named in `skipped`: the file name, and the frame of an enhanced object."""
    return _where(path.name, ds)


def _normal(orientation: np.ndarray) -> np.ndarray:
    n = np.cross(orientation[:3], orientation[3:])
    return n / np.linalg.norm(n)


def _is_axial(orientation: np.ndarray) -> bool:
    # Axial (possibly tilted): slice normal within 45 degrees of the patient z axis.
    return abs(_normal(orientation)[2]) > np.cos(np.deg2rad(45))


def needs_12bit_intercept_fix(ds) -> bool:
    """Whether a slice is one of RSNA-2019's mis-stored images: 12-bit unsigned pixels with
    a RescaleIntercept above -100, whose HU come out ~1000 too high."""
    try:
        return (
            int(ds.get("BitsStored", 16)) == 12
            and int(ds.get("PixelRepresentation", 1)) == 0
            and float(ds.get("RescaleIntercept", -1024)) > -100
        )
    except (TypeError, ValueError):
        return False


def fix_12bit_intercept(stored: np.ndarray):
    """The widely used correction for `needs_12bit_intercept_fix` slices: stored + 1000,
    minus 4096 where that reaches 4096 (the values had wrapped), intercept -1000.

    Args:
      stored: integer array [H, W] of stored pixel values.
    Returns:
      (int32 array [H, W] of corrected stored values, the new intercept -1000.0).
    """
    x = stored.astype(np.int32) + 1000
    x[x >= 4096] -= 4096
    return x, -1000.0


def _hu(ds, path: Path, fix_12bit=False):
    """HU of one slice (int16 [H, W]) and whether `fix_12bit_intercept` was applied."""
    try:
        stored = ds.pixel_array
    except Exception as err:  # pydicom raises many types for bad pixel data
        raise DicomReadError(f"{path}: cannot decode pixel data ({err})") from None
    if stored.ndim != 2:
        raise DicomReadError(f"{path}: expected a 2-D slice, got pixel array {stored.shape}")
    fixed = bool(fix_12bit and needs_12bit_intercept_fix(ds))
    try:
        slope = float(ds.get("RescaleSlope", 1) if ds.get("RescaleSlope") is not None else 1)
        intercept = float(
            ds.get("RescaleIntercept", 0) if ds.get("RescaleIntercept") is not None else 0
        )
    except (TypeError, ValueError):
        raise DicomReadError(f"{path}: RescaleSlope/RescaleIntercept are not numbers") from None
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope <= 0:
        raise DicomReadError(
            f"{path}: RescaleSlope {slope} / RescaleIntercept {intercept}: slope must be > 0 and "
            "both finite"
        )
    pad = ds.get("PixelPaddingValue")
    padding = None if pad is None else stored == pad
    if fixed:
        stored, intercept = fix_12bit_intercept(stored)
    context = f" with RescaleSlope {slope:g}, RescaleIntercept {intercept:g}"
    if slope == 1 and intercept.is_integer():  # the usual case: integer arithmetic, one pass
        hu = stored.astype(np.int32)
        hu += int(intercept)
        if padding is not None:
            hu[padding] = AIR_HU
        top = int(hu.max()) if hu.size else 0
        if not HU_FLOOR <= top <= HU_MAX:
            plausible_hu(np.array([top], np.float32), path, context)  # raises with the message
        np.clip(hu, AIR_HU, HU_MAX, out=hu)
        return hu.astype(np.int16), fixed
    hu = stored.astype(np.float32)
    if slope != 1:
        hu *= np.float32(slope)
    hu += np.float32(intercept)
    if padding is not None:
        hu[padding] = AIR_HU
    return plausible_hu(hu, path, context), fixed


def plausible_hu(hu, source, context=""):
    """Float HU (any shape) -> int16 HU, with anything below air (padding outside the scan
    field of view) set to air.

    Raises:
      DicomReadError naming `source` when the values leave the plausible CT range: a voxel
      above HU_MAX, or no voxel above HU_FLOOR (broken rescale values).
    """
    hu = np.asarray(hu, np.float32)
    top = float(hu.max()) if hu.size else 0.0
    if not np.isfinite(top) or top > HU_MAX or top < HU_FLOOR:
        raise DicomReadError(
            f"{source}: HU reach {top:.0f} (max){context}: "
            f"outside the plausible CT range (some voxel above {HU_FLOOR}, none above {HU_MAX})"
        )
    out = np.clip(hu, AIR_HU, HU_MAX)
    np.rint(out, out=out)
    return out.astype(np.int16)


def _pixel_spacing(ds, path) -> tuple:
    """(row_mm, col_mm) from PixelSpacing; raises DicomReadError unless two numbers > 0."""
    try:
        values = tuple(float(v) for v in ds.PixelSpacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise DicomReadError(
            f"{path}: PixelSpacing must be two numbers > 0 (mm). Received: {ds.get('PixelSpacing')}"
        )
    return values


def _find_gaps(spacings: np.ndarray, median: float):
    gaps, regular = [], np.ones(len(spacings), bool)
    for i, s in enumerate(spacings):
        ratio = s / median
        k = int(round(ratio))
        if k >= 2 and abs(ratio - k) < SPACING_TOLERANCE * k:
            gaps.append((i, k - 1))
            regular[i] = False
    irregular = bool(np.any(np.abs(spacings[regular] / median - 1) > SPACING_TOLERANCE))
    return gaps, irregular


def _shift_axis(image, shift, axis, fill):
    """Linear-interpolation shift of a 2-D array (int16 or float32) along one axis, by
    `shift` pixels (out[x] = image[x - shift]) into a new float32 array; samples from
    outside the image are `fill` (the semantics of scipy.ndimage.shift(order=1,
    mode="constant")). The lines read are runs of the image (views), not gathers."""
    n = image.shape[axis]
    k = int(np.floor(-shift))
    frac = np.float32(-shift - k)
    source = np.arange(n) + k
    inside = np.flatnonzero((source + frac >= -1e-6) & (source + frac <= n - 1 + 1e-6))
    out = np.full(image.shape, fill, np.float32)
    if not inside.size:
        return out
    run = source[inside[0] : inside[-1] + 1]
    dst = out[_along(axis, slice(int(inside[0]), int(inside[-1]) + 1))]
    np.multiply(_lines(image, np.clip(run, 0, n - 1), axis), 1 - frac if frac else 1, out=dst)
    if frac:
        dst += frac * _lines(image, np.clip(run + 1, 0, n - 1), axis)
    return out


def _along(axis, part):
    """An index tuple that applies `part` (a slice) to `axis`."""
    return (slice(None),) * axis + (part,)


def _lines(image, index, axis):
    """`image`'s lines `index` (int array) along `axis`: a view when they are consecutive
    (the usual case), else a copy (clipped at an edge)."""
    if index[-1] - index[0] == len(index) - 1:
        return image[_along(axis, slice(int(index[0]), int(index[-1]) + 1))]
    return np.take(image, index, axis=axis)


def shear_shifts(positions, orientation, pixel_spacing):
    """float64 [S, 2]: the in-plane (row, col) shift, in pixels, that puts each slice's
    origin on the line through the first one along the slice normal."""
    row_dir, col_dir = orientation[:3], orientation[3:]
    d = np.asarray(positions, np.float64) - np.asarray(positions[0], np.float64)
    return np.stack([d @ col_dir / pixel_spacing[0], d @ row_dir / pixel_spacing[1]], axis=1)


def _shear_to_normal(hu, positions, orientation, pixel_spacing, out=None):
    """Shifts each slice in-plane so all slice origins lie on one line along the normal
    (bilinear, air outside; as scipy.ndimage.shift(order=1) but much faster: two separable
    NumPy passes per slice on views of it). Into `out` (int16 like `hu`; `hu` itself
    shears in place), else a new array."""
    out = np.empty_like(hu) if out is None else out
    for i, (shift_rows, shift_cols) in enumerate(
        shear_shifts(positions, orientation, pixel_spacing)
    ):
        moved = _shift_axis(_shift_axis(hu[i], shift_rows, 0, AIR_HU), shift_cols, 1, AIR_HU)
        out[i] = np.rint(moved, out=moved)
    return out


def shear_like(series, stack, fill=0.0):
    """Moves a stack on the series' source grid (a mask drawn on its DICOM pixels) the way
    the tilt correction moved `series.hu` (`series.shear_px`; bilinear, `fill` outside).

    Args:
      series: the `CTSeries` the stack belongs to. stack: array [S, H, W] in the series'
        slice order (e.g. a 0/1 mask or one class's indicator).
    Returns:
      float32 [S, H, W]: the stack itself (as float32) when no tilt was corrected; for a
      binary mask, threshold the result at 0.5.
    """
    out = np.asarray(stack, np.float32)
    if not series.tilt_corrected:
        return out.copy()
    if out.shape[0] != len(series.shear_px):
        raise ValueError(f"stack has {out.shape[0]} slices, the series {len(series.shear_px)}")
    moved = np.full_like(out, fill)
    for k, (m, (dr, dc)) in enumerate(zip(out, series.shear_px)):
        if fill != 0 or m.any():  # a slice of zeros moves to zeros
            moved[k] = _shift_axis(_shift_axis(m, dr, 0, fill), dc, 1, fill)
    return moved


def read_series(
    folder,
    *,
    tilt: str = "correct",
    min_slices: int = 2,
    salt: str | None = None,
    series_uid: str | None = None,
    fix_12bit: bool = False,
    skip_undecodable: bool = False,
    series_policy: SeriesPolicy | None = None,
) -> CTSeries:
    """Reads the axial CT series of a folder (searched recursively) into a HU volume.

    Args:
      folder: path of a folder holding one study (other files and series are skipped), a
        single DICOM file, or a list of DICOM file paths (e.g. one series of a flat
        RSNA-style folder).
      tilt: "correct" (shear slices to remove gantry tilt) or "reject" (raise).
      min_slices: fewest slices accepted (2 by default: a volume needs a slice spacing).
      salt: pseudonymisation salt (default: RADNET_PSEUDONYM_SALT or the project default).
      series_uid: read this SeriesInstanceUID (the policy is then not applied).
      series_policy: which series to read when there are several (default `SeriesPolicy()`).
      fix_12bit: apply `fix_12bit_intercept` to slices that need it (RSNA-2019); the files
        are listed in `corrected_files`.
      skip_undecodable: skip (and list) slices whose pixel data cannot be decoded instead
        of refusing the series; the gap is reported like any missing slice.

    Returns:
      A `CTSeries` with int16 HU voxels [S, H, W].

    Raises:
      DicomReadError: with the folder or file and the reason, for an empty folder, no
        DICOM, truncated or undecodable files, missing pixel data, no axial CT series, too
        few slices, inconsistent matrix sizes or spacing, or a tilted series when
        tilt="reject".
    """
    if tilt not in ("correct", "reject"):
        raise ValueError(f"tilt must be 'correct' or 'reject'. Received: tilt={tilt!r}")
    with counted_uid_warnings() as uids:
        series = _read_series(
            folder, tilt, min_slices, salt, series_uid, fix_12bit, skip_undecodable,
            series_policy,
        )
    series.invalid_uids = uids["invalid_uids"]
    if series.invalid_uids:
        series.warnings.append(uid_line(series.invalid_uids, "this series"))
    return series


def _read_series(
    folder, tilt, min_slices, salt, series_uid, fix_12bit, skip_undecodable, series_policy
):
    """read_series without the UID-warning count (same arguments, same result)."""
    root, files = _list_files(folder)
    series, skipped = _scan(files, root)
    chosen_uid, series_choice = _choose_series(
        series, root, salt, series_uid, series_policy, skipped
    )
    members, pixel_spacing, warnings = _check_members(series[chosen_uid], root, min_slices, skipped)
    orientation = np.asarray(members[0][1].ImageOrientationPatient, np.float64)
    members, along, ipp = _order(members, _normal(orientation))
    hu, members, keep, fixed_names = _decode(
        members, root, min_slices, fix_12bit, skip_undecodable, skipped
    )
    along, ipp = along[keep], ipp[keep]
    first = members[0][1]
    geometry = _geometry(hu, ipp, along, orientation, pixel_spacing, tilt, root, first)
    study_uid = str(first.get("StudyInstanceUID", "")) or chosen_uid
    thickness = first.get("SliceThickness")
    return CTSeries(
        pixel_spacing=pixel_spacing,
        slice_positions=along,
        orientation=orientation,
        study_key=pseudonymize(study_uid, salt),
        series_key=pseudonymize(chosen_uid, salt),
        sop_instance_uids=[str(ds.SOPInstanceUID) for _, ds in members],
        frame_numbers=[_frame_number(ds) for _, ds in members],
        skipped=skipped,
        slice_thickness=float(thickness) if thickness not in (None, "") else float("nan"),
        warnings=warnings,
        corrected_files=fixed_names,
        series_choice=series_choice,
        **geometry,
    )


def _list_files(folder):
    """(root folder, list of file Paths) of a folder (recursively), a file or a file list."""
    if isinstance(folder, (list, tuple)):
        files = [Path(f) for f in folder]
        if not files:
            raise DicomReadError("no files given")
        return files[0].parent, files
    root = Path(folder)
    if not root.exists():
        raise DicomReadError(f"{root}: no such file or folder")
    files = [root] if root.is_file() else list(_iter_files(root))
    if not files:
        raise DicomReadError(f"{root}: folder is empty")
    return root, files


def _scan(files, root):
    """Reads every file's header: ({SeriesInstanceUID: [(path, slice or frame view)]},
    [(name, reason skipped)]). Raises DicomReadError for unreadable files or no series."""
    skipped, series, seen_sops = [], {}, set()
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            skipped.append((path.name, "not a DICOM file"))
            continue
        except Exception as err:  # truncated or corrupt
            raise DicomReadError(
                f"{path}: cannot read DICOM ({type(err).__name__}: {err})"
            ) from None
        for item in _slices_of(ds):  # a classic slice, or each frame of an enhanced CT object
            reason = _skip_reason(item)
            if reason is None and not _is_axial(
                np.asarray(item.ImageOrientationPatient, np.float64)
            ):
                reason = "not an axial slice"
            sop = str(item.get("SOPInstanceUID", ""))
            key = (sop, _frame_number(item))
            if reason is None and sop and key in seen_sops:
                reason = "duplicate SOPInstanceUID (same image stored twice)"
            if reason:
                skipped.append((_name(path, item), reason))
                continue
            seen_sops.add(key)
            series.setdefault(str(item.get("SeriesInstanceUID", "")), []).append((path, item))
    if not series:
        dicom_seen = [r for _, r in skipped if r != "not a DICOM file"]
        if not dicom_seen:
            raise DicomReadError(f"{root}: no DICOM files found ({len(files)} files looked at)")
        reasons = "; ".join(sorted(set(dicom_seen)))
        raise DicomReadError(f"{root}: no axial CT image series (files skipped: {reasons})")
    return series, skipped


def _described(members):
    """(SeriesDescription, ConvolutionKernel, SliceThickness or nan) of a series' first slice."""
    ds = members[0][1]
    thickness = ds.get("SliceThickness")
    try:
        thickness = float(thickness) if thickness not in (None, "") else float("nan")
    except (TypeError, ValueError):
        thickness = float("nan")
    return (
        str(ds.get("SeriesDescription", "") or ""),
        str(ds.get("ConvolutionKernel", "") or ""),
        thickness,
    )


def _choose_series(series, root, salt, series_uid, policy, skipped):
    """(chosen SeriesInstanceUID, series_choice rows). The slices of the other series are
    added to `skipped` with the decision."""
    described = {uid: _described(members) for uid, members in series.items()}
    if series_uid is not None:
        if series_uid not in series:
            raise DicomReadError(f"{root}: series {series_uid} not found")
        chosen_uid = series_uid
        decisions = {
            uid: "another series (series_uid given)" for uid in series if uid != chosen_uid
        }
    else:
        policy = policy or SeriesPolicy()
        decisions = {uid: policy.rejects(*described[uid]) for uid in series}
        passing = [uid for uid, why in decisions.items() if why is None]
        if not passing:
            why = "; ".join(
                f"{described[uid][0] or 'series'}: {decisions[uid]}" for uid in sorted(series)
            )
            raise DicomReadError(f"{root}: no series passes the series policy ({why})")
        chosen_uid = max(
            passing, key=lambda u: (len(series[u]), -np.nan_to_num(described[u][2], nan=0.0))
        )
        for uid in passing:
            if uid != chosen_uid:
                decisions[uid] = "fewer slices than the chosen series"
    rows = []
    for uid in sorted(series, key=lambda u: -len(series[u])):
        description, kernel, thickness = described[uid]
        decision = "chosen" if uid == chosen_uid else decisions[uid]
        rows.append(
            {
                "series_key": pseudonymize(uid, salt),
                "description": description,
                "kernel": kernel,
                "thickness_mm": None if np.isnan(thickness) else round(thickness, 3),
                "slices": len(series[uid]),
                "decision": decision,
            }
        )
        if uid != chosen_uid:
            skipped.extend((_name(p, d), f"another series: {decision}") for p, d in series[uid])
    return chosen_uid, rows


def _check_members(members, root, min_slices, skipped):
    """The slices of the series' most common orientation (others added to `skipped`), their
    pixel spacing [2] and warnings. Raises DicomReadError for too few slices or mixed
    matrix sizes or spacings."""
    if len(members) < min_slices:
        raise DicomReadError(
            f"{root}: series has {len(members)} slice(s); at least {min_slices} needed"
        )
    orients = [
        tuple(np.round(np.asarray(ds.ImageOrientationPatient, np.float64), 3)) for _, ds in members
    ]
    common = max(set(orients), key=orients.count)
    same = [np.allclose(o, common, atol=1e-3) for o in orients]
    skipped.extend(
        (_name(p, d), "orientation differs from the rest of the series")
        for (p, d), ok in zip(members, same)
        if not ok
    )
    members = [m for m, ok in zip(members, same) if ok]
    if len(members) < min_slices:
        raise DicomReadError(
            f"{root}: series has {len(members)} slice(s) of one orientation; at least "
            f"{min_slices} needed"
        )
    first = members[0][1]
    shape = (int(first.Rows), int(first.Columns))
    pixel_spacing = _pixel_spacing(first, _where(*members[0]))
    for path, ds in members:
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise DicomReadError(
                f"{_where(path, ds)}: matrix {ds.Rows}x{ds.Columns} differs from "
                f"the series' {shape[0]}x{shape[1]}"
            )
        if not np.allclose(_pixel_spacing(ds, _where(path, ds)), pixel_spacing, rtol=1e-3):
            raise DicomReadError(
                f"{_where(path, ds)}: pixel spacing differs from the rest of the series"
            )
    warnings = []
    no_rescale = sum("RescaleSlope" not in ds or "RescaleIntercept" not in ds for _, ds in members)
    if no_rescale:
        warnings.append(
            f"{no_rescale} slice(s) without RescaleSlope/RescaleIntercept: "
            "read as slope 1, intercept 0"
        )
    return members, pixel_spacing, warnings


def _order(members, normal):
    """Slices sorted by ImagePositionPatient projected on the slice normal: (members,
    positions along the normal [S] mm, ImagePositionPatient [S, 3])."""
    ipp = np.array([np.asarray(ds.ImagePositionPatient, np.float64) for _, ds in members])
    along = ipp @ normal
    order = np.argsort(along, kind="stable")
    along, ipp = along[order], ipp[order]
    members = [members[i] for i in order]
    if len(members) > 1 and np.any(np.diff(along) < 1e-3):
        dup = _where(*members[int(np.argmin(np.diff(along))) + 1])
        raise DicomReadError(f"{dup}: two slices at the same position")
    return members, along, ipp


def _decode(members, root, min_slices, fix_12bit, skip_undecodable, skipped):
    """Decodes the slices to HU: (int16 [S, H, W], decoded members, their indices in
    `members`, names of 12-bit-corrected files). With `skip_undecodable` an undecodable
    slice is skipped and listed instead of refusing the series. Each slice is written
    straight into one volume (fresh memory is slow to touch on some machines: one volume,
    not a list of slices and then their stack)."""
    volume, fixed_names, keep = None, [], []
    for k, (path, ds) in enumerate(members):
        try:
            values, fixed = _hu(ds, _where(path, ds), fix_12bit)
        except DicomReadError as err:
            if not (skip_undecodable and "cannot decode pixel data" in str(err)):
                raise
            skipped.append((_name(path, ds), "pixel data cannot be decoded"))
            continue
        if volume is None:
            volume = np.empty((len(members),) + values.shape, np.int16)
        elif values.shape != volume.shape[1:]:
            raise DicomReadError(
                f"{_where(path, ds)}: pixel data decode to {values.shape[0]}x{values.shape[1]}, "
                f"the series' first slice to {volume.shape[1]}x{volume.shape[2]}"
            )
        volume[len(keep)] = values
        keep.append(k)
        if fixed:
            fixed_names.append(_name(path, ds))
    if len(keep) < len(members) and len(keep) < max(1, min_slices):
        raise DicomReadError(
            f"{root}: {len(keep)} decodable slice(s) left; at least {max(1, min_slices)} needed"
        )
    return volume[: len(keep)], [members[k] for k in keep], keep, fixed_names


def _geometry(hu, ipp, along, orientation, pixel_spacing, tilt, root, first) -> dict:
    """The CTSeries fields that depend on slice positions: hu (sheared onto an orthogonal
    grid when the gantry was tilted and tilt="correct"), slice_spacing, tilt_deg,
    tilt_corrected, gaps, irregular_spacing, shear_px."""
    out = dict(
        hu=hu,
        tilt_deg=0.0,
        tilt_corrected=False,
        gaps=[],
        irregular_spacing=False,
        shear_px=np.zeros((len(hu), 2)),
    )
    if len(hu) < 2:
        out["slice_spacing"] = float(first.get("SliceThickness", float("nan")) or float("nan"))
        return out
    step = ipp[-1] - ipp[0]
    cos = abs(float(np.dot(step, _normal(orientation)))) / float(np.linalg.norm(step))
    out["tilt_deg"] = float(np.degrees(np.arccos(min(1.0, cos))))
    spacings = np.diff(along)
    out["slice_spacing"] = float(np.median(spacings))
    out["gaps"], out["irregular_spacing"] = _find_gaps(spacings, out["slice_spacing"])
    if out["tilt_deg"] > TILT_TOLERANCE_DEG:
        if tilt == "reject":
            raise DicomReadError(
                f"{root}: gantry tilt of {out['tilt_deg']:.1f} degrees; tilted series are refused "
                "(read with tilt='correct' to shear them onto an orthogonal grid)"
            )
        out["hu"] = _shear_to_normal(hu, ipp, orientation, pixel_spacing, out=hu)
        out["shear_px"] = shear_shifts(ipp, orientation, pixel_spacing)
        out["tilt_corrected"] = True
    return out
