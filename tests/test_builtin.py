"""The built-in model shipped in the package: it loads by name, answers as recorded, and
`predict` uses it when no model is given."""

import json

import numpy as np
import pytest

from radnet_tf.phantom.generate import GENERATOR_VERSION
from radnet_tf.serving import builtin, loader, predict


@pytest.mark.parametrize("name", sorted(loader.BUILTINS))
def test_each_builtin_model_loads_by_name_and_answers_as_its_card_records(name):
    loaded = loader.load(name)
    assert loaded.kind == "saved_model" and loaded.path == loader.builtin_model_path(name)
    assert loaded.meta["trained_on"].startswith("synthetic phantom")
    assert loaded.cfg.slice_threshold == loaded.meta["slice_threshold"]
    card = builtin.card(name)
    assert card["name"] == name
    assert card["held_out"] == loaded.meta["held_out"] and card["commit"]
    # the reference study is a phantom study: a new generator needs the card regenerated
    assert card["reference_study"]["generator"] == GENERATOR_VERSION, "rerun builtin.install"
    np.testing.assert_allclose(
        builtin.slice_probabilities(loaded.saved), card["reference_slice_probabilities"], atol=1e-4
    )


def test_predict_without_a_model_uses_the_builtin_one(tiny_cohort, capsys):
    result = predict.main([str(tiny_cohort / "dicom" / "synth-0001")])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ct_positive"] == result["ct_positive"]
    assert result["model"]["trained_on"].startswith("synthetic phantom")
    assert "trained on the synthetic phantom only" in captured.err


@pytest.mark.slow
def test_install_copies_an_export_without_warmup_and_records_its_answers(
    trained_tiny, tmp_path, monkeypatch
):
    from radnet_tf.serving.export import export_model

    cfg, _, model, _ = trained_tiny
    export = export_model(model, cfg, tmp_path / "sm")
    assert (export / "assets.extra").exists()
    target = tmp_path / "pkg" / "builtin" / "model"
    monkeypatch.setattr(builtin, "builtin_model_path", lambda name="builtin": target)
    assert builtin.install(export, commit="abc123", gates=[{"gates_passed": 1}]) == target
    assert (target / "saved_model.pb").exists() and not (target / "assets.extra").exists()
    card = json.loads((target.parent / "card.json").read_text())
    assert card["commit"] == "abc123" and card["real_ct_gates"] == [{"gates_passed": 1}]
    saved, _, _ = loader.load_saved_model(target)
    assert card["reference_slice_probabilities"] == builtin.slice_probabilities(saved)
    assert len(card["reference_slice_probabilities"]) == 16
    stale = dict(card, reference_slice_probabilities=[0.5] * 16)
    stale["reference_study"] = dict(card["reference_study"], generator=-1)
    (target.parent / "card.json").write_text(json.dumps(stale))
    builtin.refresh_reference()  # a new generator: only the reference answers change
    assert json.loads((target.parent / "card.json").read_text()) == card


@pytest.mark.slow
def test_export_of_the_builtin_model_keeps_its_answers_and_lineage(tmp_path):
    from radnet_tf.serving import export

    path = export.main(["--model", "builtin", "--out", str(tmp_path), "--threshold", "0.5"])
    assert path == tmp_path / "1"
    saved, meta, _ = loader.load_saved_model(path)
    shipped = loader.load("builtin")
    assert meta["slice_threshold"] == 0.5 and meta["ct_min_run"] == shipped.meta["ct_min_run"]
    assert meta["trained_on"] == shipped.meta["trained_on"]
    assert meta["held_out"] == shipped.meta["held_out"]
    np.testing.assert_allclose(
        builtin.slice_probabilities(saved),
        builtin.card()["reference_slice_probabilities"],
        atol=1e-4,
    )


def test_export_needs_exactly_one_model(capsys):
    from radnet_tf.serving import export

    with pytest.raises(SystemExit):
        export.main([])
    assert "give one model: MODEL or --model" in capsys.readouterr().err
