"""`python -m radnet_tf.train`: train a RADnet-family model with tf.distribute.

    python -m radnet_tf.train                       # built-in default (make run)
    python -m radnet_tf.train --config configs/radnet.yaml --data RECORDS [key=value ...]

With no `--data` (and `data: ""` in the config) the built-in default runs end to end: a
synthetic cohort is generated and cached in `work_dir` (radnet_tf.phantom.cache), converted
to TFRecords, a model is trained, evaluated on the held-out studies and exported as a
SavedModel. Strategy and cluster role come from the environment (radnet_tf.training.distribute);
the global batch is `batch_size` x replicas; model and optimizer are built in the strategy
scope.

Model dir contents:
  config.json    the fully resolved config (with the calibrated slice and mask thresholds)
  run_info.json  versions, strategy, data manifest digest and `model_file`: the file that
                 IS the model (every loader follows it)
  final.keras    the model after the last epoch
  best.keras     only when validation runs during training: the best `monitor` epoch on
                 held-out studies (then `model_file`); never chosen on training data
  history.csv, logs/ (TensorBoard), backup/ (a killed run resumes from its last epoch),
  val_slices.csv / val_studies.csv / val_metrics.csv (held-out evaluation at the end)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from radnet_tf import atomic
from radnet_tf.cli import add_verbose, cli_main, say
from radnet_tf.contract import MASK_OUTPUTS, SUBTYPES
from radnet_tf.errors import UserError

DEFAULT_CONFIG = "default"  # the built-in config (radnet_tf/configs/default.yaml)
RUN_INFO = "run_info.json"


def trained_on_from(cfg, lineage=None) -> str:
    """What `cfg` trains on, for the metadata: the synthetic phantom or the user's records;
    after the source's own lineage when the run starts from a model (`init_from`)."""
    if not cfg.data:
        from radnet_tf.phantom.generate import GENERATOR_VERSION

        data = (
            f"synthetic phantom (radnet_tf.phantom.generate generator version {GENERATOR_VERSION})"
        )
    else:
        data = f"records: {cfg.data}"
    if cfg.distill_from:
        data += f" (slice targets distilled from {cfg.distill_from}, weight {cfg.distill_weight:g})"
    if lineage:
        return f"{lineage['trained_on']}; then fine-tuned on {data}"
    return data


def _atomic_backup_class():
    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        """BackupAndRestore whose files are written to temporary names and renamed.

        Keras writes `latest.weights.h5` in place; a kill during that write left an
        unreadable backup and a run that could not resume (seen in the kill test).

        Why private members: Keras 3.15 offers no public hook for where and how the backup
        is written; `_save_model` is the one method that writes it, and the paths and the
        epoch/batch counters it records are the private attributes `_weights_path`,
        `_training_metadata_path`, `_current_epoch` and `_last_batch_seen`
        (keras/src/callbacks/backup_and_restore.py). setup.py pins keras==3.15.*, and
        tests/test_train.py fails on a Keras without them.
        """

        def _save_model(self):
            Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
            with atomic.atomic_path(self._weights_path) as tmp:
                self.model.save_weights(filepath=str(tmp), overwrite=True)
            atomic.write_text(
                self._training_metadata_path,
                json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}),
            )

    return AtomicBackupAndRestore


def check_geometry(files, cfg):
    """Records must be on the model's grid; raises UserError otherwise."""
    from radnet_tf.records import dataset as data

    first = next(iter(data.read_studies(files[:1]).take(1)))
    size = int(first["image"].shape[1])
    if size != cfg.input_size:
        raise UserError(
            f"records hold {size}x{size} slices but input_size={cfg.input_size}; rebuild the "
            "records with the same config or set input_size"
        )


def learning_rate_schedule(cfg, steps_per_epoch):
    """cfg.learning_rate, divided by 10 after each fraction in cfg.lr_drop_epochs of the
    epochs x steps_per_epoch steps (x cfg.fine_tune_lr_factor when the run starts from a
    trained model). Returns a Keras schedule (a float when there is no drop)."""
    import keras

    # Keras' PiecewiseConstantDecay keeps values[i] while step <= boundaries[i] (step counts
    # from 0): a drop after n steps is the boundary n - 1.
    total = cfg.epochs * steps_per_epoch
    boundaries = sorted({max(1, int(round(f * total))) - 1 for f in cfg.lr_drop_epochs})
    base = cfg.learning_rate * (cfg.fine_tune_lr_factor if cfg.init_from else 1.0)
    values = [base / (10**i) for i in range(len(boundaries) + 1)]
    if not boundaries:  # PiecewiseConstantDecay needs a boundary
        return values[0]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def build_and_compile(cfg, steps_per_epoch, sync_batchnorm=False):
    from radnet_tf.modeling.model import build_model

    model = build_model(cfg, sync_batchnorm=sync_batchnorm)
    compile_model(model, cfg, learning_rate_schedule(cfg, steps_per_epoch))
    return model


