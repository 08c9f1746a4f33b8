"""Starting a run from a trained model (`init_from`): fine-tuning.

    radnet-train --config finetune --data MY_RECORDS          # from the built-in model
    radnet-train --data MY_RECORDS init_from=runs/x/model     # from any trained model

A source is a trainer's model dir, a `.keras` file (with `config.json` beside it), a
SavedModel export of this project (version folder or export root), or `builtin`. Weights
are copied layer by layer, matched by layer name. Two mismatches are adapted and reported:

  * other input windows (`window_center`/`window_width`, `extra_windows`): the first
    convolution's kernel keeps the slices of the windows both models have; a window only
    this run has starts with zero weights (the model answers as before and learns to use
    it); a window only the source has is dropped;
  * `targets: subtypes` on a source trained for `any`: the subtype classifier is new
    (initialised as in a fresh model) and each auxiliary head keeps its hemorrhage channel,
    with the five class channels new.

Anything else that differs in shape (depth, growth rate, pooling, LSTM units, variant ...)
is refused with one line naming the layer. The source's own config and what it was trained
on are recorded as the run's lineage (`run_info.json`, the export's `trained_on`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from radnet_tf.errors import UserError

# Model keys whose values shape the weights (named in the refusal when a shape differs).
MODEL_KEYS = (
    "variant",
    "depth",
    "growth_rate",
    "initial_filters",
    "lstm_units",
    "head_filters",
    "pooling",
    "targets",
)
STEM = "stem_conv"
NEW_HEADS = ("subtype_classifier",)  # layers a `subtypes` run may add to an `any` source
BACKBONE_PREFIXES = ("stem_", "block", "transition", "final_")


@dataclasses.dataclass
class Source:
    """A model to start from.

    Attributes:
      name: what the user gave (path or "builtin").
      model: keras.Model with the source's weights.
      cfg: the Config it was trained with.
      trained_on: what it was trained on (its own lineage).
    """

    name: str
    model: object
    cfg: object
    trained_on: str


def load_source(name) -> Source:
    """Loads `name` (model dir, .keras, SavedModel export or "builtin") as a Source.

    Raises:
      UserError: nothing loadable there.
    """
    from pathlib import Path

    from radnet_tf.serving import loader
    from radnet_tf.serving.export import trained_on_of

    loaded = loader.load(name)
    if loaded.kind == "saved_model":
        trained_on = loaded.meta.get("trained_on") or "unknown"
    else:
        folder = loaded.path if Path(loaded.path).is_dir() else Path(loaded.path).parent
        trained_on = trained_on_of(folder, loaded.cfg)
    return Source(str(name), loader.keras_model_of(loaded), loaded.cfg, trained_on)


def windows_of(cfg) -> list:
    """The input windows of a config, one per input channel: [[centre, width], ...]."""
    return [[float(cfg.window_center), float(cfg.window_width)]] + [
        [float(c), float(w)] for c, w in cfg.extra_windows
    ]


def _window_text(windows) -> str:
    return ", ".join(f"{c:g}/{w:g}" for c, w in windows) or "none"


def adapt_stem(kernel, source_kernel, windows, source_windows):
    """The first convolution's kernel for `windows` from one trained for `source_windows`.

    Args:
      kernel: float32 [kh, kw, C, F], this model's freshly initialised kernel.
      source_kernel: float32 [kh, kw, C', F], the source's.
      windows / source_windows: [centre, width] per input channel (C and C' of them).
    Returns:
      (float32 [kh, kw, C, F]: the source's slice for each shared window, zeros for new
      ones; the report line).
    Raises:
      UserError: the two share no window.
    """
    shared = [w for w in windows if w in source_windows]
    if not shared:
        raise UserError(
            f"init_from: layer {STEM}: no input window in common (this run "
            f"{_window_text(windows)}, the source {_window_text(source_windows)})"
        )
    out = np.zeros_like(kernel)
    for j, window in enumerate(windows):
        if window in source_windows:
            out[:, :, j] = source_kernel[:, :, source_windows.index(window)]
    added = [w for w in windows if w not in source_windows]
    dropped = [w for w in source_windows if w not in windows]
    line = (
        f"{STEM}: input windows {_window_text(source_windows)} -> {_window_text(windows)}: "
        f"kept {_window_text(shared)}"
    )
    line += f"; added {_window_text(added)} (zero weights)" if added else ""
    line += f"; dropped {_window_text(dropped)}" if dropped else ""
    return out, line


def adapt_aux_head(value, source_value):
    """An auxiliary head's deconvolution kernel [k, k, M, F] or bias [M] with M mask
    channels, from a source head with one (hemorrhage) channel: channel 0 copied, the
    class channels kept as initialised."""
    out = np.array(value, copy=True)
    if out.ndim == 1:
        out[:1] = source_value
    else:
        out[:, :, :1] = source_value
    return out


def _mask_channels(value) -> int:
    """Mask channels of a deconvolution kernel [k, k, M, F] or bias [M]."""
    return value.shape[2] if value.ndim > 1 else value.shape[0]


def _refuse(layer, weight, shape, source_shape, cfg, source):
    differ = [
        f"{k} {getattr(cfg, k)!r} here, {getattr(source.cfg, k)!r} in the source"
        for k in MODEL_KEYS
        if getattr(cfg, k) != getattr(source.cfg, k)
    ]
    hint = f" ({'; '.join(differ)})" if differ else ""
    raise UserError(
        f"init_from: layer {layer} does not fit {source.name}: {weight} is {shape} here and "
        f"{source_shape} in the source{hint}"
    )


def _layer_values(layer, src, cfg, source, notes):
    """The values for `layer`'s weights from the source layer `src` (adapted where the
    module docstring allows; refused otherwise)."""
    values = []
    for w, s in zip(layer.weights, src.weights):
        value, source_value = np.asarray(w.numpy()), np.asarray(s.numpy())
        if value.shape == source_value.shape:
            values.append(source_value)
        elif layer.name == STEM:
            adapted, line = adapt_stem(value, source_value, windows_of(cfg), windows_of(source.cfg))
            values.append(adapted)
            notes.append(line)
        elif (
            layer.name.endswith("_deconv") and source_value.shape[-2 if value.ndim > 1 else 0] == 1
        ):
            values.append(adapt_aux_head(value, source_value))
            if w is layer.weights[0]:
                notes.append(
                    f"{layer.name}: hemorrhage channel copied; "
                    f"{value.shape[2] - 1} class channels new"
                )
        else:
            _refuse(layer.name, w.path, value.shape, source_value.shape, cfg, source)
    return values


def transfer(model, source: Source, cfg) -> list:
    """Copies `source`'s weights into `model` (built from `cfg`), layer by layer by name,
    adapting what the module docstring lists. Returns the report lines (list of str).

    Raises:
      UserError naming the layer for any other mismatch.
    """
    notes = []
    source_layers = {layer.name: layer for layer in source.model.layers if layer.weights}
    for layer in model.layers:
        if not layer.weights:
            continue
        src = source_layers.pop(layer.name, None)
        if src is None and layer.name in NEW_HEADS:
            notes.append(f"{layer.name}: new (the source predicts 'any' only), initialised fresh")
            continue
        if src is None or len(src.weights) != len(layer.weights):
            _refuse(layer.name, "the layer", "present", "absent or different", cfg, source)
        layer.set_weights(_layer_values(layer, src, cfg, source, notes))
    if source_layers:
        name = sorted(source_layers)[0]
        _refuse(name, "the layer", "absent", "present", cfg, source)
    return notes


def backbone_layers(model) -> list:
    """The encoder's layers (stem, dense blocks, transitions, final BatchNorm): what
    `freeze_backbone_steps` keeps fixed while the heads, BiLSTM and classifier adapt."""
    return [layer for layer in model.layers if layer.name.startswith(BACKBONE_PREFIXES)]


def initialise(model, cfg) -> dict:
    """Initialises `model` from `cfg.init_from`; returns the lineage for run_info.json:
    {"source": str, "trained_on": str, "source_config_digest": str, "adapted": [str],
    "source_thresholds": {"slice_threshold": float, "mask_threshold": float}}."""
    source = load_source(cfg.init_from)
    notes = transfer(model, source, cfg)
    return {
        "source": source.name,
        "trained_on": source.trained_on,
        "source_config_digest": source.cfg.digest(),
        "adapted": notes,
        "source_thresholds": {
            "slice_threshold": float(source.cfg.slice_threshold),
            "mask_threshold": float(source.cfg.mask_threshold),
        },
    }
