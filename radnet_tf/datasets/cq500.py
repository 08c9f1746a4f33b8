"""The CQ500 layout (qure.ai) -> conversion tasks.

    ROOT/CQ500-CT-<n>.zip              one zip per study (read without unpacking it all), or
    ROOT/CQ500-CT-<n>/...              the study unpacked (any depth; the zips unpack to
                                       "CQ500CT<n> CQ500CT<n>/Unknown Study/CT <descr>/")
    reads.csv                          name, Category, R1:ICH, R1:IPH, ... R3:MidlineShift

Several series per study (plain 5 mm, thin 0.625 mm, bone kernel, ...): the reader picks
one by a stated `dicom_io.SeriesPolicy` (`--series-policy`; default soft-tissue
reconstructions of 0.5-5.5 mm, most slices), and the manifest names the chosen series and
every rejected one with the reason.

Labels come from the three readers, per finding (ICH and the five subtypes), by a stated
rule (`--reads-label`): `majority` (at least 2 of 3, the usual CQ500 reference),
`any-reader`, or one reader (`R1`, `R2`, `R3`). Every reader's value for every finding is
copied into the manifest (`R1:ICH`, ...) for the reader-comparison table. CQ500 has no
slice labels: slices of a positive study are unknown (-1), of a negative study 0; the five
subtypes are study-level.
"""

from __future__ import annotations

import re
from pathlib import Path

from radnet_tf.contract import SUBTYPES
from radnet_tf.errors import UserError

FINDINGS = ("ICH", *SUBTYPES)
READERS = ("R1", "R2", "R3")
READS_LABELS = ("majority", "any-reader", *READERS)
_NAME = re.compile(r"CQ500[-_ ]?CT[-_ ]?(\d+)", re.IGNORECASE)


def study_name(path) -> str | None:
    """ "CQ500-CT-<n>" for a study folder or zip name (CQ500-CT-12, CQ500CT12 CQ500CT12,
    CQ500-CT-12.zip), else None."""
    match = _NAME.search(Path(path).name)
    return f"CQ500-CT-{int(match.group(1))}" if match else None


def load_reads(reads_csv, rule="majority"):
    """reads.csv -> DataFrame indexed by study name with one 0/1 column per finding
    (FINDINGS) by `rule`, plus every reader's raw column (`R1:ICH`, ...).

    Raises:
      UserError: unreadable file, no `name` column, a reader column missing, values other
        than 0/1, or an unknown rule.
    """
    import pandas as pd

    if rule not in READS_LABELS:
        raise UserError(f"--reads-label must be one of {READS_LABELS}. Received: {rule!r}")
    try:
        reads = pd.read_csv(reads_csv)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read CQ500 reads {reads_csv}: {err}") from None
    if "name" not in reads.columns:
        raise UserError(f"{reads_csv}: needs a 'name' column (CQ500 reads.csv)")
    columns = [f"{r}:{f}" for r in READERS for f in FINDINGS]
    missing = [c for c in columns if c not in reads.columns]
    if missing:
        raise UserError(f"{reads_csv}: missing reader column(s) {missing[:4]}")
    if not reads[columns].isin([0, 1]).all().all():
        raise UserError(f"{reads_csv}: reader columns must be 0 or 1")
    reads = reads.drop_duplicates("name").set_index("name")
    out = reads[columns].astype(int).copy()
    for finding in FINDINGS:
        votes = reads[[f"{r}:{finding}" for r in READERS]].astype(int)
        if rule == "majority":
            out[finding] = (votes.sum(axis=1) >= 2).astype(int)
        elif rule == "any-reader":
            out[finding] = votes.max(axis=1)
        else:
            out[finding] = votes[f"{rule}:{finding}"]
    return out


def study_tasks(root, reads, series_policy=""):
    """One `convert.StudyTask` per CQ500 study (folder or zip) under `root` with a reads row.

    Returns:
      (tasks sorted by study name, skipped (study_id, reason) rows: studies without reads,
      reads without a study).
    """
    from radnet_tf.records.convert import StudyTask

    root = Path(root)
    if not root.is_dir():
        raise UserError(f"CQ500 folder not found: {root}")
    found = {}
    for entry in sorted(root.iterdir()):
        name = study_name(entry)
        if name and (entry.is_dir() or entry.suffix.lower() == ".zip"):
            found.setdefault(name, entry)  # an unpacked folder and its zip: the first wins
    tasks, skipped = [], []
    for name in sorted(set(found) | set(reads.index), key=lambda n: (len(n), n)):
        if name not in found:
            skipped.append((name, "reads row has no study folder or zip"))
            continue
        if name not in reads.index:
            skipped.append((name, "study has no reads row"))
            continue
        row = reads.loc[name]
        label = int(row["ICH"])
        tasks.append(
            StudyTask(
                study_id=name,
                dicom_dir=str(found[name]),
                label=label,
                series_policy=series_policy,
                study_subtypes=tuple(int(row[t]) for t in SUBTYPES),
                manifest=tuple((c, int(row[c])) for c in row.index if ":" in c),
            )
        )
    return tasks, skipped
