"""Would a slice threshold chosen for each series' own length serve real normal heads?

    python benchmarks/series_length_thresholds.py --run MODEL_DIR:EXPORT [--run ...]
        [--records runs/default/records-168px-1.5mm] [--shared ../shared/data] [--min-run 3]

The built-in default calibrates one slice threshold for 100-slice series
(`calibration_series_slices`). The alternative is a threshold per series length N: the
same `decision.choose_threshold` on the training studies' CT scores with
`scale = decision.series_scale(N, S, K)`, N being the length of the series being judged.
For each trained run (`MODEL_DIR` as written by the trainer, `EXPORT` its SavedModel) this
scores the training studies of `--records` (the run's own 70:30 split), then each real
normal series under ../shared (ge-head-tilt, CQ500-CT-0, the Visible Human head), and
prints one JSON line per run: the 100-slice threshold, and per series its length, its
own-length threshold, the verdict and positive-slice fraction at it, and its CT score
(the threshold at which its verdict turns positive). Measures; gates nothing.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NORMAL = ("ge-head-tilt", "cq500/CQ500-CT-0", "vhp-male-head")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run", action="append", required=True, help="MODEL_DIR:EXPORT (repeatable)"
    )
    parser.add_argument("--records", default="runs/default/records-168px-1.5mm")
    parser.add_argument(
        "--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument(
        "--series-slices", type=int, default=100, help="the fixed calibration length compared"
    )
    args = parser.parse_args(argv)

    import numpy as np

    from radnet_tf.records import dataset as data
    from radnet_tf.decision import choose_threshold, ct_decision_np, ct_score_np, series_scale
    from radnet_tf.io.dicom import read_series
    from radnet_tf.evaluation.evaluate import Predictor
    from radnet_tf.serving.predict import predict_series
    from radnet_tf.serving.loader import load_saved_model

    shared = Path(args.shared)
    series = {name: read_series(shared / name) for name in NORMAL if (shared / name).exists()}
    files = data.list_shards(args.records)
    for run in args.run:
        model_dir, export = run.split(":", 1)
        saved, meta, _ = load_saved_model(export)
        k = int(meta["ct_min_run"])
        train = Predictor(Path(model_dir)).predict(files, "train")
        scores = [ct_score_np(p, k) for p in train.probs]
        study = int(np.median([len(p) for p in train.probs]))
        row = {
            "run": export,
            "training_study_slices": study,
            f"threshold_{args.series_slices}": round(
                choose_threshold(
                    scores, train.labels, scale=series_scale(args.series_slices, study, k)
                ),
                3,
            ),
        }
        for name, s in series.items():
            p = np.asarray(predict_series(s, saved, meta)[0]["slice_probabilities"])
            t = choose_threshold(scores, train.labels, scale=series_scale(len(p), study, k))
            verdict = ct_decision_np(p, t, k)["ct_positive"]
            row[name] = {
                "slices": len(p),
                "threshold": round(t, 3),
                "positive": bool(verdict),
                "positive_fraction": round(float(np.mean(p >= t)), 3),
                "ct_score": round(ct_score_np(p, k), 3),
            }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
