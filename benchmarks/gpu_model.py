"""GPU benchmark of the RADnet model under KERAS_BACKEND=jax (no TensorFlow needed).

Reports, per (precision, studies per batch): training slices/s, inference ms per
32-slice CT and peak device memory; a configuration that does not fit is reported as OOM.

    KERAS_BACKEND=jax python benchmarks/gpu_model.py --out results.jsonl
    KERAS_BACKEND=jax python benchmarks/gpu_model.py --tiny   # CPU smoke run

Each result is one JSON line (appended as soon as it is measured).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from radnet_tf.config import Config  # noqa: E402
from radnet_tf.contract import MASK_OUTPUTS, OUTPUT_SLICE  # noqa: E402
from radnet_tf.modeling.losses import compile_losses  # noqa: E402
from radnet_tf.modeling.model import build_model  # noqa: E402


def _peak_bytes():
    try:
        import jax

        return int(jax.local_devices()[0].memory_stats().get("peak_bytes_in_use", -1))
    except Exception:
        return -1


def run_case(cfg, policy, studies, slices, steps, log):
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
    model = build_model(cfg)
    losses, weights = compile_losses(cfg, model.output_names)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=losses,
        loss_weights=weights,
        jit_compile=True,
    )
    rng = np.random.default_rng(0)
    n = cfg.input_size
    x = rng.uniform(size=(studies, slices, n, n, 1)).astype("float32")
    y = {OUTPUT_SLICE: (rng.uniform(size=(studies, slices)) > 0.5).astype("float32")}
    for name in model.output_names:
        if name in MASK_OUTPUTS:
            y[name] = (rng.uniform(size=(studies, slices, n, n, 1)) > 0.9).astype("float32")
    record = {
        "policy": policy,
        "studies": studies,
        "slices": slices,
        "input_size": n,
        "params": model.count_params(),
    }
    try:
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        record["first_step_s"] = round(time.perf_counter() - t0, 2)
        for _ in range(2):
            model.train_on_batch(x, y)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(x, y)
        float(np.asarray(loss[0] if isinstance(loss, list) else loss))
        dt = (time.perf_counter() - t0) / steps
        record["train_step_ms"] = round(1000 * dt, 2)
        record["train_slices_per_s"] = round(studies * slices / dt, 1)
        one = x[:1]
        model.predict_on_batch(one)
        model.predict_on_batch(one)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model.predict_on_batch(one)
        np.asarray(out[OUTPUT_SLICE])
        record["infer_ms_per_ct"] = round(1000 * (time.perf_counter() - t0) / steps, 2)
    except Exception as err:  # XLA reports OOM as RESOURCE_EXHAUSTED
        msg = str(err)
        record["error"] = (
            "OOM" if "RESOURCE_EXHAUSTED" in msg or "Out of memory" in msg else msg[:300]
        )
    record["peak_bytes"] = _peak_bytes()
    print(json.dumps(record), flush=True)
    log.write(json.dumps(record) + "\n")
    log.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_results.jsonl")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run at tiny size")
    parser.add_argument(
        "--cases",
        default="float32:1,float32:2,mixed_bfloat16:1,mixed_bfloat16:2,mixed_bfloat16:4,float32:4",
    )
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if args.tiny:
        cfg = Config(input_size=32, depth=10, growth_rate=4, initial_filters=8, lstm_units=8)
        slices = 4
    else:
        cfg = Config(input_size=256)
        slices = 32
    print(json.dumps({"backend": keras.backend.backend(), "keras": keras.__version__}), flush=True)
    with open(args.out, "a") as log:
        for case in args.cases.split(","):
            policy, studies = case.split(":")
            run_case(cfg, policy, int(studies), slices, args.steps, log)


if __name__ == "__main__":
    main()
