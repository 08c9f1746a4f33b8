"""`python -m radnet_tf.synth` / `radnet-synth`: write a synthetic head-CT cohort as DICOM.

    radnet-synth --out DIR --studies N --seed S [--layout folders|rsna|cq500|nifti]

The cohort is `radnet_tf.phantom.generate`'s; the public data-set layouts are
`radnet_tf.phantom.layouts`'.
"""

from __future__ import annotations

import argparse
import time

from radnet_tf.cli import add_verbose, cli_main, say
from radnet_tf.errors import UserError
from radnet_tf.phantom.generate import SynthConfig, generate_cohort
from radnet_tf.phantom.layouts import write_layout


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m radnet_tf.synth", description="Write a synthetic head-CT cohort as DICOM."
    )
    add_verbose(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--studies", type=int, default=20, help="number of studies (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--slices", type=int, default=SynthConfig.num_slices, help="slices per study"
    )
    parser.add_argument("--matrix", type=int, default=SynthConfig.matrix, help="in-plane matrix")
    parser.add_argument(
        "--thickness",
        type=float,
        nargs=2,
        default=SynthConfig.slice_thickness_range,
        metavar=("MIN", "MAX"),
    )
    parser.add_argument("--positive-fraction", type=float, default=SynthConfig.positive_fraction)
    parser.add_argument(
        "--tilt-fraction",
        type=float,
        default=SynthConfig.tilt_fraction,
        help=f"fraction of studies acquired with gantry tilt (default {SynthConfig.tilt_fraction})",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes (the cohort does not depend on it)"
    )
    parser.add_argument(
        "--layout",
        default="folders",
        choices=["folders", "rsna", "cq500", "nifti"],
        help="folders: one folder per study + labels.csv (default); rsna: the RSNA-2019 flat "
        "layout with its known defects planted; cq500: zips/folders with several series and "
        "reads.csv; nifti: volumes + masks + slice CSV (radnet_tf.phantom.layouts)",
    )
    args = parser.parse_args(argv)
    if args.studies < 1 or args.slices < 1 or args.matrix < 32:
        raise UserError("--studies and --slices must be >= 1 and --matrix >= 32")
    if not 0 <= args.positive_fraction <= 1:
        raise UserError(f"--positive-fraction must be in [0, 1], got {args.positive_fraction}")
    if not 0 <= args.tilt_fraction <= 1:
        raise UserError(f"--tilt-fraction must be in [0, 1], got {args.tilt_fraction}")
    cfg = SynthConfig(
        matrix=args.matrix,
        num_slices=args.slices,
        slice_thickness_range=tuple(args.thickness),
        tilt_fraction=args.tilt_fraction,
        positive_fraction=args.positive_fraction,
    )
    start = time.perf_counter()
    if args.layout != "folders":
        write_layout(args.out, args.layout, args.studies, args.seed, cfg)
        say(
            f"wrote {args.studies} studies in the {args.layout} layout to {args.out} in "
            f"{time.perf_counter() - start:.1f} s"
        )
        return
    rows = generate_cohort(
        args.out, args.studies, args.seed, cfg, progress=True, workers=max(1, args.workers)
    )
    positives = sum(r[1] for r in rows)
    elapsed = time.perf_counter() - start
    say(f"wrote {len(rows)} studies ({positives} positive) to {args.out} in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
