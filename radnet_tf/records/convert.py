"""One study -> one record: reader + preprocessing geometry + labels + masks.

Shared by the local and the Apache Beam runners of `radnet_tf.datasets.build`, so both
write identical records. Label files (documented in the README):

  labels.csv        study_id, label            (study_id = folder under the DICOM root)
  slice_labels.csv  study_id, sop_instance_uid, label          (optional)
  masks/<study_id>.npz  mask uint8 [S, H, W], sop_instance_uids [S] (optional; the
                    synthetic cohort's format)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from radnet_tf import atomic, preprocess
from radnet_tf.records import schema as records
from radnet_tf.cli import progress as show_progress
from radnet_tf.io.dicom import read_series, shear_like
from radnet_tf.errors import UserError
from radnet_tf.io.nifti import NiftiStudyTask

SOURCE_FILE = "source.json"  # what built a records folder (geometry, studies, labels)


@dataclasses.dataclass(frozen=True)
class StudyTask:
    """Everything needed to convert one study (picklable for multiprocessing and Beam)."""

    study_id: str
    dicom_dir: str  # a study folder, or "" when `files` lists the series' files
    label: int
    slice_labels: dict | None = None  # SOPInstanceUID -> 0/1
    mask_path: str | None = None
    slice_subtypes: dict | None = None  # SOPInstanceUID -> 5 ints (contract.SUBTYPES order)
    files: tuple | None = None  # the series' DICOM files (flat layouts such as RSNA)
    fix_12bit: bool = False  # dicom_io.fix_12bit_intercept where needed (RSNA-2019)
    skip_undecodable: bool = False  # drop slices whose pixels cannot be decoded
    series_policy: str = ""  # dicom_io.SeriesPolicy.parse text; "" = the default policy
    study_subtypes: tuple | None = None  # 5 ints for the whole study (e.g. CQ500 reads)
    manifest: tuple = ()  # (column, value) pairs copied into the manifest row (e.g. reads)


def load_slice_subtypes(slice_labels_csv):
    """Per-slice subtype labels from a slice label CSV with EDH, IPH, IVH, SAH, SDH columns
    -> {study_id: {sop_instance_uid: (5 ints)}}; {} when the columns are absent."""
    import pandas as pd

    from radnet_tf.contract import SUBTYPES

    table = pd.read_csv(slice_labels_csv, dtype={"study_id": str, "sop_instance_uid": str})
    if not set(SUBTYPES) <= set(table.columns):
        return {}
    out = {}
    for sid, group in table.groupby("study_id"):
        out[sid] = {
            u: tuple(int(v) for v in row)
            for u, row in zip(group["sop_instance_uid"], group[list(SUBTYPES)].to_numpy())
        }
    return out


def load_label_tables(labels_csv, slice_labels_csv=None):
    """Reads the label CSVs -> ({study_id: label}, {study_id: {sop_uid: label}})."""
    import pandas as pd

    try:
        table = pd.read_csv(labels_csv, dtype={"study_id": str})
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read labels file {labels_csv}: {err}") from None
    missing = {"study_id", "label"} - set(table.columns)
    if missing:
        raise UserError(f"{labels_csv}: missing column(s) {sorted(missing)}")
    bad = ~table["label"].isin([0, 1])
    if bad.any():
        raise UserError(
            f"{labels_csv}: label must be 0 or 1 (row {int(np.argmax(bad.values)) + 2})"
        )
    labels = dict(zip(table["study_id"], table["label"].astype(int)))
    per_slice = {}
    if slice_labels_csv:
        try:
            st = pd.read_csv(slice_labels_csv, dtype={"study_id": str, "sop_instance_uid": str})
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read slice labels file {slice_labels_csv}: {err}") from None
        missing = {"study_id", "sop_instance_uid", "label"} - set(st.columns)
        if missing:
            raise UserError(f"{slice_labels_csv}: missing column(s) {sorted(missing)}")
        for sid, group in st.groupby("study_id"):
            per_slice[sid] = dict(zip(group["sop_instance_uid"], group["label"].astype(int)))
    return labels, per_slice


@dataclasses.dataclass(frozen=True)
class ImageStudyTask:
    """A study made of pre-windowed 2D images (PNG/JPEG), e.g. from a public dataset.

    Attributes:
      study_id: the user's id (a study_id column, else the image path).
      image_paths: slice images in slice order; mask_paths: same length or None.
      slice_labels: per-slice 0/1. window: (center, width) the images were rendered with.
      pixel_spacing: mm per pixel if known, else None (the image is taken to span the FOV).
    """

    study_id: str
    image_paths: tuple
    slice_labels: tuple
    window: tuple
    pixel_spacing: float | None = None
    mask_paths: tuple | None = None

    @property
    def label(self):
        return int(max(self.slice_labels))


def image_tasks(images_csv, images_root, window, pixel_spacing=None):
    """Reads an image labels CSV -> list of ImageStudyTask.

    CSV columns: `image` (path under images_root), `label` (0/1); optional `mask` (mask
    image path, nonzero = blood), `study_id` and `slice_index` (group images into studies,
    ordered by slice_index). Without study_id every image is a one-slice study.
    """
    import pandas as pd

    try:
        table = pd.read_csv(images_csv, dtype={"study_id": str, "image": str, "mask": str})
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read image labels {images_csv}: {err}") from None
    missing = {"image", "label"} - set(table.columns)
    if missing:
        raise UserError(f"{images_csv}: missing column(s) {sorted(missing)}")
    if "study_id" not in table.columns:
        table["study_id"] = table["image"]
    if "slice_index" not in table.columns:
        table["slice_index"] = 0
    root = Path(images_root)
    tasks = []
    for sid, group in table.groupby("study_id", sort=True):
        group = group.sort_values("slice_index", kind="stable")
        masks = None
        if "mask" in group.columns and group["mask"].notna().all():
            masks = tuple(str(root / m) for m in group["mask"])
        tasks.append(
            ImageStudyTask(
                str(sid),
                tuple(str(root / i) for i in group["image"]),
                tuple(int(v) for v in group["label"]),
                tuple(float(v) for v in window),
                pixel_spacing,
                masks,
            )
        )
    return tasks


def _read_image(path):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read image ({err})") from None


def convert_image_study(task: ImageStudyTask, pcfg: preprocess.PreprocessConfig, salt=None):
    """Pre-windowed images -> one record (HU recovered from the declared window)."""
    from radnet_tf.io.dicom import pseudonymize

    pixels = [_read_image(p) for p in task.image_paths]
    if len({p.shape for p in pixels}) != 1:
        raise UserError(f"study {task.study_id}: images differ in size")
    stack = np.stack(pixels)
    hu = hu_from_rendered(stack, *task.window).numpy()
    width = stack.shape[2]
    spacing = task.pixel_spacing or pcfg.fov_mm / width
    image, center = preprocess.resample_hu(hu, (spacing, spacing), pcfg)
    mask = None
    if task.mask_paths:
        mask_stack = np.stack([(_read_image(p) > 0).astype(np.uint8) for p in task.mask_paths])
        mask = preprocess.resample_mask(mask_stack, (spacing, spacing), center, pcfg).numpy()
    key = pseudonymize(f"image-study:{task.study_id}", salt)
    record = records.encode_study(
        study_key=key,
        image=image.numpy(),
        mask=mask,
        slice_labels=np.array(task.slice_labels, np.int64),
        label=task.label,
        spacing=(pcfg.out_spacing, pcfg.out_spacing, float("nan")),
        slice_positions=np.arange(len(pixels), dtype=np.float32),
        rendered_window=task.window,
    )
    row = {
        "study_id": task.study_id,
        "study_key": key,
        "label": task.label,
        "num_slices": len(pixels),
        "positive_slices": int(sum(task.slice_labels)),
        "has_mask": mask is not None,
        "pixel_spacing_mm": float(spacing),
        "slice_spacing_mm": float("nan"),
        "tilt_deg": 0.0,
        "gaps": 0,
        "bytes": len(record),
        "rendered_window": "{:g}/{:g}".format(*task.window),
    }
    return record, row


def convert_nifti_study(task, pcfg: preprocess.PreprocessConfig, salt=None):
    """A `nifti.NiftiStudyTask` -> one record (labels from the slice CSV, else the mask)."""
    from radnet_tf.io import nifti
    from radnet_tf.io.dicom import pseudonymize

    hu, spacing, positions, stored = nifti.read_volume(task.volume_path)
    image, center = preprocess.resample_hu(hu, spacing, pcfg)
    mask = mask_classes = None
    classes = nifti.read_mask(task.mask_path, hu.shape) if task.mask_path else None
    with_classes = classes is not None and task.has_classes(classes)
    if classes is not None:
        mask = preprocess.resample_mask(
            (classes > 0).astype(np.uint8), spacing, center, pcfg
        ).numpy()
        if with_classes:
            mask_classes = resample_classes(classes, spacing, center, pcfg)
    n = hu.shape[0]
    if task.slice_rows is not None:
        if stored is None:
            raise UserError(
                f"{task.volume_path}: slices are not stored along the third axis; cannot map "
                "SliceNumber"
            )
        rows = [task.slice_rows.get(int(k), (-1,) * (1 + records.NUM_SUBTYPES)) for k in stored]
        slice_labels = np.array([r[0] for r in rows], np.int64)
        subtypes = np.array([r[1:] for r in rows], np.int64)
    else:
        slice_labels = (classes.reshape(n, -1).max(axis=1) > 0).astype(np.int64)
        subtypes = None
        if with_classes or not classes.any():  # no blood: no blood of any type either
            subtypes = np.stack(
                [
                    (classes == k + 1).reshape(n, -1).any(axis=1)
                    for k in range(records.NUM_SUBTYPES)
                ],
                1,
            )
            subtypes = subtypes.astype(np.int64)
    label = int(slice_labels.max() > 0)
    key = pseudonymize(f"nifti-study:{task.study_id}", salt)
    spacing_z = float(np.median(np.diff(positions))) if n > 1 else float("nan")
    record = records.encode_study(
        study_key=key,
        image=image.numpy(),
        mask=mask,
        slice_labels=slice_labels,
        label=label,
        spacing=(pcfg.out_spacing, pcfg.out_spacing, spacing_z),
        slice_positions=positions,
        slice_subtypes=subtypes,
        mask_classes=mask_classes,
    )
    row = {
        "study_id": task.study_id,
        "study_key": key,
        "label": label,
        "num_slices": n,
        "positive_slices": int((slice_labels == 1).sum()),
        "has_mask": mask is not None,
        "pixel_spacing_mm": float(spacing[0]),
        "slice_spacing_mm": spacing_z,
        "tilt_deg": 0.0,
        "gaps": 0,
        "bytes": len(record),
        "matrix": f"{hu.shape[1]}x{hu.shape[2]}",
    }
    return record, row


def convert_study(task: StudyTask, pcfg: preprocess.PreprocessConfig, salt=None):
    """Converts one study (a DICOM `StudyTask` or an `ImageStudyTask`).

    Returns:
      (serialised record bytes, manifest row dict without patient identifiers).
    Raises:
      DicomReadError (a UserError) when the study cannot be read.
    """
    if isinstance(task, ImageStudyTask):
        return convert_image_study(task, pcfg, salt)
    if isinstance(task, NiftiStudyTask):
        return convert_nifti_study(task, pcfg, salt)
    from radnet_tf.io.dicom import SeriesPolicy

    policy = SeriesPolicy.parse(task.series_policy) if task.series_policy else None
    with _unpacked(task.dicom_dir) as folder:
        series = read_series(  # one slice is a study too (RSNA-style single slices)
            list(task.files) if task.files else folder,
            min_slices=1,
            salt=salt,
            fix_12bit=task.fix_12bit,
            skip_undecodable=task.skip_undecodable,
            series_policy=policy,
        )
    if (task.mask_path or task.slice_labels or task.slice_subtypes) and any(
        series.frame_numbers or ()
    ):
        raise UserError(
            f"{task.study_id}: per-slice labels and masks are keyed by SOPInstanceUID, which "
            "cannot "
            "tell the frames of a multi-frame (enhanced CT) object apart; give study-level labels "
            "only"
        )
    hu, center = preprocess.resample_hu(series.hu, series.pixel_spacing, pcfg)
    mask, mask_classes = _study_masks(task, series, center, pcfg)
    slice_labels, subtypes = _slice_targets(task, series)
    record = records.encode_study(
        study_key=series.study_key,
        image=hu.numpy(),
        mask=mask,
        slice_labels=slice_labels,
        label=task.label,
        spacing=(pcfg.out_spacing, pcfg.out_spacing, series.slice_spacing),
        slice_positions=series.slice_positions,
        slice_subtypes=subtypes,
        study_subtypes=task.study_subtypes,
        mask_classes=mask_classes,
    )
    row = {
        "study_id": task.study_id,
        "study_key": series.study_key,
        "label": int(task.label),
        "num_slices": series.num_slices,
        "positive_slices": int((slice_labels == 1).sum()),
        "has_mask": mask is not None,
        "pixel_spacing_mm": float(series.pixel_spacing[0]),
        "slice_spacing_mm": float(series.slice_spacing),
        "tilt_deg": round(series.tilt_deg, 3),
        "gaps": len(series.gaps),
        "bytes": len(record),
        "matrix": f"{series.hu.shape[1]}x{series.hu.shape[2]}",
        "skipped_files": len(series.skipped),
        "corrected_files": len(series.corrected_files),
        "invalid_uids": series.invalid_uids,
        "series": _series_text([c for c in series.series_choice if c["decision"] == "chosen"]),
        "series_rejected": _series_text(
            [c for c in series.series_choice if c["decision"] != "chosen"], True
        ),
        **dict(task.manifest),
    }
    return record, row


def _study_masks(task, series, center, pcfg):
    """(lesion mask bool [S, N, N] or None, class mask int [S, N, N] or None) of a DICOM
    study task's `.npz` mask, matched to the series by SOPInstanceUID and resampled like
    its voxels (a tilted series' mask is sheared with them)."""
    if not task.mask_path:
        return None, None
    with np.load(task.mask_path) as npz:
        src_mask, uids = npz["mask"], [str(u) for u in npz["sop_instance_uids"]]
        src_classes = npz["mask_classes"] if "mask_classes" in npz.files else None
    index = {u: i for i, u in enumerate(uids)}
    try:
        order = [index[u] for u in series.sop_instance_uids]
    except KeyError:
        raise UserError(f"{task.mask_path}: mask slices do not match the DICOM series") from None
    mask = _on_marked_slices(
        lambda m: preprocess.resample_mask(m, series.pixel_spacing, center, pcfg).numpy(),
        shear_like(series, src_mask[order] > 0),
        pcfg.out_size,
    )
    if src_classes is None:
        return mask, None
    classes = _on_marked_slices(
        lambda c: resample_classes(c, series.pixel_spacing, center, pcfg),
        sheared_classes(series, src_classes[order]),
        pcfg.out_size,
    )
    return mask, classes


def _on_marked_slices(resample, stack, size):
    """uint8 [S, size, size]: `resample` (array [K, H, W] -> [K, size, size]) applied to
    the slices of `stack` [S, H, W] with a nonzero pixel; the others resample to zeros."""
    marked = np.flatnonzero(np.asarray(stack).reshape(len(stack), -1).any(axis=1))
    out = np.zeros((len(stack), size, size), np.uint8)
    if marked.size:
        out[marked] = resample(stack[marked])
    return out


def _classes_present(classes):
    """The nonzero class numbers in a class mask (non-negative integers), ascending."""
    counts = np.bincount(np.asarray(classes).ravel())
    return [int(k) for k in np.flatnonzero(counts) if k]


def _slice_targets(task, series):
    """(slice labels int64 [S]: 1, 0 or -1 unknown; subtype labels int64 [S, 5] or None)."""
    if task.slice_labels:
        labels = [task.slice_labels.get(u, -1) for u in series.sop_instance_uids]
        slice_labels = np.array(labels, np.int64)
    elif task.label == 0:
        slice_labels = np.zeros(
            series.num_slices, np.int64
        )  # a negative study has no positive slice
    else:
        slice_labels = np.full(series.num_slices, -1, np.int64)  # unknown
    if not task.slice_subtypes:
        return slice_labels, None
    unknown = (-1,) * records.NUM_SUBTYPES
    subtypes = [task.slice_subtypes.get(u, unknown) for u in series.sop_instance_uids]
    return slice_labels, np.array(subtypes, np.int64)


def sheared_classes(series, classes):
    """A class mask (numpy [S, H, W], 0 background) on the source grid, moved like the
    series' pixels by its tilt correction (`dicom_io.shear_like`, each class as a binary
    mask; a pixel takes the class of largest weight when >= 0.5); uint8 [S, H, W]. The
    mask itself when the series was not tilted."""
    if not series.tilt_corrected:
        return np.asarray(classes, np.uint8)
    present = _classes_present(classes)
    if not present:
        return np.zeros(np.shape(classes), np.uint8)
    weights = np.stack([shear_like(series, np.equal(classes, k)) for k in present], -1)
    best = np.asarray(present, np.uint8)[np.argmax(weights, -1)]
    return np.where(weights.max(-1) >= 0.5, best, 0).astype(np.uint8)


def resample_classes(classes, pixel_spacing, center, pcfg):
    """A class mask (numpy [S, H, W]) on the model grid, resampling only the classes it
    holds; numpy uint8 [S, N, N]."""
    present = _classes_present(classes)
    return preprocess.resample_class_mask(classes, pixel_spacing, center, pcfg, present).numpy()


def _series_text(choices, with_reason=False):
    parts = []
    for c in choices:
        name, kernel = c["description"] or "series", c["kernel"] or "?"
        text = f"{name} [{kernel}, {c['thickness_mm']} mm, {c['slices']} slices]"
        parts.append(f"{text}: {c['decision']}" if with_reason else text)
    return "; ".join(parts)


@contextlib.contextmanager
def _unpacked(path):
    """A study folder as is, or a study .zip extracted to a temporary folder (removed after)."""
    if not (path and str(path).lower().endswith(".zip")):
        yield path
        return
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory(prefix="radnet-zip-") as tmp:
        try:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as err:
            raise UserError(f"{path}: cannot unpack ({err})") from None
        yield tmp


def folder_tasks(dicom_root, labels_csv, slice_labels_csv=None, masks_dir=None):
    """The study-folder layout (one folder per study + label CSVs) -> (tasks, skipped):
    `load_label_tables`, `load_slice_subtypes` and `discover_tasks` in one call."""
    labels, per_slice = load_label_tables(labels_csv, slice_labels_csv)
    subtypes = load_slice_subtypes(slice_labels_csv) if slice_labels_csv else {}
    return discover_tasks(dicom_root, labels, per_slice, masks_dir, subtypes)


def discover_tasks(dicom_root, labels, per_slice=None, masks_dir=None, subtypes=None):
    """Matches label rows to study folders (immediate subfolders of `dicom_root`).

    Returns:
      (list of StudyTask sorted by study_id, list of (study_id, reason) skipped rows).
    """
    root = Path(dicom_root)
    if not root.is_dir():
        raise UserError(f"DICOM root not found: {dicom_root}")
    folders = {
        p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")
    }
    tasks, skipped = [], []
    for sid in sorted(set(labels) | set(folders)):
        if sid not in folders:
            skipped.append((sid, "label row has no DICOM folder"))
            continue
        if sid not in labels:
            skipped.append((sid, "DICOM folder has no label row"))
            continue
        mask_path = None
        if masks_dir and (Path(masks_dir) / f"{sid}.npz").is_file():
            mask_path = str(Path(masks_dir) / f"{sid}.npz")
        tasks.append(
            StudyTask(
                sid,
                str(folders[sid]),
                int(labels[sid]),
                (per_slice or {}).get(sid),
                mask_path,
                (subtypes or {}).get(sid),
            )
        )
    return tasks, skipped


def hu_from_rendered(pixels, window_center, window_width, max_value=255.0):
    """Inverts a display window: rendered 8-bit pixels -> approximate HU (float32)."""
    pixels = tf.cast(pixels, tf.float32)
    return window_center - window_width / 2.0 + pixels / max_value * window_width


# ----------------------------------------------------------------------------- local runner

MANIFEST_COLUMNS = [
    "study_id",
    "study_key",
    "status",
    "reason",
    "shard",
    "label",
    "num_slices",
    "positive_slices",
    "has_mask",
    "pixel_spacing_mm",
    "slice_spacing_mm",
    "tilt_deg",
    "gaps",
    "bytes",
    "matrix",
    "skipped_files",
    "corrected_files",
    "series",
    "series_rejected",
]


def _init_worker():
    """One TF thread per worker process: the processes are the parallelism, and several
    workers each running a full thread pool on the same cores only contend."""
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _convert_shard(args):
    """Worker: converts the studies of one shard and writes it atomically."""
    shard_path, tasks, pcfg = args
    part_path = f"{shard_path}.manifest.csv"
    if os.path.exists(shard_path) and os.path.exists(part_path):
        return part_path  # complete from an earlier run
    serialized, rows = [], []
    for task in tasks:
        try:
            record, row = convert_study(task, pcfg)
        except UserError as err:
            rows.append({"study_id": task.study_id, "status": "skipped", "reason": str(err)})
            continue
        serialized.append(record)
        rows.append(
            {**row, "status": "written", "reason": "", "shard": os.path.basename(shard_path)}
        )
    records.write_shard(shard_path, serialized)
    atomic.write_csv(manifest_frame(rows), part_path)
    return part_path


def manifest_frame(rows):
    """Manifest rows (dicts) -> DataFrame: MANIFEST_COLUMNS first, then any extra columns
    (e.g. a data set's per-reader reads)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    return frame.reindex(
        columns=MANIFEST_COLUMNS + [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    )


def write_manifest(out, frames, pcfg, skipped_rows, extra=None):
    """Combines manifest parts and skipped rows into manifest.csv and manifest.json
    (`extra`: more JSON-friendly entries for manifest.json, e.g. a layout's defect counts)."""
    import pandas as pd

    skipped = pd.DataFrame(
        [{"study_id": sid, "status": "skipped", "reason": why} for sid, why in skipped_rows],
        columns=MANIFEST_COLUMNS,
    )
    table = pd.concat([f for f in frames + [skipped] if len(f)], ignore_index=True)
    more = [c for c in table.columns if c not in MANIFEST_COLUMNS]  # e.g. per-reader reads
    table = table.reindex(columns=MANIFEST_COLUMNS + more).sort_values("study_id", kind="stable")
    out = Path(out)
    atomic.write_csv(table, out / "manifest.csv")
    written = table[table.status == "written"]
    summary = {
        "studies_written": int(len(written)),
        "studies_skipped": int((table.status == "skipped").sum()),
        "positives": int((written.label == 1).sum()),
        "negatives": int((written.label == 0).sum()),
        "slices": int(written.num_slices.sum()),
        "pixel_spacing_mm": written.pixel_spacing_mm.describe().round(4).to_dict()
        if len(written)
        else {},
        "slice_spacing_mm": written.slice_spacing_mm.describe().round(4).to_dict()
        if len(written)
        else {},
        "geometry": {"out_spacing": pcfg.out_spacing, "fov_mm": pcfg.fov_mm, "size": pcfg.out_size},
        "digest": hashlib.sha256((out / "manifest.csv").read_bytes()).hexdigest()[:16],
        "corrected_files": int(
            pd.to_numeric(written.get("corrected_files"), errors="coerce").fillna(0).sum()
        )
        if len(written)
        else 0,
        "skipped_files_in_series": int(
            pd.to_numeric(written.get("skipped_files"), errors="coerce").fillna(0).sum()
        )
        if len(written)
        else 0,
        "invalid_uid_values": int(
            pd.to_numeric(written["invalid_uids"], errors="coerce").fillna(0).sum()
        )
        if "invalid_uids" in written.columns
        else 0,
        "rendered_windows": sorted(written.rendered_window.dropna().astype(str).unique())
        if "rendered_window" in written.columns
        else [],
        **(extra or {}),
    }
    atomic.write_text(out / "manifest.json", json.dumps(summary, indent=2))
    return table, summary


def build_source(pcfg, tasks, extra=None) -> dict:
    """What a records folder is built from: record schema, grid geometry and a digest of
    the studies and their labels (ids, study and slice labels, which have masks; not
    paths, so the same input from another working directory matches). JSON-friendly."""
    studies = []
    for t in tasks:
        if isinstance(t, NiftiStudyTask):
            studies.append(
                [
                    t.study_id,
                    "nifti",
                    bool(t.mask_path),
                    sorted((t.slice_rows or {}).items()),
                    t.mask_kind,
                ]
            )
        elif isinstance(t, ImageStudyTask):
            studies.append(
                [
                    t.study_id,
                    list(t.slice_labels),
                    list(t.window),
                    t.pixel_spacing,
                    bool(t.mask_paths),
                ]
            )
        else:
            slices = sorted((t.slice_labels or {}).items())
            subtypes = sorted((t.slice_subtypes or {}).items())
            studies.append(
                [
                    t.study_id,
                    int(t.label),
                    slices,
                    bool(t.mask_path),
                    subtypes,
                    t.fix_12bit,
                    t.series_policy,
                    list(t.study_subtypes or ()),
                ]
            )
    digest = hashlib.sha256(json.dumps(studies, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "schema_version": records.SCHEMA_VERSION,
        "geometry": {
            "out_spacing": pcfg.out_spacing,
            "fov_mm": pcfg.fov_mm,
            "out_size": pcfg.out_size,
        },
        "studies": len(studies),
        "studies_digest": digest,
        **(extra or {}),
    }


def claim_output(out, source: dict):
    """Makes `out` a records folder of `source`, or refuses one built from other input.

    A rerun into the same folder with the same input resumes (complete shards are kept);
    with another grid, other studies or other labels it raises instead of mixing records.

    Raises:
      UserError: `out` holds records of another source, or shards of an unknown build.
    """
    out = Path(out)
    path = out / SOURCE_FILE
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except ValueError:
            found = None
        if found != source:
            diff = sorted(
                k for k in set(source) | set(found or {}) if (found or {}).get(k) != source.get(k)
            )
            raise UserError(
                f"{out} holds records built from other input ({', '.join(diff) or SOURCE_FILE} "
                "differ); "
                "use another --out or delete the folder"
            )
        return
    if out.exists() and any(out.glob(f"*{records.SHARD_SUFFIX}")):
        raise UserError(
            f"{out} holds shards without {SOURCE_FILE} (unknown build); use another --out or "
            "delete them"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(source, indent=2, sort_keys=True))


def run_local(
    tasks,
    skipped_rows,
    out,
    shards,
    workers,
    pcfg,
    progress=True,
    source_extra=None,
    manifest_extra=None,
):
    """Converts with a process pool; resumable. Returns (manifest table, summary).

    `out` records its source (`build_source`, plus `source_extra`); a rerun with the same
    source keeps complete shards, one with another source is refused (`claim_output`).
    """
    import multiprocessing as mp

    import pandas as pd

    out = Path(out)
    claim_output(out, build_source(pcfg, tasks, source_extra))
    shards = max(1, min(shards, len(tasks))) if tasks else 1
    jobs = [
        (str(out / records.shard_name(i, shards)), tasks[i::shards], pcfg) for i in range(shards)
    ]
    atomic.clean_stale(out)  # leftovers of a killed run
    if workers <= 1:
        parts = [
            _convert_shard(job)
            for job in show_progress(jobs, progress, len(jobs), "shards", "shard")
        ]
    else:
        ctx = mp.get_context("spawn")  # TF is not fork-safe
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            parts = list(
                show_progress(
                    pool.imap_unordered(_convert_shard, jobs),
                    progress,
                    len(jobs),
                    "shards",
                    "shard",
                )
            )
    frames = [pd.read_csv(p, dtype={"study_id": str}) for p in sorted(parts)]
    return write_manifest(out, frames, pcfg, skipped_rows, manifest_extra)
