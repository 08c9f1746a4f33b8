import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO

FORBIDDEN = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "CudnnRNN", "CudnnRNNV2", "CudnnRNNV3"}


@pytest.fixture(scope="module")
def exported(trained_tiny, tmp_path_factory):
    from radnet_tf.serving.export import export_model

    cfg, _, model, _ = trained_tiny
    root = tmp_path_factory.mktemp("saved_models")
    path = export_model(model, cfg, root)
    return cfg, model, path


def _graph_ops(meta_graph):
    ops = {n.op for n in meta_graph.graph_def.node}
    for f in meta_graph.graph_def.library.function:
        ops |= {n.op for n in f.node_def}
    return ops


def test_versioned_atomic_layout_and_metadata(exported):
    from radnet_tf.serving.export import export_model, next_version
    from radnet_tf.serving.loader import read_metadata

    cfg, model, path = exported
    assert path.name == "1" and (path / "saved_model.pb").exists()
    assert [p.name for p in path.parent.iterdir()] == ["1"]  # no temporary leftovers
    meta = read_metadata(path)
    assert (
        meta["ct_min_run"] == 3 and meta["slice_threshold"] == 0.5 and meta["window_center"] == 40.0
    )
    assert meta["config_digest"] == cfg.digest()
    assert meta["trained_on"] == "unknown" and meta["held_out"] is None  # export_model was not told
    assert next_version(path.parent) == 2
    second = export_model(model, cfg, path.parent, warmup=False)
    assert second.name == "2"


def test_lesion_rule_of_reads_the_export_or_the_old_default():
    from radnet_tf.serving.loader import lesion_rule_of

    assert lesion_rule_of({}) == (0.5, False)  # exports from before the lesion mask
    assert lesion_rule_of({"mask_threshold": 0.04, "mask_opening": True}) == (0.04, True)


def test_export_cli_records_the_held_out_figures_and_predict_warns_on_empty_masks(
    trained_tiny, tiny_cohort, tmp_path, capsys
):
    import pandas as pd

    from radnet_tf.serving import export
    from radnet_tf.serving import predict
    from radnet_tf.serving import loader

    _, _, _, model_dir = trained_tiny
    export.main([str(model_dir), "--out", str(tmp_path / "sm")])
    meta = loader.read_metadata(tmp_path / "sm" / "1")
    rows = pd.read_csv(model_dir / "val_metrics.csv").set_index("level")
    held = meta["held_out"]
    assert held["studies"] == rows.loc["ct", "n"] and held["threshold"] == meta["slice_threshold"]
    assert held["ct_accuracy"] == pytest.approx(rows.loc["ct", "accuracy"])
    assert held["mask_dice"] == pytest.approx(rows.loc["mask", "dice"])
    assert (
        held["mask_threshold"] == rows.loc["mask", "threshold"] == meta["mask_threshold"]
    )  # measured as served
    capsys.readouterr()
    result = predict.main(
        [str(tiny_cohort / "dicom" / "synth-0001"), "--model", str(tmp_path / "sm")]
    )
    assert result["model"]["held_out"] == held
    err = capsys.readouterr().err
    warned = (
        f"warning: this model's masks scored Dice {held['mask_dice']:.3f} on its held-out studies"
        in err
    )
    assert warned == (held["mask_dice"] < predict.UNRELIABLE_MASK_DICE)


@pytest.mark.parametrize("slices", [1, 2, 17])
def test_saved_model_matches_keras(exported, slices):
    from radnet_tf.decision import ct_decision_np

    cfg, model, path = exported
    loaded = tf.saved_model.load(str(path))
    x = np.random.default_rng(slices).uniform(size=(slices, 32, 32, 1)).astype(np.float32)
    out = loaded.signatures["serving_default"](slices=tf.constant(x))
    ref = model(x[None])
    np.testing.assert_allclose(
        out["slice_probabilities"].numpy(), ref["slice_probability"].numpy()[0], atol=1e-5
    )
    fused = (ref["mask_1"] + ref["mask_2"] + ref["mask_3"]).numpy()[0, ..., 0] / 3
    np.testing.assert_allclose(out["masks"].numpy(), fused, atol=1e-5)
    rule = ct_decision_np(out["slice_probabilities"].numpy(), 0.5, 3)
    assert bool(out["ct_positive"]) == rule["ct_positive"]
    assert int(out["longest_positive_run"]) == rule["longest_positive_run"]
    assert int(out["min_run_applied"]) == min(3, slices) == rule["min_run_applied"]


