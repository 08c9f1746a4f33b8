"""Phases of the built-in default against an older commit, side by side on this machine.

    python benchmarks/side_by_side.py [--baseline 7f89139] [--studies 24] [--rounds 2]
        [--only synth,convert,end,read] [--records runs/default/records-168px-1.5mm]
        [--set key=value ...] [--series DICOM_FOLDER]

Checks the baseline commit out into a temporary git worktree and times, in one process per
tree and measurement, alternating the trees round by round (a noisy machine slows both):

  synth    drawing and writing phantom studies as `make run` does (512 x 512 x 16,
           `generate_cohort`, one process): seconds per study;
  convert  converting one phantom cohort (made once, by this tree) to records on the
           default config's grid (`convert_study`, one process): seconds per study;
  end      the end of a run, calibration and held-out evaluation (`make run`'s phases
           after training) of the default model (initial weights, seed 0) on `--records`
           (default: the records `make run` wrote), config `default` with `--set`
           overrides: seconds per study in the records;
  read     `read_series` on `--series` (a DICOM folder), best of three in one process:
           seconds per series.

Prints one JSON line per tree, measurement and round, then one per measurement with the
best time of each tree and the ratio baseline / this tree (> 1: this tree is faster).
Both trees use this checkout's Python environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tree_module(name, before_layout):
    """This tree's module `name` (radnet_tf.<stage>.<module>), or `before_layout` in commits
    before the package layout (no radnet_tf/<stage>/ folder)."""
    import importlib

    import radnet_tf

    stage = Path(radnet_tf.__file__).parent / name.split(".")[1]
    return importlib.import_module(name if stage.is_dir() else before_layout)


def measure_synth(studies, work):
    gen = _tree_module("radnet_tf.phantom.generate", "radnet_tf.synth")
    cfg = gen.SynthConfig(matrix=512, num_slices=16)
    gen.generate_cohort(Path(work) / "warm", 1, seed=99, cfg=cfg)  # the atlas, read once
    start = time.perf_counter()
    gen.generate_cohort(Path(work) / "cohort", studies, seed=0, cfg=cfg)
    return (time.perf_counter() - start) / studies


def measure_convert(cohort):
    from radnet_tf.config import load_config

    convert = _tree_module("radnet_tf.records.convert", "radnet_tf.convert")
    # the built-in default's grid (configs/default.yaml): 168 px at 1.5 mm
    pcfg = load_config(None, ["input_size=168", "out_spacing=1.5"]).preprocess_config()
    cohort = Path(cohort)
    tasks, _ = convert.folder_tasks(
        cohort / "dicom", cohort / "labels.csv", cohort / "slice_labels.csv", cohort / "masks"
    )
    convert.convert_study(tasks[0], pcfg)  # TensorFlow's first call
    start = time.perf_counter()
    for task in tasks:
        convert.convert_study(task, pcfg)
    return (time.perf_counter() - start) / len(tasks)


def measure_end(arg):
    """Seconds per study of calibrating and evaluating a default model on records, as this
    tree's `train()` does after training (one pass where the tree has one)."""
    import keras

    from radnet_tf.config import load_config

    records, *overrides = arg.split("|")
    train = _tree_module("radnet_tf.training.train", "radnet_tf.train")
    data = _tree_module("radnet_tf.records.dataset", "radnet_tf.data")
    cfg = load_config("configs/default.yaml", [o for o in overrides if o])
    files = data.list_shards(records)
    counts = data.count_studies(files, cfg)
    predicted = counts["calibration" if cfg.calibration_fraction else "train"]
    predicted += counts["validation"]
    keras.utils.set_random_seed(0)
    model = train.build_and_compile(cfg, 1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        if hasattr(train, "predict_for_thresholds"):
            preds = train.predict_for_thresholds(model, files, cfg)
            train.calibrate_thresholds(model, files, cfg, preds[train.calibration_split(cfg)])
            train.evaluate_model(model, files, cfg, out, preds["validation"])
        else:
            train.calibrate_thresholds(model, files, cfg)
            train.evaluate_model(model, files, cfg, out)
    return (time.perf_counter() - start) / predicted


def measure_read(folder):
    dicom = _tree_module("radnet_tf.io.dicom", "radnet_tf.dicom_io")
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        dicom.read_series(folder)
        best = min(best, time.perf_counter() - start)
    return best


def _run_in(tree, what, arg):
    """Seconds per study of one measurement, in a fresh process importing `tree`'s code."""
    env = dict(os.environ, PYTHONPATH=str(tree), TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", what, "--arg", str(arg)],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def _commit(tree):
    return subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


BENCHES = ("synth", "convert", "end", "read")


def compare(baseline, studies, rounds, only, records=None, overrides=(), series=None):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), baseline],
            check=True,
            capture_output=True,
        )
        try:
            trees = {"baseline": base, "this": ROOT}
            commits = {k: _commit(v) for k, v in trees.items()}
            if "convert" in only:
                _run_in(ROOT, "synth", f"{studies}:{tmp / 'data'}")  # the cohort to convert
            args = {"convert": tmp / "data/cohort", "end": "|".join([str(records), *overrides])}
            args["read"] = series
            best = {}
            for r in range(rounds):
                for what in [w for w in BENCHES if w in only]:
                    for name, tree in trees.items():
                        arg = f"{studies}:{tmp / name / str(r)}" if what == "synth" else args[what]
                        s = _run_in(tree, what, arg)
                        best[what, name] = min(s, best.get((what, name), s))
                        print(
                            json.dumps(
                                dict(
                                    bench=what,
                                    tree=name,
                                    commit=commits[name],
                                    round=r,
                                    seconds_per_study=round(s, 4),
                                )
                            )
                        )
            for what in [w for w in BENCHES if w in only]:
                b, t = best[what, "baseline"], best[what, "this"]
                print(json.dumps(dict(
                    bench=f"{what}_side_by_side", studies=studies, rounds=rounds,
                    baseline=commits["baseline"], this=commits["this"],
                    baseline_seconds_per_study=round(b, 4), this_seconds_per_study=round(t, 4),
                    ratio_baseline_vs_this=round(b / t, 3), cpus=os.cpu_count(),
                )))  # fmt: skip
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                capture_output=True,
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="7f89139", help="commit to compare with")
    parser.add_argument("--studies", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="synth,convert", help="of synth,convert,end,read")
    parser.add_argument("--series", help="DICOM series folder for `read`")
    parser.add_argument(
        "--records",
        default=str(ROOT / "runs/default/records-168px-1.5mm"),
        help="records for `end` (default: those `make run` wrote)",
    )
    parser.add_argument(
        "--set", action="append", default=[], help="config override for `end`: key=value"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--arg", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure == "synth":
        n, work = args.arg.split(":", 1)
        Path(work).mkdir(parents=True, exist_ok=True)
        print(measure_synth(int(n), work))
    elif args.measure == "convert":
        print(measure_convert(args.arg))
    elif args.measure == "end":
        print(measure_end(args.arg))
    elif args.measure == "read":
        print(measure_read(args.arg))
    else:
        only = args.only.split(",")
        if "end" in only and not (Path(args.records) / "manifest.json").is_file():
            sys.exit(f"side_by_side: no records at {args.records} (run `make run` or --records)")
        if "read" in only and not (args.series and Path(args.series).is_dir()):
            sys.exit(f"side_by_side: `read` needs --series DICOM_FOLDER (got {args.series})")
        compare(args.baseline, args.studies, args.rounds, only, args.records, args.set, args.series)


if __name__ == "__main__":
    main()
