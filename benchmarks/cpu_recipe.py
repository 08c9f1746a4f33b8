"""Short CPU recipe experiments: train N steps, score the held-out studies, one JSON line each.

    python benchmarks/cpu_recipe.py --steps 150 --eval-at 75,150 [key=value ...]

Uses `configs/default.yaml` plus the overrides and the built-in default's synthetic cohort
(`runs/default/synth`, generated if missing) as records on the configured grid
(`runs/default/records-<N>px-<mm>mm`, converted if missing, as `make run` does), so
recipes are compared on the same cohort, split, seed and input stream. The model is
trained with `train_on_batch` (no validation passes, no checkpoints) and scored on every
held-out study at the given steps:

  slice_auc      held-out slice ROC AUC
  ct_auc         held-out CT ROC AUC of the K = 3 CT score (radnet_tf.decision)
  ct_acc_oracle  best held-out CT accuracy over all thresholds: an optimistic figure for
                 comparing recipes only (`make run` calibrates on the training studies)
  s_per_step     mean training-step time after step 5, evaluation excluded

Accuracy figures do not depend on the machine's load; s_per_step does.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--records", help="records folder (default: the synthetic cohort's, built if missing)"
    )
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-at", default="75,150", help="comma-separated steps")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from radnet_tf.records import dataset as data
    from radnet_tf.training import train as trainer
    from radnet_tf.config import load_config
    from radnet_tf.phantom.cache import prepare_synthetic
    from radnet_tf.decision import ct_score_np
    from radnet_tf.evaluation.scoring import keras_slice_fn, predict_studies

    cfg = load_config(args.config, args.overrides)
    cfg.epochs, cfg.steps_per_epoch = 1, args.steps
    keras.utils.set_random_seed(cfg.seed)
    files = data.list_shards(args.records or prepare_synthetic(cfg, progress=False))
    model = trainer.build_and_compile(cfg, args.steps)
    batches = iter(
        data.train_dataset(files, cfg, cfg.batch_size, with_masks=len(model.outputs) > 1)
    )
    eval_at = {int(s) for s in args.eval_at.split(",")}
    train_s, timed_steps = 0.0, 0
    for step in range(1, args.steps + 1):
        x, y = next(batches)
        t0 = time.perf_counter()
        logs = model.train_on_batch(x, y, return_dict=True)
        if step > 5:
            train_s += time.perf_counter() - t0
            timed_steps += 1
        if step in eval_at:
            t0 = time.perf_counter()
            preds = predict_studies(keras_slice_fn(model, cfg), files, cfg)
            labels, probs = preds.labels, preds.probs
            p, lab = np.concatenate(probs), np.concatenate(preds.slice_labels)
            known = lab >= 0
            scores, labels = (
                np.array([ct_score_np(q, cfg.ct_min_run) for q in probs]),
                np.array(labels),
            )
            oracle = max(((scores >= t) == labels).mean() for t in np.unique(scores))
            row = {
                "overrides": args.overrides,
                "step": step,
                "slice_auc": round(float(roc_auc_score(lab[known], p[known])), 3),
                "ct_auc": round(float(roc_auc_score(labels, scores)), 3),
                "ct_acc_oracle": round(float(oracle), 3),
                "held_out_studies": int(labels.size),
                "loss": round(float(logs["loss"]), 3),
                "s_per_step": round(train_s / max(timed_steps, 1), 3),
                "eval_s": round(time.perf_counter() - t0, 1),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
