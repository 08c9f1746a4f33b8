"""Flat configuration: one dataclass, loaded from flat YAML plus `key=value` overrides.

Which defaults are which:
  * `Config()` (this file) holds the paper's setting: RADnet with DenseNet-40, brain
    window 40/80 HU, 1 mm grid, 250 mm FOV, 256 px, SGD for 60 epochs, K = 3 at slice
    threshold 0.5. Every default of the package lives here (window, geometry, CT rule,
    model, recipe); functions that need one take it as an argument.
  * The built-in configs ship inside the package (`radnet_tf/configs/*.yaml`, read with
    `importlib.resources`; `configs/` in a checkout links to them) and load by name:
    `default` is the demo that `make run` (and `python -m radnet_tf.train` with no
    `--config`) trains, a CPU-sized variant on the synthetic phantom; `radnet` repeats the
    paper's values explicitly; `densenet` and `densenet_a` are the paper's baselines.
Resolution order: `Config()` <- YAML file <- `key=value` overrides; every field is then
validated (`Config.validate`) before any work starts. The trainer writes the fully resolved
config next to every model it produces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import math
from pathlib import Path

import yaml

from radnet_tf.cli import say
from radnet_tf.contract import MASK_THRESHOLD, OUTPUT_SLICE
from radnet_tf.errors import UserError

VARIANTS = ("densenet", "densenet_a", "radnet")
BUILTIN_CONFIGS = (
    "default", "radnet", "densenet", "densenet_a", "finetune", "finetune_brain", "brain_window"
)
RENAMED_KEYS = {"window": "crop_slices"}  # old key -> new key (accepted with a warning)
# Keys removed because they measured no gain (docs/experiments.md): key -> (the value that
# meant "off", why). A YAML that sets one to that value loads with a warning line; any
# other value is refused with one line.
REMOVED_KEYS = {
    "hu_shift": (0.0, "a random HU offset per training window measured no gain"),
    "intensity_jitter": (0.0, "intensity jitter of the windowed input measured no gain"),
    "mask_loss": ("bce", "the Dice + BCE aux-head loss measured no gain over the weighted BCE"),
    "xla": (False, "XLA compilation ran 1.26x slower per step on CPU"),
}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _numbers(v, count, ok) -> bool:
    """v is a list of `count` numbers (a tuple of allowed lengths) each passing ok."""
    counts = count if isinstance(count, tuple) else (count,)
    return isinstance(v, list) and len(v) in counts and all(_is_number(x) and ok(x) for x in v)


# Validation rules: (predicate, the rule as the error message says it).
STRING = (lambda v: isinstance(v, str), "must be a string")
INT_GE1 = (lambda v: _is_int(v) and v >= 1, "must be an integer >= 1")
INT_GE0 = (lambda v: _is_int(v) and v >= 0, "must be an integer >= 0")
POSITIVE = (lambda v: _is_number(v) and v > 0, "must be a number > 0")
NON_NEGATIVE = (lambda v: _is_number(v) and v >= 0, "must be a number >= 0")
OPEN_UNIT = (lambda v: _is_number(v) and 0 < v < 1, "must be in (0, 1)")
CLOSED_UNIT = (lambda v: _is_number(v) and 0 <= v <= 1, "must be in [0, 1]")
HALF_OPEN_UNIT = (lambda v: _is_number(v) and 0 <= v < 1, "must be in [0, 1)")


def _fractions(v) -> bool:
    return isinstance(v, list) and all(_is_number(x) and 0 < x < 1 for x in v)


def _window(w) -> bool:
    """A [centre, width] window in HU: two numbers, width > 0."""
    return isinstance(w, (list, tuple)) and len(w) == 2 and all(map(_is_number, w)) and w[1] > 0


# Sections of docs/configuration.md: (title, the section's first field in Config's order).
SECTIONS = (
    ("Data and the synthetic cohort", "data"),
    ("Preprocessing", "window_center"),
    ("Model", "variant"),
    ("Loss", "slice_loss_weight"),
    ("Training recipe", "epochs"),
    ("Fine-tuning", "init_from"),
    ("CT-level decision rule and calibration", "ct_min_run"),
    ("Served lesion mask", "mask_threshold"),
    ("End of run", "export"),
)


def one_of(*allowed):
    return (lambda v: v in allowed, f"must be one of {allowed}")


def _key(default, doc, rule=None):
    """A config field with its documentation (docs/configuration.md) and validation rule."""
    meta = {"doc": doc, "rule": rule}
    if isinstance(default, list):
        return dataclasses.field(
            default_factory=lambda: [list(v) if isinstance(v, list) else v for v in default],
            metadata=meta,
        )
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class Config:
    """Every setting of a run. Defaults are the paper's setting (module docstring); each
    field's `metadata` holds its documentation and validation rule."""

    # ---- data
    data: str = _key(
        "", 'TFRecord folder or glob; "" builds the synthetic cohort in `work_dir`.', STRING
    )
    work_dir: str = _key(
        "runs/default",
        "Folder of the synthetic cohort, its records and the default model dir.",
        (lambda v: isinstance(v, str) and bool(v), "must be a non-empty string"),
    )
    model_dir: str = _key("", 'Model dir of the run; "" = `{work_dir}/model`.', STRING)
    synth_studies: int = _key(120, "Studies of the synthetic cohort.", INT_GE1)
    synth_slices: int = _key(24, "Slices per synthetic study.", INT_GE1)
    synth_matrix: int = _key(
        512,
        "In-plane matrix of the synthetic DICOM.",
        (lambda v: _is_int(v) and v >= 32, "must be >= 32"),
    )
    synth_seed: int = _key(
        0, "Seed of the synthetic cohort (study i draws from [seed, i]).", INT_GE0
    )
    val_fraction: float = _key(
        0.3,
        "Share of studies held out (a hash of the study key decides; never trained on).",
        OPEN_UNIT,
    )
    # ---- preprocessing
    window_center: float = _key(40.0, "Brain window centre, HU (the first input channel).")
    window_width: float = _key(80.0, "Brain window width, HU.")
    extra_windows: list = _key(
        [],
        "More input channels, one per `[centre, width]` window in HU "
        "(the built-in default adds the subdural window `[80, 200]`).",
    )
    out_spacing: float = _key(1.0, "In-plane grid of the model input, mm per pixel.", POSITIVE)
    fov_mm: float = _key(250.0, "Field of view cropped around the head, mm.", POSITIVE)
    input_size: int = _key(
        256,
        "Model input size, pixels (a multiple of 8; with `out_spacing` it must cover `fov_mm`).",
        (lambda v: _is_int(v) and v >= 8 and v % 8 == 0, "must be a multiple of 8"),
    )
    # ---- model
    variant: str = _key(
        "radnet",
        "`radnet` (DenseNet + aux heads + BiLSTM), `densenet_a` "
        "(DenseNet + aux heads) or `densenet`.",
        one_of(*VARIANTS),
    )
    depth: int = _key(
        40,
        "DenseNet depth, 3n + 4.",
        (
            lambda v: _is_int(v) and v >= 7 and (v - 4) % 3 == 0,
            "must be 3n+4 with n >= 1 (DenseNet)",
        ),
    )
    growth_rate: int = _key(12, "DenseNet growth rate.", INT_GE1)
    initial_filters: int = _key(16, "Filters of the first convolution.", INT_GE1)
    dropout: float = _key(0.0, "Dropout after each dense layer.", HALF_OPEN_UNIT)
    lstm_units: int = _key(64, "Units per direction of the BiLSTM across slices.", INT_GE1)
    head_filters: int = _key(16, "Filters of each auxiliary segmentation head.", INT_GE1)
    pooling: str = _key(
        "avg",
        "Slice feature pooling: `avg` (paper) or `avgmax` (average and max, "
        "concatenated: a small lesion is not averaged away).",
        one_of("avg", "avgmax"),
    )
    weight_decay: float = _key(1e-4, "L2 weight decay.", NON_NEGATIVE)
    bn_momentum: float = _key(
        0.99, "BatchNorm moving-average momentum (0.9 settles within short runs).", OPEN_UNIT
    )
    targets: str = _key(
        "any",
        "`any` (the paper: bleed or not) or `subtypes` (also EDH, IPH, IVH, SAH, SDH).",
        one_of("any", "subtypes"),
    )
    # ---- loss
    slice_loss_weight: float = _key(1.0, "Weight of the `any` label's loss.", NON_NEGATIVE)
    subtype_loss_weight: float = _key(1.0, "Weight of the five subtype labels' loss.", NON_NEGATIVE)
    subtype_label_weights: list = _key(
        [],
        "Five weights within the subtype loss; `[]` = equal.",
        (
            lambda v: _numbers(v, (0, 5), lambda x: x >= 0),
            "must be [] or 5 weights >= 0 (EDH, IPH, IVH, SAH, SDH)",
        ),
    )
    mask_loss_weights: list = _key(
        [0.5, 0.5, 0.5],
        "Loss weight of each auxiliary head.",
        (
            lambda v: _numbers(v, 3, lambda x: x >= 0),
            "needs 3 numbers >= 0 (one per auxiliary head)",
        ),
    )
    mask_pos_weight: float = _key(
        1.0,
        "Weight of the blood pixels' term in the aux heads' BCE (1 = "
        "plain BCE; blood is < 1% of a slice).",
        POSITIVE,
    )
    # ---- recipe
    epochs: int = _key(60, "Epochs.", INT_GE1)
    batch_size: int = _key(2, "Studies (slice crops) per replica and step.", INT_GE1)
    crop_slices: int = _key(16, "Consecutive slices per training crop (was `window`).", INT_GE1)
    steps_per_epoch: int = _key(
        0, "Steps per epoch; 0 = one pass over the training studies.", INT_GE0
    )
    optimizer: str = _key("sgd", "`sgd` (paper: momentum 0.9) or `adam`.", one_of("sgd", "adam"))
    learning_rate: float = _key(0.01, "Initial learning rate.", POSITIVE)
    momentum: float = _key(0.9, "SGD momentum.", HALF_OPEN_UNIT)
    lr_drop_epochs: list = _key(
        [1 / 3, 2 / 3],
        "Fractions of the run at which the learning rate drops 10x.",
        (_fractions, "must be a list of fractions of the run in (0, 1), e.g. [0.33, 0.67]"),
    )
    positive_fraction: float = _key(
        0.5,
        "Share of positive crops drawn for training (class balancing, by slice labels).",
        CLOSED_UNIT,
    )
    rotation_deg: float = _key(
        15.0, "Training augmentation: random in-plane rotation up to this, degrees.", NON_NEGATIVE
    )
    flip: bool = _key(True, "Training augmentation: random left-right flip.")
    seed: int = _key(0, "Seed of initialisation, sampling and augmentation.", INT_GE0)
    mixed_precision: bool = _key(False, "float16 compute on a GPU (ignored on CPU).")
    early_stopping_patience: int = _key(
        0, "Stop after this many validations without gain; 0 = off.", INT_GE0
    )
    monitor: str = _key(
        f"val_{OUTPUT_SLICE}_auc", "Validation metric that picks `best.keras`.", STRING
    )
    val_every: int = _key(
        1,
        "Validate every n-th epoch and the last; 0 = not during training "
        "(the held-out studies are still evaluated at the end).",
        INT_GE0,
    )
    # ---- fine-tuning
    init_from: str = _key(
        "",
        "Start from a trained model: a model dir, a `.keras` file, a SavedModel export or "
        '`builtin` (radnet_tf.training.init_from); "" = from scratch.',
        STRING,
    )
    fine_tune_lr_factor: float = _key(
        0.1,
        "With `init_from`: the learning rate is `learning_rate` x this (fine-tuning moves "
        "trained weights less).",
        (lambda v: _is_number(v) and 0 < v <= 1, "must be in (0, 1]"),
    )
    freeze_backbone_steps: int = _key(
        0,
        "With `init_from`: train this many steps with the encoder frozen (heads, BiLSTM "
        "and classifier adapt first), before the `epochs`.",
        INT_GE0,
    )
    distill_from: str = _key(
        "",
        "Teacher for distillation (a model dir, `.keras`, export or `builtin`): known slice "
        "labels become a mix with the teacher's slice probabilities on each training study "
        '(radnet_tf.training.distill); "" = off.',
        STRING,
    )
    distill_weight: float = _key(
        0.5, "With `distill_from`: the teacher's share of each slice target.", CLOSED_UNIT
    )
    # ---- CT-level decision rule
    ct_min_run: int = _key(
        3,
        "K: a CT is positive when K or more consecutive slices are "
        "(K' = min(K, slices) for shorter studies).",
        INT_GE1,
    )
    slice_threshold: float = _key(
        0.5, "Slice probability at which a slice counts as positive.", OPEN_UNIT
    )
    subtype_thresholds: list = _key(
        [],
        "Five per-subtype slice thresholds; `[]` = `slice_threshold`.",
        (
            lambda v: _numbers(v, (0, 5), lambda x: 0 < x < 1),
            "must be [] or 5 thresholds in (0, 1) (EDH, IPH, IVH, SAH, SDH)",
        ),
    )
    calibrate_threshold: bool = _key(
        False, "After training, choose `slice_threshold` on the training (or calibration) studies."
    )
    calibration_series_slices: int = _key(
        0,
        "Calibrate the threshold for series of this many "
        "slices (the rule fires more often on longer ones); 0 = "
        "for studies like the training studies.",
        (
            lambda v: _is_int(v) and v >= 0,
            "must be an integer >= 0 (0: calibrate for series as long as the training studies)",
        ),
    )
    calibration_fraction: float = _key(
        0.0,
        "Share of the non-held-out studies kept out of training "
        "to choose the thresholds on; 0 = the training studies. For "
        "cohorts of hundreds of studies or more.",
        HALF_OPEN_UNIT,
    )
    # ---- served lesion mask
    mask_threshold: float = _key(
        MASK_THRESHOLD,
        "A pixel is hemorrhage when the fused aux-head "
        "mask reaches this on a slice at or above its slice threshold.",
        OPEN_UNIT,
    )
    mask_opening: bool = _key(
        True, "Open the lesion mask in-plane with a 3 x 3 square (drops specks)."
    )
    calibrate_mask_threshold: bool = _key(
        False,
        "After training, choose `mask_threshold` (best "
        "Dice) on the training (or calibration) studies.",
    )
    # ---- end of run
    export: bool = _key(True, "Export a SavedModel after training.")
    export_dir: str = _key(
        "saved_models/radnet", "Export root; versions are numbered folders.", STRING
    )

    def validate(self):
        """Checks every field; raises UserError naming the field and echoing its value."""
        for field in dataclasses.fields(self):
            rule = field.metadata.get("rule")
            value = getattr(self, field.name)
            if rule and not rule[0](value):
                raise UserError(f"{field.name} {rule[1]}. Received: {field.name}={value!r}")
        windows = [[self.window_center, self.window_width]] + list(self.extra_windows)
        if not all(_window(w) for w in windows):
            raise UserError(
                f"windows are [centre, width] pairs in HU with width > 0. Received: window "
                f"{self.window_center}/{self.window_width}, extra_windows={self.extra_windows}"
            )
        if self.input_size * self.out_spacing < self.fov_mm:
            raise UserError(
                "input_size * out_spacing must cover fov_mm. Received: "
                f"input_size={self.input_size}, out_spacing={self.out_spacing}, "
                f"fov_mm={self.fov_mm}"
            )
        return self

    @property
    def input_channels(self) -> int:
        """Model input channels: the brain window plus one per extra window."""
        return 1 + len(self.extra_windows)

    @property
    def resolved_subtype_thresholds(self) -> list:
        """The five per-subtype slice thresholds (slice_threshold where none are set)."""
        return [float(t) for t in self.subtype_thresholds] or [float(self.slice_threshold)] * 5

    @property
    def resolved_model_dir(self) -> str:
        return self.model_dir or str(Path(self.work_dir) / "model")

    def preprocess_config(self):
        from radnet_tf.preprocess import PreprocessConfig

        return PreprocessConfig(
            window_center=self.window_center,
            window_width=self.window_width,
            extra_windows=tuple(tuple(w) for w in self.extra_windows),
            out_spacing=self.out_spacing,
            fov_mm=self.fov_mm,
            out_size=self.input_size,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _coerce(name, value, current):
    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"cannot parse {name}={value!r}") from None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise UserError(f"{name} must be true or false. Received: {name}={value!r}")
        return value
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise UserError(f"{name} must be an integer. Received: {name}={value!r}")
        return value
    if isinstance(current, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise UserError(f"{name} must be a number. Received: {name}={value!r}")
        return float(value)
    if isinstance(current, list):
        if not isinstance(value, list):
            raise UserError(f"{name} must be a list. Received: {name}={value!r}")
        return value
    return "" if value is None else str(value)


def load_config(path=None, overrides=()) -> Config:
    """Config defaults <- flat YAML file <- `key=value` overrides; validated.

    Raises:
      UserError: missing/unreadable file, nested YAML, unknown keys, bad values.
    """
    cfg = Config()
    values = {}
    if path:
        try:
            loaded = yaml.safe_load(read_config_text(path)) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path}: invalid YAML ({err})".replace("\n", " ")) from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a flat mapping of key: value")
        values.update(loaded)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override must be key=value. Received: {item!r}")
        key, value = item.split("=", 1)
        values[key.strip()] = value
    fields = {f.name for f in dataclasses.fields(Config)}
    values = _without_removed(_renamed(values))
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown config key {key!r} (known: {', '.join(sorted(fields))})")
        if isinstance(value, dict):
            raise UserError(f"config must be flat; {key!r} is a mapping")
        setattr(cfg, key, _coerce(key, value, getattr(cfg, key)))
    return cfg.validate()


