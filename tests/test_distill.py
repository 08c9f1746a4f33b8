"""Distillation: slice targets mixed with a teacher's probabilities."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from radnet_tf.contract import OUTPUT_SLICE
from radnet_tf.records import dataset as data


def test_distilled_targets_mix_known_labels_only():
    mixed = data.distilled_targets(
        tf.constant([1, 0, -1], tf.int64), tf.constant([0.5, 0.25, 0.9]), 0.4
    )
    np.testing.assert_allclose(mixed.numpy(), [0.8, 0.1, -1.0], rtol=1e-6)


def test_training_targets_carry_the_teachers_probabilities(tiny_records):
    files = data.list_shards(str(tiny_records))
    cfg = tiny_config(val_fraction=0.4, distill_weight=0.5, rotation_deg=0.0, flip=False)
    keys = [
        k.decode()
        for k in data.read_studies(files).map(lambda st: st["study_key"]).as_numpy_iterator()
    ]
    teacher = {k: np.full(6, 0.25, np.float32) for k in keys}
    ds = data.train_dataset(files, cfg, batch_size=2, with_masks=False, seed=0, teacher=teacher)
    values = set()
    for _, y in ds.take(6):
        values |= set(np.round(y[OUTPUT_SLICE].numpy().ravel(), 4).tolist())
    assert values <= {0.125, 0.625, -1.0} and {0.125, 0.625} <= values


@pytest.mark.slow
def test_teacher_probabilities_cover_the_training_studies(trained_tiny):
    from radnet_tf.training.distill import teacher_probabilities

    cfg, summary, _, model_dir = trained_tiny
    student = tiny_config(data=cfg.data, val_fraction=cfg.val_fraction, distill_from=str(model_dir))
    files = data.list_shards(cfg.data)
    probs = teacher_probabilities(student, files)
    counts = data.count_studies(files, student)
    assert len(probs) == counts["train"]
    assert all(p.ndim == 1 and ((p >= 0) & (p <= 1)).all() for p in probs.values())


def test_training_metrics_read_soft_targets_as_their_labels():
    from radnet_tf.modeling.losses import MaskedAUC, MaskedBinaryAccuracy

    y_true = np.array([[0.75, 0.2, 0.6, -1.0]], np.float32)  # labels 1, 0, 1, padding
    y_pred = np.array([[0.9, 0.1, 0.3, 0.99]], np.float32)
    acc, auc = MaskedBinaryAccuracy(), MaskedAUC()
    acc.update_state(y_true, y_pred)
    auc.update_state(y_true, y_pred)
    assert float(acc.result()) == pytest.approx(2 / 3)
    assert float(auc.result()) == pytest.approx(1.0)


def test_a_teacher_needing_hu_outside_the_rendered_window_is_refused(tiny_records):
    from radnet_tf.errors import UserError
    from radnet_tf.training.distill import teacher_probabilities

    student = tiny_config(extra_windows=[], distill_from="builtin")
    with pytest.raises(UserError, match=r"teacher builtin\) were rendered with window 40/80"):
        teacher_probabilities(student, data.list_shards(str(tiny_records)), [(40.0, 80.0)])
