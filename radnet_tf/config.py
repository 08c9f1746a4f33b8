"""Flat configuration: one dataclass, loaded from flat YAML plus `key=value` overrides.

Every default lives here (window, geometry, model, recipe), so each fact has one owner.
`configs/*.yaml` override a subset; the trainer writes the fully resolved config next to
every model it produces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import yaml

from radnet_tf.errors import UserError

VARIANTS = ("densenet", "densenet_a", "radnet")


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
    # ---- loss
    slice_loss_weight: float = 1.0
    mask_loss_weights: list = dataclasses.field(default_factory=lambda: [0.5, 0.5, 0.5])
    mask_loss: str = "bce"  # auxiliary mask loss: bce | dice_bce (BCE + soft Dice, per study)
    # ---- recipe (paper: SGD momentum 0.9, 60 epochs, lr / 10 at 1/3 and 2/3)
    epochs: int = 60
    batch_size: int = 2  # studies (windows) per replica
    window: int = 16  # slices per training window
    steps_per_epoch: int = 0  # 0 = one pass over the training studies
    optimizer: str = "sgd"  # sgd (paper: momentum 0.9) | adam
    learning_rate: float = 0.01
    momentum: float = 0.9
    lr_drop_epochs: list = dataclasses.field(default_factory=lambda: [1 / 3, 2 / 3])
    positive_fraction: float = 0.5  # class balancing of training windows
    rotation_deg: float = 15.0
    flip: bool = True
    intensity_jitter: float = 0.0
    seed: int = 0
    mixed_precision: bool = False
    xla: bool = False
    early_stopping_patience: int = 0  # 0 = off
    monitor: str = "val_slice_probability_auc"
    val_every: int = 1  # validate every val_every-th epoch and the last; 0 = not during training
    # ---- CT-level decision rule (paper: 3 consecutive positive slices)
    ct_min_run: int = 3
    slice_threshold: float = 0.5
    calibrate_threshold: bool = False  # after training, set slice_threshold from the training studies
    # ---- end of run
    export: bool = True
    export_dir: str = "saved_models/radnet"

    def validate(self):
        """Raises UserError with the offending value."""
        if self.variant not in VARIANTS:
            raise UserError(f"variant must be one of {VARIANTS}. Received: variant={self.variant!r}")
        if (self.depth - 4) % 3 or self.depth < 7:
            raise UserError(f"depth must be 3n+4 with n >= 1 (DenseNet). Received: depth={self.depth}")
        windows = [[self.window_center, self.window_width]] + list(self.extra_windows)
        for w in windows:
            if not (isinstance(w, (list, tuple)) and len(w) == 2 and all(isinstance(v, (int, float)) for v in w)) or w[1] <= 0:
                raise UserError(
                    f"windows are [centre, width] pairs in HU with width > 0. Received: window "
                    f"{self.window_center}/{self.window_width}, extra_windows={self.extra_windows}"
                )
        if self.input_size % 8 or self.input_size < 8:
            raise UserError(f"input_size must be a multiple of 8. Received: input_size={self.input_size}")
        if self.input_size * self.out_spacing < self.fov_mm:
            raise UserError(
                f"input_size * out_spacing must cover fov_mm. Received: input_size={self.input_size}, "
                f"out_spacing={self.out_spacing}, fov_mm={self.fov_mm}"
            )
        if self.mask_loss not in ("bce", "dice_bce"):
            raise UserError(f"mask_loss must be 'bce' or 'dice_bce'. Received: mask_loss={self.mask_loss!r}")
        if self.pooling not in ("avg", "avgmax"):
            raise UserError(f"pooling must be 'avg' or 'avgmax'. Received: pooling={self.pooling!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise UserError(f"optimizer must be 'sgd' or 'adam'. Received: optimizer={self.optimizer!r}")
        if len(self.mask_loss_weights) != 3:
            raise UserError(f"mask_loss_weights needs 3 values. Received: {self.mask_loss_weights}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"val_fraction must be in (0, 1). Received: {self.val_fraction}")
        if self.val_every < 0:
            raise UserError(f"val_every must be >= 0. Received: val_every={self.val_every}")
        for name in ("epochs", "batch_size", "window", "growth_rate", "ct_min_run"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1. Received: {name}={getattr(self, name)}")
        return self

    @property
    def input_channels(self) -> int:
        """Model input channels: the brain window plus one per extra window."""
        return 1 + len(self.extra_windows)

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
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
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
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown config key {key!r} (known: {', '.join(sorted(fields))})")
        if isinstance(value, dict):
            raise UserError(f"config must be flat; {key!r} is a mapping")
        setattr(cfg, key, _coerce(key, value, getattr(cfg, key)))
    return cfg.validate()


def config_from_dict(values: dict) -> Config:
    """Rebuilds a Config from `Config.to_dict()` output (e.g. a model dir's config.json)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in values.items() if k in fields}).validate()
