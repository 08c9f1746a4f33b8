"""The RSNA Intracranial Hemorrhage Detection (2019) layout -> conversion tasks.

    stage_2_train/ID_<hex>.dcm ...     one flat folder of single-slice DICOM files
    stage_2_train.csv                  ID,Label with six rows per image:
                                       ID_<hex>_epidural, _intraparenchymal,
                                       _intraventricular, _subarachnoid, _subdural, _any

Steps:
  1. `index_headers`: one pass over the headers (no pixel data) -> a table with one row per
     file: image id, study/series UIDs, position along the slice normal, matrix, the
     12-bit-intercept flag, or why the file cannot be used. Written in parts under
     `OUT/index/` as it goes, so a killed run resumes and a rerun reuses it.
  2. `load_labels`: the six-rows-per-image CSV -> one row per image, columns by name
     (EDH, IPH, IVH, SAH, SDH, any); duplicate rows are dropped and counted.
  3. `series_tasks`: files grouped by StudyInstanceUID + SeriesInstanceUID, one
     `convert.StudyTask` per series (the reader orders slices by ImagePositionPatient),
     per-slice labels for "any" and the five subtypes, study label = any slice positive;
     unlabelled series (the test set) are skipped and counted.

Known defects of the data set are handled and counted (`RsnaReport`), never fatal: files
that fail to parse, images stored 12-bit unsigned with RescaleIntercept > -100
(`dicom_io.fix_12bit_intercept`, flagged per file in the index), matrices other than
512 x 512 (kept, counted), duplicate positions and undecodable pixel data (per series, in
the manifest), label rows without a file, files without label rows, duplicate label rows.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from radnet_tf import atomic
from radnet_tf.cli import progress as show_progress
from radnet_tf.contract import SUBTYPES
from radnet_tf.errors import UserError
from radnet_tf.io.uid_warnings import counted_uid_warnings

# RSNA label names -> our names (columns are mapped by name, never by position).
LABEL_NAMES = {
    "epidural": "EDH",
    "intraparenchymal": "IPH",
    "intraventricular": "IVH",
    "subarachnoid": "SAH",
    "subdural": "SDH",
    "any": "any",
}
INDEX_COLUMNS = [
    "file",
    "image_id",
    "status",
    "reason",
    "study_uid",
    "series_uid",
    "sop_uid",
    "position",
    "rows",
    "columns",
    "fix_12bit",
    "invalid_uids",
]
INDEX_PART_FILES = 5000  # files per index part (the unit of resumption)
_TAGS = [
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
    "BitsStored",
    "PixelRepresentation",
    "RescaleIntercept",
    "Modality",
]


@dataclasses.dataclass
class RsnaReport:
    """Counts of the data set's known defects met by one conversion (JSON-friendly)."""

    files: int = 0
    unparsable_files: int = 0
    files_12bit_corrected: int = 0
    non_512_matrix_files: int = 0
    label_rows_without_file: int = 0
    files_without_label_rows: int = 0
    duplicate_label_rows: int = 0
    unlabelled_series: int = 0
    series: int = 0
    non_conformant_uid_values: int = 0  # e.g. `ID_<hex>` UIDs (pydicom's warnings, counted)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def header_row(path: Path, root: Path) -> dict:
    """One index row from a file's header (pixel data is not read); `invalid_uids` counts
    its non-conformant UID values."""
    row = {"file": str(path.relative_to(root)), "image_id": path.stem, "status": "ok", "reason": ""}
    with counted_uid_warnings() as uids:
        _read_header(path, row)
    row["invalid_uids"] = uids["invalid_uids"]
    return row


def _read_header(path: Path, row: dict):
    """Fills `row` from the file's header (status "unparsable" with the reason when it
    cannot be read or lacks the geometry)."""
    import pydicom

    from radnet_tf.io.dicom import needs_12bit_intercept_fix

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        orientation = np.asarray(ds.ImageOrientationPatient, np.float64)
        normal = np.cross(orientation[:3], orientation[3:])
        row.update(
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            sop_uid=str(ds.SOPInstanceUID),
            position=float(
                np.asarray(ds.ImagePositionPatient, np.float64) @ (normal / np.linalg.norm(normal))
            ),
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            fix_12bit=bool(needs_12bit_intercept_fix(ds)),
        )
    except Exception as err:  # any header pydicom cannot read or that lacks the geometry
        row.update(status="unparsable", reason=f"{type(err).__name__}: {err}"[:200])


