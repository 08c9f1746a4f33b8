"""init_from: weights from every kind of source, the two adapted mismatches, refusals."""

import json

import numpy as np
import pytest

from conftest import TINY_MODEL, tiny_config
from radnet_tf.errors import UserError
from radnet_tf.training import init_from as lib


def _model(cfg, seed):
    import keras

    from radnet_tf.modeling.model import build_model

    keras.utils.set_random_seed(seed)
    return build_model(cfg)


def _source(cfg, seed=1, name="src"):
    return lib.Source(name, _model(cfg, seed), cfg, "synthetic phantom (test)")


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_adapt_stem_keeps_shared_windows_zeroes_new_and_drops_missing():
    source = np.arange(1, 7, dtype=np.float32).reshape(1, 1, 3, 2)  # windows A, B, C
    fresh = np.full((1, 1, 2, 2), 9.0, np.float32)  # this run: C, D
    out, line = lib.adapt_stem(
        fresh,
        source,
        [[80.0, 200.0], [600.0, 2800.0]],
        [[40.0, 80.0], [50.0, 150.0], [80.0, 200.0]],
    )
    np.testing.assert_array_equal(out[0, 0], [[5.0, 6.0], [0.0, 0.0]])
    assert line == (
        "stem_conv: input windows 40/80, 50/150, 80/200 -> 80/200, 600/2800: "
        "kept 80/200; added 600/2800 (zero weights); dropped 40/80, 50/150"
    )


def test_adapt_stem_refuses_when_no_window_is_shared():
    with pytest.raises(UserError, match="stem_conv: no input window in common"):
        lib.adapt_stem(np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 1, 1)), [[1.0, 2.0]], [[40.0, 80.0]])


def test_adapt_aux_head_copies_the_hemorrhage_channel_only():
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    out = lib.adapt_aux_head(kernel, np.array([[[[4.0, 5.0]]]], np.float32))
    np.testing.assert_array_equal(out[0, 0], [[4.0, 5.0], [0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(lib.adapt_aux_head(np.ones(3), np.array([7.0])), [7.0, 1, 1])


def test_same_architecture_copies_every_weight():
    cfg = tiny_config()
    source, target = _source(cfg), _model(cfg, seed=2)
    assert not _same(source.model, target)
    assert lib.transfer(target, source, cfg) == []
    assert _same(source.model, target)


def test_fewer_windows_keeps_the_brain_window_kernel_and_reports():
    source = _source(tiny_config(extra_windows=[[80, 200]]))
    cfg = tiny_config(extra_windows=[])
    target = _model(cfg, seed=2)
    notes = lib.transfer(target, source, cfg)
    assert notes == ["stem_conv: input windows 40/80, 80/200 -> 40/80: kept 40/80; dropped 80/200"]
    src_kernel = source.model.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(
        target.get_layer("stem_conv").get_weights()[0], src_kernel[:, :, :1]
    )
    np.testing.assert_array_equal(
        target.get_layer("classifier").get_weights()[0],
        source.model.get_layer("classifier").get_weights()[0],
    )


def test_subtypes_on_an_any_source_adds_the_head_and_the_class_channels():
    source = _source(tiny_config())
    cfg = tiny_config(targets="subtypes")
    target = _model(cfg, seed=2)
    fresh_head = target.get_layer("subtype_classifier").get_weights()
    notes = lib.transfer(target, source, cfg)
    assert notes[0] == "aux1_deconv: hemorrhage channel copied; 5 class channels new"
    assert (
        notes[-1] == "subtype_classifier: new (the source predicts 'any' only), initialised fresh"
    )
    for a, b in zip(target.get_layer("subtype_classifier").get_weights(), fresh_head):
        np.testing.assert_array_equal(a, b)
    kernel = target.get_layer("aux2_deconv").get_weights()[0]
    np.testing.assert_array_equal(
        kernel[:, :, :1], source.model.get_layer("aux2_deconv").get_weights()[0]
    )


@pytest.mark.parametrize(
    "change, layer",
    [
        ({"growth_rate": 3}, "block1_layer1_conv"),
        ({"variant": "densenet_a"}, "classifier"),
        ({"pooling": "avgmax"}, "bilstm"),
    ],
)
def test_other_mismatches_are_refused_naming_the_layer(change, layer):
    source = _source(tiny_config())
    cfg = tiny_config(**change)
    key = next(iter(change))
    with pytest.raises(UserError, match=f"layer {layer} does not fit src.*{key}"):
        lib.transfer(_model(cfg, seed=2), source, cfg)


def test_an_any_run_from_a_subtypes_source_is_refused():
    source = _source(tiny_config(targets="subtypes"))
    cfg = tiny_config()
    with pytest.raises(UserError, match="aux1_deconv does not fit src"):
        lib.transfer(_model(cfg, seed=2), source, cfg)


def test_builtin_source_fills_a_model_of_its_config():
    from radnet_tf.modeling.model import build_model

    source = lib.load_source("builtin")
    assert source.trained_on.startswith("synthetic phantom")
    target = build_model(source.cfg)
    lib.transfer(target, source, source.cfg)
    assert _same(source.model, target)


@pytest.mark.slow
def test_model_dir_keras_file_and_export_give_the_same_weights(trained_tiny, tmp_path):
    from radnet_tf.serving.export import export_model

    cfg, summary, model, model_dir = trained_tiny
    export = export_model(model, cfg, tmp_path / "sm", warmup=False, trained_on="records: x")
    keras_file = model_dir / summary["model_file"]
    sources = [lib.load_source(str(p)) for p in (model_dir, keras_file, export, tmp_path / "sm")]
    for source in sources:
        assert _same(source.model, model)
    assert sources[2].trained_on == "records: x"


@pytest.mark.slow
def test_fine_tuning_run_records_its_lineage_and_freezes_first(trained_tiny, tmp_path, capsys):
    from radnet_tf.serving.loader import read_metadata
    from radnet_tf.training.train import main

    cfg, _, _, source_dir = trained_tiny
    summary = main(
        [
            "--data",
            cfg.data,
            "--model-dir",
            str(tmp_path / "ft"),
            "--quiet",
            *[
                f"{k}={v}"
                for k, v in {
                    **TINY_MODEL,  # on the built-in default config: its other model keys differ
                    "pooling": "avg",
                    "epochs": 1,
                    "steps_per_epoch": 1,
                    "val_fraction": 0.4,
                    "extra_windows": "[[80, 200]]",
                    "init_from": source_dir,
                    "freeze_backbone_steps": 1,
                    "export_dir": tmp_path / "sm",
                }.items()
            ],
        ]
    )
    out = capsys.readouterr().out
    assert "learning rate x 0.1" in out and "backbone frozen (" in out and "for 1 steps" in out
    info = json.loads((tmp_path / "ft" / "run_info.json").read_text())
    assert info["init_from"]["source"] == str(source_dir)
    assert info["init_from"]["adapted"] == [
        "stem_conv: input windows 40/80 -> 40/80, 80/200: kept 40/80; added 80/200 (zero weights)"
    ]
    assert info["trained_on"].endswith(f"; then fine-tuned on records: {cfg.data}")
    meta = read_metadata(summary["export"])
    assert meta["trained_on"] == info["trained_on"]


def test_backbone_is_the_encoder_only():
    names = [layer.name for layer in lib.backbone_layers(_model(tiny_config(), seed=0))]
    assert names[0] == "stem_conv" and names[-2:] == ["final_bn", "final_relu"]
    assert not any(n.startswith(("aux", "bilstm", "classifier")) for n in names)
