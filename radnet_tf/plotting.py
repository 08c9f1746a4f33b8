"""Small matplotlib helpers shared by inspect, predict and evaluate (headless, atomic)."""

from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid_indices(num_slices, max_slices, max_cols=8):
    """(slice indices evenly spread over the study, columns, rows) for a slice grid."""
    idx = np.linspace(0, num_slices - 1, min(num_slices, max_slices)).round().astype(int)
    cols = min(max_cols, len(idx))
    return idx, cols, int(np.ceil(len(idx) / cols))


def save_figure(fig, path, dpi=80):
    """Writes a figure to `path` atomically (temporary file, then rename) and closes it."""
    from radnet_tf import atomic

    try:
        with atomic.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        pyplot().close(fig)
