import dataclasses

import numpy as np
import pandas as pd
import pytest

from radnet_tf.evaluation.metrics import (
    binary_metrics,
    bootstrap_ci,
    ct_metrics,
    gate_mask_counts,
    mask_counts,
    mask_metrics,
    study_table,
)


def test_binary_metrics_against_hand_counts():
    y = [1, 1, 1, 0, 0, 0, 0, 1]
    p = [1, 1, 0, 0, 1, 0, 0, 1]  # tp=3 fn=1 fp=1 tn=3
    m = binary_metrics(y, p)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 3)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(3 / 4)
    scored = binary_metrics(y, p, y_score=[0.9, 0.8, 0.4, 0.1, 0.6, 0.2, 0.3, 0.7])
    assert scored["roc_auc"] == pytest.approx(15 / 16)  # 15 of 16 pos/neg pairs ordered


def test_study_table_uses_the_ct_rule():
    t = study_table(
        ["a", "b", "c"],
        [1, 0, 1],
        [np.array([0.1, 0.6, 0.7, 0.8]), np.array([0.9, 0.9, 0.1]), np.array([0.7])],
        0.5,
        3,
    )
    assert list(t.ct_positive) == [True, False, True]
    assert list(t.longest_positive_run) == [3, 2, 1]
    assert list(t.min_run_applied) == [3, 3, 1]


