"""Every benchmark script runs at a tiny size, so none can rot silently.

The figures of these runs mean nothing; each test checks that the script ran to the end
and printed the measurements it promises (names and finite numbers).
"""

import contextlib
import io
import json
import math
import runpy
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO, TINY_MODEL

TINY_OVERRIDES = [
    f"{k}={v}" for k, v in TINY_MODEL.items() if k not in ("epochs", "steps_per_epoch")
] + ["val_fraction=0.4"]


def _run(script, *args):
    """Runs a benchmark script in this process (TensorFlow is imported once for all of
    them) as `python benchmarks/SCRIPT ARGS` would; returns its JSON output lines."""
    import keras

    out, argv = io.StringIO(), sys.argv
    sys.argv = [str(REPO / "benchmarks" / script), *map(str, args)]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as stop:
        assert stop.code in (None, 0), out.getvalue()[-3000:]
    finally:
        sys.argv = argv
        keras.mixed_precision.set_global_policy("float32")  # gpu_model sets a policy
        keras.backend.clear_session()
    return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def _finite(row, keys):
    for k in keys:
        assert isinstance(row[k], (int, float)) and math.isfinite(row[k]), (k, row)


@pytest.mark.slow
def test_cpu_bench_tiny_runs_every_benchmark():
    rows = {r["bench"]: r for r in _run("cpu_bench.py", "--tiny", "--only", "all")}
    assert set(rows) == {
        "ingest_tiny",
        "multiframe_tiny",
        "synth_64x64x4",
        "convert_tiny_32px_8mm",
        "input_vs_training_default",
        "model_cpu_32",
        "train_step_cpu_32",
        "export_latency_4_slices_32px",
        "export_latency_8_slices_32px",
        "predict_tiny",
    }
    _finite(rows["ingest_tiny"], ["ratio_reader_plus_preprocess_vs_bare_decode"])
    assert rows["multiframe_tiny"]["identical_hu"] is True
    _finite(rows["multiframe_tiny"], ["ratio_multiframe_vs_classic"])
    _finite(rows["synth_64x64x4"], ["seconds_per_study", "ratio_write_vs_save_as"])
    _finite(rows["export_latency_8_slices_32px"], ["ratio_signature_vs_keras"])
    _finite(rows["predict_tiny"], ["total_s", "model_s"])


@pytest.mark.slow
def test_cpu_determinism_tiny(tiny_records):
    rows = _run(
        "cpu_determinism.py",
        "--steps",
        "2",
        "--records",
        tiny_records,
        "extra_windows=[]",
        *TINY_OVERRIDES,
    )
    assert [next(iter(r)) for r in rows] == ["initial_weights", "step", "step", "final_weights"]
    assert rows[0]["initial_weights"] != rows[-1]["final_weights"]  # two steps changed the weights


@pytest.mark.slow
def test_cpu_recipe_tiny(tiny_records):
    rows = _run(
        "cpu_recipe.py",
        "--steps",
        "2",
        "--eval-at",
        "2",
        "--records",
        tiny_records,
        "extra_windows=[]",
        *TINY_OVERRIDES,
    )
    assert len(rows) == 1 and rows[0]["step"] == 2
    assert {"slice_auc", "ct_auc"} <= set(rows[0])  # NaN when the tiny held-out split has one class
    _finite(rows[0], ["ct_acc_oracle", "loss", "s_per_step"])


@pytest.mark.slow
def test_gpu_model_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu.jsonl"
    rows = _run("gpu_model.py", "--tiny", "--cases", "float32:1", "--steps", "2", "--out", out)
    assert rows[0]["backend"] == "tensorflow"
    assert [(r["policy"], r["studies"]) for r in rows[1:]] == [("float32", 1)]
    _finite(rows[1], ["train_slices_per_s", "infer_ms_per_ct"])