def compile_model(model, cfg, learning_rate):
    """Compiles `model` with the run's losses, metrics and a fresh optimizer at
    `learning_rate` (float or Keras schedule)."""
    import keras

    from radnet_tf.contract import OUTPUT_SLICE
    from radnet_tf.modeling.losses import MaskedAUC, MaskedBinaryAccuracy, compile_losses

    losses, weights = compile_losses(cfg, model.output_names)
    if cfg.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate)
    else:
        optimizer = keras.optimizers.SGD(learning_rate, momentum=cfg.momentum)
    model.compile(
        optimizer=optimizer,
        loss=losses,
        loss_weights=weights,
        metrics={OUTPUT_SLICE: [MaskedAUC(name="auc"), MaskedBinaryAccuracy(name="accuracy")]},
        # XLA under JAX (how JAX runs); not under TensorFlow, where it measured 1.26x slower
        # per step on CPU (docs/experiments.md)
        jit_compile=keras.backend.backend() == "jax",
    )


def evaluate_model(model, files, cfg, out_dir, preds=None):
    """Held-out metrics at slice and CT level, written as CSV into `out_dir`.

    Args:
      preds: the held-out studies' `StudyPredictions` when already predicted (with mask
        counts at `cfg.mask_threshold` among others, `predict_for_thresholds`); else the
        model predicts them here.
    Returns:
      the scoring dict of `radnet_tf.evaluation.scoring.score_studies`.
    """
    import pandas as pd

    from radnet_tf.evaluation.scoring import (
        keras_slice_fn,
        mask_scores,
        predict_studies,
        rsna_log_loss,
        score_studies,
        subtype_tables,
    )

    with_masks = any(name in model.output_names for name in MASK_OUTPUTS)
    if preds is None:
        preds = predict_studies(
            keras_slice_fn(model, cfg, masks=with_masks), files, cfg, with_masks=with_masks
        )
    scored = score_studies(preds, cfg.slice_threshold, cfg.ct_min_run)
    if cfg.calibration_series_slices:
        scored["series_model"] = series_model_metrics(scored["studies"], cfg)
    rows = [{"level": "slice", **scored["slice_metrics"]}, {"level": "ct", **scored["ct_metrics"]}]
    masks = (
        mask_scores(preds, cfg.slice_threshold, cfg.mask_threshold)
        if preds.mask_thresholds
        else {"n": 0}
    )
    if masks["n"]:  # held-out studies with a reference mask (the phantom, NIfTI masks)
        scored["mask_metrics"] = {"threshold": cfg.mask_threshold, **masks}
        rows.append({"level": "mask", **scored["mask_metrics"]})
    table = pd.DataFrame(rows)
    out = Path(out_dir)
    if preds.subtype_probs:
        per_label, confusion = subtype_tables(
            preds, cfg.resolved_subtype_thresholds, cfg.ct_min_run
        )
        atomic.write_csv(per_label, out / "val_subtypes.csv")
        with atomic.atomic_path(out / "val_subtype_confusion.csv") as tmp:
            confusion.to_csv(tmp)
        scored["subtype_metrics"] = per_label
        scored["rsna_log_loss"] = rsna_log_loss(preds)
    atomic.write_csv(scored["studies"], out / "val_studies.csv")
    atomic.write_csv(scored["slices"], out / "val_slices.csv")
    atomic.write_csv(table, out / "val_metrics.csv")
    return scored


def series_model_metrics(studies, cfg) -> dict:
    """Held-out CT sensitivity and specificity at the threshold, modelled for series of
    `cfg.calibration_series_slices` slices (`decision.series_rates`) from the held-out
    studies (a `metrics.study_table` frame). Returns dict: series_slices, scale,
    sensitivity, specificity, balanced_accuracy (floats; NaN where a class is absent)."""
    import numpy as np

    from radnet_tf.decision import series_rates, series_scale

    known = studies[studies.label.isin([0, 1])]
    scale = series_scale(
        cfg.calibration_series_slices, float(np.median(known.num_slices)), cfg.ct_min_run
    )
    pos, neg = known[known.label == 1].ct_positive, known[known.label == 0].ct_positive
    r = float(pos.mean()) if len(pos) else float("nan")
    f = float(neg.mean()) if len(neg) else float("nan")
    sens, spec = (float(v) for v in series_rates(r, f, scale))
    return {
        "series_slices": cfg.calibration_series_slices,
        "scale": scale,
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2,
    }