@pytest.mark.parametrize("opening", [False, True])
def test_served_lesion_mask_is_the_gated_rule_at_the_exported_thresholds(
    trained_tiny, tmp_path, opening
):
    """lesion_mask = masks >= mask threshold on slices >= slice threshold, in the graph, as
    decision.lesion_mask_np computes it; thresholds picked so that every part of the rule
    matters (a slice gated out though its mask passes, pixels below the mask threshold)."""
    import dataclasses

    from radnet_tf.decision import lesion_mask_np
    from radnet_tf.serving.export import export_model
    from radnet_tf.serving.loader import read_metadata

    cfg, _, model, _ = trained_tiny
    cfg = dataclasses.replace(cfg, mask_opening=opening)
    x = np.random.default_rng(3).uniform(size=(6, 32, 32, 1)).astype(np.float32)
    ref = model(x[None])
    probs = ref["slice_probability"].numpy()[0]
    fused = (ref["mask_1"] + ref["mask_2"] + ref["mask_3"]).numpy()[0, ..., 0] / 3
    slice_t = float(np.sort(probs)[3] - 1e-4)  # 3 of 6 slices pass
    mask_t = float(np.quantile(fused, 0.6))
    path = export_model(
        model, cfg, tmp_path, threshold=slice_t, mask_threshold=mask_t, warmup=False
    )
    assert (
        read_metadata(path)["mask_threshold"] == mask_t
        and read_metadata(path)["mask_opening"] == opening
    )
    out = tf.saved_model.load(str(path)).signatures["serving_default"](slices=tf.constant(x))
    served = out["lesion_mask"].numpy()
    assert served.dtype == bool and served.shape == (6, 32, 32)
    np.testing.assert_array_equal(
        served,
        lesion_mask_np(
            out["masks"].numpy(), out["slice_probabilities"].numpy(), mask_t, slice_t, opening
        ),
    )
    below = out["slice_probabilities"].numpy() < slice_t
    assert not served[below].any() and (out["masks"].numpy()[below] >= mask_t).any()  # gated out
    above = served[~below]
    assert above.any() and not above.all()  # the mask threshold cuts within positive slices


def test_raw_hu_signature_runs_training_preprocessing(exported):
    from radnet_tf import preprocess

    cfg, model, path = exported
    loaded = tf.saved_model.load(str(path))
    hu = np.random.default_rng(0).integers(-1024, 100, size=(3, 70, 60)).astype(np.int16)
    out = loaded.signatures["predict_hu"](hu=tf.constant(hu), pixel_spacing=tf.constant([3.5, 3.5]))
    x = preprocess.preprocess_study(hu, [3.5, 3.5], cfg.preprocess_config())
    ref = model(x[None])["slice_probability"].numpy()[0]
    np.testing.assert_allclose(out["slice_probabilities"].numpy(), ref, atol=1e-5)


def test_tf1_session_loader_gives_same_outputs_and_core_ops_only(exported):
    cfg, model, path = exported
    x = np.random.default_rng(5).uniform(size=(4, 32, 32, 1)).astype(np.float32)
    expected = tf.saved_model.load(str(path)).signatures["serving_default"](slices=tf.constant(x))
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path))
        sig = meta.signature_def["serving_default"]
        got = sess.run({k: v.name for k, v in sig.outputs.items()}, {sig.inputs["slices"].name: x})
        ops = _graph_ops(meta)
    for key in ("slice_probabilities", "masks", "ct_score"):
        np.testing.assert_allclose(got[key], expected[key].numpy(), atol=1e-6)
    assert not ops & FORBIDDEN
    assert all(hasattr(tf.raw_ops, op) for op in ops), sorted(
        op for op in ops if not hasattr(tf.raw_ops, op)
    )


def test_saved_model_cli_lists_signatures(exported):
    _, _, path = exported
    cli = REPO / ".venv" / "bin" / "saved_model_cli"
    cmd = (
        [str(cli)]
        if cli.exists()
        else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    )
    out = subprocess.run(
        cmd + ["show", "--dir", str(path), "--all"], capture_output=True, text=True, check=True
    ).stdout
    for name in (
        "serving_default",
        "predict_hu",
        "slice_probabilities",
        "ct_positive",
        "pixel_spacing",
    ):
        assert name in out


