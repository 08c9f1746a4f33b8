"""`python -m radnet_tf.train`: train a RADnet-family model with tf.distribute.

    python -m radnet_tf.train                       # built-in default (make run)
    python -m radnet_tf.train --config configs/radnet.yaml --data RECORDS [key=value ...]

With no `--data` (and `data: ""` in the config) the built-in default runs end to end: a
synthetic cohort is generated and cached in `work_dir`, converted to TFRecords, a model is
trained, evaluated on the held-out studies and exported as a SavedModel.

Strategy from the environment: MultiWorkerMirroredStrategy when TF_CONFIG names a cluster,
MirroredStrategy on several local GPUs, else the default (one device). The global batch is
`batch_size` x replicas; model and optimizer are built in the strategy scope.

Model dir contents: config.json (fully resolved), run_info.json (package version, data
manifest digest, strategy), history.csv (every epoch), best.keras (best `monitor`),
final.keras, backup/ (BackupAndRestore: a killed run resumes from its last epoch), logs/
(TensorBoard), val_slices.csv / val_studies.csv / val_metrics.csv.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

from radnet_tf.errors import UserError, cli_main

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def _atomic_backup_class():
    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        """BackupAndRestore whose files are written to temporary names and renamed.

        Keras writes `latest.weights.h5` in place; a kill during that write left an
        unreadable backup and a run that could not resume (seen in the kill test).
        """

        def _save_model(self):
            os.makedirs(self.backup_dir, exist_ok=True)
            tmp_weights = os.path.join(self.backup_dir, "partial.weights.h5")
            self.model.save_weights(filepath=tmp_weights, overwrite=True)
            tmp_meta = f"{self._training_metadata_path}.tmp"
            with open(tmp_meta, "w") as f:
                f.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
            os.replace(tmp_weights, self._weights_path)
            os.replace(tmp_meta, self._training_metadata_path)

    return AtomicBackupAndRestore


def select_strategy():
    """tf.distribute strategy chosen from the environment."""
    import tensorflow as tf

    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    if len(tf_config.get("cluster", {}).get("worker", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def patch_multi_worker_build(model, strategy):
    """Lets `model.fit` run under MultiWorkerMirroredStrategy in Keras 3.15.

    Before training, Keras' TF trainer builds losses and metrics symbolically from the
    first batch, which it gets by `strategy.reduce("MEAN", batch, axis=None)`. Under
    MultiWorkerMirroredStrategy that reduce raises "Attempt to convert a value (PerReplica)
    ... to a Tensor" (keras-team/keras#20585, open). Only the batch's shapes and dtypes are
    needed, so this builds from this worker's local replica value instead; every worker
    does the same, so no collective is left unmatched. No-op for other strategies.

    Logged metrics: after each step Keras reduces the step's scalar logs across workers
    with `strategy.reduce("MEAN", value, axis=0)`, which fails on a scalar ("Invalid
    reduction dimension 0"). The train and test steps here return each log as shape [1],
    so that reduce is the mean over workers and yields a scalar again.
    """
    import tensorflow as tf
    from keras import tree

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model

    def local_value(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(local_value, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def with_leading_axis(step):
        def wrapped(data):
            return tree.map_structure(lambda v: tf.reshape(v, [1]) if v.shape.rank == 0 else v, step(data))

        return wrapped

    model._maybe_symbolic_build = maybe_symbolic_build
    model.train_step = with_leading_axis(model.train_step)
    model.test_step = with_leading_axis(model.test_step)
    return model


def prepare_synthetic(cfg, progress=True):
    """Generates (cached) the synthetic cohort and its records; returns the records dir."""
    from radnet_tf import synth
    from radnet_tf.convert import discover_tasks, load_label_tables, run_local

    work = Path(cfg.work_dir)
    cohort = work / "synth"
    spec = {
        "studies": cfg.synth_studies,
        "slices": cfg.synth_slices,
        "matrix": cfg.synth_matrix,
        "seed": cfg.synth_seed,
        "generator": synth.GENERATOR_VERSION,
    }
    spec_path, partial = cohort / "spec.json", cohort / "spec.partial.json"

    def matches(path, expected):
        return path.exists() and json.loads(path.read_text()) == expected

    if not matches(spec_path, spec):
        if cohort.exists() and not matches(partial, spec):
            shutil.rmtree(cohort)  # a cohort of another spec or generator: never mix studies
        cohort.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(spec))  # a killed run with the same spec resumes
        print(f"[radnet] generating {cfg.synth_studies} synthetic studies in {cohort}", flush=True)
        synth.generate_cohort(
            cohort,
            cfg.synth_studies,
            cfg.synth_seed,
            synth.SynthConfig(matrix=cfg.synth_matrix, num_slices=cfg.synth_slices),
            progress=progress,
            workers=min(2, os.cpu_count() or 1),
        )
        os.replace(partial, spec_path)
    pcfg = cfg.preprocess_config()
    geometry = f"{pcfg.out_size}px-{pcfg.out_spacing:g}mm"
    rec_dir = work / f"records-{geometry}"
    manifest = rec_dir / "manifest.json"
    # Records hold HU on the model grid: only the geometry (not the windows) keys them.
    source = {"cohort": spec, "preprocess": {k: getattr(pcfg, k) for k in ("out_spacing", "fov_mm", "out_size")}}
    if not (manifest.exists() and matches(rec_dir / "source.json", source)):
        if rec_dir.exists() and not matches(rec_dir / "source.json", source):
            shutil.rmtree(rec_dir)  # records of another cohort or geometry
        rec_dir.mkdir(parents=True, exist_ok=True)
        (rec_dir / "source.json").write_text(json.dumps(source))
        print(f"[radnet] converting to TFRecords in {rec_dir}", flush=True)
        labels, per_slice = load_label_tables(cohort / "labels.csv", cohort / "slice_labels.csv")
        tasks, skipped = discover_tasks(cohort / "dicom", labels, per_slice, cohort / "masks")
        run_local(tasks, skipped, rec_dir, shards=4, workers=min(2, os.cpu_count() or 1), pcfg=pcfg, progress=progress)
    return str(rec_dir)


def check_geometry(files, cfg):
    """Records must be on the model's grid; raises UserError otherwise."""
    from radnet_tf import data

    first = next(iter(data.read_studies(files[:1]).take(1)))
    size = int(first["image"].shape[1])
    if size != cfg.input_size:
        raise UserError(
            f"records hold {size}x{size} slices but input_size={cfg.input_size}; rebuild the "
            "records with the same config or set input_size"
        )


def learning_rate_schedule(cfg, steps_per_epoch):
    """cfg.learning_rate, divided by 10 after each fraction in cfg.lr_drop_epochs of the
    epochs x steps_per_epoch steps. Returns a Keras schedule (a float when there is no drop)."""
    import keras

    # Keras' PiecewiseConstantDecay keeps values[i] while step <= boundaries[i] (step counts
    # from 0): a drop after n steps is the boundary n - 1.
    total = cfg.epochs * steps_per_epoch
    boundaries = sorted({max(1, int(round(f * total))) - 1 for f in cfg.lr_drop_epochs})
    values = [cfg.learning_rate / (10**i) for i in range(len(boundaries) + 1)]
    if not boundaries:  # PiecewiseConstantDecay needs a boundary
        return values[0]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def build_and_compile(cfg, steps_per_epoch, sync_batchnorm=False):
    import keras

    from radnet_tf.losses import MaskedAUC, MaskedBinaryAccuracy, compile_losses
    from radnet_tf.model import OUTPUT_SLICE, build_model

    model = build_model(cfg, sync_batchnorm=sync_batchnorm)
    losses, weights = compile_losses(cfg, model.output_names)
    schedule = learning_rate_schedule(cfg, steps_per_epoch)
    if cfg.optimizer == "adam":
        optimizer = keras.optimizers.Adam(schedule)
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=cfg.momentum)
    model.compile(
        optimizer=optimizer,
        loss=losses,
        loss_weights=weights,
        metrics={OUTPUT_SLICE: [MaskedAUC(name="auc"), MaskedBinaryAccuracy(name="accuracy")]},
        jit_compile=bool(cfg.xla),
    )
    return model