def calibration_split(cfg) -> str:
    """The split the decision thresholds are calibrated on: "calibration" with
    `cfg.calibration_fraction` > 0, else "train"."""
    return "calibration" if cfg.calibration_fraction else "train"


def predict_for_thresholds(model, files, cfg, validation=True) -> dict:
    """One read of the records for the end of a run: {split: StudyPredictions} for the
    calibration split (`calibration_split`, when a threshold is calibrated) and, with
    `validation`, the held-out studies. Mask counts (models with auxiliary heads) at the
    candidate mask thresholds and at `cfg.mask_threshold`, the same for both splits."""
    from radnet_tf.decision import MASK_THRESHOLD_CANDIDATES
    from radnet_tf.evaluation.scoring import keras_slice_fn, predict_splits

    splits = (
        [calibration_split(cfg)] if cfg.calibrate_threshold or cfg.calibrate_mask_threshold else []
    )
    splits += ["validation"] if validation else []
    if not splits:
        return {}
    with_masks = any(name in model.output_names for name in MASK_OUTPUTS)
    thresholds = MASK_THRESHOLD_CANDIDATES if cfg.calibrate_mask_threshold else ()
    thresholds += () if cfg.mask_threshold in thresholds else (cfg.mask_threshold,)
    fn = keras_slice_fn(model, cfg, masks=with_masks)
    return predict_splits(fn, files, cfg, splits, with_masks, thresholds)


def calibrate_thresholds(model, files, cfg, preds=None) -> dict:
    """The decision thresholds, chosen on the calibration studies (`cfg.calibration_fraction`
    > 0: studies kept out of training) or else on the training studies (whole studies, no
    augmentation) in one prediction pass; the held-out studies are not used, so their
    metrics stay honest. Sets them on `cfg` and returns {name: value} of those set.

    * `cfg.calibrate_threshold`: the CT rule's slice threshold, maximising CT-level
      balanced accuracy. With `cfg.calibration_series_slices` = N > 0 it is chosen for
      series of N slices rather than for studies as long as the training studies (median
      length S): each such series counts as `decision.series_scale(N, S, K)` training
      studies (`decision.choose_threshold`). Subtype models get one threshold per subtype.
    * `cfg.calibrate_mask_threshold` (models with auxiliary heads): the mask threshold
      maximising the pixel Dice of the served lesion mask, gated by the slice threshold
      (`decision.lesion_mask_np`, `decision.choose_mask_threshold`) over
      `decision.MASK_THRESHOLD_CANDIDATES`.

    `preds`: the calibration studies' `StudyPredictions` when already predicted
    (`predict_for_thresholds`); else the model predicts them here.
    """
    from radnet_tf.decision import MASK_THRESHOLD_CANDIDATES
    from radnet_tf.evaluation.scoring import keras_slice_fn, predict_studies

    with_masks = cfg.calibrate_mask_threshold and any(
        name in model.output_names for name in MASK_OUTPUTS
    )
    split = calibration_split(cfg)
    studies = "training studies" if split == "train" else "calibration studies"
    if preds is None and (cfg.calibrate_threshold or cfg.calibrate_mask_threshold):
        preds = predict_studies(
            keras_slice_fn(model, cfg, masks=with_masks),
            files,
            cfg,
            split=split,
            with_masks=with_masks,
            mask_thresholds=MASK_THRESHOLD_CANDIDATES,
        )
    chosen = {}
    if cfg.calibrate_threshold:
        chosen.update(_calibrate_slice_thresholds(preds, cfg, studies))
    if cfg.calibrate_mask_threshold and not with_masks:
        say("mask threshold: not calibrated (the model has no auxiliary heads)")
    elif cfg.calibrate_mask_threshold:
        chosen.update(_calibrate_mask_threshold(preds, cfg, studies))
    return chosen


