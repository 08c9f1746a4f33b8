"""The RADnet model family (Grewal et al., ISBI 2018, Section 2.2.2) in Keras 3.

    slices [B, S, N, N, C] --fold--> [B*S, N, N, C]   (C windows; 1 in the paper)
      -> conv 3x3 stride 2 (N/2)
      -> dense block 1 (L layers) -> aux head 1 (x2 deconv)  -> mask_1
      -> transition (N/4) -> dense block 2 -> aux head 2 (x4) -> mask_2
      -> transition (N/8) -> dense block 3 -> aux head 3 (x8) -> mask_3
      -> BN-ReLU-global average pool [+ global max pool] --unfold--> [B, S, C]
      -> Bidirectional LSTM across slices (radnet only)
      -> Dense(1) sigmoid -> slice_probability [B, S]

Variants: `densenet` (no aux heads, no LSTM), `densenet_a` (aux heads), `radnet` (both).

Why fold the slice axis into the batch axis instead of `TimeDistributed`: Keras 3's
`TimeDistributed` cannot wrap a multi-output model (the encoder has four outputs) and made
the first training step ~10x slower to trace here. Folding with reshapes gives the same
shared per-slice weights, keeps the slice count variable (`None`), and runs unchanged under
the TensorFlow backend, the TF1 SavedModel loader and JAX.

Padding: studies of different lengths are padded with slices filled with `PAD_VALUE`
(-1; real slices are in [0, 1]). The LSTM is masked on them, so a study's outputs do not
depend on how much padding its batch has; losses ignore them through -1 labels.

The module uses only Keras layers and `keras.ops`; it knows nothing of data or training.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from radnet_tf.contract import MASK_OUTPUTS, OUTPUT_SLICE, OUTPUT_SUBTYPES, PAD_VALUE, SUBTYPES


@keras.saving.register_keras_serializable(package="radnet_tf")
class FoldSlices(layers.Layer):
    """[B, S, H, W, C] -> [B*S, H, W, C] (slices become batch entries)."""

    def call(self, x):
        return ops.reshape(x, (-1,) + tuple(x.shape[2:]))

    def compute_output_shape(self, input_shape):
        return (None,) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="radnet_tf")
class UnfoldSlices(layers.Layer):
    """([B*S, ...], reference [B, S, ...]) -> [B, S, ...]."""

    def call(self, x, reference):
        shape = ops.shape(reference)
        return ops.reshape(x, (shape[0], shape[1]) + tuple(x.shape[1:]))

    def compute_output_shape(self, x_shape, reference_shape):
        return tuple(reference_shape[:2]) + tuple(x_shape[1:])


@keras.saving.register_keras_serializable(package="radnet_tf")
class SliceMask(layers.Layer):
    """Slices [B, S, H, W, C] -> bool [B, S]: True for real slices, False for padding."""

    def call(self, x):
        return ops.max(x, axis=(2, 3, 4)) > PAD_VALUE / 2

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:2])

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape[:2], dtype="bool")


@keras.saving.register_keras_serializable(package="radnet_tf")
class EndMask(layers.Layer):
    """Identity that ends the LSTM's padding mask (losses use -1 labels instead)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, x):
        return ops.copy(x)  # a new tensor: the input's mask stays on the input

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="radnet_tf")
class SqueezeLast(EndMask):
    """[..., 1] -> [...]; ends the LSTM's padding mask (losses use -1 labels instead)."""

    def call(self, x):
        return ops.squeeze(x, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])


def _conv(filters, kernel, name, weight_decay, strides=1):
    return layers.Conv2D(
        filters,
        kernel,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(weight_decay) if weight_decay else None,
        name=name,
    )


def _batch_norm(bn, name):
    """BatchNormalization from `bn`: {"momentum": float, "synchronized": bool}.

    synchronized=True (TensorFlow, several replicas): statistics over the global batch, so
    every replica updates the same moving statistics. Unsynchronized, each replica keeps
    its own (Keras 3 does not aggregate them) and the workers' weights drift apart.
    """
    return layers.BatchNormalization(
        momentum=bn["momentum"], epsilon=1.001e-5, synchronized=bn["synchronized"], name=name
    )


