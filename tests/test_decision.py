import numpy as np
import pytest

from radnet_tf.decision import (
    applied_min_run,
    ct_decision,
    ct_decision_labels,
    ct_decision_labels_np,
    ct_decision_np,
    ct_score_np,
    longest_run_np,
)

CASES = [
    # probs, expected longest run at 0.5, expected CT positive (K=3), K applied
    ([0.9, 0.9, 0.1, 0.9, 0.9], 2, False, 3),  # two runs of 2
    ([0.1, 0.6, 0.7, 0.8, 0.1], 3, True, 3),  # run of 3 inside
    ([0.6, 0.7, 0.8], 3, True, 3),  # run at both edges
    ([0.1, 0.2, 0.3, 0.5, 0.5, 0.5], 3, True, 3),  # run at the end, threshold inclusive
    ([0.1] * 6, 0, False, 3),  # all negative
    ([0.99], 1, True, 1),  # one slice: K shortened to 1
    ([0.2], 0, False, 1),
    ([0.9, 0.9], 2, True, 2),  # two slices: K = 2
    ([0.9, 0.1], 1, False, 2),
    ([], 0, False, 3),  # no slice: never positive
]


@pytest.mark.parametrize("probs,run,positive,k", CASES)
def test_rule_on_hand_made_sequences(probs, run, positive, k):
    got = ct_decision_np(probs, 0.5, 3)
    assert (got["longest_positive_run"], got["ct_positive"], got["min_run_applied"]) == (
        run,
        positive,
        k,
    )
    tf_got = ct_decision(np.array(probs, np.float32), 0.5, 3)
    assert int(tf_got["longest_positive_run"]) == run
    assert bool(tf_got["ct_positive"]) == positive
    assert int(tf_got["min_run_applied"]) == k
    assert float(tf_got["ct_score"]) == pytest.approx(got["ct_score"])


def test_applied_min_run():
    assert [applied_min_run(s, 3) for s in (0, 1, 2, 3, 40)] == [3, 1, 2, 3, 3]


def test_ct_score_agrees_with_the_rule_at_every_threshold():
    rng = np.random.default_rng(0)
    for _ in range(50):
        probs = rng.uniform(size=rng.integers(1, 12))
        score = ct_score_np(probs, 3)
        k = min(3, probs.size)
        for t in np.linspace(0.05, 0.95, 19):
            assert (score >= t) == (longest_run_np(probs >= t) >= k)
            assert (score >= t) == ct_decision_np(probs, t, 3)["ct_positive"]


def test_ct_score_values():
    assert ct_score_np([0.2, 0.9, 0.8, 0.7, 0.1], 3) == pytest.approx(0.7)
    assert ct_score_np([0.9, 0.8], 3) == pytest.approx(0.8)  # K shortened to 2
    assert ct_score_np([0.6], 3) == pytest.approx(0.6)
    assert ct_score_np([], 3) == 0.0
    assert ct_score_np([0.4, 0.9, 0.9, 0.9], 2) == pytest.approx(0.9)


def test_rule_per_label_numpy_and_tf_agree_with_the_single_label_rule():
    probs = np.array([[0.9, 0.1], [0.8, 0.6], [0.7, 0.6], [0.2, 0.6]], np.float32)
    got = ct_decision_labels_np(probs, [0.65, 0.55], 3)
    assert got["ct_positive"].tolist() == [True, True]
    assert got["longest_positive_run"].tolist() == [3, 3]
    np.testing.assert_allclose(got["ct_score"], [0.7, 0.6], atol=1e-6)
    strict = ct_decision_labels_np(probs, [0.75, 0.65], 3)
    assert strict["ct_positive"].tolist() == [False, False]
    tf_got = ct_decision_labels(probs, [0.75, 0.55], 3)
    assert np.asarray(tf_got["ct_positive"]).tolist() == [False, True]
    np.testing.assert_allclose(np.asarray(tf_got["ct_score"]), [0.7, 0.6], atol=1e-6)