def _calibrate_slice_thresholds(preds, cfg, studies) -> dict:
    """Sets the CT rule's slice threshold (and subtype models' per-subtype thresholds) on
    `cfg` from the studies' predictions; returns {name: value}."""
    import numpy as np

    from radnet_tf.decision import choose_threshold, ct_score_np

    known = [
        (ct_score_np(p, cfg.ct_min_run), y)
        for p, y in zip(preds.probs, preds.labels)
        if y in (0, 1)
    ]
    if len({y for _, y in known}) < 2:
        return _calibrate_on_slices(
            preds, cfg, studies, "positive" if known and known[0][1] else "negative"
        )
    scale, target = _series_target(cfg, float(np.median([len(p) for p in preds.probs])), studies)
    scores, labels = [s for s, _ in known], [y for _, y in known]
    cfg.slice_threshold = choose_threshold(scores, labels, scale=scale)
    chosen = {"slice_threshold": cfg.slice_threshold}
    say(f"slice threshold from {len(known)} {studies}{target}: {cfg.slice_threshold:.3f}")
    if preds.subtype_probs:  # one threshold per subtype, the same way
        from radnet_tf.evaluation.scoring import calibrate_subtype_thresholds

        cfg.subtype_thresholds, fell_back = calibrate_subtype_thresholds(
            preds, cfg.ct_min_run, cfg.slice_threshold, scale
        )
        chosen["subtype_thresholds"] = cfg.subtype_thresholds
        note = (
            (
                f" ({', '.join(fell_back)}: no positive or no negative training study, the "
                "'any' threshold)"
            )
            if fell_back
            else ""
        )
        say(
            "subtype thresholds: "
            + ", ".join(f"{n} {t:.3f}" for n, t in zip(SUBTYPES, cfg.subtype_thresholds))
            + note
        )
    return chosen


def _calibrate_on_slices(preds, cfg, studies, only) -> dict:
    """Where every study is positive (`only`) but slices are labelled: the CT rule's
    threshold from the studies (positive) and each stretch of K or more consecutive negative
    slices within them (negative, `decision.negative_stretches`), for series of
    `cfg.calibration_series_slices` slices when set. Else the threshold is kept. Says which,
    and why."""
    import numpy as np

    from radnet_tf.decision import choose_threshold, ct_score_np, negative_stretches

    k = cfg.ct_min_run
    stretches = [
        s for p, y in zip(preds.probs, preds.slice_labels) for s in negative_stretches(p, y, k)
    ]
    why = f"the {studies} are all {only}"
    if only != "positive" or not stretches:
        say(
            f"slice threshold: not calibrated, kept at {cfg.slice_threshold:.3f} (the CT rule's "
            f"threshold needs negative and positive examples; {why}, with no stretch of {k} "
            "negative slices)"
        )
        return {}
    scores = [ct_score_np(p, k) for p in preds.probs] + [ct_score_np(s, k) for s in stretches]
    labels = [1] * len(preds.probs) + [0] * len(stretches)
    scale, target = _series_target(cfg, float(np.median([len(s) for s in stretches])), "stretches")
    cfg.slice_threshold = choose_threshold(scores, labels, scale=scale)
    say(
        f"slice threshold from {len(preds.probs)} {studies} and {len(stretches)} stretches of "
        f"{k} or more negative slices within them ({why}){target}: {cfg.slice_threshold:.3f}"
    )
    return {"slice_threshold": cfg.slice_threshold}


def _series_target(cfg, study_slices, what) -> tuple:
    """(scale, text) for calibrating for `cfg.calibration_series_slices`-slice series from
    examples of `study_slices` slices (`decision.series_scale`); (1.0, "") when not set."""
    from radnet_tf.decision import series_scale

    if not cfg.calibration_series_slices:
        return 1.0, ""
    scale = series_scale(cfg.calibration_series_slices, study_slices, cfg.ct_min_run)
    return scale, (
        f" for {cfg.calibration_series_slices}-slice series ({scale:.2f} x the {what}' "
        f"{study_slices:g} slices)"
    )


def _calibrate_mask_threshold(preds, cfg, studies) -> dict:
    """Sets the lesion mask's threshold on `cfg` (best Dice on the studies with a reference
    mask; kept when none has one); returns {"mask_threshold": value}."""
    from radnet_tf.evaluation.scoring import calibrate_mask_threshold

    masked = sum(c is not None for c in preds.mask_counts)
    cfg.mask_threshold = calibrate_mask_threshold(preds, cfg.slice_threshold, cfg.mask_threshold)
    if masked:
        say(
            f"mask threshold from {masked} {studies} with a reference mask (slices at or above "
            f"{cfg.slice_threshold:.3f}): {cfg.mask_threshold:.2f}"
        )
    else:
        say(
            f"mask threshold: kept at {cfg.mask_threshold:.2f} (none of the {studies} has a "
            "reference mask)"
        )
    return {"mask_threshold": cfg.mask_threshold}