def predict_studies(model, files, cfg, split="validation"):
    """Runs a model over whole studies -> (study_keys, labels, list of prob arrays [S],
    list of slice-label arrays [S])."""
    import tensorflow as tf

    from radnet_tf import data

    keys, labels, probs, slice_labels = [], [], [], []
    with_masks = len(model.outputs) > 1
    n = cfg.input_size
    # One traced graph for every study length instead of an eager call per study.
    slice_probability = tf.function(
        lambda x: model(x, training=False)["slice_probability"],
        input_signature=[tf.TensorSpec([1, None, n, n, cfg.input_channels], tf.float32)],
    )
    for x, y, meta in data.eval_dataset(files, cfg, 1, with_masks=with_masks, split=split, with_keys=True):
        out = slice_probability(x).numpy()[0]
        s = int(x.shape[1])
        keys.append(meta["study_key"].numpy()[0].decode())
        labels.append(int(meta["label"].numpy()[0]))
        probs.append(out[:s])
        slice_labels.append(y["slice_probability"].numpy()[0][:s])
    return keys, labels, probs, slice_labels


def evaluate_model(model, files, cfg, out_dir):
    """Validation metrics at slice and CT level, written as CSV; returns the CT metrics."""
    import numpy as np
    import pandas as pd

    from radnet_tf.metrics import binary_metrics, ct_metrics, slice_table, study_table

    keys, labels, probs, slice_labels = predict_studies(model, files, cfg)
    if not keys:
        raise UserError("the validation split is empty; add studies or raise val_fraction")
    studies = study_table(keys, labels, probs, cfg.slice_threshold, cfg.ct_min_run)
    slices = slice_table(keys, probs, slice_labels)
    known = slices[slices.label >= 0]
    slice_m = binary_metrics(known.label, known.probability >= cfg.slice_threshold, known.probability)
    ct_m = ct_metrics(studies)
    table = pd.DataFrame([{"level": "slice", **slice_m}, {"level": "ct", **ct_m}])
    out = Path(out_dir)
    _atomic_csv(studies, out / "val_studies.csv")
    _atomic_csv(slices, out / "val_slices.csv")
    _atomic_csv(table, out / "val_metrics.csv")
    return ct_m, slice_m, np.mean(studies.label)


