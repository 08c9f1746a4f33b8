import numpy as np
import pytest

from radnet_tf.decision import ct_decision, ct_decision_np, ct_score_np, longest_run_np

CASES = [
    # probs, expected longest run at 0.5, expected CT positive (K=3)
    ([0.9, 0.9, 0.1, 0.9, 0.9], 2, False),  # two runs of 2
    ([0.1, 0.6, 0.7, 0.8, 0.1], 3, True),  # run of 3 inside
    ([0.6, 0.7, 0.8], 3, True),  # run at both edges
    ([0.1, 0.2, 0.3, 0.5, 0.5, 0.5], 3, True),  # run at the end, threshold inclusive
    ([0.1] * 6, 0, False),  # all negative
    ([0.99], 1, False),  # one slice
    ([], 0, False),  # no slice
]


@pytest.mark.parametrize("probs,run,positive", CASES)
def test_rule_on_hand_made_sequences(probs, run, positive):
    got = ct_decision_np(probs)
    assert got["longest_positive_run"] == run and got["ct_positive"] == positive
    if probs:
        tf_got = ct_decision(np.array(probs, np.float32))
        assert int(tf_got["longest_positive_run"]) == run
        assert bool(tf_got["ct_positive"]) == positive
        assert float(tf_got["ct_score"]) == pytest.approx(got["ct_score"])


def test_ct_score_agrees_with_the_rule_at_every_threshold():
    rng = np.random.default_rng(0)
    for _ in range(50):
        probs = rng.uniform(size=rng.integers(1, 12))
        score = ct_score_np(probs)
        for t in np.linspace(0.05, 0.95, 19):
            assert (score >= t) == (longest_run_np(probs >= t) >= 3)


def test_ct_score_values():
    assert ct_score_np([0.2, 0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.7)
    assert ct_score_np([0.9, 0.9]) == 0.0
    assert ct_score_np([0.4, 0.9, 0.9, 0.9], min_run=2) == pytest.approx(0.9)
