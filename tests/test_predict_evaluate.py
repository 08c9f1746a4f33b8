import json

import numpy as np
import pandas as pd
import pydicom
import pytest

from radnet_tf.serving import predict
from radnet_tf.errors import UserError
from radnet_tf.serving import loader


@pytest.fixture(scope="module")
def saved(trained_tiny, tmp_path_factory):
    from radnet_tf.serving.export import export_model

    from radnet_tf.training.train import trained_on_from

    cfg, _, model, _ = trained_tiny
    return export_model(
        model, cfg, tmp_path_factory.mktemp("sm"), warmup=False, trained_on=trained_on_from(cfg)
    )


def test_predict_on_synthetic_study(saved, tiny_cohort, tmp_path, capsys):
    result = predict.main(
        [
            str(tiny_cohort / "dicom" / "synth-0001"),
            "--model",
            str(saved.parent),
            "--out",
            str(tmp_path),
        ]
    )
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert "masks scored Dice" not in captured.err  # this export carries no held-out figures
    assert printed["model"]["held_out"] is None
    assert printed["study_key"] == result["study_key"] and len(printed["slice_probabilities"]) == 6
    assert set(printed) >= {
        "ct_positive",
        "ct_score",
        "longest_positive_run",
        "hemorrhage_volume_ml",
        "series",
        "timings",
    }
    assert (tmp_path / "overview.png").stat().st_size > 1000
    assert json.loads((tmp_path / "prediction.json").read_text()) == printed
    assert printed["min_run_applied"] == 3 and printed["model"]["trained_on"].startswith(
        "records: "
    )


def test_predict_on_a_single_dicom_file_applies_the_rule_with_k_1(saved, tiny_cohort, capsys):
    from radnet_tf.serving.loader import read_metadata

    one = sorted((tiny_cohort / "dicom" / "synth-0001").iterdir())[0]
    result = predict.main([str(one), "--model", str(saved)])
    t = read_metadata(saved)["slice_threshold"]
    assert len(result["slice_probabilities"]) == 1 and result["min_run_applied"] == 1
    assert (
        result["rule"] == f">= 1 consecutive slices with probability >= {t} "
        "(the model's K = 3, shortened to the study's 1 slice(s))"
    )
    assert result["ct_positive"] == (result["slice_probabilities"][0] >= t)
    assert result["hemorrhage_volume_ml"] is not None  # slice thickness stands in for the spacing


def test_rule_text_names_the_series_length_the_threshold_was_calibrated_for():
    assert predict.calibrated_for({"config": {"calibration_series_slices": 100}}) == 100
    assert predict.calibrated_for({"config": {"calibration_series_slices": 0}}) is None
    assert predict.calibrated_for({}) is None  # an export from before the option
    assert predict.rule_text(3, 0.5, 28, 100) == (
        ">= 3 consecutive slices with probability >= 0.5; "
        "threshold calibrated for 100-slice series, this one has 28"
    )
    assert predict.rule_text(3, 0.5, 28) == ">= 3 consecutive slices with probability >= 0.5"


@pytest.mark.slow
@pytest.mark.parametrize(
    "series", ["ge-head-tilt", "cq500/CQ500-CT-0", "cq500/CQ500-CT-1", "cq500/CQ500-CT-310"]
)
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
    from radnet_tf.evaluation import evaluate

    _, _, _, model_dir = trained_tiny
    evaluate.main(
        [
            "--model",
            str(model_dir),
            "--model",
            str(saved),
            "--data",
            str(tiny_records),
            "--split",
            "all",
            "--bootstrap",
            "30",
            "--out",
            str(tmp_path),
        ]
    )
    folders = sorted(p.parent for p in tmp_path.glob("*/summary.csv"))
    assert [f.name for f in folders] == sorted([model_dir.name, "radnet-v1"])
    masks = {}
    for folder in folders:
        summary = pd.read_csv(folder / "summary.csv")
        assert list(summary.level) == [
            "slice",
            "ct",
            "ct@target",
            "mask",
        ]  # the phantom has reference masks
        masks[folder.name] = (
            summary.set_index("level").loc["mask", ["n", "dice", "recall"]].to_numpy(float)
        )
        studies = pd.read_csv(folder / "studies.csv")
        assert len(studies) == 10
        ct = summary.set_index("level").loc["ct"]
        assert ct["accuracy"] == pytest.approx(
            (studies.label == studies.ct_positive.astype(int)).mean()
        )
        assert ct["tp"] == ((studies.label == 1) & studies.ct_positive).sum()
        assert not [c for c in summary.columns if c.endswith("_ci")]
        for metric in (
            "accuracy",
            "recall",
            "precision",
            "f1",
        ):  # CIs as numbers, not tuple strings
            assert (
                ct[f"{metric}_lo"] <= ct[metric] + 1e-9 and ct[metric] <= ct[f"{metric}_hi"] + 1e-9
            )
        for png in ("confusion.png", "study_strips.png"):
            assert (folder / png).exists()
    assert (tmp_path / model_dir.name / "training_curves.png").exists()
    # the Keras model and its export serve the same masks
    np.testing.assert_allclose(masks[model_dir.name], masks["radnet-v1"], atol=1e-6)
    assert masks["radnet-v1"][0] == 10
    table1 = pd.read_csv(tmp_path / "table1.csv")
    assert list(table1.metric) == ["accuracy", "recall", "precision", "f1"] and table1.shape[1] == 3


