import dataclasses
import json

import pytest

from conftest import REPO
from radnet_tf.config import Config, config_from_dict, load_config
from radnet_tf.errors import UserError


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path, capsys):
    cfg = load_config(path)
    assert cfg.crop_slices >= 1
    assert capsys.readouterr().err == ""  # no deprecated keys in the shipped configs


def test_config_round_trips_through_json():
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_old_window_key_still_loads_with_a_deprecation_line(tmp_path, capsys):
    (tmp_path / "old.yaml").write_text("window: 6\n")
    assert load_config(tmp_path / "old.yaml").crop_slices == 6
    assert (
        capsys.readouterr().err
        == "[radnet] warning: config key 'window' is deprecated; use 'crop_slices'\n"
    )
    assert load_config(None, ["window=5"]).crop_slices == 5
    # a model dir's config.json from before the rename
    old = {k: v for k, v in Config().to_dict().items() if k != "crop_slices"} | {"window": 7}
    assert config_from_dict(old).crop_slices == 7


BAD = {
    "work_dir": "",
    "variant": "resnet",
    "pooling": "sum",
    "optimizer": "rmsprop",
    "depth": 8,
    "synth_studies": 0,
    "synth_slices": 0,
    "synth_matrix": 16,
    "synth_seed": -1,
    "val_fraction": 1.0,
    "window_width": 0.0,
    "extra_windows": [[80]],
    "out_spacing": 0.0,
    "fov_mm": -1.0,
    "input_size": 100,
    "growth_rate": 0,
    "initial_filters": 0,
    "dropout": 1.0,
    "lstm_units": 0,
    "head_filters": 0,
    "weight_decay": -1.0,
    "bn_momentum": 1.0,
    "slice_loss_weight": -1.0,
    "mask_loss_weights": [1, 1, -1],
    "mask_pos_weight": 0.0,
    "epochs": 0,
    "batch_size": 0,
    "crop_slices": 0,
    "steps_per_epoch": -1,
    "learning_rate": 0.0,
    "momentum": 1.0,
    "lr_drop_epochs": [1.5],
    "positive_fraction": -0.1,
    "rotation_deg": -1.0,
    "seed": -1,
    "early_stopping_patience": -1,
    "val_every": -1,
    "ct_min_run": 0,
    "slice_threshold": 1.0,
    "mask_threshold": 0.0,
    "calibration_series_slices": -1,
    "calibration_fraction": 1.0,
    "targets": "types",
    "subtype_loss_weight": -1.0,
    "subtype_thresholds": [0.5, 0.5],
    "subtype_label_weights": [1, -1, 1, 1, 1],
    "fine_tune_lr_factor": 1.5,
    "freeze_backbone_steps": -1,
    "distill_weight": 1.5,
}


@pytest.mark.parametrize("field", sorted(BAD))
def test_every_checked_field_rejects_a_bad_value_naming_it(field):
    cfg = dataclasses.replace(Config(), **{field: BAD[field]})
    with pytest.raises(UserError) as info:
        cfg.validate()
    name = "window" if field in ("window_width", "extra_windows") else field
    assert name in str(info.value)
    assert Config().validate() is not None  # the defaults themselves are valid


def test_every_numeric_field_has_a_bad_value_case():
    numeric = {f.name for f in dataclasses.fields(Config) if f.type in ("int", "float", "list")}
    unchecked = numeric - set(BAD) - {"window_center"}  # any centre is a valid window centre
    assert not unchecked, f"fields without a validation case: {sorted(unchecked)}"


def test_configuration_reference_is_current():
    """docs/configuration.md is generated from the dataclass (`python -m radnet_tf.config`)."""
    from radnet_tf.config import config_reference

    assert (REPO / "docs" / "configuration.md").read_text() == config_reference()


def test_every_key_is_documented_in_one_section():
    from radnet_tf.config import SECTIONS, config_reference

    fields = dataclasses.fields(Config)
    assert all(f.metadata.get("doc") for f in fields)
    assert [first for _, first in SECTIONS] == [
        f.name for f in fields if f.name in {first for _, first in SECTIONS}
    ]
    text = config_reference()
    assert all(text.count(f"| `{f.name}` |") == 1 for f in fields)


def test_builtin_configs_load_by_name_and_match_the_checkout_copies():
    for name in ("default", "radnet", "densenet", "densenet_a"):
        assert load_config(name) == load_config(REPO / "configs" / f"{name}.yaml")
    assert load_config("default").synth_studies == 400


def test_a_removed_key_at_its_off_value_loads_with_one_warning(tmp_path, capsys):
    (tmp_path / "old.yaml").write_text("xla: false\nhu_shift: 0.0\nepochs: 3\n")
    assert load_config(tmp_path / "old.yaml").epochs == 3
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "[radnet] warning: config key 'hu_shift' was removed (a random HU offset per training "
        "window measured no gain); ignored",
        "[radnet] warning: config key 'xla' was removed (XLA compilation ran 1.26x slower per "
        "step on CPU); ignored",
    ]


def test_a_removed_key_set_on_is_refused_with_one_line():
    with pytest.raises(UserError) as info:
        load_config(None, ["mask_loss=dice_bce"])
    assert str(info.value) == (
        "config key 'mask_loss' was removed (the Dice + BCE aux-head loss measured no gain over "
        "the weighted BCE); delete it from the config. Received: mask_loss='dice_bce'"
    )
    # a model dir's config.json from before the removal still loads
    old = Config().to_dict() | {"xla": True, "intensity_jitter": 0.1}
    assert config_from_dict(old) == Config()


def test_print_config_prints_the_resolved_yaml(capsys):
    import yaml

    from radnet_tf.training.train import main

    assert main(["--print-config", "epochs=7"]) is None
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config("default", ["epochs=7"]).to_dict()
