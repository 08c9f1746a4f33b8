import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, tiny_config


def test_smoke_training_writes_checkpoint_log_and_metrics(trained_tiny):
    cfg, summary, model, model_dir = trained_tiny
    history = pd.read_csv(model_dir / "history.csv")
    assert list(history.epoch) == [0, 1]
    assert np.isfinite(history.loss).all()
    # 2 x 2 steps of batch 2 are too few for a reliable decrease (the epoch means are
    # noise-dominated): this smoke run only checks that training did not diverge.
    assert history.loss.iloc[-1] < 1.5 * history.loss.iloc[0]
    assert (model_dir / "best.keras").exists() and (model_dir / "final.keras").exists()
    resolved = json.loads((model_dir / "config.json").read_text())
    assert resolved["input_size"] == 32 and resolved["variant"] == "radnet"
    info = json.loads((model_dir / "run_info.json").read_text())
    assert info["data_manifest_digest"] and info["version"]
    # validated every epoch: the model is the best epoch on held-out studies
    assert info["model_file"] == summary["model_file"] == "best.keras"
    metrics = pd.read_csv(model_dir / "val_metrics.csv")
    assert list(metrics.level) == [
        "slice",
        "ct",
        "mask",
    ]  # the phantom's records hold reference masks
    mask_row = metrics.set_index("level").loc["mask"]
    assert mask_row["n"] == summary["mask_metrics"]["n"] > 0
    assert 0.0 <= mask_row["dice"] <= 1.0 and mask_row["dice"] == pytest.approx(
        summary["mask_metrics"]["dice"]
    )
    studies = pd.read_csv(model_dir / "val_studies.csv")
    assert set(studies.columns) >= {
        "study_key",
        "label",
        "ct_positive",
        "ct_score",
        "longest_positive_run",
    }
    assert summary["ct_metrics"]["accuracy"] == pytest.approx(
        metrics.set_index("level").loc["ct", "accuracy"]
    )
    seconds = summary["seconds"]  # wall time per phase
    assert {"data", "training", "evaluation", "total"} <= set(seconds)
    assert (
        seconds["training"] > 0
        and seconds["total"] >= sum(v for k, v in seconds.items() if k != "total") - 0.2
    )


def test_validation_epochs_keep_every_kth_and_last():
    from radnet_tf.training.train import validation_epochs

    assert validation_epochs(6, 3) == [3, 6]
    assert validation_epochs(5, 1) == [1, 2, 3, 4, 5]
    assert validation_epochs(7, 3) == [3, 6, 7]
    assert validation_epochs(1, 4) == [1]


@pytest.mark.parametrize(
    "drops, expected",
    [
        ([0.5], [0.01, 0.01, 0.001, 0.001]),
        ([0.25, 0.75], [0.01, 0.001, 0.001, 0.0001]),
        ([], [0.01] * 4),
    ],
)
def test_learning_rate_drops_tenfold_at_the_given_fractions(drops, expected):
    from radnet_tf.training.train import learning_rate_schedule

    cfg = tiny_config(epochs=2, learning_rate=0.01, lr_drop_epochs=drops)
    lr = learning_rate_schedule(cfg, steps_per_epoch=2)  # 4 steps: drops after f * 4 steps
    got = [float(lr(step)) if callable(lr) else float(lr) for step in range(4)]
    assert got == pytest.approx(expected)


