"""The built-in default's training step under CPU runtime settings, side by side.

    python benchmarks/train_settings.py [--records runs/default/records-168px-1.5mm]
        [--steps 12] [--rounds 2] [--only as_train,no_determinism,...] [--set key=value ...]

One process per setting and round (TensorFlow reads its thread and oneDNN settings once,
at start-up), the settings alternating round by round so that a noisy machine slows all:

  as_train        as `python -m radnet_tf.train` runs: op determinism on, TF's default
                  thread pools;
  no_determinism  without `tf.config.experimental.enable_op_determinism()`;
  inter_op_1      one inter-op thread (intra-op: TF's default);
  intra_op_1      one intra-op thread;
  onednn_off      TF_ENABLE_ONEDNN_OPTS=0 (TensorFlow's own CPU kernels).

Each process builds the default model (`configs/default.yaml`, seed 0), fits 3 steps on the
records (tracing), then times `--steps` more in one `fit`. Prints one JSON line per setting
and round (seconds per step), then one per setting with its best time and the ratio
as_train / setting (> 1: the setting is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "as_train": {},
    "no_determinism": {"determinism": False},
    "inter_op_1": {"inter_op": 1},
    "intra_op_1": {"intra_op": 1},
    "onednn_off": {"env": {"TF_ENABLE_ONEDNN_OPTS": "0"}},
}


def measure(records, steps, setting, overrides):
    """Seconds per training step of the default model under `setting` (SETTINGS)."""
    import keras
    import tensorflow as tf

    from radnet_tf.config import load_config
    from radnet_tf.records import dataset as data
    from radnet_tf.training.train import build_and_compile

    spec = SETTINGS[setting]
    tf.config.threading.set_inter_op_parallelism_threads(spec.get("inter_op", 0))
    tf.config.threading.set_intra_op_parallelism_threads(spec.get("intra_op", 0))
    keras.utils.set_random_seed(0)
    if spec.get("determinism", True):
        tf.config.experimental.enable_op_determinism()
    cfg = load_config("default", overrides)
    files = data.list_shards(records)
    model = build_and_compile(cfg, cfg.steps_per_epoch)
    ds = data.train_dataset(files, cfg, cfg.batch_size, balance=data.balance_of(
        data.count_studies(files, cfg)))  # fmt: skip
    model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)
    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - start) / steps


def _run(setting, args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **SETTINGS[setting].get("env", {}))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", setting]
    cmd += ["--records", args.records, "--steps", str(args.steps)]
    cmd += [f"--set={o}" for o in args.set]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", default=str(ROOT / "runs/default/records-168px-1.5mm"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default=",".join(SETTINGS))
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(measure(args.records, args.steps, args.measure, args.set))
        return
    if not (Path(args.records) / "manifest.json").is_file():
        sys.exit(f"train_settings: no records at {args.records} (run `make run` or --records)")
    only = [s for s in SETTINGS if s in args.only.split(",")]
    best = {}
    for r in range(args.rounds):
        for setting in only:
            s = _run(setting, args)
            best[setting] = min(s, best.get(setting, s))
            print(json.dumps(dict(bench="train_step", setting=setting, round=r, seconds=s)))
    for setting in only:
        print(json.dumps(dict(
            bench="train_settings", setting=setting, steps=args.steps, rounds=args.rounds,
            best_seconds_per_step=round(best[setting], 3), cpus=os.cpu_count(),
            ratio_as_train_vs_setting=round(best["as_train"] / best[setting], 3)
            if "as_train" in best else None,
        )))  # fmt: skip


if __name__ == "__main__":
    main()
