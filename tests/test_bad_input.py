"""Bad input as a table: every case gets one exact line `[radnet] error: ...` and exit code 2
from the CLI (no traceback), or INVALID_ARGUMENT with a named reason from a serving
signature run as TensorFlow Serving runs it (TF1 session loader, no Python-side checks).
Then the sane cases that are accepted with a report.
"""

import copy
import json
import os
import re
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from conftest import REPO, tiny_config, write_tiny_series

# ----------------------------------------------------------------------------- helpers


def _series(folder, num_slices=3, seed=0):
    write_tiny_series(folder, num_slices, seed)
    return sorted(folder.iterdir())


def _edit_all(files, **values):
    for f in files:
        ds = pydicom.dcmread(f)
        for key, value in values.items():
            if value is None:
                delattr(ds, key)
            else:
                setattr(ds, key, value)
        ds.save_as(f)


def _study(tmp_path, edit=None):
    folder = tmp_path / "study"
    folder.mkdir()
    files = _series(folder)
    if edit:
        edit(files)
    return folder


def _truncate(files):
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])


def _matrix(files):
    small = copy.deepcopy(pydicom.dcmread(files[0]))
    small.Rows = small.Columns = 32
    small.PixelData = np.zeros((32, 32), np.uint16).tobytes()
    small.save_as(files[0])


def _same_position(files):
    ds = pydicom.dcmread(files[1])
    ds.ImagePositionPatient = pydicom.dcmread(files[0]).ImagePositionPatient
    ds.save_as(files[1])


def _tilt(files):
    for f in files:
        ds = pydicom.dcmread(f)
        z = float(ds.ImagePositionPatient[2])
        ds.ImagePositionPatient = [
            float(ds.ImagePositionPatient[0]),
            float(ds.ImagePositionPatient[1]) + 0.3 * z,
            z,
        ]
        ds.save_as(f)


def _labels(tmp_path, text):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return str(path)


def _stale_records(tmp_path):
    """A records folder built with the tiny grid, then a rerun with the paper's grid."""
    from radnet_tf.records.convert import (
        build_source,
        claim_output,
        discover_tasks,
        load_label_tables,
    )

    root = tmp_path / "dicom"
    (root / "s1").mkdir(parents=True)
    _series(root / "s1")
    labels = _labels(tmp_path, "study_id,label\ns1,0\n")
    tasks, _ = discover_tasks(root, *load_label_tables(labels))
    claim_output(tmp_path / "out", build_source(tiny_config().preprocess_config(), tasks))
    return [
        "--dicom-root",
        str(root),
        "--labels",
        labels,
        "--out",
        str(tmp_path / "out"),
        "--workers",
        "1",
    ]


def _model_dir(tmp_path, run_info):
    d = tmp_path / "model"
    d.mkdir()
    if run_info is not None:
        (d / "run_info.json").write_text(json.dumps(run_info))
    return str(d)


# ------------------------------------------------------------ CLI cases: (argv, exact line)
# Each case: id -> function(tmp_path) -> (module, argv, regex of the whole error line).