def test_without_tensorflow_serving_api_the_export_has_no_warmup_and_says_so(
    trained_tiny, tmp_path, monkeypatch, capsys
):
    """A plain `pip install` (no serving extra) still exports; only the warm-up is left out."""
    import sys

    from radnet_tf.serving.export import export_model

    cfg, _, model, _ = trained_tiny
    monkeypatch.setitem(sys.modules, "tensorflow_serving.apis", None)  # import fails
    path = export_model(model, cfg, tmp_path)
    assert (path / "saved_model.pb").exists() and not (path / "assets.extra").exists()
    assert capsys.readouterr().err == (
        "[radnet] note: tensorflow-serving-api is not installed, so the export has no warm-up "
        "requests (pip install 'radnet-tf[serving]' adds them)\n"
    )


def test_warmup_requests_are_prediction_logs(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    _, _, path = exported
    logs = []
    for raw in tf.data.TFRecordDataset(str(path / "assets.extra" / "tf_serving_warmup_requests")):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(raw.numpy())
        logs.append(log.predict_log.request)
    assert [r.model_spec.signature_name for r in logs] == ["serving_default", "predict_hu"]
    shape = tf.make_ndarray(logs[0].inputs["slices"]).shape
    assert shape[1:] == (32, 32, 1)


def test_client_requests_match_serving_formats_and_run_end_to_end(exported):
    from radnet_tf.serving.client import grpc_request, parse_outputs, rest_request

    _, _, path = exported
    hu = np.random.default_rng(1).integers(-1024, 90, size=(3, 40, 44)).astype(np.int16)
    body = rest_request(hu, (3.4, 3.4))
    assert json.loads(json.dumps(body))["signature_name"] == "predict_hu"
    assert np.array(body["inputs"]["hu"]).shape == (3, 40, 44) and body["inputs"][
        "pixel_spacing"
    ] == [3.4, 3.4]
    request = grpc_request(hu, (3.4, 3.4), model="radnet", version=1)
    assert request.model_spec.name == "radnet" and request.model_spec.version.value == 1
    assert request.inputs["hu"].dtype == tf.int16.as_datatype_enum
    # Execute the built request against the export through the TF1 loader (as the server).
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path))
        sig = meta.signature_def[request.model_spec.signature_name]
        feeds = {sig.inputs[k].name: tf.make_ndarray(v) for k, v in request.inputs.items()}
        outputs = sess.run({k: v.name for k, v in sig.outputs.items()}, feeds)
    verdict = parse_outputs(outputs)
    direct = tf.saved_model.load(str(path)).signatures["predict_hu"](
        hu=tf.constant(hu), pixel_spacing=tf.constant([3.4, 3.4])
    )
    np.testing.assert_allclose(
        verdict["slice_probabilities"], direct["slice_probabilities"].numpy(), atol=1e-4
    )
    assert verdict["ct_positive"] == bool(direct["ct_positive"])
    lesion = direct["lesion_mask"].numpy()
    assert verdict["lesion_mask_pixels"] == int(lesion.sum())
    assert verdict["lesion_slices"] == [i for i in range(3) if lesion[i].any()]
    lesion = np.zeros((3, 4, 4), bool)
    lesion[2, :2, :3] = True  # hand-made: 6 pixels on slice 2
    hand = {**outputs, "lesion_mask": lesion}
    assert (parse_outputs(hand)["lesion_mask_pixels"], parse_outputs(hand)["lesion_slices"]) == (
        6,
        [2],
    )
    rest_like = {
        k: np.asarray(v).tolist() for k, v in outputs.items()
    }  # REST returns nested lists of bools
    assert parse_outputs(rest_like)["lesion_mask_pixels"] == verdict["lesion_mask_pixels"]


def test_multi_window_export_takes_channels_and_windows_hu_in_graph(tmp_path):
    from radnet_tf import preprocess
    from radnet_tf.serving.export import export_model
    from radnet_tf.modeling.model import build_model
    from conftest import tiny_config

    cfg = tiny_config(extra_windows=[[80, 200]])
    model = build_model(cfg)
    path = export_model(model, cfg, tmp_path, warmup=False)
    meta = json.loads((path / "assets" / "radnet_metadata.json").read_text())
    assert meta["extra_windows"] == [[80, 200]]
    loaded = tf.saved_model.load(str(path))
    one_channel = tf.zeros([3, 32, 32, 1])
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"slices must be float32 \[S, 32, 32, 2\]: wrong slice size or channel count",
    ):
        loaded.signatures["serving_default"](slices=one_channel)
    hu = np.random.default_rng(0).integers(-1024, 1400, size=(3, 70, 60)).astype(np.int16)
    out = loaded.signatures["predict_hu"](hu=tf.constant(hu), pixel_spacing=tf.constant([3.5, 3.5]))
    x = preprocess.preprocess_study(hu, [3.5, 3.5], cfg.preprocess_config())
    assert x.shape[-1] == 2
    ref = model(x[None])["slice_probability"].numpy()[0]
    np.testing.assert_allclose(out["slice_probabilities"].numpy(), ref, atol=1e-5)


