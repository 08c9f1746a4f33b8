"""Fine-tuning on a small labelled set: from scratch vs from a built-in model vs no training.

    python benchmarks/finetune_small_set.py --images-csv SLICES.csv --images-root DIR \
        [--window 40 80] [--config finetune_brain] [--splits 3] [--test-fraction 0.34] \
        [--out runs/finetune_small_set] [key=value ...]

The images (a `--images-csv` collection: image,label,study_id,slice_index) are converted to
records on the config's grid. For each split (seed 0, 1, ...; patient-level: a study is a
patient, held out by `val_fraction` = --test-fraction of the hashed study keys) three models
are measured on the held-out patients:
  * scratch      the config's recipe with `init_from` cleared (its own learning rate);
  * fine-tuned   the config's recipe (`init_from` its built-in model, learning rate x
                 `fine_tune_lr_factor`), the same steps;
  * no training  the config's `init_from` model as it ships.
Per model and split: slice ROC AUC with a 95% bootstrap interval (patients resampled),
and the share of test patients the CT rule calls positive at the model's own threshold
(the set may hold only positive patients: then this is the CT sensitivity). Prints one JSON
line per model and split, then one line per model over the splits (mean AUC, pooled share).
With --normal-series (DICOM folders of normal heads) the first split's fine-tuned model
also predicts those and reports its CT verdict and positive-slice share.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_records(args, cfg):
    """The images as records on `cfg`'s grid under `args.out/records` (resumable)."""
    from radnet_tf.records.convert import image_tasks, run_local

    out = Path(args.out) / "records"
    if not (out / "manifest.json").exists():
        tasks = image_tasks(args.images_csv, args.images_root, tuple(args.window))
        run_local(
            tasks,
            [],
            out,
            shards=4,
            workers=args.workers,
            pcfg=cfg.preprocess_config(),
            progress=False,
        )
    return out


def held_out_scores(model, cfg, files):
    """Slice ROC AUC (with CI) and CT calls of `model` on `cfg`'s held-out studies."""
    from radnet_tf.evaluation.metrics import binary_metrics, slice_auc_ci
    from radnet_tf.evaluation.scoring import keras_slice_fn, predict_studies, score_studies

    preds = predict_studies(keras_slice_fn(model, cfg, masks=False), files, cfg, "validation")
    scored = score_studies(preds, cfg.slice_threshold, cfg.ct_min_run)
    slices, studies = scored["slices"], scored["studies"]
    known = slices[slices.label >= 0]
    auc = binary_metrics(
        known.label, known.probability >= cfg.slice_threshold, known.probability
    ).get("roc_auc", float("nan"))
    lo, hi = slice_auc_ci(slices, n_boot=1000) or (float("nan"), float("nan"))
    return {
        "test_patients": int(len(studies)),
        "test_slices": int(len(known)),
        "positive_slices": int(known.label.sum()),
        "slice_auc": round(float(auc), 4),
        "slice_auc_lo": round(lo, 4),
        "slice_auc_hi": round(hi, 4),
        "threshold": round(float(cfg.slice_threshold), 4),
        "patients_called_positive": int(studies.ct_positive.sum()),
        "share_called_positive": round(float(studies.ct_positive.mean()), 4),
    }


def run_split(args, base, records, split):
    """The three models of one split; returns their rows (list of dict)."""
    import dataclasses

    from radnet_tf.records import dataset as data
    from radnet_tf.serving import loader
    from radnet_tf.training.train import train

    files = data.list_shards(str(records))
    rows = []
    for arm, init_from in (("scratch", ""), ("fine-tuned", base.init_from)):
        cfg = dataclasses.replace(
            base,
            data=str(records),
            seed=split,
            init_from=init_from,
            export=False,
            model_dir=str(Path(args.out) / f"split{split}" / arm),
        )
        _, model = train(cfg, progress=False)
        rows.append({"model": arm, "split": split, **held_out_scores(model, cfg, files)})
    shipped = loader.load(base.init_from)
    cfg = dataclasses.replace(shipped.cfg, seed=split, val_fraction=base.val_fraction)
    scores = held_out_scores(loader.keras_model_of(shipped), cfg, files)
    rows.append({"model": "no training", "split": split, **scores})
    return rows


def normal_series(model, cfg, folders, out):
    """The fine-tuned model's calls on normal DICOM series (exported, then predict)."""
    from radnet_tf.serving import predict
    from radnet_tf.serving.export import export_model

    export = export_model(
        model,
        cfg,
        Path(out) / "export",
        warmup=False,
        trained_on="fine-tuned (benchmarks/finetune_small_set.py)",
    )
    for folder in folders:
        result = predict.main([str(folder), "--model", str(export)])
        probs = result["slice_probabilities"]
        yield {
            "normal_series": Path(folder).name,
            "slices": len(probs),
            "ct_positive": bool(result["ct_positive"]),
            "positive_slice_fraction": round(
                sum(p >= cfg.slice_threshold for p in probs) / len(probs), 4
            ),
        }


def summarise(rows):
    """One row per model over the splits."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    for model, part in frame.groupby("model", sort=False):
        yield {
            "model": model,
            "splits": int(len(part)),
            "mean_slice_auc": round(float(part.slice_auc.mean()), 4),
            "min_slice_auc": round(float(part.slice_auc.min()), 4),
            "max_slice_auc": round(float(part.slice_auc.max()), 4),
            "patients_called_positive": int(part.patients_called_positive.sum()),
            "test_patients": int(part.test_patients.sum()),
        }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images-csv", required=True)
    parser.add_argument("--images-root", required=True)
    parser.add_argument("--window", type=float, nargs=2, default=[40.0, 80.0])
    parser.add_argument("--config", default="finetune_brain")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--test-fraction", type=float, default=0.34)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--normal-series", nargs="*", default=[])
    parser.add_argument("--out", default="runs/finetune_small_set")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    from radnet_tf.config import load_config

    base = load_config(args.config, [*args.overrides, f"val_fraction={args.test_fraction}"])
    records = build_records(args, base)
    rows = []
    for split in range(args.splits):
        split_rows = run_split(args, base, records, split)
        for row in split_rows:
            print(json.dumps(row), flush=True)
        rows += split_rows
        if split == 0 and args.normal_series:
            from radnet_tf.serving.loader import load_trained

            model, tuned = load_trained(Path(args.out) / "split0" / "fine-tuned")
            for row in normal_series(model, tuned, args.normal_series, args.out):
                print(json.dumps(row), flush=True)
    for row in summarise(rows):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
