"""Losses and metrics that honour padding and missing masks.

Label convention (written by `radnet_tf.records.dataset`): a target value of -1 means "ignore":
padded slices carry -1 slice labels and -1 masks; slices without a reference mask carry
-1 masks. The RADnet loss is the weighted sum (weights set at compile time) of the slice
BCE and the three mask BCEs, each averaged over its valid elements per study.
"""

import keras
from keras import ops

from radnet_tf.contract import IGNORE_LABEL, OUTPUT_SLICE, OUTPUT_SUBTYPES

IGNORE = float(IGNORE_LABEL)


@keras.saving.register_keras_serializable(package="radnet_tf")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy over elements whose target is >= 0.

    y_true: float [B, ...] in {0, 1} or -1 (ignore). y_pred: probabilities, same shape.
    label_weights: optional weights of the last axis (e.g. one per subtype): each valid
      element counts with its label's weight.
    pos_weight: weight of the positive term, -w t log(p) - (1 - t) log(1 - p) (1: plain
      BCE). For the sparse hemorrhage masks: blood is well under 1% of a slice's pixels.
    Returns per-study loss [B]: weighted mean BCE over that study's valid elements (0 if none).
    """

    def __init__(self, name="masked_bce", label_weights=None, pos_weight=1.0, **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_weights = None if label_weights is None else [float(w) for w in label_weights]
        self.pos_weight = float(pos_weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
        valid = ops.cast(y_true >= 0, "float32")
        if self.label_weights is not None:
            valid = valid * ops.convert_to_tensor(self.label_weights, "float32")
        target = ops.clip(y_true, 0.0, 1.0)
        bce = -(self.pos_weight * target * ops.log(y_pred) + (1.0 - target) * ops.log(1.0 - y_pred))
        axes = tuple(range(1, len(y_true.shape)))
        total = ops.sum(bce * valid, axis=axes)
        count = ops.sum(valid, axis=axes)
        return total / ops.maximum(count, 1e-7)

    def get_config(self):
        return {
            **super().get_config(),
            "label_weights": self.label_weights,
            "pos_weight": self.pos_weight,
        }


@keras.saving.register_keras_serializable(package="radnet_tf")
class MaskedAUC(keras.metrics.AUC):
    """ROC AUC over elements whose target is >= 0 (padded slices ignored). Soft targets
    (distillation) count as their label: positive at >= 0.5."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        weight = ops.cast(y_true >= 0, "float32")
        labels = ops.cast(y_true >= 0.5, "float32")
        return super().update_state(labels, y_pred, sample_weight=weight)


@keras.saving.register_keras_serializable(package="radnet_tf")
class MaskedBinaryAccuracy(keras.metrics.Mean):
    """Accuracy at threshold 0.5 over elements whose target is >= 0 (a soft target counts
    as positive at >= 0.5)."""

    def __init__(self, name="masked_accuracy", threshold=0.5, **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        weight = ops.cast(y_true >= 0, "float32")
        labels = ops.cast(y_true >= 0.5, "float32")
        correct = ops.cast(ops.cast(y_pred >= self.threshold, "float32") == labels, "float32")
        return super().update_state(correct, sample_weight=weight)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


def compile_losses(config, output_names):
    """Loss and loss-weight dicts for `model.compile` from a Config."""
    losses, weights = {}, {}
    for name in output_names:
        if name == OUTPUT_SLICE:
            losses[name] = MaskedBinaryCrossentropy(name=f"{name}_bce")
            weights[name] = float(config.slice_loss_weight)
        elif name == OUTPUT_SUBTYPES:  # per label and slice; -1 (unknown) ignored per column
            weights_per_label = list(getattr(config, "subtype_label_weights", []) or []) or None
            losses[name] = MaskedBinaryCrossentropy(
                name=f"{name}_bce", label_weights=weights_per_label
            )
            weights[name] = float(getattr(config, "subtype_loss_weight", 1.0))
        else:
            pos_weight = float(getattr(config, "mask_pos_weight", 1.0))
            losses[name] = MaskedBinaryCrossentropy(name=f"{name}_bce", pos_weight=pos_weight)
            weights[name] = float(config.mask_loss_weights[int(name[-1]) - 1])
    return losses, weights
