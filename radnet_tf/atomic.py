"""Atomic writes: a file or folder appears under its final name complete, or not at all.

    with atomic_path(out / "manifest.csv") as tmp:
        frame.to_csv(tmp, index=False)

The temporary name is `.tmp-<pid>-<random>-<name>` beside the target, so it keeps the
target's suffix (Keras insists on `.keras`, h5py on `.h5`), is unique per writer (two
writers of one file each rename a complete file; last one wins) and `clean_stale` can find
the leftovers of a killed run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

TMP_PREFIX = ".tmp-"


def temp_name(path) -> Path:
    """A unique temporary path beside `path` (same folder, same suffix)."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


def _remove(path: Path):
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path; renames it onto `path` when the block ends normally and
    removes it when the block raises. The caller writes a file or a folder at it."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            _remove(path)  # os.replace cannot replace a non-empty folder
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path, text: str):
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_csv(frame, path):
    """Writes a pandas DataFrame as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def clean_stale(folder):
    """Removes temporary files and folders left in `folder` by killed writers."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(f"{TMP_PREFIX}*"):
            _remove(stale)
