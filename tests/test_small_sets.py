"""Rendered-image windows carried and checked; small real sets: slice-label balancing,
one-class evaluation, undefined metrics."""

import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from radnet_tf.errors import UserError
from radnet_tf.evaluation.metrics import binary_metrics
from radnet_tf.preprocess import check_windows_available
from radnet_tf.records import dataset as data


def png_records(folder, slice_labels, window=(40, 80)):
    """PNG studies (random pixels) with the given per-slice labels (one list per study),
    converted to records on the tiny grid in `folder / "records"`; returns that path."""
    from PIL import Image

    from radnet_tf.records.convert import image_tasks, run_local

    rows = ["image,label,study_id,slice_index"]
    for s, labels in enumerate(slice_labels):
        for i, label in enumerate(labels):
            pixels = np.random.default_rng([s, i]).uniform(size=(64, 64)) * 255
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{s}_{i}.png")
            rows.append(f"{s}_{i}.png,{label},p{s},{i}")
    (folder / "images.csv").write_text("\n".join(rows) + "\n")
    tasks = image_tasks(folder / "images.csv", folder, window)
    run_local(
        tasks, [], folder / "records", 1, 1, tiny_config().preprocess_config(), progress=False
    )
    return folder / "records"


def test_windows_inside_the_rendered_one_pass_and_others_are_refused_in_one_line():
    check_windows_available([(40.0, 80.0)], [(40.0, 80.0)], "records x")
    check_windows_available([(40.0, 80.0)], [], "records x")  # HU as scanned
    check_windows_available([(40.0, 78.0)], [(40.0, 80.0)], "records x")
    with pytest.raises(UserError) as err:
        check_windows_available([(40.0, 80.0), (80.0, 200.0)], [(40.0, 80.0)], "records x")
    assert str(err.value).startswith(
        "records x were rendered with window 40/80 (HU 0 to 80 only) but the model's windows "
        "40/80, 80/200 need HU -20 to 180; use a model"
    )
    assert "\n" not in str(err.value)


def test_image_records_carry_their_window(tmp_path):
    records = png_records(tmp_path, [[0, 1, 0], [0, 0, 0]], window=(40, 80))
    files = data.list_shards(str(records))
    study = next(iter(data.read_studies(files)))
    np.testing.assert_array_equal(study["rendered_window"].numpy(), [40.0, 80.0])
    assert data.rendered_windows(files) == [(40.0, 80.0)]
    assert json.loads((records / "manifest.json").read_text())["rendered_windows"] == ["40/80"]
    assert data.count_studies(files, tiny_config())["rendered_windows"] == [(40.0, 80.0)]


def test_dicom_records_hold_hu_as_scanned(tiny_records):
    assert data.rendered_windows(data.list_shards(str(tiny_records))) == []


def test_negative_starts_marks_windows_without_a_positive_slice():
    starts = data.negative_starts(tf.constant([0, 0, 1, 0, 0, 0], tf.int64), 2)
    np.testing.assert_array_equal(starts.numpy(), [True, False, False, True, True])
    short = data.negative_starts(tf.constant([0, 1], tf.int64), 4)  # whole study, one window
    np.testing.assert_array_equal(short.numpy(), [False])


def test_a_negative_window_of_a_positive_study_holds_no_positive_slice():
    labels = tf.constant([1, 0, 0, 0, 1, 0], tf.int64)
    study = {
        "image": tf.zeros([6, 2, 2], tf.int16),
        "slice_labels": labels,
        "negative_window": tf.constant(True),
    }
    for i in range(40):
        crop = data.crop_window(study, 2, seed=tf.constant([i, 7], tf.int64))
        assert crop["slice_labels"].numpy().tolist() == [0, 0]
    positive = data.crop_window({**study, "negative_window": tf.constant(False)}, 2, seed=None)
    assert positive["slice_labels"].numpy().max() == 1


@pytest.mark.parametrize(
    "counts, expected",
    [
        ({"train": 4, "train_positive": 2, "train_negative_windows": 0}, "studies"),
        ({"train": 4, "train_positive": 4, "train_negative_windows": 3}, "slices"),
    ],
)
def test_balance_by_studies_or_by_slice_labels(counts, expected):
    assert data.balance_of(counts) == expected


@pytest.mark.parametrize(
    "counts",
    [
        {"train": 4, "train_positive": 4, "train_negative_windows": 0},
        {"train": 4, "train_positive": 0, "train_negative_windows": 0},
        {"train": 0, "train_positive": 0, "train_negative_windows": 0},
    ],
)
def test_no_negative_examples_is_refused(counts):
    with pytest.raises(UserError, match="training needs positive and negative examples"):
        data.balance_of(counts)


def test_undefined_rates_are_nan_not_zero():
    all_negative = binary_metrics([0, 0, 0], [0, 1, 0])
    assert np.isnan(all_negative["recall"]) and all_negative["specificity"] == 2 / 3
    all_positive = binary_metrics([1, 1], [1, 0])
    assert np.isnan(all_positive["specificity"]) and all_positive["recall"] == 0.5


