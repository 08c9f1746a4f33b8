import numpy as np
import pandas as pd
import pytest

from radnet_tf.metrics import binary_metrics, bootstrap_ci, ct_metrics, study_table


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
    t = study_table(["a", "b", "c"], [1, 0, 1], [np.array([0.1, 0.6, 0.7, 0.8]), np.array([0.9, 0.9, 0.1]), np.array([0.7])], 0.5, 3)
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
        lo, hi = bootstrap_ci(table, lambda t: {"accuracy": ct_metrics(t)["accuracy"]}, n_boot=300)["accuracy"]
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
