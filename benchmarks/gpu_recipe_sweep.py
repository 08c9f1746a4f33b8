"""Recipe sweep for the built-in default on a GPU, under KERAS_BACKEND=jax (no TensorFlow).

The CPU default run affords ~300 training steps, one configuration per ~8 minutes. This
script trains the same model code on the same cohort, at the same geometry, on a GPU, for
a list of recipe variants, so the choice of the default recipe rests on measurements.

  # here (TensorFlow): the default cohort's records -> one compact .npz
  python benchmarks/gpu_recipe_sweep.py export --records runs/default/records-128px-2mm --out .sweep/cohort.npz
  # on the GPU (JAX): one JSON line per case
  KERAS_BACKEND=jax python benchmarks/gpu_recipe_sweep.py sweep --data .sweep/cohort.npz --out results.jsonl

Differences from `python -m radnet_tf.train` (so compare cases with each other, not with
the CPU run's absolute numbers): the input is a NumPy sampler with the same balanced
batches, windows containing a positive slice, horizontal flip and rotation
(scipy.ndimage, bilinear / nearest), the same 70:30 split (exported from TF), the same
model, losses, optimizer and schedule (`radnet_tf.train.build_and_compile`); the model
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

DEFAULT_CASES = [
    {"name": "default-avg", "overrides": ["pooling=avg"], "steps": 300},
    {"name": "avgmax", "overrides": ["pooling=avgmax"], "steps": 300},
    {"name": "avgmax-lr3e-3", "overrides": ["pooling=avgmax", "learning_rate=0.003"], "steps": 300},
    {"name": "avgmax-window4-600", "overrides": ["pooling=avgmax", "window=4"], "steps": 600},
    {"name": "avgmax-dice", "overrides": ["pooling=avgmax", "mask_loss=dice_bce"], "steps": 300},
    {"name": "avgmax-d16g12", "overrides": ["pooling=avgmax", "depth=16", "growth_rate=12"], "steps": 300},
    {"name": "avgmax-1000", "overrides": ["pooling=avgmax"], "steps": 1000},
    {"name": "avgmax-3000", "overrides": ["pooling=avgmax"], "steps": 3000},
    # Cohort size: the same recipe on 117 vs all training studies of a larger cohort.
    {"name": "n117-avgmax-600", "overrides": ["pooling=avgmax"], "steps": 600, "max_train": 117},
    {"name": "all-avgmax-600", "overrides": ["pooling=avgmax"], "steps": 600},
    {"name": "all-avg-600", "overrides": ["pooling=avg"], "steps": 600},
    {"name": "all-avgmax-d16g12-600", "overrides": ["pooling=avgmax", "depth=16", "growth_rate=12"], "steps": 600},
    {"name": "all-avgmax-1500", "overrides": ["pooling=avgmax"], "steps": 1500},
]


# ----------------------------------------------------------------------------- export (TF)


def export(records, out, config="configs/default.yaml"):
    """Records -> npz: images uint8 [N, S, n, n] (window x 255), masks bit-packed, labels,
    slice labels, validation flags (the trainer's split)."""
    import tensorflow as tf

    from radnet_tf import data, preprocess
    from radnet_tf.config import load_config

    cfg = load_config(config)
    files = data.list_shards(records)
    images, masks, slice_labels, labels, is_val, keys = [], [], [], [], [], []
    for st in data.read_studies(files):
        img = preprocess.brain_window(st["image"], cfg.window_center, cfg.window_width).numpy()
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
    tmp = out + ".tmp.npz"
    np.savez_compressed(tmp, images=pick(images), masks=pick(masks), slice_labels=pick(slice_labels),
             labels=np.array(labels)[order], is_val=np.array(is_val)[order])
    os.replace(tmp, out)
    print(f"wrote {out}: {len(images)} studies, {sum(is_val)} validation, {tf.__version__}")


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
        self.n = self.images.shape[-1]

    def window(self, i):
        from scipy import ndimage

        cfg, rng = self.cfg, self.rng
        s = self.images.shape[1]
        w = min(cfg.window, s)
        positives = np.flatnonzero(self.slice_labels[i] > 0)
        if positives.size:
            p = rng.choice(positives)
            start = rng.integers(max(0, p - w + 1), min(p, s - w) + 1)
        else:
            start = rng.integers(0, s - w + 1)
        img = self.images[i, start : start + w].astype(np.float32) / 255.0
        mask = np.unpackbits(self.masks[i, start : start + w], axis=-1, count=self.n).astype(np.float32)
        lab = self.slice_labels[i, start : start + w].astype(np.float32)
        if cfg.flip and rng.uniform() < 0.5:
            img, mask = img[:, :, ::-1], mask[:, :, ::-1]
        if cfg.rotation_deg:
            angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
            img = ndimage.rotate(img, angle, axes=(1, 2), reshape=False, order=1, mode="constant")
            mask = ndimage.rotate(mask, angle, axes=(1, 2), reshape=False, order=0, mode="constant")
        return img, mask, lab

    def batch(self, size):
        k = int(round(self.cfg.positive_fraction * size))
        ids = list(self.rng.choice(self.pos, k)) + list(self.rng.choice(self.neg, size - k))
        parts = [self.window(i) for i in ids]
        x = np.stack([p[0] for p in parts])[..., None]
        mask = np.stack([p[1] for p in parts])[..., None]
        y = {"slice_probability": np.stack([p[2] for p in parts])}
        for name in ("mask_1", "mask_2", "mask_3"):
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
        x = images[i : i + batch].astype(np.float32)[..., None] / 255.0
        if len(x) < batch:  # one compiled shape
            x = np.concatenate([x, np.full((batch - len(x),) + x.shape[1:], -1.0, np.float32)])
        out.append(np.asarray(model.predict_on_batch(x)["slice_probability"]))
    return np.concatenate(out)[: len(images)]


def run_case(case, arrays, base_config, log, extra=()):
    import keras

    from radnet_tf.config import load_config
    from radnet_tf.decision import choose_threshold, ct_decision_np, ct_score_np
    from radnet_tf.train import build_and_compile

    keras.backend.clear_session()
    cfg = load_config(base_config, case["overrides"] + ["export=false", "xla=true"] + list(extra))
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
        "loss_first_last": [round(float(np.mean(losses[:20])), 4), round(float(np.mean(losses[-20:])), 4)],
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--records", required=True)
    ex.add_argument("--out", required=True)
    sw = sub.add_parser("sweep")
    sw.add_argument("--data", required=True)
    sw.add_argument("--out", required=True)
    sw.add_argument("--config", default="configs/default.yaml")
    sw.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    sw.add_argument("--no-rotation", action="store_true", help="flip only (the sampler's rotation is CPU-bound)")
    sw.add_argument("--steps-scale", type=float, default=1.0, help="multiply every case's steps (CPU smoke runs)")
    args = parser.parse_args(argv)
    if args.cmd == "export":
        return export(args.records, args.out)
    arrays = dict(np.load(args.data))
    cases = [c for c in DEFAULT_CASES if not args.cases or c["name"] in args.cases.split(",")]
    for case in cases:
        case = {**case, "steps": max(2, int(case["steps"] * args.steps_scale))}
        try:
            run_case(case, arrays, args.config, args.out, ["rotation_deg=0"] if args.no_rotation else [])
        except Exception as err:  # keep the sweep going; record the failure
            record = {"case": case["name"], "error": f"{type(err).__name__}: {err}"[:500]}
            print(json.dumps(record), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