def test_csv_log_has_validation_columns_when_the_first_epoch_skips_validation(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
    log = tmp_path / "history.csv"
    model.fit(
        x,
        y,
        epochs=3,
        validation_data=(x, y),
        validation_freq=[2, 3],
        verbose=0,
        callbacks=[keras.callbacks.CSVLogger(str(log))],
    )
    history = pd.read_csv(log)
    assert list(history["val_loss"].isna()) == [True, False, False]


@pytest.mark.slow
def test_same_seed_same_metrics(tiny_records, tmp_path):
    from radnet_tf.training.train import train

    runs = []
    for name in ("a", "b"):
        cfg = tiny_config(
            data=str(tiny_records),
            model_dir=str(tmp_path / name),
            val_fraction=0.4,
            epochs=1,
            calibrate_threshold=True,
            calibrate_mask_threshold=True,
        )
        summary, model = train(cfg, progress=False)
        runs.append(
            (
                summary["history"],
                summary["slice_threshold"],
                summary["mask_threshold"],
                summary["ct_metrics"],
            )
        )
        # the calibrated thresholds are the ones written into the resolved config (and exported)
        saved = json.loads((tmp_path / name / "config.json").read_text())
        assert (
            saved["slice_threshold"] == summary["slice_threshold"]
            and 0.05 <= saved["slice_threshold"] <= 0.95
        )
        assert (
            saved["mask_threshold"]
            == summary["mask_threshold"]
            == summary["mask_metrics"]["threshold"]
        )
        mask_row = pd.read_csv(tmp_path / name / "val_metrics.csv").set_index("level").loc["mask"]
        assert mask_row["threshold"] == saved["mask_threshold"]
    assert runs[0] == runs[1]
    # the mask threshold is the candidate with the best gated Dice on the training studies
    from radnet_tf.records import dataset as data
    from radnet_tf.evaluation import scoring
    from radnet_tf.decision import MASK_THRESHOLD_CANDIDATES

    preds = scoring.predict_studies(
        scoring.keras_slice_fn(model, cfg, masks=True),
        data.list_shards(str(tiny_records)),
        cfg,
        "train",
        with_masks=True,
        mask_thresholds=MASK_THRESHOLD_CANDIDATES,
    )
    dice = [
        scoring.mask_scores(preds, cfg.slice_threshold, t)["dice"]
        for t in MASK_THRESHOLD_CANDIDATES
    ]
    assert max(dice) > 0 and cfg.mask_threshold in MASK_THRESHOLD_CANDIDATES
    assert scoring.mask_scores(preds, cfg.slice_threshold, cfg.mask_threshold)[
        "dice"
    ] == pytest.approx(max(dice))


@pytest.mark.slow
def test_val_every_zero_trains_without_validation_and_evaluates_at_the_end(tiny_records, tmp_path):
    from radnet_tf.training.train import train

    cfg = tiny_config(
        data=str(tiny_records), model_dir=str(tmp_path), val_fraction=0.4, epochs=1, val_every=0
    )
    summary, _ = train(cfg, progress=False)
    assert not any(k.startswith("val_") for k in summary["history"])
    studies = pd.read_csv(tmp_path / "val_studies.csv")
    assert summary["ct_metrics"]["accuracy"] == pytest.approx(
        (studies.ct_positive == (studies.label == 1)).mean()
    )
    metrics = pd.read_csv(tmp_path / "val_metrics.csv")
    assert summary["ct_metrics"]["accuracy"] == pytest.approx(
        metrics.set_index("level").loc["ct", "accuracy"]
    )


@pytest.mark.slow
def test_without_validation_every_loader_uses_the_model_that_was_evaluated(tiny_records, tmp_path):
    """Regression: with val_every 0 a best.keras chosen on *training* AUC was kept and
    preferred by export/evaluate over the final model that training evaluated."""
    from radnet_tf.serving.loader import load_trained
    from radnet_tf.training.train import train

    (tmp_path / "best.keras").write_text("an older run's file, not this run's model")
    cfg = tiny_config(
        data=str(tiny_records), model_dir=str(tmp_path), val_fraction=0.4, epochs=2, val_every=0
    )
    summary, model = train(cfg, progress=False)
    assert json.loads((tmp_path / "run_info.json").read_text())["model_file"] == "final.keras"
    loaded, loaded_cfg = load_trained(tmp_path)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), model.get_weights()))
    assert loaded_cfg.slice_threshold == cfg.slice_threshold


def test_backup_callback_relies_only_on_keras_members_that_exist():
    """AtomicBackupAndRestore overrides private Keras members (see its docstring); this
    fails on a Keras that renamed them instead of silently losing crash safety."""
    import keras

    from radnet_tf.training.train import _atomic_backup_class

    cb = _atomic_backup_class()("/tmp/unused-backup-dir")
    base = keras.callbacks.BackupAndRestore
    assert callable(getattr(base, "_save_model"))
    for name in ("_weights_path", "_training_metadata_path", "_current_epoch", "_last_batch_seen"):
        assert hasattr(cb, name), name
    assert keras.__version__.startswith("3.15.")