@pytest.mark.slow
def test_gpu_recipe_sweep_export_and_one_case_on_cpu(tiny_records, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("\n".join(o.replace("=", ": ", 1) for o in TINY_OVERRIDES) + "\n")
    _run(
        "gpu_recipe_sweep.py",
        "export",
        "--records",
        tiny_records,
        "--out",
        tmp_path / "c.npz",
        "--config",
        config,
    )
    rows = _run(
        "gpu_recipe_sweep.py",
        "sweep",
        "--data",
        tmp_path / "c.npz",
        "--config",
        config,
        "--suite",
        "168px",
        "--cases",
        "default-s0",
        "--steps-scale",
        "0.01",
        "--out",
        tmp_path / "res.jsonl",
    )
    assert len(rows) == 1 and "error" not in rows[0], rows
    assert rows[0]["case"] == "default-s0" and rows[0]["steps"] == 2


@pytest.mark.slow
def test_cpu_datasets_tiny():
    rows = {r["bench"]: r for r in _run("cpu_datasets.py", "--tiny")}
    assert set(rows) == {"rsna_header_index", "convert_per_core_tiny"}
    assert (
        rows["rsna_header_index"]["files"] == 65
        and rows["rsna_header_index"]["unparsable_files_found"] == 1
    )
    _finite(
        rows["rsna_header_index"],
        ["index_1_worker_files_per_s", "projected_752k_files_2_workers_min"],
    )
    _finite(rows["convert_per_core_tiny"], ["ratio_vs_bare_decode"])


def test_side_by_side_times_two_trees_and_gives_their_ratio():
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    if head.returncode:
        pytest.skip("not a git checkout: no commit to compare with")
    args = ["--baseline", "HEAD", "--studies", "1", "--rounds", "1", "--only", "synth"]
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "side_by_side.py"), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["bench"], r.get("tree")) for r in rows] == [
        ("synth", "baseline"),
        ("synth", "this"),
        ("synth_side_by_side", None),
    ]
    _finite(rows[-1], ["baseline_seconds_per_study", "this_seconds_per_study"])
    assert rows[-1]["ratio_baseline_vs_this"] > 0


def test_side_by_side_times_the_reader_on_a_series(tmp_path):
    from conftest import write_tiny_series

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    if head.returncode:
        pytest.skip("not a git checkout: no commit to compare with")
    write_tiny_series(tmp_path / "series")
    args = ["--baseline", "HEAD", "--rounds", "1", "--only", "read"]
    args += ["--series", tmp_path / "series"]
    rows = _run("side_by_side.py", *args)
    assert [(r["bench"], r.get("tree")) for r in rows] == [
        ("read", "baseline"),
        ("read", "this"),
        ("read_side_by_side", None),
    ]
    _finite(rows[-1], ["baseline_seconds_per_study", "this_seconds_per_study"])


@pytest.mark.slow
def test_side_by_side_times_the_end_of_a_run(tiny_records):
    """`end`: calibration and evaluation per study, in each tree, on the given records."""
    from conftest import TINY_MODEL

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True)
    if head.returncode:
        pytest.skip("not a git checkout: no commit to compare with")
    args = ["--baseline", "HEAD", "--rounds", "1", "--only", "end", "--records", tiny_records]
    args += [f"--set={k}={v}" for k, v in TINY_MODEL.items()]
    rows = _run("side_by_side.py", *args)
    assert [(r["bench"], r.get("tree")) for r in rows] == [
        ("end", "baseline"),
        ("end", "this"),
        ("end_side_by_side", None),
    ]
    _finite(rows[-1], ["baseline_seconds_per_study", "this_seconds_per_study"])


@pytest.mark.slow
def test_train_settings_times_a_step_per_setting(tiny_records):
    from conftest import TINY_MODEL

    args = ["--records", tiny_records, "--steps", "1", "--rounds", "1"]
    args += ["--only", "intra_op_1", *[f"--set={k}={v}" for k, v in TINY_MODEL.items()]]
    rows = _run("train_settings.py", *args)
    assert [(r["bench"], r["setting"]) for r in rows] == [
        ("train_step", "intra_op_1"),
        ("train_settings", "intra_op_1"),
    ]
    _finite(rows[1], ["best_seconds_per_step"])
    assert rows[1]["ratio_as_train_vs_setting"] is None  # no baseline setting was run


@pytest.mark.slow
def test_train_step_parts_times_arms_against_the_default():
    """Two arms (every arm is the same code with other overrides; each costs a trace)."""
    from conftest import TINY_MODEL

    args = ["--rounds", "1", "--steps", "1", "--only", "default,batch_16"]
    args += [f"--set={k}={v}" for k, v in TINY_MODEL.items()]
    rows = _run("train_step_parts.py", *args)
    assert [r["arm"] for r in rows] == ["default", "batch_16"]
    assert rows[0]["ratio_vs_default"] == 1.0
    for row in rows:
        _finite(row, ["best_seconds_per_step", "ratio_vs_default"])