CASES = {
    # the reader, through `inspect_series`
    "missing-folder": lambda t: (
        "inspect_series",
        [str(t / "nope")],
        r".*nope: no such file or folder",
    ),
    "empty-folder": lambda t: (
        "inspect_series",
        [str(_study(t, lambda f: [p.unlink() for p in f]))],
        r".*study: folder is empty",
    ),
    "not-dicom": lambda t: (
        "inspect_series",
        [str(_study(t, lambda f: [p.write_text("hello") for p in f]))],
        r".*study: no DICOM files found \(3 files looked at\)",
    ),
    "truncated-pixels": lambda t: (
        "inspect_series",
        [str(_study(t, _truncate))],
        r".*IM\d+\.dcm: cannot decode pixel data \(The number of bytes of pixel data is less than "
        r"expected.*",
    ),
    "no-pixel-data": lambda t: (
        "inspect_series",
        [str(_study(t, lambda f: _edit_all(f, PixelData=None)))],
        r".*study: no axial CT image series \(files skipped: no pixel data\)",
    ),
    "modality-mr": lambda t: (
        "inspect_series",
        [str(_study(t, lambda f: _edit_all(f, Modality="MR")))],
        r".*study: no axial CT image series \(files skipped: modality MR is not CT\)",
    ),
    "sagittal": lambda t: (
        "inspect_series",
        [str(_study(t, lambda f: _edit_all(f, ImageOrientationPatient=[0, 1, 0, 0, 0, -1])))],
        r".*study: no axial CT image series \(files skipped: not an axial slice\)",
    ),
    "too-few-slices": lambda t: (
        "inspect_series",
        [str(_study(t)), "--min-slices", "4"],
        r".*study: series has 3 slice\(s\); at least 4 needed",
    ),
    "matrix-mismatch": lambda t: (
        "inspect_series",
        [str(_study(t, _matrix))],
        r".*IM\d+\.dcm: matrix 64x64 differs from the series' 32x32|.*IM\d+\.dcm: matrix 32x32 "
        r"differs from the series' 64x64",
    ),
    "pixel-spacing-zero": lambda t: (
        "inspect_series",
        [str(_study(t, lambda f: _edit_all(f, PixelSpacing=[0, 0])))],
        r".*IM\d+\.dcm: PixelSpacing must be two numbers > 0 \(mm\)\. Received: \[0\.0, 0\.0\]",
    ),
    "rescale-slope-huge": lambda t: (
        "inspect_series",
        [str(_study(t, lambda f: _edit_all(f, RescaleSlope=1e6)))],
        r".*IM\d+\.dcm: HU reach \d+ \(max\) with RescaleSlope 1e\+06, RescaleIntercept -1024: "
        r"outside the plausible CT range.*",
    ),
    "rescale-slope-zero": lambda t: (
        "inspect_series",
        [str(_study(t, lambda f: _edit_all(f, RescaleSlope=0)))],
        r".*IM\d+\.dcm: RescaleSlope 0\.0 / RescaleIntercept -1024\.0: slope must be > 0 and both "
        r"finite",
    ),
    "rescale-intercept-far": lambda t: (
        "inspect_series",
        [str(_study(t, lambda f: _edit_all(f, RescaleIntercept=-100000)))],
        r".*IM\d+\.dcm: HU reach -\d+ \(max\) .*outside the plausible CT range.*",
    ),
    "same-position": lambda t: (
        "inspect_series",
        [str(_study(t, _same_position))],
        r".*IM\d+\.dcm: two slices at the same position",
    ),
    "tilt-refused": lambda t: (
        "inspect_series",
        [str(_study(t, _tilt)), "--tilt", "reject"],
        r".*study: gantry tilt of 16\.7 degrees; tilted series are refused .*",
    ),
    # the converters
    "out-remote": lambda t: (
        "build_tfrecords",
        ["--dicom-root", str(t), "--labels", "x.csv", "--out", "gs://bucket/records"],
        r"--out must be a local folder \(remote paths such as gs:// are not supported\)\. Received: gs://bucket/records",
    ),
    "shards-zero": lambda t: (
        "build_tfrecords",
        ["--dicom-root", str(t), "--labels", "x.csv", "--out", str(t / "o"), "--shards", "0"],
        r"--shards and --workers must be >= 1\. Received: --shards 0 --workers \d+",
    ),
    "labels-missing": lambda t: (
        "build_tfrecords",
        ["--dicom-root", str(t), "--labels", str(t / "none.csv"), "--out", str(t / "o")],
        r"cannot read labels file .*none\.csv: .*No such file or directory.*",
    ),
    "labels-bad-value": lambda t: (
        "build_tfrecords",
        [
            "--dicom-root",
            str(t),
            "--labels",
            _labels(t, "study_id,label\na,2\n"),
            "--out",
            str(t / "o"),
        ],
        r".*labels\.csv: label must be 0 or 1 \(row 2\)",
    ),
    "labels-no-column": lambda t: (
        "build_tfrecords",
        [
            "--dicom-root",
            str(t),
            "--labels",
            _labels(t, "study,label\na,1\n"),
            "--out",
            str(t / "o"),
        ],
        r".*labels\.csv: missing column\(s\) \['study_id'\]",
    ),
    "stale-records": lambda t: (
        "build_tfrecords",
        _stale_records(t),
        r".*out holds records built from other input \(geometry differ\); use another --out or "
        r"delete the folder",
    ),
    "images-no-window": lambda t: (
        "build_tfrecords",
        ["--images-csv", "x.csv", "--out", str(t / "o")],
        r"--images-csv needs --image-window CENTER WIDTH \(the window the images were rendered "
        r"with\)",
    ),
    # the config (rejected before any work starts)
    "config-threshold-zero": lambda t: (
        "train",
        ["slice_threshold=0"],
        r"slice_threshold must be in \(0, 1\)\. Received: slice_threshold=0\.0",
    ),
    "config-lr-drops": lambda t: (
        "train",
        ["lr_drop_epochs=[a]"],
        r"lr_drop_epochs must be a list of fractions of the run in \(0, 1\), e\.g\. \[0\.33, "
        r"0\.67\]\. Received: lr_drop_epochs=\['a'\]",
    ),
    "config-positive-fraction": lambda t: (
        "train",
        ["positive_fraction=1.5"],
        r"positive_fraction must be in \[0, 1\]\. Received: positive_fraction=1\.5",
    ),
    "config-mask-weights": lambda t: (
        "train",
        ["mask_loss_weights=[1, 1]"],
        r"mask_loss_weights needs 3 numbers >= 0 \(one per auxiliary head\)\. Received: "
        r"mask_loss_weights=\[1, 1\]",
    ),
    "config-epochs-zero": lambda t: (
        "train",
        ["epochs=0"],
        r"epochs must be an integer >= 1\. Received: epochs=0",
    ),
    "config-old-and-new-key": lambda t: (
        "train",
        ["window=4", "crop_slices=4"],
        r"config key 'window' was renamed 'crop_slices'; give only 'crop_slices'",
    ),
    "config-unknown-key": lambda t: (
        "train",
        ["colour=blue"],
        r"unknown config key 'colour' \(known: .*\)",
    ),
    "config-file-missing": lambda t: (
        "train",
        ["--config", str(t / "nope.yaml")],
        r"config file not found: .*nope\.yaml \(built-in configs: default, radnet, densenet, "
        r"densenet_a, finetune, finetune_brain, brain_window\)",
    ),
    "config-not-number": lambda t: (
        "train",
        ["learning_rate=fast"],
        r"learning_rate must be a number\. Received: learning_rate='fast'",
    ),
    # other CLIs
    "predict-no-model": lambda t: (
        "predict",
        [str(t), "--model", str(t / "none")],
        r"no SavedModel at .*none \(expected saved_model\.pb or numbered versions\)",
    ),
    "export-no-run-info": lambda t: (
        "export",
        [_model_dir(t, None)],
        r".*model: no run_info\.json \(not a radnet-tf model dir\); give the \.keras file instead",
    ),
    "export-unfinished-run": lambda t: (
        "export",
        [_model_dir(t, {"model_file": None})],
        r".*model: run_info\.json names no model file \(training did not finish\)",
    ),
    "evaluate-threshold": lambda t: (
        "evaluate",
        ["--model", "m", "--data", "d", "--out", "o", "--threshold", "1.5"],
        r"--threshold must be in \(0, 1\)\. Received: 1\.5",
    ),
    "evaluate-min-run": lambda t: (
        "evaluate",
        ["--model", "m", "--data", "d", "--out", "o", "--min-run", "0"],
        r"--min-run must be >= 1\. Received: 0",
    ),
    "synth-zero-studies": lambda t: (
        "synth",
        ["--out", str(t), "--studies", "0"],
        r"--studies and --slices must be >= 1 and --matrix >= 32",
    ),
}

