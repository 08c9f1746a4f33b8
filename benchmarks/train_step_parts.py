"""What a training step of the built-in default costs, part by part, in one process.

    python benchmarks/train_step_parts.py [--rounds 3] [--steps 3] [--set key=value ...]

Times `train_on_batch` on one fixed random batch (the default's 8 windows of 4 slices,
its windows as channels, a tenth of each mask's pixels blood) for the default model and
for variants that leave a part out or change the input, built side by side in one process
and timed round-robin (`--steps` steps per arm and round), so a noisy machine slows all:

  default     `configs/default.yaml` as `make run` trains it (Adam);
  no_heads    `variant: densenet`: no auxiliary heads and no BiLSTM (nor their losses);
  no_lstm     `variant: densenet_a`: the heads, no BiLSTM;
  input_128   128 x 128 input (2 mm grid) instead of the default's;
  batch_16    16 windows per step instead of 8.

Prints one JSON line per arm: its best seconds per step, every round's, and its ratio to
the default's best (< 1: cheaper). `--set` overrides apply to every arm, under the arm's
own keys (smoke runs).
The ablation says where the time goes; whether a cheaper step trains as well is a
question for `benchmarks/seed_runs.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = {
    "default": ([], 1),
    "no_heads": (["variant=densenet"], 1),
    "no_lstm": (["variant=densenet_a"], 1),
    "input_128": (["input_size=128", "out_spacing=2.0"], 1),
    "batch_16": ([], 2),
}


def step_fn(overrides, batch_factor):
    """A zero-argument function running one training step of the configured model on a
    fixed batch (traced and run twice before it is returned)."""
    import keras
    import numpy as np

    from radnet_tf.config import load_config
    from radnet_tf.contract import MASK_OUTPUTS, OUTPUT_SLICE
    from radnet_tf.modeling.losses import compile_losses
    from radnet_tf.modeling.model import build_model

    cfg = load_config("default", overrides)
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    losses, weights = compile_losses(cfg, model.output_names)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses, loss_weights=weights)
    rng = np.random.default_rng(0)
    b, s, n = cfg.batch_size * batch_factor, cfg.crop_slices, cfg.input_size
    x = rng.uniform(size=(b, s, n, n, cfg.input_channels)).astype(np.float32)
    y = {OUTPUT_SLICE: (rng.uniform(size=(b, s)) > 0.5).astype(np.float32)}
    for name in MASK_OUTPUTS:
        if name in model.output_names:
            y[name] = (rng.uniform(size=(b, s, n, n, 1)) > 0.9).astype(np.float32)
    for _ in range(2):
        model.train_on_batch(x, y)
    return lambda: model.train_on_batch(x, y)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per arm and round")
    parser.add_argument("--only", default=",".join(ARMS), help="comma-separated arms")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    names = [a for a in args.only.split(",") if a]
    unknown = sorted(set(names) - set(ARMS))
    if unknown or "default" not in names:
        parser.error(f"--only takes 'default' and any of {', '.join(ARMS)}; got {args.only}")
    fns = {a: step_fn(args.set + ARMS[a][0], ARMS[a][1]) for a in names}
    times = {a: [] for a in names}
    for _ in range(args.rounds):
        for arm, fn in fns.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[arm].append((time.perf_counter() - start) / args.steps)
    base = min(times["default"])
    for arm, ts in times.items():
        row = {"bench": "train_step_part", "arm": arm, "best_seconds_per_step": round(min(ts), 4)}
        row |= {"rounds": [round(t, 4) for t in ts], "ratio_vs_default": round(min(ts) / base, 3)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
