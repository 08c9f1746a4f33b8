"""One study -> one record: reader + preprocessing geometry + labels + masks.

Shared by the local and the Apache Beam runners of `pipelines.build_tfrecords`, so both
write identical records. Label files (documented in the README):

  labels.csv        study_id, label            (study_id = folder under the DICOM root)
  slice_labels.csv  study_id, sop_instance_uid, label          (optional)
  masks/<study_id>.npz  mask uint8 [S, H, W], sop_instance_uids [S] (optional; the
                    synthetic cohort's format)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf

from radnet_tf import preprocess, records
from radnet_tf.dicom_io import read_series
from radnet_tf.errors import UserError


@dataclasses.dataclass(frozen=True)
class StudyTask:
    """Everything needed to convert one study (picklable for multiprocessing and Beam)."""

    study_id: str
    dicom_dir: str
    label: int
    slice_labels: dict | None = None  # SOPInstanceUID -> 0/1
    mask_path: str | None = None


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
        raise UserError(f"{labels_csv}: label must be 0 or 1 (row {int(np.argmax(bad.values)) + 2})")
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


def convert_study(task: StudyTask, pcfg: preprocess.PreprocessConfig, salt=None):
    """Converts one study.

    Returns:
      (serialised record bytes, manifest row dict without patient identifiers).
    Raises:
      DicomReadError (a UserError) when the study cannot be read.
    """
    series = read_series(task.dicom_dir, salt=salt)
    hu, center = preprocess.resample_hu(series.hu, series.pixel_spacing, pcfg)
    mask = None
    if task.mask_path:
        with np.load(task.mask_path) as npz:
            src_mask, uids = npz["mask"], [str(u) for u in npz["sop_instance_uids"]]
        index = {u: i for i, u in enumerate(uids)}
        try:
            ordered = np.stack([src_mask[index[u]] for u in series.sop_instance_uids])
        except KeyError:
            raise UserError(f"{task.mask_path}: mask slices do not match the DICOM series") from None
        mask = preprocess.resample_mask(ordered, series.pixel_spacing, center, pcfg).numpy()
    if task.slice_labels:
        slice_labels = np.array([task.slice_labels.get(u, -1) for u in series.sop_instance_uids], np.int64)
    elif task.label == 0:
        slice_labels = np.zeros(series.num_slices, np.int64)  # a negative study has no positive slice
    else:
        slice_labels = np.full(series.num_slices, -1, np.int64)  # unknown
    record = records.encode_study(
        study_key=series.study_key,
        image=hu.numpy(),
        mask=mask,
        slice_labels=slice_labels,
        label=task.label,
        spacing=(pcfg.out_spacing, pcfg.out_spacing, series.slice_spacing),
        slice_positions=series.slice_positions,
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
    }
    return record, row


def discover_tasks(dicom_root, labels, per_slice=None, masks_dir=None):
    """Matches label rows to study folders (immediate subfolders of `dicom_root`).

    Returns:
      (list of StudyTask sorted by study_id, list of (study_id, reason) skipped rows).
    """
    root = Path(dicom_root)
    if not root.is_dir():
        raise UserError(f"DICOM root not found: {dicom_root}")
    folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
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
            StudyTask(sid, str(folders[sid]), int(labels[sid]), (per_slice or {}).get(sid), mask_path)
        )
    return tasks, skipped


def hu_from_rendered(pixels, window_center, window_width, max_value=255.0):
    """Inverts a display window: rendered 8-bit pixels -> approximate HU (float32)."""
    pixels = tf.cast(pixels, tf.float32)
    return window_center - window_width / 2.0 + pixels / max_value * window_width