def test_job_side_by_side_runs_the_job_in_its_own_folders_and_reports_a_failure(tmp_path):
    """The job as the script starts it in each tree (its own cache, work and export folders,
    passed as overrides): a job that fails stops the script with the job's own error line.
    (A whole job per tree is minutes: the smoke run stops at the config check.)"""
    import runpy

    script = runpy.run_path(str(REPO / "benchmarks" / "job_side_by_side.py"))
    with pytest.raises(SystemExit) as stop:
        script["run_job"](REPO, tmp_path, ["epochs=0"])
    assert "the job failed" in str(stop.value) and "epochs" in str(stop.value)


@pytest.mark.slow
def test_real_ct_gates_run_on_an_export(shared, tmp_path):
    from radnet_tf.serving.export import export_model
    from radnet_tf.modeling.model import build_model
    from conftest import tiny_config

    cfg = tiny_config()
    path = export_model(build_model(cfg), cfg, tmp_path / "sm", warmup=False)
    figure = tmp_path / "gate1.png"
    rows = _run(
        "real_ct_gates.py",
        "--model",
        path,
        "--shared",
        shared,
        "--hu-offsets",
        "-5",
        "--figure",
        figure,
    )
    assert rows[-1] == {"figure": str(figure)} and figure.stat().st_size > 1000
    rows = rows[:-1]
    gates = [r for r in rows if "gate" in r]
    assert [r["gate"] for r in gates] == [1, 1, 2, 2] and rows[-1]["cases"] == 4
    assert all(isinstance(r["passes"], bool) for r in gates)
    for r in gates[2:]:  # a peak outside the source slice is null (strict JSON), never NaN
        assert r["mask_peak_xy"] is None or all(math.isfinite(v) for v in r["mask_peak_xy"])
        assert r["passes"] == (r["probability"] >= r["threshold"] and r["peak_inside_a_box"])
    extra = [
        r for r in rows if r.get("probe") == "normal_not_a_gate"
    ]  # reported, not counted in the 4 cases
    if (shared / "vhp-male-head").exists():
        assert [r["series"] for r in extra] == ["vhp-male-head"] and extra[0]["slices"] > 50
        assert (
            isinstance(extra[0]["ct_positive"], bool)
            and 0 <= extra[0]["positive_slice_fraction"] <= 1
        )
    probes = [r for r in rows if r.get("probe") == "hu_offset"]
    assert [(r["series"], r["offset_hu"]) for r in probes] == [
        ("ge-head-tilt", -5),
        ("cq500/CQ500-CT-0", -5),
    ]
    assert all(0 <= r["positive_slice_fraction"] <= 1 for r in probes)


@pytest.mark.slow
def test_phantom_vs_real_figure(shared, tmp_path):
    out = tmp_path / "fig.png"
    rows = _run("phantom_vs_real.py", "--shared", shared, "--out", out)
    assert [r.get("series", "")[:5] for r in rows[:4]] == ["real:", "phant", "real:", "phant"]
    assert all(0 < r["median_0_60"] < 60 for r in rows[:4])
    assert rows[-1]["figure"] == str(out) and out.stat().st_size > 10_000


