"""Is CPU training bit-reproducible between processes? Run this twice and compare.

    python benchmarks/cpu_determinism.py [--steps 3] [--records DIR] [key=value ...]
    ONE_THREAD=1 TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/cpu_determinism.py   # narrower

Prints one JSON line per step: a hash of the input batches so far and the exact loss, then
hashes of the initial and final weights. Same hashes with different losses mean the
difference is in TF's kernels, not in the data, the split or the initialisation.
Uses `configs/default.yaml` and the built-in default's records (built if missing).
"""

import argparse
import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _digest(arrays):
    h = hashlib.sha1()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()[:12]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument(
        "--records", help="records folder (default: the synthetic cohort's, built if missing)"
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from radnet_tf.records import dataset as data
    from radnet_tf.training import train as trainer
    from radnet_tf.config import load_config
    from radnet_tf.phantom.cache import prepare_synthetic

    cfg = load_config(args.config, args.overrides)
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    if os.environ.get("ONE_THREAD"):
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    files = data.list_shards(args.records or prepare_synthetic(cfg, progress=False))
    model = trainer.build_and_compile(cfg, max(args.steps, 1))
    print(json.dumps({"initial_weights": _digest(v.numpy() for v in model.weights)}), flush=True)
    batches = iter(
        data.train_dataset(files, cfg, cfg.batch_size, with_masks=len(model.outputs) > 1)
    )
    inputs = hashlib.sha1()
    for step in range(args.steps):
        x, y = next(batches)
        inputs.update(x.numpy().tobytes())
        logs = model.train_on_batch(x, y, return_dict=True)
        print(
            json.dumps(
                {"step": step, "inputs": inputs.hexdigest()[:12], "loss": repr(float(logs["loss"]))}
            ),
            flush=True,
        )
    print(json.dumps({"final_weights": _digest(v.numpy() for v in model.weights)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
