import json

import pandas as pd
import pytest

from radnet_tf import predict


@pytest.fixture(scope="module")
def saved(trained_tiny, tmp_path_factory):
    from radnet_tf.export import export_model

    cfg, _, model, _ = trained_tiny
    return export_model(model, cfg, tmp_path_factory.mktemp("sm"), warmup=False)


def test_predict_on_synthetic_study(saved, tiny_cohort, tmp_path, capsys):
    result = predict.main([str(tiny_cohort / "dicom" / "synth-0001"), "--model", str(saved.parent), "--out", str(tmp_path)])
    printed = json.loads(capsys.readouterr().out)
    assert printed["study_key"] == result["study_key"] and len(printed["slice_probabilities"]) == 6
    assert set(printed) >= {"ct_positive", "ct_score", "longest_positive_run", "hemorrhage_volume_ml", "series", "timings"}
    assert (tmp_path / "overview.png").stat().st_size > 1000
    assert json.loads((tmp_path / "prediction.json").read_text()) == printed


@pytest.mark.slow
@pytest.mark.parametrize("series", ["ge-head-tilt", "cq500/CQ500-CT-0", "cq500/CQ500-CT-1", "cq500/CQ500-CT-310"])
def test_predict_runs_on_every_shared_series(saved, shared, series, tmp_path):
    result = predict.main([str(shared / series), "--model", str(saved), "--out", str(tmp_path)])
    assert len(result["slice_probabilities"]) == result["series"]["num_slices"]
    assert (tmp_path / "overview.png").exists()


def test_predict_refuses_tilt_when_asked(saved, shared, capsys):
    with pytest.raises(SystemExit) as info:
        predict.main([str(shared / "ge-head-tilt"), "--model", str(saved), "--tilt", "reject"])
    assert info.value.code == 2
    assert "gantry tilt of 18.5 degrees" in capsys.readouterr().err


def test_evaluate_tables_and_figures(trained_tiny, saved, tiny_records, tmp_path):
    from radnet_tf import evaluate

    _, _, _, model_dir = trained_tiny
    evaluate.main(["--model", str(model_dir), "--model", str(saved), "--data", str(tiny_records), "--split", "all",
                   "--bootstrap", "30", "--out", str(tmp_path)])
    folders = sorted(p.parent for p in tmp_path.glob("*/summary.csv"))
    assert [f.name for f in folders] == sorted([model_dir.name, "radnet-v1"])
    for folder in folders:
        summary = pd.read_csv(folder / "summary.csv")
        assert list(summary.level) == ["slice", "ct", "ct@target"]
        studies = pd.read_csv(folder / "studies.csv")
        assert len(studies) == 10
        ct = summary.set_index("level").loc["ct"]
        assert ct["accuracy"] == pytest.approx((studies.label == studies.ct_positive.astype(int)).mean())
        assert ct["tp"] == ((studies.label == 1) & studies.ct_positive).sum()
        for png in ("confusion.png", "study_strips.png"):
            assert (folder / png).exists()
    assert (tmp_path / model_dir.name / "training_curves.png").exists()
    table1 = pd.read_csv(tmp_path / "table1.csv")
    assert list(table1.metric) == ["accuracy", "recall", "precision", "f1"] and table1.shape[1] == 3


def test_threshold_for_target_sensitivity():
    from radnet_tf.evaluate import threshold_for_sensitivity

    studies = pd.DataFrame({"label": [1, 1, 1, 1, 0], "ct_score": [0.9, 0.8, 0.3, 0.2, 0.5]})
    assert threshold_for_sensitivity(studies, 0.5) == pytest.approx(0.8)
    assert threshold_for_sensitivity(studies, 0.75) == pytest.approx(0.3)
    assert threshold_for_sensitivity(studies, 1.0) == pytest.approx(0.2)


def test_reader_table_and_kappa(tmp_path):
    from radnet_tf.evaluate import reader_table

    reads = pd.DataFrame({"name": ["s1", "s2", "s3", "s4"], "R1:ICH": [1, 0, 1, 0], "R2:ICH": [1, 1, 1, 0]})
    manifest = pd.DataFrame({"study_id": ["s1", "s2", "s3", "s4"], "study_key": ["k1", "k2", "k3", "k4"]})
    studies = pd.DataFrame({"study_key": ["k1", "k2", "k3", "k4"], "label": [1, 0, 1, 0], "ct_positive": [True, False, False, False]})
    reads.to_csv(tmp_path / "reads.csv", index=False)
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    table, kappa = reader_table(tmp_path / "reads.csv", tmp_path / "manifest.csv", studies)
    t = table.set_index("metric")
    assert t.loc["accuracy", "R1"] == 1.0 and t.loc["accuracy", "R2"] == 0.75 and t.loc["recall", "model"] == 0.5
    assert kappa.loc["R1", "R1"] == 1.0 and kappa.loc["R1", "model"] == pytest.approx(0.5)