def _run(args, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "radnet_tf.train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        **kw,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config", "nope.yaml"], "config file not found: nope.yaml"),
        (["depth=41"], "depth must be 3n+4"),
        (["colour=blue"], "unknown config key 'colour'"),
        (["extra_windows=[[80]]"], "windows are [centre, width] pairs"),
        (["--data", "/nonexistent/records"], "--data not found"),
    ],
)
def test_bad_config_or_missing_data_is_one_line(args, message):
    proc = _run(args + ["export=false"])
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("[radnet] error:")]
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_trainers_export_carries_the_held_out_figures_without_a_model_dir(
    tiny_records, tmp_path
):
    """Regression: with no model_dir (the built-in default: {work_dir}/model) the export's
    `held_out` was read from the working directory and came out null."""
    from conftest import TINY_MODEL

    from radnet_tf.serving.loader import read_metadata
    from radnet_tf.training.train import main

    tiny = {**TINY_MODEL, "epochs": 1, "val_fraction": 0.4}
    summary = main(
        [
            "--config",
            str(REPO / "configs" / "default.yaml"),
            "--data",
            str(tiny_records),
            "--quiet",
            f"work_dir={tmp_path / 'work'}",
            f"export_dir={tmp_path / 'sm'}",
            "extra_windows=[]",
            *[f"{k}={v}" for k, v in tiny.items()],
        ]
    )
    assert summary["model_dir"] == str(tmp_path / "work" / "model")
    meta = read_metadata(summary["export"])
    rows = pd.read_csv(tmp_path / "work" / "model" / "val_metrics.csv").set_index("level")
    assert meta["held_out"] is not None and meta["held_out"]["ct_accuracy"] == pytest.approx(
        rows.loc["ct", "accuracy"]
    )
    assert meta["held_out"]["mask_threshold"] == meta["mask_threshold"] == summary["mask_threshold"]


@pytest.mark.slow
def test_calibration_studies_set_the_thresholds_and_are_not_trained_on(
    tiny_records, tmp_path, capsys
):
    from conftest import TINY_MODEL

    from radnet_tf.training.train import main

    tiny = {**TINY_MODEL, "epochs": 1, "val_fraction": 0.3}
    args = [
        "--config",
        str(REPO / "configs" / "default.yaml"),
        "--data",
        str(tiny_records),
        "--quiet",
        f"work_dir={tmp_path / 'work'}",
        "export=false",
        "extra_windows=[]",
        *[f"{k}={v}" for k, v in tiny.items()],
    ]
    summary = main(args + ["calibration_fraction=0.4"])
    info = json.loads((tmp_path / "work" / "model" / "run_info.json").read_text())
    assert (info["train_studies"], info["calibration_studies"], info["val_studies"]) == (4, 3, 3)
    assert summary["calibration_studies"] == 3 and 0 < summary["slice_threshold"] < 1
    assert (
        "[radnet] slice threshold from 3 calibration studies for 100-slice series"
        in capsys.readouterr().out
    )
    # checked before training: a split kept out but nothing calibrated says so, and a split
    # without both classes stops the run with one line (exit 2)
    from radnet_tf.config import load_config
    from radnet_tf.training.train import _check_splits

    counts = {"train": 4, "train_positive": 2, "calibration": 3, "calibration_positive": 1}
    off = ["calibrate_threshold=false", "calibrate_mask_threshold=false"]
    _check_splits(counts, load_config("default", ["calibration_fraction=0.4", *off]))
    assert (
        "calibration_fraction: 3 studies kept out of training, but no threshold is calibrated"
        in capsys.readouterr().out
    )
    with pytest.raises(SystemExit) as stop:
        main(args + ["calibration_fraction=0.3"])  # no study falls in calibration at this seed
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[radnet]")]
    assert stop.value.code == 2 and len(errors) == 1
    assert "calibration split needs positive and negative studies (calibration=0" in errors[0]
    proc = _run(
        args + ["calibration_fraction=0.3", "calibrate_threshold=false"]
    )  # the mask threshold alone
    errors = [line for line in proc.stderr.splitlines() if line.startswith("[radnet] error:")]
    assert (
        proc.returncode == 2
        and len(errors) == 1
        and "the calibration split holds no study" in errors[0]
    )


def _tiny_args(records, model_dir, epochs):
    keys = tiny_config(val_fraction=0.4, epochs=epochs, steps_per_epoch=3)
    fields = [
        "input_size",
        "out_spacing",
        "depth",
        "growth_rate",
        "initial_filters",
        "lstm_units",
        "head_filters",
        "crop_slices",
        "batch_size",
        "epochs",
        "steps_per_epoch",
        "val_fraction",
    ]
    return [
        "--data",
        str(records),
        "--model-dir",
        str(model_dir),
        "--quiet",
        "export=false",
        "val_every=1",
        *[f"{k}={getattr(keys, k)}" for k in fields],
    ]