def _table(n, seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    score = np.clip(label * 0.3 + rng.uniform(size=n) * 0.7, 0, 1)
    return pd.DataFrame({"label": label, "ct_score": score, "ct_positive": score >= 0.5})


def test_bootstrap_ci_contains_estimate_and_narrows():
    widths = []
    for n in (40, 400):
        table = _table(n, 1)
        point = ct_metrics(table)["accuracy"]
        lo, hi = bootstrap_ci(table, lambda t: {"accuracy": ct_metrics(t)["accuracy"]}, n_boot=300)[
            "accuracy"
        ]
        assert lo <= point <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_choose_threshold_separates_and_prefers_half_on_ties():
    from radnet_tf.decision import choose_threshold

    # separable between 0.30 and 0.35: midpoint 0.325 is the only perfect candidate
    assert choose_threshold([0.2, 0.8, 0.3, 0.35], [0, 1, 0, 1]) == pytest.approx(0.325)
    # every candidate in (0.1, 0.9) separates; 0.5 is among them
    assert choose_threshold([0.1, 0.9], [0, 1]) == 0.5
    # an inverted score: best is to call everything one class; clipped to [0.05, 0.95]
    assert 0.05 <= choose_threshold([0.9, 0.1], [0, 1]) <= 0.95
    with pytest.raises(ValueError):
        choose_threshold([0.1, 0.2], [1, 1])


# CT scores of five negative and three positive studies: at 0.5 every positive and one
# negative (0.6) are called positive; at 0.65 two positives and no negative.
NEG, POS = [0.1, 0.2, 0.3, 0.4, 0.6], [0.5, 0.7, 0.9]


def test_choose_threshold_for_longer_series_trades_recall_for_specificity():
    from radnet_tf.decision import choose_threshold, series_scale

    scores, labels = NEG + POS, [0] * 5 + [1] * 3
    # as long as the studies: balanced accuracy 0.9 at 0.45 and at 0.5 (tie -> 0.5)
    assert choose_threshold(scores, labels) == pytest.approx(0.5)
    assert choose_threshold(scores, labels, scale=1.0) == pytest.approx(0.5)
    # twice as long: at 0.5 a normal series is cleared with probability 0.8^2 = 0.64
    # ((1 + 0.64) / 2 = 0.82); at 0.65 with 1 (recall 2/3: (2/3 + 1) / 2 = 0.833)
    assert choose_threshold(scores, labels, scale=2.0) == pytest.approx(0.65)
    with pytest.raises(ValueError):
        choose_threshold(scores, labels, scale=0.5)
    assert series_scale(100, 16, 3) == 7.0  # 98 windows of 3 slices against 14
    assert series_scale(30, 16, 3) == 2.0
    assert series_scale(10, 16, 3) == 1.0  # never below the studies themselves
    assert series_scale(2, 1, 3) == 1.0


def test_calibrate_threshold_for_a_series_length(monkeypatch):
    import radnet_tf.evaluation.scoring as scoring
    from radnet_tf.config import Config
    from radnet_tf.training.train import calibrate_thresholds

    def calibrate_threshold(model, files, cfg):
        return calibrate_thresholds(model, files, cfg)["slice_threshold"]

    probs = [np.full(16, s, np.float32) for s in NEG + POS]  # 16-slice studies, CT score = s
    preds = scoring.StudyPredictions(
        [f"s{i}" for i in range(8)], [0] * 5 + [1] * 3, probs, [None] * 8
    )
    monkeypatch.setattr(scoring, "keras_slice_fn", lambda model, cfg, masks: None)
    monkeypatch.setattr(scoring, "predict_studies", lambda fn, files, cfg, split, **kw: preds)
    assert calibrate_threshold(None, [], Config(calibrate_threshold=True)) == pytest.approx(0.5)
    # 30-slice series: 28 windows of K = 3 against the studies' 14
    assert calibrate_threshold(
        None, [], Config(calibrate_threshold=True, calibration_series_slices=30)
    ) == pytest.approx(0.65)
    assert calibrate_thresholds(None, [], Config()) == {}  # nothing asked for, nothing set


def test_thresholds_are_calibrated_on_the_calibration_split_when_there_is_one(monkeypatch):
    import radnet_tf.evaluation.scoring as scoring
    from radnet_tf.config import Config
    from radnet_tf.training.train import calibrate_thresholds

    probs = [np.full(16, s, np.float32) for s in NEG + POS]
    preds = scoring.StudyPredictions(
        [f"s{i}" for i in range(8)], [0] * 5 + [1] * 3, probs, [None] * 8
    )
    splits = []
    monkeypatch.setattr(scoring, "keras_slice_fn", lambda model, cfg, masks: None)
    monkeypatch.setattr(
        scoring,
        "predict_studies",
        lambda fn, files, cfg, split, **kw: splits.append(split) or preds,
    )
    calibrate_thresholds(None, [], Config(calibrate_threshold=True))
    calibrate_thresholds(None, [], Config(calibrate_threshold=True, calibration_fraction=0.2))
    assert splits == ["train", "calibration"]


def test_mask_calibration_without_reference_masks_keeps_the_threshold(monkeypatch, capsys):
    import types

    import radnet_tf.evaluation.scoring as scoring
    from radnet_tf.config import Config
    from radnet_tf.training.train import calibrate_thresholds

    preds = scoring.StudyPredictions(
        ["a", "b"], [0, 1], [np.full(4, 0.2), np.full(4, 0.8)], [None] * 2
    )
    preds.mask_counts, preds.mask_thresholds = [None, None], (0.05, 0.5)  # e.g. RSNA: no masks
    monkeypatch.setattr(scoring, "keras_slice_fn", lambda model, cfg, masks: None)
    monkeypatch.setattr(scoring, "predict_studies", lambda fn, files, cfg, split, **kw: preds)
    model = types.SimpleNamespace(output_names=["slice_probability", "mask_1", "mask_2", "mask_3"])
    cfg = Config(calibrate_mask_threshold=True, mask_threshold=0.4)
    assert (
        calibrate_thresholds(model, [], cfg) == {"mask_threshold": 0.4}
        and cfg.mask_threshold == 0.4
    )
    assert (
        "mask threshold: kept at 0.40 (none of the training studies has a reference mask)"
        in capsys.readouterr().out
    )
    headless = types.SimpleNamespace(
        output_names=["slice_probability"]
    )  # densenet: nothing to calibrate
    assert calibrate_thresholds(headless, [], Config(calibrate_mask_threshold=True)) == {}
    assert "not calibrated (the model has no auxiliary heads)" in capsys.readouterr().out


def test_series_model_metrics_from_held_out_studies():
    from radnet_tf.config import Config
    from radnet_tf.training.train import series_model_metrics

    # 16-slice studies; recall 1/2 and false-positive rate 1/4 at the threshold
    studies = pd.DataFrame(
        {
            "label": [1, 1, 0, 0, 0, 0, -1],
            "num_slices": [16] * 7,
            "ct_positive": [True, False, True, False, False, False, True],
        }
    )
    m = series_model_metrics(studies, Config(calibration_series_slices=30))  # scale 28 / 14 = 2
    assert m["scale"] == 2.0
    assert m["sensitivity"] == pytest.approx(1 - 0.5 * 0.75)  # 0.625
    assert m["specificity"] == pytest.approx(0.75**2)  # 0.5625
    assert m["balanced_accuracy"] == pytest.approx((0.625 + 0.5625) / 2)


def test_print_summary_names_the_calibration_length(capsys):
    from radnet_tf.training.train import print_summary

    summary = {
        "model_dir": "m",
        "model_file": "final.keras",
        "records": "r",
        "slice_threshold": 0.5,
        "ct_metrics": {"accuracy": 0.75, "recall": 0.5, "precision": 1.0, "f1": 2 / 3},
        "series_model": {
            "series_slices": 30,
            "scale": 2.0,
            "sensitivity": 0.625,
            "specificity": 0.5625,
            "balanced_accuracy": 0.59375,
        },
        "seconds": {"training": 1.0, "total": 2.0},
        "machine": "1024² float32 matmul 50.0 GFLOP/s (NumPy, best of 5), 2 CPUs",
    }
    print_summary(summary)
    out = capsys.readouterr().out
    assert "[radnet] machine   : 1024² float32 matmul 50.0 GFLOP/s" in out
    assert (
        "[radnet] threshold : 0.500 (slice probability, from the training studies, for 30-slice "
        "series)\n" in out
    )
    assert (
        "[radnet] as 30-slice series (modelled, x2.00): sensitivity 0.625, specificity 0.562, "
        "balanced accuracy 0.594\n"
    ) in out


def test_mask_counts_gate_and_metrics_against_hand_counts():
    truth = np.zeros((2, 4, 4))
    truth[0, :2, :2] = 1  # 4 true pixels
    pred = np.zeros((2, 4, 4))
    pred[0, :2, :1] = 0.9  # 2 of them found
    pred[0, 3, 3] = 0.5  # a false pixel at exactly the threshold counts
    pred[1, 0, 0] = 0.49  # below it does not
    counts = mask_counts(pred, truth, [0.5, 0.3, 0.95])
    assert counts.shape == (2, 3, 3) and counts.dtype == np.int64
    assert counts[:, 0].tolist() == [[2, 3, 4], [0, 0, 0]]
    assert counts[:, 1].tolist() == [[2, 3, 4], [0, 1, 0]]  # 0.49 >= 0.3 on slice 1
    assert counts[:, 2].tolist() == [[0, 0, 4], [0, 0, 0]]
    # with the lesion mask's opening, thinner than 3 pixels is gone; a 3 x 3 block stays
    assert mask_counts(pred, truth, [0.5], opening=True)[:, 0].tolist() == [[0, 0, 4], [0, 0, 0]]
    block = np.zeros((1, 4, 4))
    block[0, :3, :3] = 0.9
    assert mask_counts(block, truth[:1], [0.5], opening=True)[0, 0].tolist() == [4, 9, 4]
    # the slice gate: predicted pixels count only on slices at or above the slice threshold
    gated = gate_mask_counts(counts, [0.7, 0.2], 0.7)
    assert gated[:, 1].tolist() == [[2, 3, 4], [0, 0, 0]] and counts[1, 1].tolist() == [
        0,
        1,
        0,
    ]  # input kept
    assert gate_mask_counts(counts, [0.69, 0.2], 0.7)[:, 0].tolist() == [
        [0, 0, 4],
        [0, 0, 0],
    ]  # truth stays
    negative = mask_counts(np.full((1, 4, 4), 0.7), np.zeros((1, 4, 4)), [0.5])[:, 0].sum(
        0
    )  # 16 false pixels
    m = mask_metrics([counts[:, 0].sum(0), negative, None, np.zeros(3, int)], [1, 0, 1, 0])
    assert m["n"] == 3  # the study without a reference mask is left out
    assert m["dice"] == pytest.approx(2 * 2 / (19 + 4))
    assert m["study_dice"] == pytest.approx(2 * 2 / (3 + 4))
    assert m["recall"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(2 / 19)
    assert m["negative_studies_with_mask"] == pytest.approx(0.5)
    assert mask_metrics([None], [1]) == {"n": 0}
    empty = mask_metrics([np.array([0, 0, 5])], [1])  # nothing predicted
    assert (
        empty["dice"] == 0.0
        and np.isnan(empty["precision"])
        and np.isnan(empty["negative_studies_with_mask"])
    )


def test_mask_counts_equal_a_count_per_threshold_with_ties_in_float32():
    """The one-pass counts (grey opening, one search) equal thresholding and opening the mask
    once per threshold, ties included: float32(0.35) is below 0.35 and still counts."""
    from radnet_tf.decision import open_np

    rng = np.random.default_rng(5)
    pred = (rng.uniform(size=(3, 12, 10)) ** 2).astype(np.float32)
    pred[0, :4, :4] = np.float32(0.35)  # a block exactly at a threshold
    truth = rng.uniform(size=(3, 12, 10)) < 0.3
    thresholds = (0.5, 0.01, 0.35, 0.35, 0.9)
    for opening in (False, True):
        got = mask_counts(pred, truth, thresholds, opening)
        for j, t in enumerate(thresholds):
            p = open_np(pred >= t) if opening else pred >= t
            want = [[np.sum(p[s] & truth[s]), np.sum(p[s]), np.sum(truth[s])] for s in range(3)]
            assert got[:, j].tolist() == want
    assert got[0, 2, 1] >= 16  # the tied block is counted
    assert mask_counts(pred, truth, ()).shape == (3, 0, 3)


def test_mask_threshold_calibration_on_gated_counts():
    from radnet_tf.evaluation import scoring
    from radnet_tf.decision import choose_mask_threshold

    # pooled counts at thresholds 0.1, 0.3, 0.5: Dice 2*4/(10+5)=0.533, 2*4/(4+5)=0.889,
    # 2*1/(1+5)=0.333
    counts = np.array([[4, 10, 5], [4, 4, 5], [1, 1, 5]])
    assert choose_mask_threshold(counts, [0.1, 0.3, 0.5], fallback=0.5) == pytest.approx(0.3)
    assert choose_mask_threshold([[2, 2, 4], [2, 2, 4]], [0.2, 0.6], 0.9) == pytest.approx(
        0.6
    )  # tie: nearer 0.5
    assert choose_mask_threshold([[0, 3, 4], [0, 0, 4]], [0.2, 0.6], 0.45) == pytest.approx(
        0.45
    )  # never right
    # two studies: the low threshold finds the bleed (slice 0) but also paints slice 1 of
    # the negative study; the gate at slice threshold 0.6 removes that slice
    truth = np.zeros((2, 4, 4))
    truth[0, 0, :] = 1
    lesion = np.zeros((2, 4, 4))
    lesion[0, 0, :] = 0.2
    lesion[0, 1, 0] = 0.6
    normal = np.zeros((2, 4, 4))
    normal[1] = 0.25
    preds = scoring.StudyPredictions(
        ["a", "b"], [1, 0], [np.array([0.9, 0.1]), np.array([0.3, 0.5])], [None] * 2
    )
    preds.mask_thresholds = (0.1, 0.5)
    preds.mask_counts = [
        mask_counts(lesion, truth, preds.mask_thresholds),
        mask_counts(normal, np.zeros((2, 4, 4)), (0.1, 0.5)),
    ]
    # ungated (slice threshold 0): 0.1 -> 2*4/(5+16+4) = 0.32, 0.5 -> 0; gated at 0.6 -> 2*4/(5+4)
    # = 0.889
    assert scoring.mask_scores(preds, 0.0, 0.1)["dice"] == pytest.approx(8 / 25)
    assert scoring.mask_scores(preds, 0.6, 0.1)["dice"] == pytest.approx(8 / 9)
    assert scoring.mask_scores(preds, 0.6, 0.1)["negative_studies_with_mask"] == 0.0
    assert scoring.mask_scores(preds, 0.6) == scoring.mask_scores(
        preds, 0.6, 0.1
    )  # default: the first threshold
    assert scoring.mask_scores(preds, 0.6, 0.5)["dice"] == 0.0  # only the false 0.6 pixel is left
    assert scoring.calibrate_mask_threshold(preds, 0.6, fallback=0.5) == pytest.approx(0.1)
    preds.mask_counts = [None, None]
    assert scoring.calibrate_mask_threshold(preds, 0.6, fallback=0.4) == pytest.approx(0.4)


def test_predict_studies_scores_the_served_mask_against_the_records(tiny_records):
    """A slice function whose mask is the reference mask scores Dice 1; an empty one 0."""
    from conftest import tiny_config

    from radnet_tf.records import dataset as data
    from radnet_tf.evaluation import scoring
    from radnet_tf.contract import MASK_OUTPUTS, MASKS

    cfg = tiny_config(
        val_fraction=0.4, mask_opening=False
    )  # the tiny phantom's bleeds: few pixels at 32 px
    files = data.list_shards(str(tiny_records))
    truth = {}
    for x, y, meta in data.eval_dataset(
        files, cfg, 1, with_masks=True, split="all", with_keys=True
    ):
        truth[x.numpy().tobytes()] = y[MASK_OUTPUTS[0]].numpy()[0, ..., 0]

    def perfect(x):
        return {"slice_probability": np.zeros(x.shape[1]), MASKS: truth[x.numpy().tobytes()]}

    def empty(x):
        return {"slice_probability": np.zeros(x.shape[1]), MASKS: np.zeros(x.shape[1:4])}

    good = scoring.predict_studies(perfect, files, cfg, "all", with_masks=True)
    assert len(good.mask_counts) == len(good.keys) == len(truth) and good.mask_thresholds == (
        cfg.mask_threshold,
    )
    assert [c.shape for c in good.mask_counts] == [(len(t), 1, 3) for t in truth.values()]
    m = scoring.mask_scores(good, 0.0)  # slice probabilities 0: gate at 0 keeps every slice
    assert m["n"] == len(truth) and m["dice"] == 1.0 and m["negative_studies_with_mask"] == 0.0
    gated = scoring.mask_scores(good, 0.5)  # ...at 0.5 none: nothing predicted
    assert gated["dice"] == 0.0 and gated["recall"] == 0.0
    bad = scoring.mask_scores(
        scoring.predict_studies(empty, files, cfg, "all", with_masks=True), 0.0
    )
    assert bad["dice"] == 0.0 and bad["recall"] == 0.0
    assert scoring.predict_studies(perfect, files, cfg, "all").mask_counts == []  # not asked for
    from radnet_tf.decision import open_np

    opened = scoring.predict_studies(
        perfect, files, dataclasses.replace(cfg, mask_opening=True), "all", with_masks=True
    )
    kept = sum(int(open_np(t > 0.5).sum()) for t in truth.values())
    assert (
        sum(int(c[:, 0, 1].sum()) for c in opened.mask_counts) == kept
    )  # what survives the opening
    grid = scoring.predict_studies(
        perfect, files, cfg, "all", with_masks=True, mask_thresholds=(0.2, 0.9)
    )
    assert grid.mask_thresholds == (0.2, 0.9) and scoring.mask_scores(grid, 0.0, 0.9)["dice"] == 1.0
    # a model without aux heads (densenet) serves no mask: nothing is compared
    no_heads = scoring.predict_studies(
        lambda x: np.zeros(x.shape[1]), files, cfg, "all", with_masks=True
    )
    assert no_heads.mask_counts == [None] * len(truth) and scoring.mask_scores(no_heads, 0.5) == {
        "n": 0
    }


def test_predict_splits_reads_once_and_matches_one_split_at_a_time(tiny_records):
    """Two splits in one read: each study predicted once, routed to its split, the same
    predictions as one `predict_studies` per split; an empty split is refused."""
    from conftest import tiny_config

    from radnet_tf.errors import UserError
    from radnet_tf.evaluation import scoring
    from radnet_tf.records import dataset as data

    cfg = tiny_config(val_fraction=0.4)
    files = data.list_shards(str(tiny_records))
    calls = []

    def fn(x):
        calls.append(1)
        return np.asarray(x[0, :, 0, 0, 0])  # a slice "probability" from the image itself

    both = scoring.predict_splits(fn, files, cfg, ("train", "validation"))
    n = len(calls)
    for split in ("train", "validation"):
        one = scoring.predict_studies(fn, files, cfg, split)
        assert both[split].keys == one.keys and both[split].labels == one.labels
        assert [p.tolist() for p in both[split].probs] == [p.tolist() for p in one.probs]
    assert n == len(both["train"].keys) + len(both["validation"].keys) == len(calls) - n
    assert not set(both["train"].keys) & set(both["validation"].keys)
    with pytest.raises(UserError, match="'calibration' split"):
        scoring.predict_splits(fn, files, cfg, ("train", "calibration"))


def test_machine_speed_line_reports_a_positive_rate():
    from radnet_tf.machine import matmul_rate, speed_line

    assert matmul_rate(n=64, repeats=2) > 0
    assert speed_line(12.34).startswith("1024² float32 matmul 12.3 GFLOP/s (NumPy, best of 5), ")


def test_print_summary_says_when_the_held_out_studies_are_all_negative(capsys):
    from radnet_tf.training.train import print_summary

    nan = float("nan")
    print_summary(
        {
            "model_dir": "m",
            "model_file": "final.keras",
            "records": "r",
            "ct_metrics": {"accuracy": 1.0, "recall": nan, "precision": 0.0, "f1": 0.0},
            "seconds": {"total": 1.0},
        }
    )
    assert "recall nan, precision 0.000, f1 0.000 (every held-out study is negative: " in (
        capsys.readouterr().out
    )