@pytest.mark.slow
def test_subtype_model_adds_outputs_and_keeps_the_old_ones(tmp_path):
    """targets: subtypes adds subtype outputs to both signatures; the five existing outputs
    keep their names, dtypes and values, so a client written for an `any` export works."""
    from radnet_tf.decision import ct_decision_labels_np, ct_decision_np, lesion_mask_np
    from radnet_tf.serving.export import export_model
    from radnet_tf.serving.loader import read_metadata
    from radnet_tf.modeling.model import build_model
    from conftest import tiny_config

    cfg = tiny_config(targets="subtypes", subtype_thresholds=[0.5, 0.4, 0.3, 0.6, 0.45])
    model = build_model(cfg)
    path = export_model(model, cfg, tmp_path, warmup=False)
    meta = read_metadata(path)
    assert meta["labels"] == ["any", "EDH", "IPH", "IVH", "SAH", "SDH"]
    assert meta["subtype_thresholds"] == [0.5, 0.4, 0.3, 0.6, 0.45]
    x = np.random.default_rng(0).uniform(size=(5, 32, 32, 1)).astype(np.float32)
    out = tf.saved_model.load(str(path)).signatures["serving_default"](slices=tf.constant(x))
    ref = model(x[None])
    sub = ref["subtype_probability"].numpy()[0]
    np.testing.assert_allclose(out["subtype_probabilities"].numpy(), sub, atol=1e-5)
    rule = ct_decision_labels_np(sub, [0.5, 0.4, 0.3, 0.6, 0.45], 3)
    np.testing.assert_array_equal(out["ct_subtypes"].numpy(), rule["ct_positive"])
    np.testing.assert_allclose(out["ct_subtype_scores"].numpy(), rule["ct_score"], atol=1e-6)
    assert out["ct_subtypes"].dtype == tf.bool and out["ct_subtype_scores"].shape == (5,)
    any_rule = ct_decision_np(out["slice_probabilities"].numpy(), 0.5, 3)
    assert bool(out["ct_positive"]) == any_rule["ct_positive"] and out[
        "slice_probabilities"
    ].shape == (5,)
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:  # as TF Serving loads it
        sig = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path)).signature_def[
            "predict_hu"
        ]
        assert set(sig.outputs) == {
            "slice_probabilities",
            "masks",
            "lesion_mask",
            "ct_positive",
            "ct_score",
            "longest_positive_run",
            "min_run_applied",
            "subtype_probabilities",
            "ct_subtypes",
            "ct_subtype_scores",
            "subtype_masks",
            "subtype_lesion_masks",
        }
    heads = [ref[f"mask_{i}"].numpy()[0] for i in (1, 2, 3)]
    np.testing.assert_allclose(out["masks"].numpy(), sum(h[..., 0] for h in heads) / 3, atol=1e-5)
    np.testing.assert_allclose(
        out["subtype_masks"].numpy(), sum(h[..., 1:] for h in heads) / 3, atol=1e-5
    )
    expected = lesion_mask_np(
        out["subtype_masks"].numpy(),
        sub,
        cfg.mask_threshold,
        [0.5, 0.4, 0.3, 0.6, 0.45],
        cfg.mask_opening,
    )
    np.testing.assert_array_equal(out["subtype_lesion_masks"].numpy(), expected)


@pytest.mark.slow
def test_predict_on_a_subtype_export_reports_every_subtype_and_draws_them(tmp_path, tiny_cohort):
    from radnet_tf.serving import predict
    from radnet_tf.serving.export import export_model
    from radnet_tf.modeling.model import build_model
    from conftest import tiny_config

    cfg = tiny_config(targets="subtypes")
    path = export_model(build_model(cfg), cfg, tmp_path / "sm", warmup=False)
    result = predict.main(
        [
            str(tiny_cohort / "dicom" / "synth-0001"),
            "--model",
            str(path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert list(result["subtypes"]) == ["EDH", "IPH", "IVH", "SAH", "SDH"]
    for name, entry in result["subtypes"].items():
        assert set(entry) == {"ct_positive", "ct_score", "threshold", "slices", "volume_ml"}
        assert entry["threshold"] == 0.5 and entry["volume_ml"] >= 0
    assert (tmp_path / "o" / "overview.png").stat().st_size > 1000
