"""Recipe sweep for the built-in default on a GPU, under KERAS_BACKEND=jax (no TensorFlow).

The CPU default run affords ~300 training steps, one configuration per ~8 minutes. This
script trains the same model code on the same cohort, at the same geometry, on a GPU, for
a list of recipe variants, so the choice of the default recipe rests on measurements.

  # here (TensorFlow): the default cohort's records -> one compact .npz (one uint8
  # channel per input window of the config)
  python benchmarks/gpu_recipe_sweep.py export --records runs/default/records-168px-1.5mm --out
  .sweep/cohort168.npz
  # on the GPU (JAX): one JSON line per case; --workers runs cases in parallel processes
  KERAS_BACKEND=jax python benchmarks/gpu_recipe_sweep.py sweep --suite 168px --data
  .sweep/cohort168.npz \
      --out results.jsonl --workers 5

Differences from `python -m radnet_tf.train` (so compare cases with each other, not with
the CPU run's absolute numbers): the input is a NumPy sampler with the same balanced
batches, windows containing a positive slice, horizontal flip and rotation
(scipy.ndimage, bilinear / nearest), the same 70:30 split (exported from TF), the same
model, losses, optimizer and schedule (`radnet_tf.training.train.build_and_compile`); the model
evaluated is the last one, not the best by validation AUC.

Each case reports held-out slice AUC, CT-level accuracy at slice threshold 0.5 and at the
threshold calibrated on the training studies (`radnet_tf.decision.choose_threshold`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from radnet_tf.contract import MASK_OUTPUTS, OUTPUT_SLICE  # noqa: E402

# The first sweep (2026-11-26, 128 px / 2 mm grid, brain window only, configs/default.yaml
# of that day); kept so its BENCHMARKS.md rows stay reproducible.
CASES_128PX = [
    {"name": "default-avg", "overrides": ["pooling=avg"], "steps": 300},
    {"name": "avgmax", "overrides": ["pooling=avgmax"], "steps": 300},
    {"name": "avgmax-lr3e-3", "overrides": ["pooling=avgmax", "learning_rate=0.003"], "steps": 300},
    {"name": "avgmax-window4-600", "overrides": ["pooling=avgmax", "crop_slices=4"], "steps": 600},
    {
        "name": "avgmax-d16g12",
        "overrides": ["pooling=avgmax", "depth=16", "growth_rate=12"],
        "steps": 300,
    },
    {"name": "avgmax-1000", "overrides": ["pooling=avgmax"], "steps": 1000},
    {"name": "avgmax-3000", "overrides": ["pooling=avgmax"], "steps": 3000},
    # Cohort size: the same recipe on 117 vs all training studies of a larger cohort.
    {"name": "n117-avgmax-600", "overrides": ["pooling=avgmax"], "steps": 600, "max_train": 117},
    {"name": "all-avgmax-600", "overrides": ["pooling=avgmax"], "steps": 600},
    {"name": "all-avg-600", "overrides": ["pooling=avg"], "steps": 600},
    {
        "name": "all-avgmax-d16g12-600",
        "overrides": ["pooling=avgmax", "depth=16", "growth_rate=12"],
        "steps": 600,
    },
    {"name": "all-avgmax-1500", "overrides": ["pooling=avgmax"], "steps": 1500},
]


def _seeded_cases(variants):
    """(name, overrides, steps, seeds) rows -> one case per seed, named NAME-sSEED."""
    return [
        {"name": f"{name}-s{seed}", "overrides": overrides + [f"seed={seed}"], "steps": steps}
        for name, overrides, steps, seeds in variants
        for seed in seeds
    ]


# The second sweep: the 168 px / 1.5 mm, two-window default at the CPU's 150
# steps, one change at a time, each with one to three seeds (seed changes the initial
# weights and the sampled batches). "batch4x2" trades batch size for steps at equal slices
# seen (equal CPU time); the window cases keep 32 slices per step.
_VARIANTS_168PX = [
    # name, overrides, steps, seeds
    ("steps300", [], 300, (0, 1)),
    ("batch4x2", ["batch_size=4"], 300, (0, 1)),
    ("default", [], 150, (0, 1, 2)),
    ("no-rotation", ["rotation_deg=0"], 150, (0, 1)),
    ("lr5e-4", ["learning_rate=0.0005"], 150, (0, 1)),
    ("no-lr-drop", ["lr_drop_epochs=[]"], 150, (0, 1)),
    ("pos0.7", ["positive_fraction=0.7"], 150, (0, 1)),
    ("window2-batch16", ["crop_slices=2", "batch_size=16"], 150, (0,)),
    ("window8-batch4", ["crop_slices=8", "batch_size=4"], 150, (0,)),
    ("wd0", ["weight_decay=0"], 150, (0,)),
    ("mask-w0.5", ["mask_loss_weights=[0.5,0.5,0.5]"], 150, (0,)),
    ("lstm64-head16", ["lstm_units=64", "head_filters=16"], 150, (0,)),
]
CASES_168PX = _seeded_cases(_VARIANTS_168PX)

# The third sweep: DenseNet depth / growth at equal CPU time. Steps = 150 x (2.78 s / the
# CPU step time of that net) with 8 windows x 4 slices at 168 px, 2 channels (CPU step times
# measured here with `train_on_batch` on random data, same process: D16/g12 2.78 s,
# D10/g12 0.99, D10/g16 1.22, D10/g16 + 24 stem filters 1.48, D13/g12 1.88, D10/g24 1.95,
# D13/g16 2.20).
_VARIANTS_168PX_TIME = [
    ("d10g12", ["depth=10", "growth_rate=12"], 420, (0, 1, 2)),
    ("d10g16", ["depth=10", "growth_rate=16"], 340, (0, 1, 2)),
    ("d10g16f24", ["depth=10", "growth_rate=16", "initial_filters=24"], 280, (0, 1)),
    ("d13g12", ["depth=13", "growth_rate=12"], 220, (0, 1)),
    ("d10g24", ["depth=10", "growth_rate=24"], 214, (0, 1)),
    ("d13g16", ["depth=13", "growth_rate=16"], 190, (0, 1)),
    ("default", [], 150, (3, 4)),
]
CASES_168PX_TIME = _seeded_cases(_VARIANTS_168PX_TIME)

# The fourth sweep: DenseNet-10/g16 at its equal-time 340 steps, without the rotation
# augmentation (the phantom already draws a random in-plane rotation per study) and with
# more positive windows.
_D10G16 = ["depth=10", "growth_rate=16"]
_VARIANTS_168PX_D10G16 = [
    ("d10g16-norot", _D10G16 + ["rotation_deg=0"], 340, (0, 1, 2)),
    ("d10g16-norot-pos0.7", _D10G16 + ["rotation_deg=0", "positive_fraction=0.7"], 340, (0, 1, 2)),
    ("d10g16", _D10G16, 340, (3, 4)),
]
CASES_168PX_D10G16 = _seeded_cases(_VARIANTS_168PX_D10G16)

SUITES = {
    "128px": CASES_128PX,
    "168px": CASES_168PX,
    "168px-time": CASES_168PX_TIME,
    "168px-d10g16": CASES_168PX_D10G16,
}


# ----------------------------------------------------------------------------- export (TF)


def export(records, out, config="configs/default.yaml"):
    """Records -> npz: images uint8 [N, S, n, n, C] (one channel per input window of the
    config, window x 255), masks bit-packed, labels, slice labels, validation flags (the
    trainer's split), windows [C, 2] (centre, width)."""
    import tensorflow as tf

    from radnet_tf import preprocess
    from radnet_tf.records import dataset as data
    from radnet_tf.config import load_config

    cfg = load_config(config)
    files = data.list_shards(records)
    windows = [(cfg.window_center, cfg.window_width)] + [tuple(w) for w in cfg.extra_windows]
    images, masks, slice_labels, labels, is_val, keys = [], [], [], [], [], []
    for st in data.read_studies(files):
        img = preprocess.window_channels(st["image"], windows).numpy()
        images.append(np.round(img * 255).astype(np.uint8))
        masks.append(np.packbits(st["mask"].numpy().astype(bool), axis=-1))
        slice_labels.append(st["slice_labels"].numpy().astype(np.int8))
        labels.append(int(st["label"]))
        is_val.append(bool(data.is_validation(st["study_key"], cfg.val_fraction, cfg.seed)))
        keys.append(st["study_key"].numpy().decode())
    lengths = {im.shape[0] for im in images}
    if len(lengths) != 1:
        raise SystemExit(f"export expects equal-length studies, got lengths {sorted(lengths)}")
    order = np.argsort(keys)
    pick = lambda xs: np.stack([xs[i] for i in order])  # noqa: E731
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    from radnet_tf import atomic

    with atomic.atomic_path(out) as tmp:
        np.savez_compressed(
            tmp,
            images=pick(images),
            masks=pick(masks),
            slice_labels=pick(slice_labels),
            labels=np.array(labels)[order],
            is_val=np.array(is_val)[order],
            windows=np.array(windows, np.float32),
        )
    print(
        f"wrote {out}: {len(images)} studies, {sum(is_val)} validation, windows {windows}, "
        f"{os.path.getsize(out) / 2**20:.1f} MiB, TF {tf.__version__}"
    )


# ----------------------------------------------------------------------------- sweep (JAX)


class Sampler:
    """Balanced, augmented training windows from the npz arrays (NumPy + scipy)."""

    def __init__(self, arrays, cfg, seed, max_train=None):
        self.cfg = cfg
        train = ~arrays["is_val"]
        if max_train:
            train &= np.cumsum(train) <= max_train  # the first max_train training studies
        self.images = arrays["images"][train]
        self.masks = arrays["masks"][train]
        self.slice_labels = arrays["slice_labels"][train]
        labels = arrays["labels"][train]
        self.pos = np.flatnonzero(labels == 1)
        self.neg = np.flatnonzero(labels == 0)
        self.rng = np.random.default_rng(seed)
        self.n = self.images.shape[-2]

    def window(self, i):
        from scipy import ndimage

        cfg, rng = self.cfg, self.rng
        s = self.images.shape[1]
        w = min(cfg.crop_slices, s)
        positives = np.flatnonzero(self.slice_labels[i] > 0)
        if positives.size:
            p = rng.choice(positives)
            start = rng.integers(max(0, p - w + 1), min(p, s - w) + 1)
        else:
            start = rng.integers(0, s - w + 1)
        img = self.images[i, start : start + w].astype(np.float32) / 255.0
        mask = np.unpackbits(self.masks[i, start : start + w], axis=-1, count=self.n).astype(
            np.float32
        )
        lab = self.slice_labels[i, start : start + w].astype(np.float32)
        if cfg.flip and rng.uniform() < 0.5:
            img, mask = img[:, :, ::-1], mask[:, :, ::-1]
        if cfg.rotation_deg:
            angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
            img = ndimage.rotate(
                img, angle, axes=(1, 2), reshape=False, order=1, mode="constant"
            )  # [w, n, n, C]
            mask = ndimage.rotate(mask, angle, axes=(1, 2), reshape=False, order=0, mode="constant")
        return img, mask, lab

    def batch(self, size):
        k = int(round(self.cfg.positive_fraction * size))
        ids = list(self.rng.choice(self.pos, k)) + list(self.rng.choice(self.neg, size - k))
        parts = [self.window(i) for i in ids]
        x = np.stack([p[0] for p in parts])
        mask = np.stack([p[1] for p in parts])[..., None]
        y = {OUTPUT_SLICE: np.stack([p[2] for p in parts])}
        for name in MASK_OUTPUTS:
            y[name] = mask
        return x, y


def _auc(labels, scores):
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _predict(model, images, batch=8):
    out = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch].astype(np.float32) / 255.0
        if len(x) < batch:  # one compiled shape
            x = np.concatenate([x, np.full((batch - len(x),) + x.shape[1:], -1.0, np.float32)])
        out.append(np.asarray(model.predict_on_batch(x)[OUTPUT_SLICE]))
    return np.concatenate(out)[: len(images)]