@pytest.mark.slow
def test_all_positive_studies_balance_and_calibrate_by_slice_labels(tmp_path, capsys):
    from radnet_tf.training.train import train

    labels = [[0, 0, 1, 1, 0, 0, 0]] * 6
    records = png_records(tmp_path, labels)
    cfg = tiny_config(
        data=str(records),
        model_dir=str(tmp_path / "m"),
        val_fraction=0.3,
        epochs=1,
        calibrate_threshold=True,
        crop_slices=2,
    )
    summary, _ = train(cfg, progress=False)
    out = capsys.readouterr().out
    assert "training studies are positive: batches are balanced by slice labels" in out
    assert "stretches of 3 or more negative slices within them (the training studies are all" in out
    assert 0 < summary["slice_threshold"] < 1


@pytest.mark.slow
def test_a_two_window_model_is_refused_on_rendered_records(tmp_path, capsys):
    from radnet_tf.training.train import main

    records = png_records(tmp_path, [[0, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    with pytest.raises(SystemExit):
        main(["--config", "default", "--data", str(records), "input_size=32", "out_spacing=8.0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "were rendered with window 40/80 (HU 0 to 80 only)" in err[0]


@pytest.mark.slow
def test_evaluate_on_negative_studies_reports_specificity(trained_tiny, tmp_path, capsys):
    import pandas as pd

    from radnet_tf.evaluation.evaluate import main

    cfg, _, _, model_dir = trained_tiny
    records = png_records(tmp_path, [[0, 0, 0]] * 3)
    main(
        [
            "--model",
            str(model_dir),
            "--data",
            str(records),
            "--split",
            "all",
            "--bootstrap",
            "5",
            "--out",
            str(tmp_path / "ev"),
        ]
    )
    out = capsys.readouterr().out
    assert "CT specificity" in out and "every study is negative" in out
    summary = pd.read_csv(next((tmp_path / "ev").glob("*/summary.csv"))).set_index("level")
    assert summary.loc["ct@target", "threshold_basis"].startswith("not computed: no positive")
    assert np.isnan(summary.loc["ct", "recall"])


def test_the_brain_window_builtin_reads_rendered_images_and_the_default_does_not():
    from radnet_tf.serving import loader

    rendered = [(40.0, 80.0)]
    brain = loader.load("builtin-brain").cfg.preprocess_config().windows
    check_windows_available(brain, rendered, "records x")
    with pytest.raises(UserError, match="need HU -20 to 180"):
        check_windows_available(
            loader.load("builtin").cfg.preprocess_config().windows, rendered, "records x"
        )


def test_building_records_from_rendered_images_names_the_models_that_can_read_them(
    tmp_path, capsys
):
    from PIL import Image

    from radnet_tf.datasets.build import main

    for i in range(2):
        Image.fromarray(np.full((32, 32), 100 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "images.csv").write_text("image,label\n0.png,0\n1.png,1\n")
    main(
        [
            "--images-csv",
            str(tmp_path / "images.csv"),
            "--images-root",
            str(tmp_path),
            "--image-window",
            "40",
            "80",
            "--out",
            str(tmp_path / "rec"),
            "--workers",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "note: rendered with window 40/80: the records hold only the HU inside it" in out


def test_negative_stretches_are_runs_of_k_negative_slices():
    from radnet_tf.decision import negative_stretches

    probs = np.arange(10) / 10
    labels = [0, 0, 0, 1, 0, 0, -1, 0, 0, 0]
    runs = negative_stretches(probs, labels, 3)
    assert [r.tolist() for r in runs] == [[0.0, 0.1, 0.2], [0.7, 0.8, 0.9]]
    assert negative_stretches(probs, labels, 4) == []


def test_all_positive_studies_calibrate_against_their_negative_stretches(capsys):
    from radnet_tf.evaluation.scoring import StudyPredictions
    from radnet_tf.training.train import _calibrate_on_slices

    cfg = tiny_config(slice_threshold=0.3, ct_min_run=2)
    preds = StudyPredictions(
        ["a", "b"],
        [1, 1],
        [np.array([0.1, 0.2, 0.9, 0.8]), np.array([0.7, 0.6, 0.3, 0.2, 0.1])],
        [np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0, 0])],
    )
    # studies' CT scores 0.8, 0.6 (positive); stretches 0.1, 0.2 (negative): t = 0.5 or 0.4
    assert _calibrate_on_slices(preds, cfg, "training studies", "positive") == {
        "slice_threshold": 0.5
    }
    assert "from 2 training studies and 2 stretches of 2 or more negative slices" in (
        capsys.readouterr().out
    )
    nothing = StudyPredictions(["a"], [1], [np.array([0.2, 0.4])], [np.array([1, 0])])
    assert _calibrate_on_slices(nothing, cfg, "training studies", "positive") == {}
    assert "not calibrated, kept at 0.500" in capsys.readouterr().out