@pytest.mark.slow
def test_seed_runs_one_seed_row_and_table(tiny_records, tmp_path):
    """One seed (each seed is a whole training process; the loop over seeds is plain)."""
    out = tmp_path / "runs.jsonl"
    proc = subprocess.run(
        # a seed whose 70:30 split of the 10 tiny studies leaves both classes in training
        [
            sys.executable,
            str(REPO / "benchmarks" / "seed_runs.py"),
            "--seeds",
            "0",
            "--out",
            str(out),
            "--tag",
            "t",
            "--shared",
            str(tmp_path / "absent"),
            "--export-root",
            str(tmp_path / "sm"),
            f"data={tiny_records}",
            f"work_dir={tmp_path / 'work'}",
            "extra_windows=[]",
            "epochs=1",
            "steps_per_epoch=2",
            "calibration_series_slices=30",
            *TINY_OVERRIDES,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seed"] for r in rows] == [0] and all(r["gates"] == [] for r in rows)
    for r in rows:
        assert (tmp_path / "work" / f"model_t_seed{r['seed']}" / "val_metrics.csv").is_file()
        assert any((tmp_path / "sm" / f"t_seed{r['seed']}").iterdir())  # an export per seed
        assert 0 <= r["threshold"] <= 1 and 0 <= r["ct_accuracy"] <= 1
        metrics = pd.read_csv(
            tmp_path / "work" / f"model_t_seed{r['seed']}" / "val_metrics.csv"
        ).set_index("level")
        assert r["mask_dice"] == pytest.approx(
            metrics.loc["mask", "dice"]
        )  # the phantom's records hold masks
        # the trainer's export carries the same held-out figures
        meta = json.loads(
            next(
                (tmp_path / "sm" / f"t_seed{r['seed']}").glob("*/assets/radnet_metadata.json")
            ).read_text()
        )
        assert meta["held_out"]["mask_dice"] == pytest.approx(r["mask_dice"])
        assert meta["held_out"]["ct_accuracy"] == pytest.approx(r["ct_accuracy"])
        # the "as 30-slice series" figures, from the held-out rates and the studies' length
        studies = pd.read_csv(tmp_path / "work" / f"model_t_seed{r['seed']}" / "val_studies.csv")
        scale = max(1.0, 28 / (studies.num_slices.median() - 2))
        recall, fpr = (
            studies[studies.label == 1].ct_positive.mean(),
            studies[studies.label == 0].ct_positive.mean(),
        )
        m = r["series_model"]
        assert m["series_slices"] == 30 and m["scale"] == pytest.approx(scale)
        for key, expected in (
            ("sensitivity", 1 - (1 - recall) * (1 - fpr) ** (scale - 1)),
            ("specificity", (1 - fpr) ** scale),
        ):
            # a held-out split of the 10 tiny studies may lack a class: undefined is null
            assert m[key] is None if math.isnan(expected) else m[key] == pytest.approx(expected)
    assert any(
        r["series_model"]["sensitivity"] is not None for r in rows
    )  # the formula was checked
    table = proc.stdout.split("seed\tct_accuracy", 1)[1].splitlines()
    assert [line.split("\t")[0] for line in table[1:5]] == ["0", "mean", "min", "max"]
    acc = f"{rows[0]['ct_accuracy']:.3f}"
    assert [line.split("\t")[1] for line in table[1:5]] == [acc] * 4


@pytest.mark.slow
def test_series_length_thresholds_tiny(trained_tiny, tiny_records, tmp_path):
    from radnet_tf.serving.export import export_model

    cfg, _, model, model_dir = trained_tiny
    export = export_model(model, cfg, tmp_path / "sm", warmup=False)
    rows = _run(
        "series_length_thresholds.py",
        "--run",
        f"{model_dir}:{export}",
        "--records",
        tiny_records,
        "--shared",
        tmp_path / "absent",
    )
    assert len(rows) == 1 and rows[0]["run"] == str(export)
    assert rows[0]["training_study_slices"] == 6  # the tiny cohort's studies
    assert 0.05 <= rows[0]["threshold_100"] <= 0.95


@pytest.mark.slow
def test_lesion_mask_thresholds_tiny(trained_tiny, tiny_records):
    """One line per run: per variant (without / with the opening) the threshold calibrated
    on the training split, and held-out figures equal to scoring's at that threshold behind
    the run's slice gate."""
    import dataclasses

    from radnet_tf.records import dataset as data
    from radnet_tf.evaluation import scoring
    from radnet_tf.decision import MASK_THRESHOLD_CANDIDATES
    from radnet_tf.serving.loader import load_trained

    cfg, _, _, model_dir = trained_tiny
    rows = _run("lesion_mask_thresholds.py", "--run", model_dir, "--records", tiny_records)
    assert len(rows) == 1 and rows[0]["run"] == str(model_dir)
    r = rows[0]
    assert r["slice_threshold"] == round(cfg.slice_threshold, 4)
    model, cfg = load_trained(model_dir)
    files = data.list_shards(str(tiny_records))
    fn = scoring.keras_slice_fn(model, cfg, masks=True)
    for name, opening in (("gated", False), ("gated_opened", True)):
        t = r[name]["mask_threshold"]
        assert t in MASK_THRESHOLD_CANDIDATES + (0.5,)
        c = dataclasses.replace(cfg, mask_opening=opening)
        held = scoring.predict_studies(
            fn, files, c, "validation", with_masks=True, mask_thresholds=(t, 0.5)
        )
        assert r[name]["held_out"]["dice"] == pytest.approx(
            scoring.mask_scores(held, cfg.slice_threshold, t)["dice"], abs=1e-4
        )
        assert r[name]["held_out_best"]["dice"] >= r[name]["held_out"]["dice"]
        if not opening:
            assert r["before"]["dice"] == pytest.approx(
                scoring.mask_scores(held, 0.0, 0.5)["dice"], abs=1e-4
            )


def test_seed_runs_summary_columns_for_gates_and_the_uncounted_normal_head():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import seed_runs
    finally:
        sys.path.remove(str(REPO / "benchmarks"))

    def row(seed, acc, vh_positive):
        return {
            "seed": seed,
            "ct_accuracy": acc,
            "ct_recall": 0.5,
            "ct_specificity": 1.0,
            "ct_auc": 0.8,
            "slice_auc": 0.7,
            "gates": [
                {
                    "gate": 1,
                    "series": "ge-head-tilt",
                    "ct_positive": False,
                    "positive_slice_fraction": 0.036,
                },
                {
                    "probe": "normal_not_a_gate",
                    "series": "vhp-male-head",
                    "ct_positive": vh_positive,
                    "positive_slice_fraction": 0.25,
                },
                {"probe": "hu_offset", "series": "ge-head-tilt", "positive_slice_fraction": 0.5},
                {
                    "gate": 2,
                    "slice": "cq500/CQ500-CT-1/CT000000.dcm",
                    "probability": 0.8,
                    "passes": True,
                },
            ],
        }

    lines = seed_runs.summary([row(0, 0.6, True), row(1, 0.7, False)]).splitlines()
    assert lines[0].split("\t") == [
        "seed",
        "ct_accuracy",
        "ct_recall",
        "ct_specificity",
        "ct_auc",
        "slice_auc",
        "CT000000.dcm",
        "ge-head-tilt",
        "vhp-male-head",
    ]
    assert lines[1].split("\t")[6:] == [
        "0.800",
        "0.036",
        "-0.250",
    ]  # negative: the verdict was positive
    assert lines[2].split("\t")[6:] == ["0.800", "0.036", "0.250"]
    assert lines[3].split("\t")[1] == "0.650"  # the mean
    assert [line.split("\t")[:2] for line in lines[4:6]] == [["min", "0.600"], ["max", "0.700"]]
    assert [line.split("\t")[8] for line in lines[3:6]] == ["0.250"] * 3  # of |fraction|


def test_rim_profile_closed_skull_and_deep_dense_share_on_a_drawn_ring():
    import numpy as np
    from scipy import ndimage

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import phantom_vs_real
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    # 10 slices of a skull ring (radius 40-46 px, 1000 HU) around brain whose HU is 20 + the
    # in-plane distance to the ring in pixels of 1.5 mm (as the profile measures it)
    yy, xx = np.mgrid[:120, :120]
    r = np.hypot(yy - 59.5, xx - 59.5)
    ring = (r >= 40) & (r < 46)
    inside = ndimage.binary_fill_holes(ring) & ~ring
    s = np.full((120, 120), -1000.0, np.float32)
    s[ring] = 1000.0
    s[inside] = 20.0 + ndimage.distance_transform_edt(inside)[inside]
    got = phantom_vs_real.rim_profile(np.stack([s] * 10), 1.5)
    # 3 mm = 2 px -> 22 HU (pixels within +- 0.75 mm: 1.5-2.5 px, median 22); 15 mm = 10 px -> 30
    assert got == {"3": 22.0, "6": 24.0, "9": 26.0, "15": 30.0, "rise_3_15": -8.0}
    # the skull's ring closed on all 10 slices; a 10-pixel gap in it on 4 of them
    assert phantom_vs_real.closed_skull_fraction(np.stack([s] * 10), levels=(0.0, 1.0)) == 1.0
    gap = s.copy()
    gap[(r >= 40) & (r < 46) & (np.abs(yy - 59.5) < 5) & (xx > 59.5)] = 30.0
    assert (
        phantom_vs_real.closed_skull_fraction(np.stack([gap] * 4 + [s] * 6), levels=(0.0, 1.0))
        == 0.6
    )
    # a 2-pixel, 75 HU midline sheet (a falx) across the brain: deeper than 4 mm (> 2.67 px
    # inside the ring, i.e. within ~37.3 px of the centre) it holds 2 x 76 of 4,492 pixels
    falx = s.copy()
    falx[inside & (np.abs(xx - 59.5) < 1)] = 75.0
    deep = inside & (ndimage.distance_transform_edt(inside) * 1.5 > 4.0)
    sheet = deep & (np.abs(xx - 59.5) < 1)
    got = phantom_vs_real.deep_dense_fraction(np.stack([falx] * 10), 1.5, levels=(0.0, 1.0))
    assert got == round(sheet.sum() / deep.sum(), 4) == round(152 / 4492, 4)
    assert phantom_vs_real.deep_dense_fraction(np.stack([s] * 10), 1.5, levels=(0.0, 1.0)) == 0.0
