"""The whole `make run` job at an older commit and at HEAD, side by side on this machine.

    python benchmarks/job_side_by_side.py [--baseline 7f89139] [--rounds 1]
        [--set key=value ...]

Each commit is checked out into a fresh git worktree and runs `python -m radnet_tf.train
--quiet` (the job `make run` starts, in this checkout's Python environment) with an empty
phantom and atlas cache (`RADNET_CACHE`) and its own work and export folders: the cohort is
drawn, converted, trained on, calibrated, evaluated and exported from nothing, as after a
fresh clone. The trees alternate round by round. Commit first: HEAD is what runs.

Prints one JSON line per run (seconds, the job's own wall-time and held-out lines), then
one with the best time of each tree and the ratio this / baseline (< 1: HEAD is faster).
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


def _git(*args):
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def run_job(tree, work, overrides):
    """(seconds, the job's report lines) of one `python -m radnet_tf.train` in `tree`."""
    env = dict(
        os.environ, PYTHONPATH=str(tree), RADNET_CACHE=str(work / "cache"), TF_CPP_MIN_LOG_LEVEL="3"
    )
    cmd = [sys.executable, "-m", "radnet_tf.train", "--quiet"]
    cmd += [f"work_dir={work / 'runs'}", f"export_dir={work / 'export'}", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"job_side_by_side: the job failed in {tree}:\n{proc.stderr[-2000:]}")
    lines = (proc.stdout + proc.stderr).splitlines()
    keep = ("wall time", "held-out", "threshold")
    return seconds, [line for line in lines if any(k in line for k in keep)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="7f89139", help="commit to compare with")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args(argv)
    commits = {"baseline": _git("rev-parse", "--short", args.baseline)}
    commits["this"] = _git("rev-parse", "--short", "HEAD")
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {name: Path(tmp) / name for name in commits}
        for name, tree in trees.items():
            _git("worktree", "add", "--detach", str(tree), commits[name])
        try:
            for r in range(args.rounds):
                for name, tree in trees.items():
                    s, report = run_job(tree, Path(tmp) / f"work-{name}-{r}", args.set)
                    best[name] = min(s, best.get(name, s))
                    print(json.dumps(dict(bench="job", tree=name, commit=commits[name],
                                          round=r, seconds=round(s, 1), report=report)),
                          flush=True)  # fmt: skip
        finally:
            for tree in trees.values():
                _git("worktree", "remove", "--force", str(tree))
    print(json.dumps(dict(
        bench="job_side_by_side", rounds=args.rounds, overrides=args.set, **{
            f"{k}_commit": v for k, v in commits.items()},
        baseline_seconds=round(best["baseline"], 1), this_seconds=round(best["this"], 1),
        ratio_this_vs_baseline=round(best["this"] / best["baseline"], 3), cpus=os.cpu_count(),
    )))  # fmt: skip


if __name__ == "__main__":
    main()
