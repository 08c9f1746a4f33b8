"""`python -m radnet_tf.inspect_series DICOM_DIR [--out DIR]`: what reader and preprocessing did.

(Named `inspect_series`, not `inspect`: a module named `inspect` shadows the standard
library's when the package folder is on sys.path.)

Prints the series found (slices, matrix, spacing, tilt, gaps, irregular spacing, skipped
files and why) and, with --out, writes `montage.png`: the preprocessed slices (brain
window, 1 mm, 250 mm FOV) as a grid. Nothing identifying is printed: the study is named
by its pseudonymous key.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radnet_tf.cli import add_verbose, cli_main, say


def write_montage(path, slices, max_slices=64, title=""):
    """slices float [S, N, N] in [0, 1] -> PNG grid (atomic write)."""
    from radnet_tf.plotting import grid_indices, pyplot, save_figure

    plt = pyplot()
    idx, cols, rows = grid_indices(len(slices), max_slices)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), idx):
        ax.imshow(slices[i], cmap="gray", vmin=0, vmax=1)
        ax.set_title(str(i), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m radnet_tf.inspect_series", description=__doc__.split("\n")[0]
    )
    add_verbose(parser)
    parser.add_argument("dicom_dir")
    parser.add_argument("--out", help="folder for montage.png")
    parser.add_argument("--tilt", choices=["correct", "reject"], default="correct")
    parser.add_argument("--min-slices", type=int, default=1)
    parser.add_argument("--config", help="YAML config for the preprocessing geometry")
    args = parser.parse_args(argv)

    from radnet_tf.config import load_config
    from radnet_tf.io.dicom import read_series

    series = read_series(args.dicom_dir, tilt=args.tilt, min_slices=args.min_slices)
    info = series.summary()
    info["hu_range"] = [int(series.hu.min()), int(series.hu.max())]
    info["skipped"] = [{"file": f, "reason": r} for f, r in series.skipped]
    print(json.dumps(info, indent=2))
    if args.out:
        from radnet_tf import preprocess

        pcfg = load_config(args.config).preprocess_config()
        slices = preprocess.preprocess_study(series.hu, series.pixel_spacing, pcfg).numpy()[..., 0]
        Path(args.out).mkdir(parents=True, exist_ok=True)
        path = Path(args.out) / "montage.png"
        write_montage(path, slices, title=f"study {series.study_key}: {series.num_slices} slices")
        say(f"wrote {path}", err=True)


if __name__ == "__main__":
    main()
