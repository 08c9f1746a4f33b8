"""pydicom's warnings about non-conformant UIDs, counted instead of printed.

pydicom warns once per invalid UI value it reads ("Invalid value for VR UI: '<uid>'"). Some
public sets use non-DICOM UIDs throughout (RSNA-2019: `ID_<hex>` as SOPInstanceUID, series
and study UIDs), which made hundreds of thousands of warning lines, each quoting a UID.
Readers run inside `counted_uid_warnings()` and report one counted line instead; every
other warning passes through unchanged.
"""

from __future__ import annotations

import contextlib
import warnings

UID_WARNING = "Invalid value for VR UI"


@contextlib.contextmanager
def counted_uid_warnings():
    """Context manager yielding a dict {"invalid_uids": int}, filled in on exit with the
    number of UID warnings raised inside; other warnings are re-issued."""
    counter = {"invalid_uids": 0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield counter
        finally:
            others = [w for w in caught if not str(w.message).startswith(UID_WARNING)]
            counter["invalid_uids"] = len(caught) - len(others)
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def uid_line(count: int, where: str) -> str:
    """The one line that reports `count` non-conformant UID values read in `where`."""
    return (
        f"{count:,} non-conformant UID values in {where} (DICOM UIDs are digits and dots; "
        "read as they are, pydicom's per-value warnings not printed)"
    )