def test_evaluate_threshold_and_min_run_override_the_models(saved, tiny_records, tmp_path, capsys):
    from radnet_tf.evaluation import evaluate

    evaluate.main(
        [
            "--model",
            str(saved),
            "--data",
            str(tiny_records),
            "--split",
            "all",
            "--bootstrap",
            "5",
            "--threshold",
            "0.001",
            "--min-run",
            "1",
            "--mask-threshold",
            "0.3",
            "--out",
            str(tmp_path),
        ]
    )
    summary = pd.read_csv(tmp_path / "radnet-v1" / "summary.csv").set_index("level")
    assert summary.loc["ct", "threshold"] == 0.001 and summary.loc["ct", "min_run"] == 1
    assert summary.loc["mask", "threshold"] == 0.3
    studies = pd.read_csv(tmp_path / "radnet-v1" / "studies.csv")
    slices = pd.read_csv(tmp_path / "radnet-v1" / "slices.csv")
    expected = slices.groupby("study_key").probability.max() >= 0.001  # K = 1: any slice
    assert studies.set_index("study_key").ct_positive.to_dict() == expected.to_dict()
    out = capsys.readouterr().out
    assert "threshold 0.001, K=1" in out
    assert (
        "radnet-v1: mask (>= 0.30 on positive slices) Dice " in out
        and "(n=10 studies with a reference mask)" in out
    )
    with pytest.raises(SystemExit):
        evaluate.main(
            [
                "--model",
                str(saved),
                "--data",
                str(tiny_records),
                "--mask-threshold",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
    assert "--mask-threshold must be in (0, 1). Received: 1.0" in capsys.readouterr().err


def test_evaluate_on_one_slice_studies_says_the_rule_was_shortened(saved, tmp_path, capsys):
    from conftest import one_slice_png_records
    from radnet_tf.evaluation import evaluate

    records = one_slice_png_records(tmp_path, 4)
    evaluate.main(
        [
            "--model",
            str(saved),
            "--data",
            str(records),
            "--split",
            "all",
            "--bootstrap",
            "5",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    out = capsys.readouterr().out
    assert (
        "note: 4 of 4 studies have fewer than K=3 slices; the CT rule was applied to them with K "
        "= their slice count" in out
    )
    studies = pd.read_csv(tmp_path / "eval" / "radnet-v1" / "studies.csv")
    slices = pd.read_csv(tmp_path / "eval" / "radnet-v1" / "slices.csv").set_index("study_key")
    t = (
        pd.read_csv(tmp_path / "eval" / "radnet-v1" / "summary.csv")
        .set_index("level")
        .loc["ct", "threshold"]
    )
    assert (studies.min_run_applied == 1).all()
    assert studies.ct_positive.tolist() == [
        slices.loc[k, "probability"] >= t for k in studies.study_key
    ]


def test_threshold_for_target_sensitivity():
    from radnet_tf.evaluation.evaluate import threshold_for_sensitivity

    studies = pd.DataFrame({"label": [1, 1, 1, 1, 0], "ct_score": [0.9, 0.8, 0.3, 0.2, 0.5]})
    assert threshold_for_sensitivity(studies, 0.5) == pytest.approx(0.8)
    assert threshold_for_sensitivity(studies, 0.75) == pytest.approx(0.3)
    assert threshold_for_sensitivity(studies, 1.0) == pytest.approx(0.2)


def test_reader_table_and_kappa(tmp_path):
    from radnet_tf.evaluation.evaluate import reader_table

    reads = pd.DataFrame(
        {"name": ["s1", "s2", "s3", "s4"], "R1:ICH": [1, 0, 1, 0], "R2:ICH": [1, 1, 1, 0]}
    )
    manifest = pd.DataFrame(
        {"study_id": ["s1", "s2", "s3", "s4"], "study_key": ["k1", "k2", "k3", "k4"]}
    )
    studies = pd.DataFrame(
        {
            "study_key": ["k1", "k2", "k3", "k4"],
            "label": [1, 0, 1, 0],
            "ct_positive": [True, False, False, False],
        }
    )
    reads.to_csv(tmp_path / "reads.csv", index=False)
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    table, kappa = reader_table(tmp_path / "reads.csv", tmp_path / "manifest.csv", studies)
    t = table.set_index("metric")
    assert (
        t.loc["accuracy", "R1"] == 1.0
        and t.loc["accuracy", "R2"] == 0.75
        and t.loc["recall", "model"] == 0.5
    )
    assert kappa.loc["R1", "R1"] == 1.0 and kappa.loc["R1", "model"] == pytest.approx(0.5)


def test_reader_table_by_finding_exact(tmp_path):
    from radnet_tf.evaluation.evaluate import reader_table_by_finding

    reads = pd.DataFrame(
        {
            "name": ["s1", "s2", "s3", "s4"],
            "R1:ICH": [1, 0, 1, 0],
            "R2:ICH": [1, 1, 1, 0],
            "R3:ICH": [1, 0, 0, 0],
            "R1:SDH": [1, 0, 0, 0],
            "R2:SDH": [1, 0, 0, 0],
            "R3:SDH": [0, 0, 0, 0],
        }
    )
    manifest = pd.DataFrame(
        {"study_id": ["s1", "s2", "s3", "s4"], "study_key": ["k1", "k2", "k3", "k4"]}
    )
    studies = pd.DataFrame(
        {
            "study_key": ["k1", "k2", "k3", "k4"],
            "ct_positive": [True, False, False, False],
            "ct_SDH": [True, False, True, False],
        }
    )
    reads.to_csv(tmp_path / "reads.csv", index=False)
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    table = reader_table_by_finding(
        tmp_path / "reads.csv", tmp_path / "manifest.csv", studies
    ).set_index(["finding", "rater"])
    assert list(table.index.get_level_values(0).unique()) == [
        "ICH",
        "SDH",
    ]  # findings without three readers: no rows
    # ICH majority = [1, 0, 1, 0]; R1 equals it; the model misses s3
    assert (
        table.loc[("ICH", "R1"), "accuracy"] == 1.0
        and table.loc[("ICH", "R1"), "kappa_majority"] == 1.0
    )
    assert (
        table.loc[("ICH", "model"), "accuracy"] == 0.75
        and table.loc[("ICH", "model"), "recall"] == 0.5
    )
    assert table.loc[("ICH", "model"), "kappa_majority"] == pytest.approx(0.5)
    # SDH majority = [1, 0, 0, 0]; the model also calls s3
    assert (
        table.loc[("SDH", "model"), "precision"] == 0.5
        and table.loc[("SDH", "R3"), "recall"] == 0.0
    )


@pytest.mark.slow
def test_evaluate_a_subtype_savedmodel_with_reads_per_finding(tiny_records, tmp_path, capsys):
    """A subtype export through evaluate: per-subtype tables, per-study subtype calls and
    the per-finding reader table from a CQ500-style reads.csv."""
    from conftest import tiny_config
    from radnet_tf.evaluation import evaluate
    from radnet_tf.serving.export import export_model
    from radnet_tf.modeling.model import build_model

    cfg = tiny_config(targets="subtypes")
    saved = export_model(build_model(cfg), cfg, tmp_path / "sm", warmup=False)
    manifest = pd.read_csv(tiny_records / "manifest.csv")
    rng = np.random.default_rng(0)
    reads = {"name": manifest.study_id}
    for reader in ("R1", "R2", "R3"):
        for finding in ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH"):
            reads[f"{reader}:{finding}"] = rng.integers(0, 2, len(manifest))
    pd.DataFrame(reads).to_csv(tmp_path / "reads.csv", index=False)
    evaluate.main(
        [
            "--model",
            str(saved),
            "--data",
            str(tiny_records),
            "--split",
            "all",
            "--bootstrap",
            "5",
            "--readers",
            str(tmp_path / "reads.csv"),
            "--manifest",
            str(tiny_records / "manifest.csv"),
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    folder = tmp_path / "eval" / "radnet-v1"
    assert list(pd.read_csv(folder / "subtypes.csv").subtype) == ["EDH", "IPH", "IVH", "SAH", "SDH"]
    studies = pd.read_csv(folder / "studies.csv")
    assert {f"ct_{t}" for t in ("EDH", "IPH", "IVH", "SAH", "SDH")} <= set(studies.columns)
    table = pd.read_csv(tmp_path / "eval" / "table2_by_finding.csv")
    assert set(table.finding) == {"ICH", "IPH", "IVH", "SAH", "SDH", "EDH"}
    assert (table.groupby("finding").rater.apply(list) == [["R1", "R2", "R3", "model"]] * 6).all()
    assert (tmp_path / "eval" / "readers_by_finding.png").exists()


def test_predict_writes_a_dicom_seg_when_asked(trained_tiny, tiny_cohort, tmp_path):
    """--seg writes the lesion mask as a DICOM SEG; with no lesion voxel it writes nothing
    and says so. Thresholds fixed at export make each case certain."""
    pytest.importorskip("highdicom")
    import highdicom as hd

    from radnet_tf.serving.export import export_model

    cfg, _, model, _ = trained_tiny
    study = tiny_cohort / "dicom" / "synth-0001"
    everything = export_model(
        model, cfg, tmp_path / "all", threshold=1e-6, mask_threshold=1e-6, warmup=False
    )
    result = predict.main(
        [str(study), "--model", str(everything), "--seg", str(tmp_path / "seg.dcm")]
    )
    assert (
        result["segmentation"]["segments"] == ["Hemorrhage"] and result["hemorrhage_volume_ml"] > 0
    )
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert int(seg.NumberOfFrames) == len(result["slice_probabilities"])
    nothing = export_model(
        model, cfg, tmp_path / "none", threshold=1 - 1e-6, mask_threshold=1e-6, warmup=False
    )
    result = predict.main(
        [str(study), "--model", str(nothing), "--seg", str(tmp_path / "none.dcm")]
    )
    # every mask pixel passes 1e-6, but no slice reaches its threshold: the gate leaves no voxel
    assert result["segmentation"] == {
        "path": None,
        "segments": [],
        "note": "no mask voxel: no segmentation written",
    }
    assert result["hemorrhage_volume_ml"] == 0 and not (tmp_path / "none.dcm").exists()


def test_predict_on_an_enhanced_ct_object_equals_its_classic_slices(
    trained_tiny, tiny_cohort, tmp_path
):
    """The same study stored as one Enhanced CT object (frames out of z order): the same
    answer as its classic slices, and a SEG that references the object's frames."""
    pytest.importorskip("highdicom")
    import highdicom as hd

    from conftest import write_enhanced_ct
    from radnet_tf.serving.export import export_model

    cfg, _, model, _ = trained_tiny
    study = tiny_cohort / "dicom" / "synth-0001"
    n = len(list(study.iterdir()))
    write_enhanced_ct(study, tmp_path / "mf" / "mf.dcm", frame_order=list(range(n))[::-1])
    everything = export_model(
        model, cfg, tmp_path / "all", threshold=1e-6, mask_threshold=1e-6, warmup=False
    )
    classic = predict.main([str(study), "--model", str(everything)])
    enhanced = predict.main(
        [str(tmp_path / "mf"), "--model", str(everything), "--seg", str(tmp_path / "seg.dcm")]
    )
    assert enhanced["slice_probabilities"] == classic["slice_probabilities"]
    assert (
        enhanced["ct_positive"] == classic["ct_positive"]
        and enhanced["study_key"] == classic["study_key"]
    )
    assert enhanced["segmentation"]["segments"] == ["Hemorrhage"]
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert int(seg.NumberOfFrames) == n
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [r.ReferencedSOPInstanceUID for r in referenced] == [
        str(pydicom.dcmread(tmp_path / "mf" / "mf.dcm").SOPInstanceUID)
    ]
    # split over two multi-frame objects: no SEG can reference it; the prediction is still written
    write_enhanced_ct(study, tmp_path / "two" / "a.dcm", frame_order=list(range(n))[: n // 2])
    write_enhanced_ct(study, tmp_path / "two" / "b.dcm", frame_order=list(range(n))[n // 2 :])
    split = predict.main(
        [
            str(tmp_path / "two"),
            "--model",
            str(everything),
            "--seg",
            str(tmp_path / "two.dcm"),
            "--out",
            str(tmp_path / "two_out"),
        ]
    )
    assert split["slice_probabilities"] == classic["slice_probabilities"]
    assert (
        split["segmentation"]["path"] is None
        and "spans 2 DICOM objects" in split["segmentation"]["note"]
    )
    assert (
        not (tmp_path / "two.dcm").exists() and (tmp_path / "two_out" / "prediction.json").exists()
    )


def test_predict_volume_is_the_gated_lesion_mask_and_checks_the_export(
    trained_tiny, tiny_cohort, tmp_path
):
    from radnet_tf.contract import LESION_MASK, MASKS, SLICE_PROBABILITIES
    from radnet_tf.decision import lesion_mask_np
    from radnet_tf.io.dicom import read_series
    from radnet_tf.serving.export import export_model

    cfg, _, model, _ = trained_tiny
    series = read_series(tiny_cohort / "dicom" / "synth-0001")
    saved_model, meta, _ = loader.load_saved_model(
        export_model(model, cfg, tmp_path / "a", warmup=False)
    )
    _, raw, _ = predict.predict_series(series, saved_model, meta)
    probs, masks = raw[SLICE_PROBABILITIES], raw[MASKS]
    slice_t = float(np.sort(probs)[len(probs) // 2] - 1e-6)  # half the slices pass
    mask_t = float(np.quantile(masks, 0.5))
    saved_model, meta, _ = loader.load_saved_model(
        export_model(
            model, cfg, tmp_path / "b", threshold=slice_t, mask_threshold=mask_t, warmup=False
        )
    )
    result, out, _ = predict.predict_series(series, saved_model, meta)
    assert meta["mask_opening"] == cfg.mask_opening
    lesion = lesion_mask_np(out[MASKS], out[SLICE_PROBABILITIES], mask_t, slice_t, cfg.mask_opening)
    assert (
        lesion.any() and (masks[probs < slice_t] >= mask_t).any()
    )  # the gate removes pixels that pass
    np.testing.assert_array_equal(out[LESION_MASK], lesion)
    voxel_ml = meta["out_spacing_mm"] ** 2 * series.slice_spacing / 1000.0
    assert result["hemorrhage_volume_ml"] == pytest.approx(round(lesion.sum() * voxel_ml, 2))
    assert result["mask_rule"] == (
        f"mask >= {mask_t:g} on slices with probability >= {slice_t}"
        + (", opened in-plane (3 x 3)" if cfg.mask_opening else "")
    )
    meta["mask_threshold"] = (
        mask_t / 2
    )  # metadata that does not match the graph: refused, not served
    with pytest.raises(
        RuntimeError, match="lesion_mask disagrees between the export and radnet_tf.decision"
    ):
        predict.predict_series(series, saved_model, meta)


def test_one_loader_reads_every_model_form(saved, trained_tiny):
    """A model dir, its .keras file, an export version and the export root all load."""
    cfg, _, _, model_dir = trained_tiny
    by_dir = loader.load(model_dir)
    by_file = loader.load(loader.model_file(model_dir))
    assert by_dir.kind == by_file.kind == "keras" and by_dir.cfg == cfg
    assert by_dir.keras_model.count_params() == by_file.keras_model.count_params()
    meta = loader.read_metadata(saved)
    for path in (saved, saved.parent):  # a version, or the root: its highest version
        export = loader.load(path)
        assert export.kind == "saved_model" and export.path == saved
        assert export.cfg.slice_threshold == meta["slice_threshold"]
        assert export.cfg.ct_min_run == meta["ct_min_run"]
    with pytest.raises(UserError, match="model not found"):
        loader.load(saved.parent / "absent")


def test_predict_refuses_a_keras_model_dir_with_one_line(trained_tiny, tiny_cohort):
    _, _, _, model_dir = trained_tiny
    with pytest.raises(UserError) as info:
        predict._load_export(model_dir)
    assert str(info.value) == (
        f"predict needs a SavedModel export; export {model_dir} first: radnet-export {model_dir}"
    )


def test_as_a_command_main_returns_none_so_the_console_script_exits_0(
    saved, tiny_cohort, monkeypatch, capsys
):
    """Console scripts run `sys.exit(main())`: a returned dict would exit 1 and print it."""
    import sys

    study = str(tiny_cohort / "dicom" / "synth-0001")
    monkeypatch.setattr(sys, "argv", ["radnet-predict", study, "--model", str(saved)])
    assert predict.main() is None
    assert json.loads(capsys.readouterr().out)["ct_positive"] in (True, False)
    assert isinstance(predict.main([study, "--model", str(saved)]), dict)  # from Python