# The public command paths (`python -m ...`); each answers with its implementation's main.
MODULES = {
    "inspect_series": "radnet_tf.inspect_series",
    "build_tfrecords": "pipelines.build_tfrecords",
    "train": "radnet_tf.train",
    "predict": "radnet_tf.predict",
    "export": "radnet_tf.export",
    "evaluate": "radnet_tf.evaluate",
    "synth": "radnet_tf.synth",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_bad_input_is_one_exact_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)
    module, argv, pattern = CASES[case](tmp_path)
    main = importlib.import_module(MODULES[module]).main
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("[radnet] error: ")]
    assert len(errors) == 1, err
    message = errors[0][len("[radnet] error: ") :]
    assert re.fullmatch(pattern, message), message


def test_a_real_cli_process_prints_one_line_without_tensorflow_noise(tmp_path):
    """A CLI that loads TensorFlow, in its own process: stderr is exactly the error line."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "radnet_tf.evaluate",
            "--model",
            str(tmp_path),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"[radnet] error: no TFRecord shards match {tmp_path}/*.tfrecord.gz"
    ]


@pytest.mark.slow
def test_a_successful_run_with_worker_processes_prints_only_its_result_line(tiny_cohort, tmp_path):
    """TensorFlow's start-up lines stay out of the output of the command and of its
    spawned worker processes (each imports TensorFlow on its own)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    (tmp_path / "tiny.yaml").write_text("input_size: 32\nout_spacing: 8.0\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.build_tfrecords",
            "--dicom-root",
            str(tiny_cohort / "dicom"),
            "--labels",
            str(tiny_cohort / "labels.csv"),
            "--out",
            str(tmp_path / "r"),
            "--workers",
            "2",
            "--shards",
            "2",
            "--config",
            str(tmp_path / "tiny.yaml"),
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 1 and proc.stdout.startswith(
        "[radnet] wrote 10 studies"
    )


@pytest.mark.parametrize("module", sorted(set(MODULES.values()) | {"radnet_tf.serving.client"}))
def test_help_answers_without_importing_tensorflow(module):
    code = (
        "import sys, importlib\n"
        f"main = importlib.import_module({module!r}).main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TF-LOADED' if 'tensorflow' in sys.modules else 'TF-NOT-LOADED')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--verbose" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "TF-NOT-LOADED"


# --------------------------------------------- serving signatures, as a server runs them


@pytest.fixture(scope="module")
def session_signatures(tmp_path_factory):
    """(session, signature_defs) of a tiny untrained export under the TF1 loader."""
    import tensorflow as tf

    from radnet_tf.serving.export import export_model
    from radnet_tf.modeling.model import build_model

    cfg = tiny_config(extra_windows=[[80, 200]])
    path = export_model(build_model(cfg), cfg, tmp_path_factory.mktemp("export"), warmup=False)
    sess = tf.compat.v1.Session(graph=tf.Graph())
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path))
    yield sess, meta.signature_def
    sess.close()


