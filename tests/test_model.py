import json

import keras
import numpy as np
import pytest

from conftest import tiny_config
from radnet_tf.config import Config
from radnet_tf.modeling.losses import MaskedBinaryCrossentropy, compile_losses
from radnet_tf.modeling.model import PAD_VALUE, build_model


@pytest.mark.parametrize("variant,outputs", [("densenet", 1), ("densenet_a", 4), ("radnet", 4)])
@pytest.mark.parametrize("slices", [1, 2, 7])
def test_shapes_for_every_variant(variant, outputs, slices):
    model = build_model(tiny_config(variant=variant))
    x = np.random.default_rng(0).uniform(size=(2, slices, 32, 32, 1)).astype("float32")
    out = model(x)
    assert len(out) == outputs
    assert tuple(out["slice_probability"].shape) == (2, slices)
    for name in ("mask_1", "mask_2", "mask_3")[: outputs - 1]:
        assert tuple(out[name].shape) == (2, slices, 32, 32, 1)


def test_study_output_does_not_depend_on_batch_padding():
    model = build_model(tiny_config())
    x = np.random.default_rng(1).uniform(size=(1, 5, 32, 32, 1)).astype("float32")
    alone = model(x)["slice_probability"].numpy()[0]
    padded = np.full((2, 9, 32, 32, 1), PAD_VALUE, np.float32)
    padded[0, :5] = x[0]
    padded[1] = np.random.default_rng(2).uniform(size=(9, 32, 32, 1))
    batched = model(padded)["slice_probability"].numpy()[0, :5]
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_weights_shared_across_slices():
    model = build_model(tiny_config(variant="densenet_a"))  # no LSTM: slices independent
    x = np.random.default_rng(3).uniform(size=(1, 4, 32, 32, 1)).astype("float32")
    perm = [2, 0, 3, 1]
    out = model(x)
    out_perm = model(x[:, perm])
    np.testing.assert_allclose(
        out_perm["slice_probability"].numpy(), out["slice_probability"].numpy()[:, perm], atol=1e-6
    )
    np.testing.assert_allclose(
        out_perm["mask_2"].numpy(), out["mask_2"].numpy()[:, perm], atol=1e-6
    )


def test_masked_loss_ignores_padding_and_missing_masks():
    loss = MaskedBinaryCrossentropy()
    y_true = np.array([[1.0, 0.0, -1.0, -1.0]], np.float32)
    y_pred = np.array([[0.8, 0.4, 0.0001, 0.9999]], np.float32)
    expected = -(np.log(0.8) + np.log(0.6)) / 2
    assert float(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(-np.ones((1, 3)), np.full((1, 3), 0.3))) == 0.0


def test_mask_pos_weight_scales_only_the_blood_term():
    y_true = np.array([[1.0, 0.0, -1.0, 0.0]], np.float32)
    y_pred = np.array([[0.8, 0.4, 0.9, 0.1]], np.float32)
    # the blood pixel's -log(0.8) counts 10 times; the mean stays over the 3 valid pixels
    expected = -(10 * np.log(0.8) + np.log(0.6) + np.log(0.9)) / 3
    loss = MaskedBinaryCrossentropy(reduction=None, pos_weight=10.0)
    np.testing.assert_allclose(loss(y_true, y_pred), [expected], rtol=1e-5)
    assert MaskedBinaryCrossentropy.from_config(loss.get_config()).pos_weight == 10.0
    losses, _ = compile_losses(Config(mask_pos_weight=5.0), ["slice_probability", "mask_1"])
    assert losses["mask_1"].pos_weight == 5.0 and losses["slice_probability"].pos_weight == 1.0


def test_pooling_avgmax_adds_max_features():
    avg = build_model(tiny_config(pooling="avg"))
    both = build_model(tiny_config(pooling="avgmax"))
    assert (
        both.get_layer("avgmax_pool").output.shape[-1]
        == 2 * avg.get_layer("avg_pool").output.shape[-1]
    )


def test_extra_windows_are_input_channels():
    model = build_model(tiny_config(extra_windows=[[80, 200], [600, 2800]]))
    assert tuple(model.input_shape) == (None, None, 32, 32, 3)
    x = np.random.default_rng(2).uniform(size=(1, 2, 32, 32, 3)).astype("float32")
    assert tuple(model(x)["slice_probability"].shape) == (1, 2)


def test_config_round_trip_and_keras_save_load(tmp_path):
    model = build_model(tiny_config())
    config = json.loads(json.dumps(model.get_config()))
    clone = keras.Model.from_config(config)
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(4).uniform(size=(1, 3, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(
        clone(x)["slice_probability"], model(x)["slice_probability"], atol=1e-6
    )
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for name, value in model(x).items():
        np.testing.assert_array_equal(loaded(x)[name], value)


def test_full_size_densenet40_parameter_count():
    # Parameter count does not depend on the input size; 1,319,492 matches the H100 run.
    model = build_model(Config())
    assert model.count_params() == 1_319_492
    assert (
        len(
            [
                layer
                for layer in model.layers
                if isinstance(layer, keras.layers.Conv2D) and "layer" in layer.name
            ]
        )
        == 36
    )


def test_sync_batchnorm_is_a_build_option():
    model = build_model(tiny_config(), sync_batchnorm=True)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.synchronized for layer in norms)
    assert not any(
        layer.synchronized
        for layer in build_model(tiny_config()).layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )


def test_bad_variant_echoes_value():
    with pytest.raises(ValueError, match="variant='resnet'"):
        build_model(Config(variant="resnet"))


def test_multi_label_loss_ignores_unknown_labels_per_column_and_weighs_labels():
    from radnet_tf.modeling.losses import MaskedBinaryCrossentropy

    y_true = np.array([[[1, 0, -1], [-1, 1, 0]]], np.float32)  # one study, 2 slices, 3 labels
    y_pred = np.array([[[0.8, 0.3, 0.9], [0.1, 0.6, 0.2]]], np.float32)
    known = [(1, 0.8), (0, 0.3), (1, 0.6), (0, 0.2)]  # the -1 entries drop out, per column
    bce = [-np.log(p) if t else -np.log(1 - p) for t, p in known]
    got = MaskedBinaryCrossentropy(reduction=None)(y_true, y_pred).numpy()
    np.testing.assert_allclose(got, [np.mean(bce)], rtol=1e-5)
    weights = [2.0, 1.0, 0.5]  # per label: column 0 twice, column 2 half
    w = [2.0, 1.0, 1.0, 0.5]
    weighted = MaskedBinaryCrossentropy(reduction=None, label_weights=weights)(
        y_true, y_pred
    ).numpy()
    np.testing.assert_allclose(weighted, [np.dot(w, bce) / sum(w)], rtol=1e-5)
    all_unknown = MaskedBinaryCrossentropy(reduction=None)(-np.ones_like(y_true), y_pred).numpy()
    np.testing.assert_array_equal(all_unknown, [0.0])