def _index_part(args):
    root, files, out_path = args
    import pandas as pd

    rows = [header_row(root / f, root) for f in files]
    atomic.write_csv(pd.DataFrame(rows, columns=INDEX_COLUMNS), out_path)
    return out_path


def index_headers(root, out_dir, workers=1, progress=False):
    """Header index of every `*.dcm` under `root` (flat or nested), resumable.

    Parts are written to `out_dir/index/part-NNNNN.csv` (INDEX_PART_FILES files each) with
    a `files.json` listing the files in order; a rerun over the same files keeps the
    complete parts and indexes only the rest.

    Returns:
      pandas DataFrame with INDEX_COLUMNS, one row per file, in file-name order.
    """
    import pandas as pd

    root, index_dir = Path(root), Path(out_dir) / "index"
    if not root.is_dir():
        raise UserError(f"RSNA image folder not found: {root}")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.dcm"))
    if not files:
        raise UserError(f"{root}: no .dcm files")
    index_dir.mkdir(parents=True, exist_ok=True)
    listing = index_dir / "files.json"
    if listing.exists() and json.loads(listing.read_text()) != files:
        for stale in index_dir.glob("part-*.csv"):  # other files than last time: start over
            stale.unlink()
    atomic.write_text(listing, json.dumps(files))
    atomic.clean_stale(index_dir)
    chunks = [files[i : i + INDEX_PART_FILES] for i in range(0, len(files), INDEX_PART_FILES)]
    jobs = [(root, chunk, index_dir / f"part-{i:05d}.csv") for i, chunk in enumerate(chunks)]
    todo = [job for job in jobs if not job[2].exists()]
    if todo:
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                done = pool.imap_unordered(_index_part, todo)
                for _ in show_progress(done, progress, len(todo), "index", "part"):
                    pass
        else:
            for job in show_progress(todo, progress, len(todo), "index", "part"):
                _index_part(job)
    frames = [
        pd.read_csv(
            job[2],
            dtype={
                "file": str,
                "image_id": str,
                "study_uid": str,
                "series_uid": str,
                "sop_uid": str,
            },
        )
        for job in jobs
    ]
    return pd.concat(frames, ignore_index=True)


def load_labels(labels_csv):
    """The six-rows-per-image label CSV -> (DataFrame indexed by image id with columns
    EDH, IPH, IVH, SAH, SDH, any (0/1), number of duplicate rows dropped).

    Raises:
      UserError: unreadable file, missing ID/Label columns, unknown label names, labels
        other than 0/1, or an image with contradicting duplicate rows.
    """
    import pandas as pd

    try:
        table = pd.read_csv(labels_csv, dtype={"ID": str})
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read RSNA labels {labels_csv}: {err}") from None
    if not {"ID", "Label"} <= set(table.columns):
        raise UserError(f"{labels_csv}: needs the columns ID,Label (RSNA stage_2_train.csv)")
    parts = table["ID"].str.rsplit("_", n=1, expand=True)
    if parts.shape[1] != 2:
        raise UserError(f"{labels_csv}: IDs must look like ID_<hex>_<label name>")
    table = table.assign(image_id=parts[0], name=parts[1].map(LABEL_NAMES))
    unknown = sorted(set(parts[1][table["name"].isna()]))
    if unknown:
        raise UserError(
            f"{labels_csv}: unknown label names {unknown[:5]} (expected {sorted(LABEL_NAMES)})"
        )
    if not table["Label"].isin([0, 1]).all():
        raise UserError(f"{labels_csv}: Label must be 0 or 1")
    before = len(table)
    table = table.drop_duplicates(["image_id", "name", "Label"])
    duplicates = before - len(table)
    if table.duplicated(["image_id", "name"]).any():
        bad = table.loc[table.duplicated(["image_id", "name"]), "image_id"].iloc[0]
        raise UserError(f"{labels_csv}: contradicting label rows for {bad}")
    wide = table.pivot(index="image_id", columns="name", values="Label")
    missing = [c for c in (*SUBTYPES, "any") if c not in wide.columns]
    if missing:
        raise UserError(f"{labels_csv}: no rows for {missing}")
    wide = wide[[*SUBTYPES, "any"]].fillna(-1).astype(int)
    return wide, duplicates