def validation_epochs(epochs, every):
    """1-based epochs to validate on: every `every`-th and the last (the best checkpoint
    sees it). The CSV log still has the validation columns from its first row (Keras'
    CSVLogger adds `val_*` columns when the first epoch has none; tested)."""
    return sorted({epochs} | set(range(every, epochs + 1, every)))


def _atomic_save(model, path):
    with atomic.atomic_path(path) as tmp:
        model.save(str(tmp))


def _write_json(path, value):
    atomic.write_text(path, json.dumps(value, indent=2))


def train(cfg, progress=True):
    """Runs training as configured; returns (summary dict, the model that was evaluated
    and is exported: the file `run_info.json` names)."""

    from radnet_tf.machine import speed_line
    from radnet_tf.phantom.cache import prepare_synthetic
    from radnet_tf.preprocess import check_windows_available
    from radnet_tf.records import dataset as data
    from radnet_tf.training.distribute import patch_multi_worker_build

    start = time.perf_counter()
    cluster, strategy = _runtime(cfg)
    records_path = cfg.data or prepare_synthetic(cfg, progress)
    seconds = {"data": time.perf_counter() - start}  # wall time per phase
    files = data.list_shards(records_path)
    check_geometry(files, cfg)
    counts = data.count_studies(files, cfg)
    check_windows_available(
        cfg.preprocess_config().windows,
        counts["rendered_windows"],
        f"records {records_path}",
    )
    _check_splits(counts, cfg)
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync
    steps = cfg.steps_per_epoch or max(1, math.ceil(counts["train"] / global_batch))
    model_dir = _model_dir(cfg, cluster)
    run_info = _run_info(cfg, strategy, steps, counts, records_path)
    _write_json(model_dir / "config.json", cfg.to_dict())
    _write_json(model_dir / RUN_INFO, run_info)

    with strategy.scope():
        model = build_and_compile(cfg, steps, sync_batchnorm=strategy.num_replicas_in_sync > 1)
        if cfg.init_from:
            run_info.update(_initialise(model, cfg))
            _write_json(model_dir / RUN_INFO, run_info)
    patch_multi_worker_build(model, strategy)
    cal = f", {counts['calibration']} calibration" if counts["calibration"] else ""
    say(
        f"training {cfg.variant} ({model.count_params():,} params) on {counts['train']} studies "
        f"({counts['validation']} validation{cal}), {cfg.epochs} epochs x {steps} steps, "
        f"global batch {global_batch}, {type(strategy).__name__}"
    )
    t0 = time.perf_counter()
    model, model_file, history = _fit(
        model, files, cfg, strategy, steps, model_dir, counts, progress
    )
    seconds["training"] = time.perf_counter() - t0
    run_info["model_file"] = model_file
    _write_json(model_dir / RUN_INFO, run_info)
    summary = {
        "model_dir": str(model_dir),
        "records": records_path,
        "model_file": model_file,
        "trained_on": run_info["trained_on"],
    }
    t0 = time.perf_counter()
    preds = predict_for_thresholds(model, files, cfg, validation=counts["validation"] > 0)
    if preds:
        seconds["prediction"] = time.perf_counter() - t0
    if cfg.calibrate_threshold or cfg.calibrate_mask_threshold:
        t0 = time.perf_counter()
        summary.update(calibrate_thresholds(model, files, cfg, preds[calibration_split(cfg)]))
        if counts["calibration"]:
            summary["calibration_studies"] = counts["calibration"]
        _write_json(model_dir / "config.json", cfg.to_dict())
        seconds["calibration"] = time.perf_counter() - t0
    if counts["validation"]:
        t0 = time.perf_counter()
        held_out = evaluate_model(model, files, cfg, model_dir, preds["validation"])
        summary.update(_held_out_summary(held_out, cfg))
        seconds["evaluation"] = time.perf_counter() - t0
    summary["history"] = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    summary["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    summary["seconds"]["total"] = round(time.perf_counter() - start, 1)
    summary["is_chief"] = cluster.is_chief
    summary["machine"] = speed_line()
    return summary, model


def _initialise(model, cfg) -> dict:
    """Weights from `cfg.init_from` (radnet_tf.training.init_from), reported line by line;
    returns the run_info.json entries of the lineage."""
    from radnet_tf.training.init_from import initialise

    lineage = initialise(model, cfg)
    say(
        f"init_from {lineage['source']} (trained on {lineage['trained_on']}); learning rate "
        f"x {cfg.fine_tune_lr_factor:g}"
    )
    for line in lineage["adapted"]:
        say(f"  adapted: {line}")
    # Thresholds to be calibrated start at the source's calibrated ones: they stay where
    # this run's data cannot calibrate them (e.g. every study positive).
    for key, calibrated in (
        ("slice_threshold", cfg.calibrate_threshold),
        ("mask_threshold", cfg.calibrate_mask_threshold),
    ):
        if calibrated:
            setattr(cfg, key, lineage["source_thresholds"][key])
    return {"init_from": lineage, "trained_on": trained_on_from(cfg, lineage)}


def _runtime(cfg):
    """(cluster, strategy) from the environment, with seeds, determinism and precision set."""
    import keras
    import tensorflow as tf

    from radnet_tf.training.distribute import cluster_from_env, select_strategy

    cluster = cluster_from_env()
    # The strategy first: MultiWorkerMirroredStrategy must configure collective ops before
    # any other TF call initialises the runtime.
    strategy = select_strategy(cluster)
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    if cfg.mixed_precision:
        if tf.config.list_physical_devices("GPU"):
            keras.mixed_precision.set_global_policy("mixed_float16")
        else:
            say("mixed_precision ignored: no GPU")
    return cluster, strategy


def _check_splits(counts, cfg):
    """Refuses, before training, splits that training or calibration cannot use."""
    from radnet_tf.records.dataset import balance_of

    if balance_of(counts) == "slices":
        say(
            f"all {counts['train']} training studies are positive: batches are balanced by "
            f"slice labels (negative windows from {counts['train_negative_windows']} of them)"
        )
    n_cal, n_cal_pos = counts["calibration"], counts["calibration_positive"]
    if n_cal and not (cfg.calibrate_threshold or cfg.calibrate_mask_threshold):
        say(
            f"calibration_fraction: {n_cal} studies kept out of training, but no threshold is "
            "calibrated (calibrate_threshold and calibrate_mask_threshold are off)"
        )
    if cfg.calibration_fraction and cfg.calibrate_threshold and not 0 < n_cal_pos < n_cal:
        raise UserError(
            f"the calibration split needs positive and negative studies (calibration={n_cal}, "
            f"positives={n_cal_pos}): raise calibration_fraction or set it to 0"
        )
    if cfg.calibration_fraction and cfg.calibrate_mask_threshold and not n_cal:
        raise UserError(
            "the calibration split holds no study: raise calibration_fraction or set it to 0"
        )


def _model_dir(cfg, cluster) -> Path:
    """The model dir, created. Other workers of a multi-worker run keep their own backups,
    checkpoints and logs below it (they hold the same weights; writing one file from
    several processes fails)."""
    model_dir = Path(cfg.resolved_model_dir)
    if not cluster.is_chief:
        model_dir = model_dir / "workers" / cluster.task_name
    model_dir.mkdir(parents=True, exist_ok=True)
    return model_dir


def _run_info(cfg, strategy, steps, counts, records_path) -> dict:
    """What `run_info.json` records about a run (its `model_file` is set after training)."""
    import keras
    import tensorflow as tf

    import radnet_tf

    manifest = Path(records_path) / "manifest.json" if tf.io.gfile.isdir(records_path) else None
    digest = (
        json.loads(manifest.read_text()).get("digest") if manifest and manifest.exists() else None
    )
    return {
        "version": radnet_tf.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "global_batch": cfg.batch_size * strategy.num_replicas_in_sync,
        "steps_per_epoch": steps,
        "train_studies": counts["train"],
        "val_studies": counts["validation"],
        "calibration_studies": counts["calibration"],
        "data": records_path,
        "trained_on": trained_on_from(cfg),
        "data_manifest_digest": digest,
        "config_digest": cfg.digest(),
        "model_file": None,  # set when training has finished
    }


def _fit(model, files, cfg, strategy, steps, model_dir, counts, progress):
    """Trains `model`; returns (the model the run keeps, its file name, keras History).
    With validation during training the best `monitor` epoch on held-out studies is kept."""
    import keras

    from radnet_tf.records import dataset as data

    with_masks = len(model.outputs) > 1
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync
    train_ds = data.train_dataset(
        files,
        cfg,
        global_batch,
        with_masks=with_masks,
        replica_batch=cfg.batch_size,
        balance=data.balance_of(counts),
        teacher=_teacher(cfg, files, counts["rendered_windows"]),
    )
    # val_every = 0: no validation passes during training (the held-out studies are still
    # evaluated once at the end, on the final model).
    validate = bool(counts["validation"]) and cfg.val_every > 0
    val_ds = None
    if validate and strategy.num_replicas_in_sync > 1:
        # Every replica needs an equal, non-empty part of every validation batch.
        val_ds = data.eval_dataset(
            files, cfg, global_batch, with_masks=with_masks, fill_batches=True
        )
    elif validate:
        val_ds = data.eval_dataset(files, cfg, cfg.batch_size, with_masks=with_masks)
    if cfg.init_from and cfg.freeze_backbone_steps and not _resuming(model_dir):
        _fit_frozen(model, train_ds, cfg, strategy, steps, progress)
    history = model.fit(
        train_ds,
        epochs=cfg.epochs,
        steps_per_epoch=steps,
        validation_data=val_ds,
        validation_freq=validation_epochs(cfg.epochs, cfg.val_every) if validate else 1,
        callbacks=_callbacks(cfg, model_dir, validate),
        verbose=1 if progress else 2,
    )
    _atomic_save(model, model_dir / "final.keras")
    if validate and (model_dir / "best.keras").exists():
        return keras.saving.load_model(model_dir / "best.keras"), "best.keras", history
    return model, "final.keras", history


def _teacher(cfg, files, rendered):
    """The teacher's slice probabilities on the training studies (`distill_from`), or None."""
    if not cfg.distill_from:
        return None
    from radnet_tf.training.distill import teacher_probabilities

    return teacher_probabilities(cfg, files, rendered)


def _resuming(model_dir) -> bool:
    """True when the run resumes from a backup (its weights come from there)."""
    backup = Path(model_dir) / "backup"
    return backup.is_dir() and any(backup.iterdir())


def _fit_frozen(model, train_ds, cfg, strategy, steps, progress):
    """`cfg.freeze_backbone_steps` steps at the run's first learning rate with the encoder
    frozen (its BatchNorm layers in inference mode), then the encoder unfrozen and the model
    recompiled with a fresh optimizer for the main run."""
    from radnet_tf.training.init_from import backbone_layers

    frozen = backbone_layers(model)
    for layer in frozen:
        layer.trainable = False
    say(f"backbone frozen ({len(frozen)} layers) for {cfg.freeze_backbone_steps} steps")
    with strategy.scope():
        compile_model(model, cfg, cfg.learning_rate * cfg.fine_tune_lr_factor)
    model.fit(
        train_ds, epochs=1, steps_per_epoch=cfg.freeze_backbone_steps, verbose=1 if progress else 2
    )
    for layer in frozen:
        layer.trainable = True
    with strategy.scope():
        compile_model(model, cfg, learning_rate_schedule(cfg, steps))


def _callbacks(cfg, model_dir, validate) -> list:
    """Backup (crash-safe resume), CSV and TensorBoard logs; with validation, the best
    checkpoint and early stopping, chosen on held-out studies only."""
    import keras

    callbacks = [
        _atomic_backup_class()(str(model_dir / "backup")),
        keras.callbacks.CSVLogger(str(model_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(model_dir / "logs"), profile_batch=0),
    ]
    if validate:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                str(model_dir / "best.keras"), monitor=cfg.monitor, mode="max", save_best_only=True
            )
        )
        if cfg.early_stopping_patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=cfg.monitor, mode="max", patience=cfg.early_stopping_patience
                )
            )
    elif cfg.early_stopping_patience:
        say("early_stopping_patience ignored: no validation during training (val_every: 0)")
    return callbacks