def calibrate_threshold(model, files, cfg):
    """Slice threshold for the CT rule, chosen on the training studies (whole studies, no
    augmentation) to maximise CT-level balanced accuracy; the held-out studies are not
    used, so their metrics stay honest. Returns the threshold (float)."""
    from radnet_tf.decision import choose_threshold, ct_score_np

    _, labels, probs, _ = predict_studies(model, files, cfg, split="train")
    known = [(ct_score_np(p, cfg.ct_min_run), y) for p, y in zip(probs, labels) if y in (0, 1)]
    if len({y for _, y in known}) < 2:
        raise UserError("calibrate_threshold needs positive and negative training studies")
    threshold = choose_threshold([s for s, _ in known], [y for _, y in known])
    print(f"[radnet] slice threshold from {len(known)} training studies: {threshold:.3f}", flush=True)
    return threshold


def validation_epochs(epochs, every):
    """1-based epochs to validate on: every `every`-th and the last (the best checkpoint
    sees it). The CSV log still has the validation columns from its first row (Keras'
    CSVLogger adds `val_*` columns when the first epoch has none; tested)."""
    return sorted({epochs} | set(range(every, epochs + 1, every)))


def _atomic_csv(frame, path):
    tmp = Path(f"{path}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def _atomic_save(model, path):
    tmp = Path(path).with_name(Path(path).stem + ".tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def train(cfg, progress=True):
    """Runs training as configured; returns a dict summary."""
    import keras
    import tensorflow as tf

    import radnet_tf
    from radnet_tf import data

    start = time.perf_counter()
    # The strategy first: MultiWorkerMirroredStrategy must configure collective ops before
    # any other TF call initialises the runtime.
    strategy = select_strategy()
    keras.utils.set_random_seed(cfg.seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass
    if cfg.mixed_precision:
        if tf.config.list_physical_devices("GPU"):
            keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            print("[radnet] mixed_precision ignored: no GPU", flush=True)
    records_path = cfg.data or prepare_synthetic(cfg, progress)
    seconds = {"data": time.perf_counter() - start}  # wall time per phase
    files = data.list_shards(records_path)
    check_geometry(files, cfg)
    n_train, n_val, n_pos = data.count_studies(files, cfg)
    if n_train == 0 or n_pos == 0 or n_pos == n_train:
        raise UserError(
            f"training split needs positive and negative studies (train={n_train}, positives={n_pos})"
        )

    global_batch = cfg.batch_size * strategy.num_replicas_in_sync
    steps = cfg.steps_per_epoch or max(1, math.ceil(n_train / global_batch))
    model_dir = Path(cfg.resolved_model_dir)
    if not _is_chief():
        # Other workers of a multi-worker run keep their own backups, checkpoints and logs
        # (they hold the same weights; writing one file from several processes fails).
        task = _task()
        model_dir = model_dir / "workers" / f"{task['type']}-{task['index']}"
    model_dir.mkdir(parents=True, exist_ok=True)
    manifest = Path(records_path) / "manifest.json" if tf.io.gfile.isdir(records_path) else None
    run_info = {
        "version": radnet_tf.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "global_batch": global_batch,
        "steps_per_epoch": steps,
        "train_studies": n_train,
        "val_studies": n_val,
        "data": records_path,
        "data_manifest_digest": json.loads(manifest.read_text()).get("digest") if manifest and manifest.exists() else None,
        "config_digest": cfg.digest(),
    }
    (model_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (model_dir / "run_info.json").write_text(json.dumps(run_info, indent=2))

    with strategy.scope():
        model = build_and_compile(cfg, steps, sync_batchnorm=strategy.num_replicas_in_sync > 1)
    patch_multi_worker_build(model, strategy)
    with_masks = len(model.outputs) > 1
    train_ds = data.train_dataset(files, cfg, global_batch, with_masks=with_masks, replica_batch=cfg.batch_size)
    val_ds = None
    # val_every = 0: no validation passes during training (the held-out studies are still
    # evaluated once at the end, on the final model).
    validate = bool(n_val) and cfg.val_every > 0
    if validate and strategy.num_replicas_in_sync > 1:
        # Every replica needs an equal, non-empty part of every validation batch.
        val_ds = data.eval_dataset(files, cfg, global_batch, with_masks=with_masks, fill_batches=True)
    elif validate:
        val_ds = data.eval_dataset(files, cfg, cfg.batch_size, with_masks=with_masks)
    monitor = cfg.monitor if validate else cfg.monitor.replace("val_", "")
    callbacks = [
        _atomic_backup_class()(str(model_dir / "backup")),
        keras.callbacks.ModelCheckpoint(str(model_dir / "best.keras"), monitor=monitor, mode="max", save_best_only=True),
        keras.callbacks.CSVLogger(str(model_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(model_dir / "logs"), profile_batch=0),
    ]
    if cfg.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=cfg.early_stopping_patience)
        )
    print(
        f"[radnet] training {cfg.variant} ({model.count_params():,} params) on {n_train} studies "
        f"({n_val} validation), {cfg.epochs} epochs x {steps} steps, global batch {global_batch}, "
        f"{type(strategy).__name__}",
        flush=True,
    )
    t0 = time.perf_counter()
    history = model.fit(
        train_ds,
        epochs=cfg.epochs,
        steps_per_epoch=steps,
        validation_data=val_ds,
        validation_freq=validation_epochs(cfg.epochs, cfg.val_every) if validate else 1,
        callbacks=callbacks,
        verbose=1 if progress else 2,
    )
    _atomic_save(model, model_dir / "final.keras")
    seconds["training"] = time.perf_counter() - t0
    summary = {"model_dir": str(model_dir), "records": records_path}
    best = model_dir / "best.keras"
    if validate and best.exists():
        model = keras.saving.load_model(best)
    if cfg.calibrate_threshold:
        t0 = time.perf_counter()
        cfg.slice_threshold = calibrate_threshold(model, files, cfg)
        summary["slice_threshold"] = cfg.slice_threshold
        (model_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        seconds["calibration"] = time.perf_counter() - t0
    if n_val:
        t0 = time.perf_counter()
        ct_m, slice_m, _ = evaluate_model(model, files, cfg, model_dir)
        summary["ct_metrics"] = {k: ct_m[k] for k in ("accuracy", "recall", "precision", "f1")}
        summary["slice_metrics"] = {k: slice_m[k] for k in ("accuracy", "recall", "precision", "f1")}
        seconds["evaluation"] = time.perf_counter() - t0
    summary["history"] = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    summary["seconds"]["total"] = round(time.perf_counter() - start, 1)
    return summary, model


def _task():
    """This process's task in TF_CONFIG ({"type": "worker", "index": 0} when absent)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = tf_config.get("task", {})
    return {"type": task.get("type", "worker"), "index": int(task.get("index", 0))}


def _is_chief():
    """The chief writes the model dir and exports: the "chief" task, else worker 0."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    task = _task()
    if "chief" in tf_config.get("cluster", {}):
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m radnet_tf.train",
        description="Train RADnet (no arguments: the built-in synthetic default).",
    )
    parser.add_argument("--config", help=f"flat YAML config (default: {DEFAULT_CONFIG.name} when present)")
    parser.add_argument("--data", help="TFRecord folder or glob (overrides config 'data')")
    parser.add_argument("--model-dir", help="output model dir (overrides config 'model_dir')")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bars")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    return parser


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    from radnet_tf.config import load_config

    path = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() else None)
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data={args.data}")
        if not Path(args.data).exists() and not any(c in args.data for c in "*?[") and "://" not in args.data:
            raise UserError(f"--data not found: {args.data}")
    if args.model_dir:
        overrides.append(f"model_dir={args.model_dir}")
    cfg = load_config(path, overrides)
    summary, model = train(cfg, progress=not args.quiet)
    if cfg.export and _is_chief():
        from radnet_tf.export import export_model

        t0 = time.perf_counter()
        summary["export"] = str(export_model(model, cfg, cfg.export_dir))
        summary["seconds"]["export"] = round(time.perf_counter() - t0, 1)
        summary["seconds"]["total"] = round(summary["seconds"]["total"] + summary["seconds"]["export"], 1)
    print("\n[radnet] done")
    print(f"  model dir : {summary['model_dir']}")
    print(f"  records   : {summary['records']}")
    if "export" in summary:
        print(f"  SavedModel: {summary['export']}")
    if "slice_threshold" in summary:
        print(f"  threshold : {summary['slice_threshold']:.3f} (slice probability, from the training studies)")
    if "ct_metrics" in summary:
        m = summary["ct_metrics"]
        print(
            "  held-out CT level: "
            + ", ".join(f"{k} {m[k]:.3f}" for k in ("accuracy", "recall", "precision", "f1"))
        )
    phases = {k: v for k, v in summary["seconds"].items() if k != "total"}
    print(
        f"  wall time : {summary['seconds']['total']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
        + ")"
    )
    return summary


if __name__ == "__main__":
    main()