def _f32(*shape, fill=0.5):
    return np.full(shape, fill, np.float32)


SERVING_CASES = {
    "slices-rank-3": (
        "serving_default",
        {"slices": _f32(2, 32, 32)},
        r"slices must be float32 \[S, 32, 32, 2\]: wrong rank",
    ),
    "slices-rank-5": (
        "serving_default",
        {"slices": _f32(1, 2, 32, 32, 2)},
        r"slices must be float32 \[S, 32, 32, 2\]: wrong rank",
    ),
    "slices-one-channel": (
        "serving_default",
        {"slices": _f32(2, 32, 32, 1)},
        r"wrong slice size or channel count",
    ),
    "slices-wrong-size": (
        "serving_default",
        {"slices": _f32(2, 40, 40, 2)},
        r"wrong slice size or channel count",
    ),
    "slices-zero": ("serving_default", {"slices": _f32(0, 32, 32, 2)}, r"request has zero slices"),
    "slices-too-many": (
        "serving_default",
        {"slices": _f32(1025, 32, 32, 2)},
        r"request has more than 1024 slices",
    ),
    "slices-nan": (
        "serving_default",
        {"slices": _f32(2, 32, 32, 2, fill=np.nan)},
        r"slices contain NaN or Inf",
    ),
    "hu-rank-2": (
        "predict_hu",
        {"hu": np.zeros((40, 40), np.int16), "pixel_spacing": np.array([1, 1], np.float32)},
        r"hu must be int16 \[S, H, W\]: wrong rank",
    ),
    "hu-zero-slices": (
        "predict_hu",
        {"hu": np.zeros((0, 40, 40), np.int16), "pixel_spacing": np.array([1, 1], np.float32)},
        r"request has zero slices",
    ),
    "hu-tiny-slices": (
        "predict_hu",
        {"hu": np.zeros((2, 4, 40), np.int16), "pixel_spacing": np.array([1, 1], np.float32)},
        r"hu slices must be at least 8x8",
    ),
    "spacing-zero": (
        "predict_hu",
        {"hu": np.zeros((2, 40, 40), np.int16), "pixel_spacing": np.array([0, 0.5], np.float32)},
        r"pixel_spacing must be > 0 and finite",
    ),
    "spacing-nan": (
        "predict_hu",
        {
            "hu": np.zeros((2, 40, 40), np.int16),
            "pixel_spacing": np.array([np.nan, 0.5], np.float32),
        },
        r"pixel_spacing must be > 0 and finite",
    ),
    "spacing-three-values": (
        "predict_hu",
        {"hu": np.zeros((2, 40, 40), np.int16), "pixel_spacing": np.array([1, 1, 1], np.float32)},
        r"pixel_spacing must be float32 \[2\] \(row, col mm\)",
    ),
}