def _held_out_summary(scored, cfg) -> dict:
    """The summary entries of the held-out evaluation (`evaluate_model`'s result)."""
    from radnet_tf.evaluation.scoring import short_study_note

    keys = ("accuracy", "recall", "precision", "f1")
    out = {
        "ct_metrics": {k: scored["ct_metrics"][k] for k in keys},
        "slice_metrics": {k: scored["slice_metrics"][k] for k in keys},
    }
    for key in ("series_model", "mask_metrics"):
        if key in scored:
            out[key] = scored[key]
    out["short_studies_note"] = short_study_note(
        scored["short_studies"], len(scored["studies"]), cfg.ct_min_run
    )
    if "subtype_metrics" in scored:
        sub = scored["subtype_metrics"]
        out["subtype_ct_auc"] = dict(zip(sub.subtype, sub.ct_roc_auc))
        out["rsna_log_loss"] = scored["rsna_log_loss"]
    return out


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m radnet_tf.train",
        description="Train RADnet (no arguments: the built-in synthetic default).",
    )
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        help="flat YAML file, or a built-in config: default (the default), radnet, "
        "densenet, densenet_a",
    )
    parser.add_argument("--data", help="TFRecord folder or glob (overrides config 'data')")
    parser.add_argument("--model-dir", help="output model dir (overrides config 'model_dir')")
    parser.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bars")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    return add_verbose(parser)


