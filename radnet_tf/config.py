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
BUILTIN_CONFIGS = ("default", "radnet", "densenet", "densenet_a")
RENAMED_KEYS = {"window": "crop_slices"}  # old key -> new key (accepted with a warning)


@dataclasses.dataclass
class Config:
    # ---- data
    data: str = ""  # TFRecord dir or glob; "" = build the synthetic cohort in work_dir
    work_dir: str = "runs/default"  # synthetic cohort, records and model dir live here
    model_dir: str = ""  # default: {work_dir}/model
    synth_studies: int = 120
    synth_slices: int = 24
    synth_matrix: int = 512
    synth_seed: int = 0
    val_fraction: float = 0.3
    # ---- preprocessing (paper: brain window, 1 mm, 250 mm FOV, 256 px)
    window_center: float = 40.0
    window_width: float = 80.0
    extra_windows: list = dataclasses.field(default_factory=list)  # [[centre, width], ...] HU
    out_spacing: float = 1.0
    fov_mm: float = 250.0
    input_size: int = 256
    # ---- model
    variant: str = "radnet"  # densenet | densenet_a | radnet
    depth: int = 40
    growth_rate: int = 12
    initial_filters: int = 16
    dropout: float = 0.0
    lstm_units: int = 64
    head_filters: int = 16
    pooling: str = "avg"  # slice feature pooling: avg (paper) | avgmax (avg and max, concatenated)
    weight_decay: float = 1e-4
    bn_momentum: float = 0.99  # BatchNorm moving-average momentum (0.9 for short runs)
    targets: str = "any"  # any (the paper: bleed / no bleed) | subtypes (also EDH, IPH, IVH, SAH, SDH)
    # ---- loss
    slice_loss_weight: float = 1.0  # the "any" label (RSNA's metric weighs it 2, each subtype 1)
    subtype_loss_weight: float = 1.0  # the five subtype labels (targets: subtypes)
    subtype_label_weights: list = dataclasses.field(default_factory=list)  # 5 weights within the subtype loss; [] = equal
    mask_loss_weights: list = dataclasses.field(default_factory=lambda: [0.5, 0.5, 0.5])
    # auxiliary mask loss: bce | dice_bce (BCE + soft Dice, per study). dice_bce with plain BCE
    # (mask_pos_weight 1) left the heads empty (held-out Dice 0) after the built-in default's
    # 425 steps on the anatomical phantom; with weight 10 it no longer does, and gains nothing
    mask_loss: str = "bce"
    mask_pos_weight: float = 1.0  # weight of the blood pixels' term in the mask BCE (1: plain BCE)
    # ---- recipe (paper: SGD momentum 0.9, 60 epochs, lr / 10 at 1/3 and 2/3)
    epochs: int = 60
    batch_size: int = 2  # studies (windows) per replica
    crop_slices: int = 16  # consecutive slices per training crop (was `window`)
    steps_per_epoch: int = 0  # 0 = one pass over the training studies
    optimizer: str = "sgd"  # sgd (paper: momentum 0.9) | adam
    learning_rate: float = 0.01
    momentum: float = 0.9
    lr_drop_epochs: list = dataclasses.field(default_factory=lambda: [1 / 3, 2 / 3])
    positive_fraction: float = 0.5  # class balancing of training windows
    rotation_deg: float = 15.0
    flip: bool = True
    intensity_jitter: float = 0.0
    hu_shift: float = 0.0  # training windows' HU shifted by one uniform offset in [-hu_shift, hu_shift] before windowing
    seed: int = 0
    mixed_precision: bool = False
    xla: bool = False
    early_stopping_patience: int = 0  # 0 = off
    monitor: str = f"val_{OUTPUT_SLICE}_auc"
    val_every: int = 1  # validate every val_every-th epoch and the last; 0 = not during training
    # ---- CT-level decision rule (paper: 3 consecutive positive slices)
    ct_min_run: int = 3
    slice_threshold: float = 0.5
    subtype_thresholds: list = dataclasses.field(default_factory=list)  # 5 per-subtype thresholds; [] = slice_threshold
    calibrate_threshold: bool = False  # after training, set slice_threshold from the training studies
    # calibrate for series of this many slices (the CT rule fires more often on longer
    # ones; decision.choose_threshold's `scale`); 0 = for studies like the training studies
    calibration_series_slices: int = 0
    # share of the non-held-out studies kept out of training to calibrate the thresholds on
    # (data.split_of); 0 = calibrate on the training studies themselves. A long run fits its
    # training studies, and thresholds chosen on them then sit too low (BENCHMARKS.md)
    calibration_fraction: float = 0.0
    # ---- served mask (predict's volume and DICOM SEG, the held-out mask metrics): a pixel is
    # hemorrhage when the fused aux-head mask >= mask_threshold on a slice whose probability
    # >= its slice threshold, then (mask_opening) opened in-plane with a 3 x 3 square to drop
    # specks (decision.lesion_mask_np)
    mask_threshold: float = MASK_THRESHOLD
    mask_opening: bool = True
    calibrate_mask_threshold: bool = False  # after training, set mask_threshold from the training studies
    # ---- end of run
    export: bool = True
    export_dir: str = "saved_models/radnet"

    def validate(self):
        """Checks every field; raises UserError naming the field and echoing its value."""

        def fail(rule, name):
            raise UserError(f"{name} {rule}. Received: {name}={getattr(self, name)!r}")

        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("data", "work_dir", "model_dir", "export_dir", "monitor"):
            if not isinstance(getattr(self, name), str):
                fail("must be a string", name)
        if not self.work_dir:
            fail("must not be empty", "work_dir")
        if self.variant not in VARIANTS:
            fail(f"must be one of {VARIANTS}", "variant")
        for name, allowed in (("mask_loss", ("bce", "dice_bce")), ("pooling", ("avg", "avgmax")), ("optimizer", ("sgd", "adam")),
                              ("targets", ("any", "subtypes"))):
            if getattr(self, name) not in allowed:
                fail(f"must be one of {allowed}", name)
        if not isinstance(self.depth, int) or (self.depth - 4) % 3 or self.depth < 7:
            fail("must be 3n+4 with n >= 1 (DenseNet)", "depth")
        windows = [[self.window_center, self.window_width]] + list(self.extra_windows)
        for w in windows:
            if not (isinstance(w, (list, tuple)) and len(w) == 2 and all(number(v) for v in w)) or w[1] <= 0:
                raise UserError(
                    f"windows are [centre, width] pairs in HU with width > 0. Received: window "
                    f"{self.window_center}/{self.window_width}, extra_windows={self.extra_windows}"
                )
        for name in ("synth_studies", "synth_slices", "epochs", "batch_size", "crop_slices", "growth_rate",
                     "initial_filters", "lstm_units", "head_filters", "ct_min_run"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail("must be an integer >= 1", name)
        for name in ("steps_per_epoch", "val_every", "early_stopping_patience", "synth_seed", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                fail("must be an integer >= 0", name)
        if self.synth_matrix < 32:
            fail("must be >= 32", "synth_matrix")
        for name in ("out_spacing", "fov_mm", "learning_rate"):
            if not number(getattr(self, name)) or getattr(self, name) <= 0:
                fail("must be a number > 0", name)
        if not (isinstance(self.subtype_label_weights, list) and len(self.subtype_label_weights) in (0, 5)
                and all(number(v) and v >= 0 for v in self.subtype_label_weights)):
            fail("must be [] or 5 weights >= 0 (EDH, IPH, IVH, SAH, SDH)", "subtype_label_weights")
        if not (isinstance(self.subtype_thresholds, list) and len(self.subtype_thresholds) in (0, 5)
                and all(number(v) and 0 < v < 1 for v in self.subtype_thresholds)):
            fail("must be [] or 5 thresholds in (0, 1) (EDH, IPH, IVH, SAH, SDH)", "subtype_thresholds")
        if not number(self.mask_pos_weight) or self.mask_pos_weight <= 0:
            fail("must be a number > 0", "mask_pos_weight")
        for name in ("weight_decay", "slice_loss_weight", "subtype_loss_weight", "rotation_deg", "intensity_jitter", "hu_shift"):
            if not number(getattr(self, name)) or getattr(self, name) < 0:
                fail("must be a number >= 0", name)
        if self.input_size % 8 or self.input_size < 8:
            fail("must be a multiple of 8", "input_size")
        if self.input_size * self.out_spacing < self.fov_mm:
            raise UserError(
                f"input_size * out_spacing must cover fov_mm. Received: input_size={self.input_size}, "
                f"out_spacing={self.out_spacing}, fov_mm={self.fov_mm}"
            )
        if not (isinstance(self.mask_loss_weights, list) and len(self.mask_loss_weights) == 3
                and all(number(v) and v >= 0 for v in self.mask_loss_weights)):
            fail("needs 3 numbers >= 0 (one per auxiliary head)", "mask_loss_weights")
        if not (isinstance(self.lr_drop_epochs, list) and all(number(v) and 0 < v < 1 for v in self.lr_drop_epochs)):
            fail("must be a list of fractions of the run in (0, 1), e.g. [0.33, 0.67]", "lr_drop_epochs")
        open_unit = {"val_fraction": "(0, 1)", "slice_threshold": "(0, 1)", "bn_momentum": "(0, 1)",
                     "mask_threshold": "(0, 1)"}
        for name, text in open_unit.items():
            if not number(getattr(self, name)) or not 0 < getattr(self, name) < 1:
                fail(f"must be in {text}", name)
        n = self.calibration_series_slices
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
            fail("must be an integer >= 0 (0: calibrate for series as long as the training studies)",
                 "calibration_series_slices")
        for name in ("positive_fraction",):
            if not number(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                fail("must be in [0, 1]", name)
        for name in ("dropout", "momentum", "calibration_fraction"):
            if not number(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                fail("must be in [0, 1)", name)
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
    values = _renamed(values)
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
        return importlib.resources.files("radnet_tf").joinpath("configs", f"{path}.yaml").read_text()
    raise UserError(f"config file not found: {path} (built-in configs: {', '.join(BUILTIN_CONFIGS)})")


def to_yaml(cfg: Config) -> str:
    """The resolved config as flat YAML, in the dataclass's field order."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)


def config_from_dict(values: dict) -> Config:
    """Rebuilds a Config from `Config.to_dict()` output (e.g. a model dir's config.json)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    values = _renamed(values, warn=False)
    return Config(**{k: v for k, v in values.items() if k in fields}).validate()


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