def label_map(labels) -> dict:
    """`load_labels` table -> {image id: (EDH, IPH, IVH, SAH, SDH, any)} (picklable, for
    workers and Beam)."""
    if labels is None:
        return {}
    return {
        i: tuple(int(v) for v in row)
        for i, row in zip(labels.index, labels[[*SUBTYPES, "any"]].to_numpy())
    }


def series_task(root, rows, labels: dict):
    """The `convert.StudyTask` of one series from its index rows (dicts) and `label_map`
    labels; None when none of its images has label rows (e.g. the test set)."""
    from radnet_tf.records.convert import StudyTask

    rows = sorted(rows, key=lambda r: (float(r["position"]), r["file"]))
    known = [r for r in rows if r["image_id"] in labels]
    if not known:
        return None
    slice_any = {r["sop_uid"]: labels[r["image_id"]][-1] for r in known}
    subtypes = {r["sop_uid"]: labels[r["image_id"]][:-1] for r in known}
    return StudyTask(
        study_id=f"{rows[0]['study_uid']}/{rows[0]['series_uid']}",
        dicom_dir="",
        label=int(max(slice_any.values()) > 0),
        slice_labels=slice_any,
        slice_subtypes=subtypes,
        files=tuple(str(Path(root) / r["file"]) for r in rows),
        fix_12bit=True,
        skip_undecodable=True,
    )


def series_tasks(root, index, labels, report: RsnaReport | None = None):
    """One `convert.StudyTask` per labelled series of the index.

    Args:
      root: the RSNA image folder. index: `index_headers` table. labels: `load_labels`
        table (or None for unlabelled data, which is then skipped). report: filled in.
    Returns:
      (list of StudyTask sorted by study_id, list of (study_id, reason) skipped rows).
      study_id is "<StudyInstanceUID>/<SeriesInstanceUID>".
    """
    report = report if report is not None else RsnaReport()
    ok = index[index.status == "ok"]
    bad = index[index.status != "ok"]
    labels_by_id = label_map(labels)
    report.files = int(len(index))
    report.unparsable_files = int(len(bad))
    uids = index["invalid_uids"] if "invalid_uids" in index.columns else []
    report.non_conformant_uid_values = int(np.nansum(np.asarray(uids, np.float64)))
    report.files_12bit_corrected = int(ok.fix_12bit.astype(bool).sum())
    report.non_512_matrix_files = int(((ok["rows"] != 512) | (ok["columns"] != 512)).sum())
    report.label_rows_without_file = len(set(labels_by_id) - set(index.image_id))
    report.files_without_label_rows = len(set(ok.image_id) - set(labels_by_id))
    skipped = [
        (f"file {f}", f"unparsable DICOM header ({r})") for f, r in zip(bad.file, bad.reason)
    ]
    tasks = []
    for (study_uid, series_uid), group in ok.groupby(["study_uid", "series_uid"], sort=True):
        report.series += 1
        task = series_task(root, group.to_dict("records"), labels_by_id)
        if task is None:
            report.unlabelled_series += 1
            skipped.append(
                (f"{study_uid}/{series_uid}", "no label rows (unlabelled, e.g. the test set)")
            )
        else:
            tasks.append(task)
    return tasks, skipped


def write_index_table(index, out_dir):
    """The index as one table beside the records: Parquet when pyarrow is there, else CSV."""
    out = Path(out_dir)
    try:
        import pyarrow  # noqa: F401

        with atomic.atomic_path(out / "rsna_index.parquet") as tmp:
            index.to_parquet(tmp, index=False)
        return out / "rsna_index.parquet"
    except ImportError:
        atomic.write_csv(index, out / "rsna_index.csv")
        return out / "rsna_index.csv"