def apply_conv_block(x, growth_rate, dropout, weight_decay, bn, name):
    """BN-ReLU-Conv3x3(growth_rate) [-Dropout], concatenated to its input."""
    y = _batch_norm(bn, f"{name}_bn")(x)
    y = layers.Activation("relu", name=f"{name}_relu")(y)
    y = _conv(growth_rate, 3, f"{name}_conv", weight_decay)(y)
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_drop")(y)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def apply_dense_block(x, num_layers, growth_rate, dropout, weight_decay, bn, name):
    """`num_layers` conv blocks; returns the last concatenation."""
    for i in range(num_layers):
        x = apply_conv_block(x, growth_rate, dropout, weight_decay, bn, name=f"{name}_layer{i + 1}")
    return x


def apply_transition(x, dropout, weight_decay, bn, name):
    """BN-ReLU-Conv1x1 (channels kept) [-Dropout] - AvgPool 2x2."""
    x = _batch_norm(bn, f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = _conv(int(x.shape[-1]), 1, f"{name}_conv", weight_decay)(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_drop")(x)
    return layers.AveragePooling2D(2, name=f"{name}_pool")(x)


def apply_aux_head(x, factor, head_filters, weight_decay, bn, name, channels=1):
    """Attention by an auxiliary task: BN-ReLU-Conv1x1 then a x`factor` deconvolution.

    Returns mask probabilities [B*S, H*factor, W*factor, channels], float32: channel 0 the
    hemorrhage mask; for subtype models channels 1..5 the class masks (EDH..SDH).
    """
    x = _batch_norm(bn, f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.Conv2D(
        head_filters, 1, activation="relu", kernel_initializer="he_normal", name=f"{name}_conv"
    )(x)
    x = layers.Conv2DTranspose(
        channels,
        2 * factor,
        strides=factor,
        padding="same",
        kernel_initializer="he_normal",
        name=f"{name}_deconv",
    )(x)
    return layers.Activation("sigmoid", dtype="float32", name=f"{name}_sigmoid")(x)


def mask_channels(config) -> int:
    """Channels of the auxiliary heads: 1 (blood), or 1 + 5 class masks for subtype models."""
    return 1 + len(SUBTYPES) if getattr(config, "targets", "any") == "subtypes" else 1


def _check_model_config(config):
    """Raises ValueError, echoing the value, for a variant, depth or input size the network
    cannot be built with."""
    if config.variant not in ("densenet", "densenet_a", "radnet"):
        raise ValueError(
            f"variant must be densenet, densenet_a or radnet. Received: variant={config.variant!r}"
        )
    if (config.depth - 4) % 3:
        raise ValueError(f"depth must be 3n+4. Received: depth={config.depth}")
    if config.input_size % 8:
        raise ValueError(
            f"input_size must be a multiple of 8. Received: input_size={config.input_size}"
        )
    pooling = getattr(config, "pooling", "avg")
    if pooling not in ("avg", "avgmax"):
        raise ValueError(f"pooling must be 'avg' or 'avgmax'. Received: pooling={pooling!r}")


def apply_encoder(x, config, bn, with_heads):
    """Stem, three dense blocks and their transitions on folded slices [B * S, N, N, C];
    returns (features [B * S, N / 8, N / 8, F], the aux heads' masks [B * S, N, N, M] after
    each block when `with_heads`, else [])."""
    wd = config.weight_decay
    layers_per_block = (config.depth - 4) // 3
    x = _conv(config.initial_filters, 3, "stem_conv", wd, strides=2)(x)
    heads = []
    for block in range(3):
        if block:
            x = apply_transition(x, config.dropout, wd, bn, name=f"transition{block}")
        x = apply_dense_block(
            x, layers_per_block, config.growth_rate, config.dropout, wd, bn, f"block{block + 1}"
        )
        if with_heads:
            heads.append(
                apply_aux_head(x, 2 ** (block + 1), config.head_filters, wd, bn,
                               name=f"aux{block + 1}", channels=mask_channels(config))
            )
    x = _batch_norm(bn, "final_bn")(x)
    return layers.Activation("relu", name="final_relu")(x), heads


def apply_pooling(x, pooling):
    """Global pooling of feature maps [B', H, W, F] to [B', F] (`avg`) or [B', 2F] (`avgmax`:
    average and max, concatenated)."""
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "avgmax":
        pooled = layers.Concatenate(name="avgmax_pool")(
            [pooled, layers.GlobalMaxPooling2D(name="max_pool")(x)]
        )
    return pooled


def build_model(config, use_cudnn="auto", sync_batchnorm=False) -> keras.Model:
    """Builds a RADnet-family model (uncompiled).

    Args:
      config: a `radnet_tf.config.Config` (or any object with its model fields): variant,
        input_size, depth, growth_rate, initial_filters, dropout, lstm_units, head_filters,
        weight_decay, bn_momentum, pooling ("avg", the paper's global average pool, or
        "avgmax": average and max pools concatenated, so a lesion of a few pixels is not
        diluted by the rest of the slice), input_channels (one per input window; 1 if
        absent).
      use_cudnn: passed to the LSTM; exports use False so no CudnnRNN op is baked in.
      sync_batchnorm: BatchNorm over the global batch (TensorFlow backend); the trainer
        sets it when the strategy has several replicas.

    Returns:
      keras.Model named `config.variant`. Input "slices": float32 [B, S, N, N, C] in [0, 1],
      C = config.input_channels (padding slices = PAD_VALUE). Outputs (dict):
      "slice_probability" float32 [B, S] ("any" hemorrhage);
      with `targets: subtypes` also "subtype_probability" float32 [B, S, 5] (EDH, IPH,
      IVH, SAH, SDH; independent sigmoids, from the same slice features);
      for densenet_a and radnet also "mask_1", "mask_2", "mask_3" float32 [B, S, N, N, M]
      (aux heads after dense blocks 1, 2, 3; M = `mask_channels(config)`: 1, the hemorrhage
      mask, or 6 for subtype models: the hemorrhage mask then the five class masks).
    """
    variant = config.variant
    _check_model_config(config)
    n = config.input_size
    bn = {
        "momentum": float(getattr(config, "bn_momentum", 0.99)),
        "synchronized": bool(sync_batchnorm),
    }
    slices = keras.Input(shape=(None, n, n, getattr(config, "input_channels", 1)), name="slices")
    slice_mask = SliceMask(name="slice_mask")(slices)
    x = FoldSlices(name="fold_slices")(slices)
    x, heads = apply_encoder(x, config, bn, with_heads=variant != "densenet")
    x = apply_pooling(x, getattr(config, "pooling", "avg"))
    features = UnfoldSlices(name="unfold_features")(x, slices)  # [B, S, C]
    if variant == "radnet":
        features = layers.Bidirectional(
            layers.LSTM(config.lstm_units, return_sequences=True, use_cudnn=use_cudnn),
            name="bilstm",
        )(features, mask=slice_mask)
    logits = layers.Dense(1, name="classifier")(features)
    prob = layers.Activation("sigmoid", dtype="float32", name="classifier_sigmoid")(logits)
    outputs = {OUTPUT_SLICE: SqueezeLast(name=OUTPUT_SLICE)(prob)}
    if getattr(config, "targets", "any") == "subtypes":
        sub_logits = layers.Dense(len(SUBTYPES), name="subtype_classifier")(features)
        sub_prob = layers.Activation("sigmoid", dtype="float32", name="subtype_sigmoid")(sub_logits)
        outputs[OUTPUT_SUBTYPES] = EndMask(name=OUTPUT_SUBTYPES)(sub_prob)
    for name, head in zip(MASK_OUTPUTS, heads):
        outputs[name] = UnfoldSlices(name=name)(head, slices)
    return keras.Model(slices, outputs, name=variant)
