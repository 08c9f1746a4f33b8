"""The served mask of trained runs: 0.5 on every slice vs the calibrated, gated lesion mask.

    python benchmarks/lesion_mask_thresholds.py --run MODEL_DIR [--run ...]
        [--records runs/default/records-168px-1.5mm]

For each trained run (`MODEL_DIR` as written by the trainer) this predicts the training
and the held-out studies of `--records` (the run's own 70:30 split), with the fused
mask's pixel counts at every candidate of `decision.MASK_THRESHOLD_CANDIDATES`, and
prints one JSON line per run:

  {"run", "slice_threshold" (the run's own),
   "before": held-out mask metrics of the fused mask at 0.5 on every slice (the served
             mask before the lesion-mask rule),
   "gated": {"mask_threshold", "held_out", "held_out_best"} for the lesion mask without
             the in-plane opening, and "gated_opened": the same with it (`mask_opening`,
             the default): mask_threshold is what `scoring.calibrate_mask_threshold` picks
             on the training studies (gated at the run's slice threshold), as the trainer
             does; held_out the metrics of that lesion mask (`decision.lesion_mask_np`);
             held_out_best the best held-out Dice over the candidates (an optimistic
             bound, not an operating point)}

Metrics as in `metrics.mask_metrics`: dice, study_dice, recall, precision,
negative_studies_with_mask. Measures; gates nothing.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEYS = ("dice", "study_dice", "recall", "precision", "negative_studies_with_mask")


def _clean(m):
    return {
        k: (None if m.get(k) is None or math.isnan(m[k]) else round(float(m[k]), 4)) for k in KEYS
    }


def run_one(model_dir, files):
    """The JSON line of one run (dict)."""
    import dataclasses

    from radnet_tf.contract import MASK_THRESHOLD
    from radnet_tf.decision import MASK_THRESHOLD_CANDIDATES
    from radnet_tf.serving.loader import load_trained
    from radnet_tf.evaluation.scoring import (
        calibrate_mask_threshold,
        keras_slice_fn,
        mask_scores,
        predict_studies,
    )

    model, cfg = load_trained(model_dir)
    fn = keras_slice_fn(model, cfg, masks=True)
    grid = tuple(sorted(set(MASK_THRESHOLD_CANDIDATES) | {MASK_THRESHOLD}))
    line = {"run": str(model_dir), "slice_threshold": round(float(cfg.slice_threshold), 4)}
    for name, opening in (("gated", False), ("gated_opened", True)):
        c = dataclasses.replace(cfg, mask_opening=opening)
        train = predict_studies(fn, files, c, "train", with_masks=True, mask_thresholds=grid)
        held = predict_studies(fn, files, c, "validation", with_masks=True, mask_thresholds=grid)
        if not opening:  # a slice gate at 0 keeps every slice
            line["before"] = _clean(mask_scores(held, 0.0, MASK_THRESHOLD))
        chosen = calibrate_mask_threshold(train, cfg.slice_threshold, fallback=MASK_THRESHOLD)
        per_t = {t: mask_scores(held, cfg.slice_threshold, t)["dice"] for t in grid}
        best = max(per_t, key=lambda t: per_t[t])
        line[name] = {
            "mask_threshold": chosen,
            "held_out": _clean(mask_scores(held, cfg.slice_threshold, chosen)),
            "held_out_best": {"mask_threshold": best, "dice": round(float(per_t[best]), 4)},
        }
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run", action="append", required=True, help="a trainer's model dir (repeatable)"
    )
    parser.add_argument("--records", default="runs/default/records-168px-1.5mm")
    args = parser.parse_args(argv)

    from radnet_tf.records import dataset as data

    files = data.list_shards(args.records)
    lines = []
    for model_dir in args.run:
        line = run_one(Path(model_dir), files)
        print(json.dumps(line), flush=True)
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()