def print_summary(summary):
    """The result lines of a training run."""
    say("done")
    say(f"model dir : {summary['model_dir']} (model: {summary['model_file']})")
    say(f"records   : {summary['records']}")
    if "export" in summary:
        say(f"SavedModel: {summary['export']}")
    if "slice_threshold" in summary:
        target = (
            f", for {summary['series_model']['series_slices']}-slice series"
            if "series_model" in summary
            else ""
        )
        source = (
            f"{summary['calibration_studies']} calibration studies kept out of training"
            if "calibration_studies" in summary
            else "the training studies"
        )
        say(
            f"threshold : {summary['slice_threshold']:.3f} (slice probability, from "
            f"{source}{target})"
        )
    if "subtype_ct_auc" in summary:
        say(
            "held-out CT ROC AUC per subtype: "
            + ", ".join(f"{k} {v:.3f}" for k, v in summary["subtype_ct_auc"].items())
            + f"; RSNA weighted log loss (slices) {summary['rsna_log_loss']:.4f}"
        )
    if summary.get("short_studies_note"):
        say(f"note      : {summary['short_studies_note']}")
    if "ct_metrics" in summary:
        m = summary["ct_metrics"]
        one_class = (
            ""
            if m["recall"] == m["recall"]
            else (" (every held-out study is negative: recall, precision and F1 are undefined)")
        )
        say(
            "held-out CT level: "
            + ", ".join(f"{k} {m[k]:.3f}" for k in ("accuracy", "recall", "precision", "f1"))
            + one_class
        )
    if "mask_metrics" in summary:
        m = summary["mask_metrics"]
        say(
            f"held-out masks (>= {m['threshold']:.2f} on positive slices): Dice {m['dice']:.3f} "
            f"(positive studies' mean {m['study_dice']:.3f}), "
            f"recall {m['recall']:.3f}, precision {m['precision']:.3f}; "
            f"negative studies with a mask {100 * m['negative_studies_with_mask']:.1f}%"
        )
    if "series_model" in summary:
        m = summary["series_model"]
        say(
            f"as {m['series_slices']}-slice series (modelled, x{m['scale']:.2f}): "
            + ", ".join(
                f"{k.replace('_', ' ')} {m[k]:.3f}"
                for k in ("sensitivity", "specificity", "balanced_accuracy")
            )
        )
    if "machine" in summary:
        say(f"machine   : {summary['machine']}")
    phases = {k: v for k, v in summary["seconds"].items() if k != "total"}
    say(
        f"wall time : {summary['seconds']['total']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
        + ")"
    )


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    from radnet_tf.config import load_config, to_yaml

    path = args.config
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data={args.data}")
        if (
            not Path(args.data).exists()
            and not any(c in args.data for c in "*?[")
            and "://" not in args.data
        ):
            raise UserError(f"--data not found: {args.data}")
    if args.model_dir:
        overrides.append(f"model_dir={args.model_dir}")
    cfg = load_config(path, overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return None
    summary, model = train(cfg, progress=not args.quiet)
    if cfg.export and summary["is_chief"]:
        from radnet_tf.serving.export import export_model, held_out_from

        t0 = time.perf_counter()
        summary["export"] = str(
            export_model(
                model,
                cfg,
                cfg.export_dir,
                trained_on=summary["trained_on"],
                held_out=held_out_from(summary["model_dir"]),
            )
        )
        summary["seconds"]["export"] = round(time.perf_counter() - t0, 1)
        summary["seconds"]["total"] = round(
            summary["seconds"]["total"] + summary["seconds"]["export"], 1
        )
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
