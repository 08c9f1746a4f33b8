"""Several training runs of one recipe on the same records, each scored on the phantom's
held-out studies and on the real-CT gates: a recipe's spread, not one run's luck.

    python benchmarks/seed_runs.py --seeds 0,1,2 --out benchmarks/results/seed_runs.jsonl
        [--config configs/default.yaml] [--shared ../shared/data] [--tag NAME] [key=value ...]

Single CPU runs of the built-in default differ by up to ~0.2 in held-out CT accuracy and
by tens of points in a real series' positive-slice fraction (BENCHMARKS.md), so a change
is judged over seeds. Each seed is one `python -m radnet_tf.train --quiet` process with
`seed=S` and the overrides: the records are made once, by the first, and reused (the same
cohort for all; the seed draws the initial weights, the batches and the 70:30 study
split). It writes `<work_dir>/model_<tag>_seedS` and `<export-root>/<tag>_seedS`
(default `saved_models/`); `benchmarks/real_ct_gates.py` then scores the export (skipped
when the shared data are absent). One JSON line per seed is appended to --out:

  {"tag", "seed", "overrides", "wall_s", "ct_accuracy", "ct_recall", "ct_specificity",
   "ct_auc", "slice_auc", "threshold", "mask_dice" and "mask_threshold" (when the records hold
   masks),
   "gates": [per-case lines of real_ct_gates.py],
   "series_model": {series_slices, scale, sensitivity, specificity, balanced_accuracy}
   (only when the recipe calibrates for a series length: `calibration_series_slices`)}

and a table of every seed and the mean / min / max is printed at the end. A failed
training run stops the script with its exit status.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def held_out_metrics(model_dir: Path) -> dict:
    """The trainer's held-out figures for one seed (`radnet_tf.serving.export.held_out_from`, the
    same the export's metadata carries; undefined metrics are null, not NaN), plus the
    "as N-slice series" figures when the recipe calibrates for a series length."""
    sys.path.insert(0, str(ROOT))
    from radnet_tf.serving.export import held_out_from

    held = held_out_from(model_dir)
    out = {
        "ct_accuracy": held["ct_accuracy"],
        "ct_recall": held["ct_recall"],
        "ct_specificity": held["ct_specificity"],
        "ct_auc": held["ct_roc_auc"],
        "slice_auc": held["slice_roc_auc"],
        "threshold": held["threshold"],
    }
    if (
        "mask_dice" in held
    ):  # held-out Dice of the served lesion mask (records with reference masks)
        out["mask_dice"], out["mask_threshold"] = held["mask_dice"], held.get("mask_threshold")
    info = json.loads((model_dir / "config.json").read_text())
    if info.get("calibration_series_slices"):  # the trainer's "as N-slice series" line
        import pandas as pd

        from radnet_tf.config import config_from_dict
        from radnet_tf.training.train import series_model_metrics

        m = series_model_metrics(pd.read_csv(model_dir / "val_studies.csv"), config_from_dict(info))
        out["series_model"] = {
            k: (None if k != "series_slices" and math.isnan(v) else v) for k, v in m.items()
        }
    return out


def gate_lines(export_dir: Path, shared: Path) -> list:
    """The per-case JSON lines of real_ct_gates.py (gate 1 fractions, gate 2 probabilities)."""
    if not shared.is_dir():
        return []
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "real_ct_gates.py"),
            "--model",
            str(export_dir),
            "--shared",
            str(shared),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def summary(rows: list) -> str:
    """A plain-text table: one row per seed, then mean / min / max of every number."""

    def normal(
        g,
    ):  # a gate-1 series, or a normal series reported but not counted (real_ct_gates.py)
        return g.get("gate") == 1 or g.get("probe") == "normal_not_a_gate"

    series = sorted(
        {
            g.get("series") or g.get("slice")
            for r in rows
            for g in r["gates"]
            if "gate" in g or normal(g)
        }
    )
    cols = ["ct_accuracy", "ct_recall", "ct_specificity", "ct_auc", "slice_auc"]
    if any("series_model" in r for r in rows):  # balanced accuracy as N-slice series
        rows = [
            dict(r, series_bacc=(r.get("series_model") or {}).get("balanced_accuracy"))
            for r in rows
        ]
        cols.append("series_bacc")

    def gate_value(r, name):
        for g in r["gates"]:
            if g.get("series") == name and normal(g):
                return (
                    g["positive_slice_fraction"]
                    if not g["ct_positive"]
                    else -g["positive_slice_fraction"]
                )
            if g.get("slice") == name:
                return g["probability"] if g["passes"] else -g["probability"]
        return float("nan")

    head = ["seed"] + cols + [Path(s).name for s in series]
    lines = ["\t".join(head)]
    table = [
        [math.nan if r[c] is None else r[c] for c in cols] + [gate_value(r, s) for s in series]
        for r in rows
    ]
    for r, vals in zip(rows, table):
        lines.append("\t".join([str(r["seed"])] + [f"{v:.3f}" for v in vals]))
    for name, fn in (("mean", lambda v: sum(v) / len(v)), ("min", min), ("max", max)):
        agg = [
            fn([abs(row[j]) for row in table if not math.isnan(row[j])] or [math.nan])
            for j in range(len(head) - 1)
        ]
        lines.append("\t".join([name] + [f"{v:.3f}" for v in agg]))
    lines.append(
        "gate columns: gate-1 (and not-a-gate normal series) positive-slice fraction (negative "
        "sign: CT "
        "verdict positive); gate-2 probability (negative sign: the case fails)"
    )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", required=True, help="JSON lines, appended")
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--tag", default="default", help="names the model and export folders")
    parser.add_argument(
        "--export-root", default="saved_models", help="exports go to EXPORT_ROOT/<tag>_seed<S>"
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value config overrides, the same for every seed"
    )
    args = parser.parse_args(argv)

    import yaml

    work_dir = Path(yaml.safe_load(Path(args.config).read_text()).get("work_dir", "runs/default"))
    for o in args.overrides:
        if o.startswith("work_dir="):
            work_dir = Path(o.split("=", 1)[1])
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        model_dir = work_dir / f"model_{args.tag}_seed{seed}"
        export_dir = (Path(args.export_root) / f"{args.tag}_seed{seed}").resolve()
        cmd = [
            sys.executable,
            "-m",
            "radnet_tf.train",
            "--quiet",
            "--config",
            args.config,
            "--model-dir",
            str(model_dir),
            *args.overrides,
            f"seed={seed}",
            f"export_dir={export_dir}",
        ]
        print(f"[seed_runs] seed {seed}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if done.returncode:
            raise SystemExit(done.returncode)
        row = {
            "tag": args.tag,
            "seed": seed,
            "overrides": args.overrides,
            "wall_s": round(time.perf_counter() - start, 1),
            **held_out_metrics(model_dir),
            "gates": gate_lines(export_dir, Path(args.shared)),
        }
        rows.append(row)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "gates"}), flush=True)
    print(summary(rows))


if __name__ == "__main__":
    main()