def read_config_text(path) -> str:
    """The YAML text of a config file, or of a built-in config named in BUILTIN_CONFIGS.

    A file of that path wins over a built-in name. Raises UserError when neither exists.
    """
    p = Path(path)
    if p.is_file():
        return p.read_text()
    if str(path) in BUILTIN_CONFIGS:
        return (
            importlib.resources.files("radnet_tf").joinpath("configs", f"{path}.yaml").read_text()
        )
    raise UserError(
        f"config file not found: {path} (built-in configs: {', '.join(BUILTIN_CONFIGS)})"
    )


def to_yaml(cfg: Config) -> str:
    """The resolved config as flat YAML, in the dataclass's field order."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


def config_from_dict(values: dict) -> Config:
    """Rebuilds a Config from `Config.to_dict()` output (e.g. a model dir's config.json)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    values = _renamed(values, warn=False)
    return Config(**{k: v for k, v in values.items() if k in fields}).validate()


def _without_removed(values: dict) -> dict:
    """Drops REMOVED_KEYS set to their "off" value (with a warning line); refuses any other
    value with one line."""
    out = dict(values)
    for key, (off, why) in REMOVED_KEYS.items():
        if key not in out:
            continue
        value = out.pop(key)
        parsed = (
            yaml.safe_load(value) if isinstance(value, str) and not isinstance(off, str) else value
        )
        if parsed != off:
            raise UserError(
                f"config key {key!r} was removed ({why}); delete it from the config. "
                f"Received: {key}={value!r}"
            )
        say(f"warning: config key {key!r} was removed ({why}); ignored", err=True)
    return out


def _renamed(values: dict, warn=True) -> dict:
    """Maps renamed keys (RENAMED_KEYS) to their new names, with a deprecation line."""
    out = dict(values)
    for old, new in RENAMED_KEYS.items():
        if old in out:
            if new in out:
                raise UserError(f"config key {old!r} was renamed {new!r}; give only {new!r}")
            if warn:
                say(f"warning: config key {old!r} is deprecated; use {new!r}", err=True)
            out[new] = out.pop(old)
    return out


def _flow(value) -> str:
    """A value as it is written in a flat YAML config."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def config_reference() -> str:
    """docs/configuration.md: every key, grouped by concern, with the paper's default
    (`Config()`), the built-in `default` config's value and what it does."""
    paper, builtin = Config(), load_config("default")
    lines = [
        "# Configuration reference",
        "",
        "Generated from `radnet_tf.config.Config` by `python -m radnet_tf.config > "
        "docs/configuration.md`; a test fails when this page is stale.",
        "",
        "A config is a flat YAML file of `key: value` lines. Resolution order: the paper's "
        "defaults (`Config()`) <- the YAML file (`--config PATH`, or a built-in name: "
        + ", ".join(f"`{n}`" for n in BUILTIN_CONFIGS)
        + ") <- `key=value` overrides on the "
        "command line. Every value is checked before any work starts; the trainer writes the "
        "resolved config next to the model (`config.json`), and `radnet-train --print-config` "
        "prints it. Column *paper* is `Config()`; column *built-in* is the `default` config "
        "that `make run` trains (bold where it differs).",
    ]
    fields = dataclasses.fields(Config)
    starts = {first: title for title, first in SECTIONS}
    for field in fields:
        if field.name in starts:
            lines += [
                "",
                f"## {starts[field.name]}",
                "",
                "| key | paper | built-in | meaning |",
                "| --- | --- | --- | --- |",
            ]
        ours, theirs = getattr(paper, field.name), getattr(builtin, field.name)
        shown = f"`{_flow(theirs)}`" if theirs == ours else f"**`{_flow(theirs)}`**"
        doc = field.metadata["doc"].replace("|", "\\|")
        lines.append(f"| `{field.name}` | `{_flow(ours)}` | {shown} | {doc} |")
    lines += ["", "## Renamed and removed keys", "", "| key | now |", "| --- | --- |"]
    lines += [
        f"| `{old}` | renamed `{new}` (still read, with a warning) |"
        for old, new in RENAMED_KEYS.items()
    ]
    lines += [
        f"| `{key}` | removed: {why}; `{_flow(off)}` loads with a warning, any other value is "
        "refused |"
        for key, (off, why) in REMOVED_KEYS.items()
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