@pytest.mark.slow
def test_killed_run_resumes_from_saved_epoch(tiny_records, tmp_path):
    model_dir = tmp_path / "model"
    args = _tiny_args(tiny_records, model_dir, epochs=4)
    proc = subprocess.Popen(
        [sys.executable, "-m", "radnet_tf.train", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = model_dir / "history.csv"
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if log.exists() and len(pd.read_csv(log)) >= 2:
                break
        except pd.errors.EmptyDataError:
            pass
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(pd.read_csv(log))
    assert 2 <= done < 4, "kill should land between epochs 2 and 4"
    resumed = _run(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epochs = list(pd.read_csv(log).epoch)
    assert epochs == list(range(4)), f"expected to continue at epoch {done}, log has {epochs}"


def _free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_with_identical_weights(tiny_records, tmp_path):
    import radnet_tf

    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    model_dir = tmp_path / "model"
    args = _tiny_args(tiny_records, model_dir, epochs=2)
    procs = []
    for index in range(2):
        tf_config = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "radnet_tf.train", *args],
                cwd=REPO,
                env={**os.environ, "TF_CONFIG": tf_config},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    info = json.loads((model_dir / "run_info.json").read_text())
    assert (
        info["strategy"] == "CollectiveAllReduceStrategy"
        and info["replicas"] == 2
        and info["global_batch"] == 4
    )
    chief = radnet_tf.load_model(model_dir / "final.keras")
    other = radnet_tf.load_model(model_dir / "workers" / "worker-1" / "final.keras")
    assert all(np.array_equal(a, b) for a, b in zip(chief.get_weights(), other.get_weights()))
    history = pd.read_csv(model_dir / "history.csv")
    assert len(history) == 2 and np.isfinite(history.val_slice_probability_auc).all()


@pytest.mark.slow
def test_synthetic_cache_is_reused_and_rebuilt_when_the_spec_changes(tmp_path):
    from radnet_tf.phantom.cache import prepare_synthetic

    cfg = tiny_config(work_dir=str(tmp_path), synth_studies=3, synth_slices=4, synth_matrix=64)
    rec = Path(prepare_synthetic(cfg, progress=False))
    first = {p.name: p.stat().st_mtime_ns for p in rec.glob("*.tfrecord.gz")}
    digest = json.loads((rec / "manifest.json").read_text())["digest"]
    assert len(first) == 3
    assert Path(prepare_synthetic(cfg, progress=False)) == rec  # cached: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in rec.glob("*.tfrecord.gz")} == first
    cfg.synth_seed = 1  # another cohort: studies and records are rebuilt, not mixed
    prepare_synthetic(cfg, progress=False)
    assert json.loads((rec / "manifest.json").read_text())["digest"] != digest
    assert json.loads((tmp_path / "synth" / "spec.json").read_text())["seed"] == 1


@pytest.mark.slow
def test_training_on_one_slice_studies_reports_the_shortened_rule(tmp_path):
    """2-D image data: every study is one slice, so the K = 3 rule is applied with K = 1 and
    the summary says so (it used to print recall 0: the rule could never fire)."""
    from conftest import one_slice_png_records
    from radnet_tf.training.train import train

    records = one_slice_png_records(tmp_path, 16)
    cfg = tiny_config(
        data=str(records),
        model_dir=str(tmp_path / "model"),
        val_fraction=0.4,
        epochs=1,
        steps_per_epoch=1,
    )
    summary, _ = train(cfg, progress=False)
    studies = pd.read_csv(tmp_path / "model" / "val_studies.csv")
    assert len(studies) and (studies.min_run_applied == 1).all()
    assert summary["short_studies_note"] == (
        f"{len(studies)} of {len(studies)} studies have fewer than K=3 slices; the CT rule was "
        "applied to them "
        "with K = their slice count"
    )
    slices = pd.read_csv(tmp_path / "model" / "val_slices.csv").set_index("study_key")
    assert studies.ct_positive.tolist() == [
        slices.loc[k, "probability"] >= cfg.slice_threshold for k in studies.study_key
    ]


@pytest.mark.slow
def test_subtype_training_adds_a_masked_subtype_loss(tiny_records, tmp_path):
    from radnet_tf.serving.loader import load_trained
    from radnet_tf.training.train import train

    cfg = tiny_config(
        data=str(tiny_records),
        model_dir=str(tmp_path),
        val_fraction=0.4,
        epochs=1,
        targets="subtypes",
        slice_loss_weight=2.0,
    )
    summary, model = train(cfg, progress=False)
    assert np.isfinite(summary["history"]["subtype_probability_loss"]).all()
    assert "subtype_probability" in model.output_names
    loaded, loaded_cfg = load_trained(tmp_path)
    assert loaded_cfg.targets == "subtypes" and "subtype_probability" in loaded.output_names


@pytest.mark.slow
def test_subtype_evaluation_tables_and_calibration(tiny_records, tmp_path):
    """With targets: subtypes the run calibrates one threshold per subtype on the training
    studies and writes per-subtype metrics, the confusion table and RSNA's log loss."""
    from radnet_tf.training.train import train

    cfg = tiny_config(
        data=str(tiny_records),
        model_dir=str(tmp_path),
        val_fraction=0.4,
        epochs=1,
        targets="subtypes",
        calibrate_threshold=True,
    )
    summary, _ = train(cfg, progress=False)
    assert len(cfg.subtype_thresholds) == 5 and all(0 < t < 1 for t in cfg.subtype_thresholds)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["subtype_thresholds"] == cfg.subtype_thresholds
    table = pd.read_csv(tmp_path / "val_subtypes.csv")
    assert list(table.subtype) == ["EDH", "IPH", "IVH", "SAH", "SDH"]
    rated = table.dropna(subset=["ct_roc_auc_lo"])
    assert (
        (rated.ct_roc_auc_lo <= rated.ct_roc_auc + 1e-9)
        & (rated.ct_roc_auc <= rated.ct_roc_auc_hi + 1e-9)
    ).all()
    confusion = pd.read_csv(tmp_path / "val_subtype_confusion.csv", index_col=0)
    assert confusion.shape == (5, 5) and list(confusion.columns) == [
        "EDH",
        "IPH",
        "IVH",
        "SAH",
        "SDH",
    ]
    assert 0 < summary["rsna_log_loss"] < 5


def test_rsna_log_loss_exact():
    from radnet_tf.evaluation.scoring import StudyPredictions, rsna_log_loss

    preds = StudyPredictions(
        keys=["a"],
        labels=[1],
        probs=[np.array([0.5, 0.9])],
        slice_labels=[np.array([1.0, -1.0])],
        subtype_probs=[np.full((2, 5), 0.5)],
        subtype_labels=[np.zeros(5)],
        slice_subtype_labels=[np.array([[1, 0, 0, 0, 0], [-1, -1, -1, -1, -1]], float)],
    )
    # known: any slice 0 (p 0.5, y 1) weight 2; subtypes slice 0, each p 0.5: every loss is ln 2
    assert rsna_log_loss(preds) == pytest.approx(np.log(2))


def test_one_prediction_pass_serves_calibration_and_evaluation(trained_tiny, tmp_path, monkeypatch):
    """The end of a run reads the records once (`predict_for_thresholds`); calibrating and
    evaluating on that pass chooses the same thresholds and writes the same tables as each
    predicting on its own."""
    import dataclasses

    from radnet_tf.decision import MASK_THRESHOLD_CANDIDATES
    from radnet_tf.records import dataset as data
    from radnet_tf.training import train as T

    cfg, _, model, _ = trained_tiny
    cfg = dataclasses.replace(cfg, calibrate_threshold=True, calibrate_mask_threshold=True)
    files = data.list_shards(cfg.data)
    reads = []
    real = data.eval_dataset
    monkeypatch.setattr(data, "eval_dataset", lambda *a, **k: reads.append(1) or real(*a, **k))
    preds = T.predict_for_thresholds(model, files, cfg)
    assert len(reads) == 1 and set(preds) == {"train", "validation"}
    assert set(MASK_THRESHOLD_CANDIDATES) <= set(preds["validation"].mask_thresholds)
    once, alone = dataclasses.replace(cfg), dataclasses.replace(cfg)
    assert T.calibrate_thresholds(model, files, once, preds["train"]) == (
        T.calibrate_thresholds(model, files, alone)
    )
    (tmp_path / "once").mkdir()
    (tmp_path / "alone").mkdir()
    T.evaluate_model(model, files, once, tmp_path / "once", preds["validation"])
    T.evaluate_model(model, files, alone, tmp_path / "alone")
    for table in ("val_metrics.csv", "val_studies.csv", "val_slices.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "once" / table), pd.read_csv(tmp_path / "alone" / table)
        )
    assert (
        T.predict_for_thresholds(
            model,
            files,
            dataclasses.replace(cfg, calibrate_threshold=False, calibrate_mask_threshold=False),
            validation=False,
        )
        == {}
    )