def run_case(case, arrays, base_config, log, extra=()):
    import keras

    from radnet_tf.config import load_config
    from radnet_tf.decision import choose_threshold, ct_decision_np, ct_score_np
    from radnet_tf.training.train import build_and_compile

    keras.backend.clear_session()
    cfg = load_config(base_config, case["overrides"] + ["export=false"] + list(extra))
    if arrays["images"].shape[-1] != cfg.input_channels:
        raise ValueError(
            f"data has {arrays['images'].shape[-1]} window channels, the config wants "
            f"{cfg.input_channels}"
        )
    keras.utils.set_random_seed(cfg.seed)
    steps = int(case["steps"])
    cfg.epochs = 1  # the schedule's drops are fractions of epochs x steps
    model = build_and_compile(cfg, steps)
    sampler = Sampler(arrays, cfg, cfg.seed, case.get("max_train"))
    t0 = time.perf_counter()
    first = None
    losses = []
    for step in range(steps):
        x, y = sampler.batch(cfg.batch_size)
        out = model.train_on_batch(x, y, return_dict=True)
        losses.append(float(out["loss"]))
        if step == 0:
            first = time.perf_counter() - t0
    train_s = time.perf_counter() - t0
    val, train = arrays["is_val"], ~arrays["is_val"]
    p_val = _predict(model, arrays["images"][val])
    p_train = _predict(model, arrays["images"][train])
    sl_val = arrays["slice_labels"][val]
    y_val, y_train = arrays["labels"][val], arrays["labels"][train]
    t_cal = choose_threshold([ct_score_np(p, cfg.ct_min_run) for p in p_train], y_train)

    def ct_accuracy(probs, labels, t):
        pred = [ct_decision_np(p, t, cfg.ct_min_run)["ct_positive"] for p in probs]
        return float(np.mean(np.array(pred) == (labels == 1)))

    record = {
        "case": case["name"],
        "overrides": case["overrides"],
        "steps": steps,
        "params": model.count_params(),
        "first_step_s": round(first, 2),
        "step_ms": round(1000 * (train_s - first) / max(1, steps - 1), 2),
        "loss_first_last": [
            round(float(np.mean(losses[:20])), 4),
            round(float(np.mean(losses[-20:])), 4),
        ],
        "val_slice_auc": round(_auc(sl_val.ravel(), p_val.ravel()), 4),
        "val_ct_auc": round(_auc(y_val, [ct_score_np(p, cfg.ct_min_run) for p in p_val]), 4),
        "val_ct_accuracy_t05": round(ct_accuracy(p_val, y_val, 0.5), 4),
        "calibrated_threshold": round(t_cal, 4),
        "val_ct_accuracy_calibrated": round(ct_accuracy(p_val, y_val, t_cal), 4),
        "train_ct_accuracy_calibrated": round(ct_accuracy(p_train, y_train, t_cal), 4),
        "val_studies": int(val.sum()),
        "train_studies": int(len(sampler.pos) + len(sampler.neg)),
        "rotation_deg": cfg.rotation_deg,
        "backend": keras.backend.backend(),
    }
    print(json.dumps(record), flush=True)
    with open(log, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return record


def _run_cases(cases, args):
    arrays = dict(np.load(args.data))
    for case in cases:
        case = {**case, "steps": max(2, int(case["steps"] * args.steps_scale))}
        try:
            run_case(
                case, arrays, args.config, args.out, ["rotation_deg=0"] if args.no_rotation else []
            )
        except Exception as err:  # keep the sweep going; record the failure
            record = {"case": case["name"], "error": f"{type(err).__name__}: {err}"[:500]}
            print(json.dumps(record), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(record) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--records", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--config", default="configs/default.yaml")
    sw = sub.add_parser("sweep")
    sw.add_argument("--data", required=True)
    sw.add_argument("--out", required=True)
    sw.add_argument("--config", default="configs/default.yaml")
    sw.add_argument("--suite", default="168px", choices=sorted(SUITES))
    sw.add_argument(
        "--cases", default="", help="comma-separated case names (default: the whole suite)"
    )
    sw.add_argument(
        "--no-rotation", action="store_true", help="flip only (the sampler's rotation is CPU-bound)"
    )
    sw.add_argument(
        "--steps-scale",
        type=float,
        default=1.0,
        help="multiply every case's steps (CPU smoke runs)",
    )
    sw.add_argument(
        "--workers", type=int, default=1, help="cases run in this many processes sharing the GPU"
    )
    sw.add_argument("--shard", default="", help=argparse.SUPPRESS)  # "i/k": this worker's cases
    args = parser.parse_args(argv)
    if args.cmd == "export":
        return export(args.records, args.out, args.config)
    cases = [c for c in SUITES[args.suite] if not args.cases or c["name"] in args.cases.split(",")]
    if args.shard:
        i, k = (int(v) for v in args.shard.split("/"))
        return _run_cases(cases[i::k], args)
    if args.workers <= 1:
        return _run_cases(cases, args)
    import subprocess

    # Workers share one GPU: no up-front allocation of most of its memory per process.
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    argv = [a for a in (argv if argv is not None else sys.argv[1:])]
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)] + argv + ["--shard", f"{i}/{args.workers}"],
            env=env,
        )
        for i in range(args.workers)
    ]
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    main()