@pytest.mark.parametrize("case", sorted(SERVING_CASES))
def test_serving_signature_refuses_with_invalid_argument(session_signatures, case):
    import tensorflow as tf

    sess, sigs = session_signatures
    name, inputs, pattern = SERVING_CASES[case]
    sig = sigs[name]
    fetches = {k: v.name for k, v in sig.outputs.items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        sess.run(fetches, {sig.inputs[k].name: v for k, v in inputs.items()})


def test_serving_signature_accepts_a_good_request_after_bad_ones(session_signatures):
    sess, sigs = session_signatures
    sig = sigs["predict_hu"]
    out = sess.run(
        {k: v.name for k, v in sig.outputs.items()},
        {
            sig.inputs["hu"].name: np.zeros((2, 40, 40), np.int16),
            sig.inputs["pixel_spacing"].name: np.array([3.4, 3.4], np.float32),
        },
    )
    assert out["slice_probabilities"].shape == (2,) and int(out["min_run_applied"]) == 2


@pytest.mark.parametrize(
    "hu,spacing,message",
    [
        (
            np.zeros((2, 8, 8), np.float32),
            (1, 1),
            r"hu must hold integer HU \(int16\)\. Received: dtype=float32",
        ),
        (np.zeros((8, 8), np.int16), (1, 1), r"hu must be \[S, H, W\]\. Received: shape=\(8, 8\)"),
        (np.zeros((0, 8, 8), np.int16), (1, 1), r"hu has zero slices"),
        (
            np.full((1, 8, 8), 40000, np.int32),
            (1, 1),
            r"hu values must fit int16\. Received: range \[40000, 40000\]",
        ),
        (
            np.zeros((1, 8, 8), np.int16),
            (0, 1),
            r"pixel_spacing must be 2 positive numbers \(row, col mm\)\. Received: \[0\.0, 1\.0\]",
        ),
    ],
)
def test_client_refuses_bad_requests_before_sending(hu, spacing, message):
    from radnet_tf.errors import UserError
    from radnet_tf.serving.client import grpc_request, rest_request

    for build in (rest_request, grpc_request):
        with pytest.raises(UserError) as info:
            build(hu, spacing)
        assert re.fullmatch(message, str(info.value)), str(info.value)


# ----------------------------------------------------------- accepted, with a report


def test_two_series_reads_the_larger_and_lists_the_other(tmp_path):
    from radnet_tf.io.dicom import read_series

    _series(tmp_path / "a", num_slices=4, seed=1)
    _series(tmp_path / "b", num_slices=2, seed=2)
    series = read_series(tmp_path)
    assert series.num_slices == 4
    assert (
        sorted(r for _, r in series.skipped)
        == ["another series: fewer slices than the chosen series"] * 2
    )
    assert [c["decision"] for c in series.series_choice] == [
        "chosen",
        "fewer slices than the chosen series",
    ]


def test_odd_orientation_slice_is_skipped_and_listed(tmp_path):
    from radnet_tf.io.dicom import read_series

    files = _series(tmp_path, num_slices=4)
    ds = pydicom.dcmread(files[0])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9950042, 0.0998334]  # 5.7 degrees off
    ds.save_as(files[0])
    series = read_series(tmp_path)
    assert series.num_slices == 3
    assert series.skipped == [(files[0].name, "orientation differs from the rest of the series")]


def test_missing_rescale_tags_read_as_identity_and_reported(tmp_path):
    from radnet_tf.io.dicom import read_series

    files = _series(tmp_path, num_slices=3)
    stored = np.stack([pydicom.dcmread(f).pixel_array.astype(np.int32) for f in files])
    _edit_all(files, RescaleSlope=None, RescaleIntercept=None)
    series = read_series(tmp_path)
    assert series.warnings == [
        "3 slice(s) without RescaleSlope/RescaleIntercept: read as slope 1, intercept 0"
    ]
    assert series.summary()["warnings"] == series.warnings
    assert int(series.hu.max()) == int(max(stored.max(), 0))
