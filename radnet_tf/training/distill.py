"""Distillation targets: a teacher model's slice probabilities on the training studies.

    radnet-train extra_windows=[] init_from=builtin distill_from=builtin distill_weight=0.5

The teacher (any loadable model: a model dir, `.keras`, an export, `builtin`) predicts
every whole training study once, before training, with its own input windows (so a
two-window teacher can teach a brain-window-only student from records in HU). The trainer
then mixes each known slice label y with the teacher's probability p:
(1 - distill_weight) * y + distill_weight * p (`records.dataset.distilled_targets`). The
mask heads keep the reference masks.
"""

from __future__ import annotations

import dataclasses

from radnet_tf.cli import say

SPLIT_KEYS = ("seed", "val_fraction", "calibration_fraction")  # which studies train


def teacher_probabilities(cfg, files, rendered=()) -> dict:
    """{study_key: float32 [S]}: `cfg.distill_from`'s slice probabilities on the training
    studies of `cfg`'s split (the teacher's windows and grid; the student's split).
    `rendered`: the records' display windows; a teacher needing HU outside them is refused
    (`preprocess.check_windows_available`)."""
    from radnet_tf.evaluation.scoring import keras_slice_fn, predict_studies
    from radnet_tf.preprocess import check_windows_available
    from radnet_tf.serving import loader

    teacher = loader.load(cfg.distill_from)
    tcfg = dataclasses.replace(teacher.cfg, **{k: getattr(cfg, k) for k in SPLIT_KEYS})
    check_windows_available(
        tcfg.preprocess_config().windows, rendered, f"the records (teacher {cfg.distill_from})"
    )
    model = loader.keras_model_of(teacher)
    preds = predict_studies(keras_slice_fn(model, tcfg, masks=False), files, tcfg, split="train")
    windows = ", ".join(f"{c:g}/{w:g}" for c, w in tcfg.preprocess_config().windows)
    say(
        f"distilling from {cfg.distill_from} (windows {windows}): its slice probabilities on "
        f"{len(preds.keys)} training studies, weight {cfg.distill_weight:g}"
    )
    return dict(zip(preds.keys, preds.probs))