def test_lesion_mask_gates_pixels_by_their_slice_numpy_and_tf():
    from radnet_tf.decision import lesion_mask, lesion_mask_np

    masks = np.zeros((3, 2, 2), np.float32)
    masks[0] = [[0.3, 0.1], [0.2, 0.29]]  # slice 0 positive: all but 0.1 reach the cut 0.2
    masks[1] = 0.9  # slice 1 below its slice threshold: gated out
    masks[2, 0, 0] = 0.2  # slice 2 positive, one pixel exactly at the cut
    probs = np.array([0.7, 0.69, 0.7], np.float32)
    got = lesion_mask_np(masks, probs, 0.2, 0.7)
    assert got.tolist() == [
        [[True, False], [True, True]],
        [[False, False], [False, False]],
        [[True, False], [False, False]],
    ]
    np.testing.assert_array_equal(np.asarray(lesion_mask(masks, probs, 0.2, 0.7)), got)
    # per label: masks [S, N, N, L], probs [S, L], one slice threshold per label
    per_label = np.stack([masks, masks], -1)
    two = np.stack([probs, np.array([0.9, 0.9, 0.1], np.float32)], -1)
    both = lesion_mask_np(per_label, two, 0.2, [0.7, 0.5])
    assert both[..., 0].tolist() == got.tolist()
    assert both[1, ..., 1].all() and not both[2, ..., 1].any()
    np.testing.assert_array_equal(np.asarray(lesion_mask(per_label, two, 0.2, [0.7, 0.5])), both)


def test_opening_drops_specks_and_thin_lines_keeps_blocks_numpy_and_tf():
    from radnet_tf.decision import lesion_mask_np, open_np, open_tf

    m = np.zeros((2, 8, 8), bool)
    m[0, 0:3, 0:3] = True  # a 3 x 3 block in the corner: kept (outside the image is ignored)
    m[0, 6, 6] = True  # a speck: dropped
    m[0, 5, 0:8] = True  # a 1-pixel line: dropped
    m[1, 2:6, 2:5] = True  # a 4 x 3 block: kept whole
    m[1, 2, 6:8] = True  # a 2-pixel spur beside the block, in no 3 x 3 square: dropped
    want = np.zeros_like(m)
    want[0, 0:3, 0:3] = True
    want[1, 2:6, 2:5] = True
    assert open_np(m).tolist() == want.tolist()
    np.testing.assert_array_equal(np.asarray(open_tf(m)), want)
    per_label = np.stack([m, ~m], -1)  # [S, N, N, L]: each label opened on its own
    np.testing.assert_array_equal(open_np(per_label)[..., 0], want)
    np.testing.assert_array_equal(np.asarray(open_tf(per_label)), open_np(per_label))
    rng = np.random.default_rng(0)
    noisy = rng.uniform(size=(3, 17, 19)) < 0.7
    np.testing.assert_array_equal(np.asarray(open_tf(noisy)), open_np(noisy))
    # in the lesion mask: cut, opened, then gated by the slice
    probs = np.array([0.9, 0.1], np.float32)
    got = lesion_mask_np(m.astype(np.float32), probs, 0.5, 0.5, opening=True)
    assert got[0].tolist() == want[0].tolist() and not got[1].any()
    assert lesion_mask_np(m.astype(np.float32), probs, 0.5, 0.5)[
        0, 6, 6
    ]  # without opening the speck stays


def test_grey_opening_commutes_with_every_threshold():
    """On a float mask `open_np` is the grey opening: thresholding it equals opening the
    thresholded mask, at every threshold (the trick `mask_counts` relies on)."""
    from radnet_tf.decision import open_np

    p = np.array([[[0.9, 0.9, 0.9, 0.1], [0.9, 0.8, 0.9, 0.1], [0.9, 0.9, 0.7, 0.6]]])
    # erosion: each pixel the minimum of its in-image 3 x 3; then the maximum of those
    want = np.array([[[0.8, 0.8, 0.8, 0.1], [0.8, 0.8, 0.8, 0.1], [0.8, 0.8, 0.7, 0.1]]])
    np.testing.assert_array_equal(open_np(p), want)
    assert open_np(p.astype(np.float32)).dtype == np.float32
    rng = np.random.default_rng(3)
    noisy = rng.uniform(size=(2, 9, 11)).astype(np.float32)
    for t in (0.05, 0.35, 0.5, 0.8):  # float32(0.35) < 0.35: compared in float32 both ways
        np.testing.assert_array_equal(open_np(noisy) >= np.float32(t), open_np(noisy >= t))
