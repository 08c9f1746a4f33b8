"""One place that loads a trained radnet-tf model, whatever form it is in.

  * a trainer's model dir: the `.keras` file its `run_info.json` names, with
    `config.json` beside it (`load_trained`);
  * a `.keras` file with `config.json` beside it (`load_trained`);
  * a SavedModel export: `OUT/<version>/` or the export root `OUT/` (the highest version),
    with `assets/radnet_metadata.json` (`load_saved_model`, `read_metadata`).

`load(path)` tells the forms apart and returns a `LoadedModel`; the CLIs (`predict`,
`evaluate`, `export`) and the benchmarks all load through it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import re
from pathlib import Path

from radnet_tf.contract import MASK_THRESHOLD
from radnet_tf.errors import UserError

METADATA_FILE = "radnet_metadata.json"
BUILTIN = "builtin"  # the name of the model shipped in the package (radnet_tf.serving.builtin)
# Models shipped in the package, by name: their folder under radnet_tf/serving/builtin/.
BUILTINS = {
    BUILTIN: "model",  # brain and subdural windows: for DICOM in HU
    "builtin-brain": "brain/model",  # brain window only: also for rendered 8-bit images
}


@dataclasses.dataclass
class LoadedModel:
    """A loaded model and how to read it.

    Attributes:
      kind: "keras" (a model dir or .keras file) or "saved_model" (an export).
      path: the model dir, .keras file or SavedModel version dir that was loaded.
      cfg: Config the model was trained with; for an export, with the export's slice
        threshold, K, lesion-mask rule and subtype thresholds.
      keras_model: the keras.Model (kind "keras"), else None.
      saved: the object of `tf.saved_model.load` (kind "saved_model"), else None.
      meta: the export's metadata dict (kind "saved_model"), else None.
    """

    kind: str
    path: Path
    cfg: object
    keras_model: object = None
    saved: object = None
    meta: dict | None = None


def builtin_model_path(name=BUILTIN) -> Path:
    """The folder of the SavedModel shipped in the package under `name` (BUILTINS)."""
    return Path(
        str(importlib.resources.files("radnet_tf").joinpath("serving", "builtin", BUILTINS[name]))
    )


def resolve(path) -> Path:
    """`path` as a Path; a name of BUILTINS is that shipped model's folder."""
    if str(path) not in BUILTINS:
        return Path(path)
    p = builtin_model_path(str(path))
    if not (p / "saved_model.pb").exists():
        raise UserError(f"this installation has no built-in model {path!r} ({p})")
    return p


def is_saved_model(path) -> bool:
    """True for a SavedModel version dir or an export root holding numbered versions (or
    the name of a built-in model)."""
    p = resolve(path)
    if (p / "saved_model.pb").exists():
        return True
    return p.is_dir() and any(
        v.name.isdigit() and (v / "saved_model.pb").exists() for v in p.iterdir()
    )


def load(path) -> LoadedModel:
    """Loads any form of trained model (module docstring). Raises UserError when `path` is
    none of them."""
    path = resolve(path)
    if is_saved_model(path):
        saved, meta, version_dir = load_saved_model(path)
        return LoadedModel(
            "saved_model", version_dir, config_of_export(meta), saved=saved, meta=meta
        )
    model, cfg = load_trained(path)
    return LoadedModel("keras", Path(path), cfg, keras_model=model)


def config_of_export(meta):
    """The Config an export was made from, with the decision rule fixed at export."""
    from radnet_tf.config import config_from_dict

    cfg = config_from_dict(meta["config"])
    cfg.slice_threshold, cfg.ct_min_run = meta["slice_threshold"], meta["ct_min_run"]
    cfg.mask_threshold, cfg.mask_opening = lesion_rule_of(meta)
    if meta.get("subtype_thresholds"):
        cfg.subtype_thresholds = list(meta["subtype_thresholds"])
    return cfg


def model_file(model_dir) -> Path:
    """The file that is the model of a trainer's model dir: `run_info.json`'s `model_file`.

    Raises:
      UserError: no run_info.json, or it names no model (training did not finish), or the
        named file is missing.
    """
    p = Path(model_dir)
    info_path = p / "run_info.json"
    if not info_path.exists():
        raise UserError(
            f"{p}: no run_info.json (not a radnet-tf model dir); give the .keras file instead"
        )
    name = json.loads(info_path.read_text()).get("model_file")
    if not name:
        raise UserError(f"{p}: run_info.json names no model file (training did not finish)")
    if not (p / name).exists():
        raise UserError(f"{p}: run_info.json names {name}, which is missing")
    return p / name


def load_trained(path):
    """(keras model, Config) from a model dir (the file its run_info.json names) or a
    .keras file (with config.json beside it)."""
    import keras

    from radnet_tf.modeling import losses  # noqa: F401  (registers custom objects)
    from radnet_tf.modeling import model as model_lib  # noqa: F401
    from radnet_tf.config import config_from_dict

    p = Path(path)
    if p.is_dir():
        keras_file = model_file(p)
        config_file = p / "config.json"
    elif p.suffix == ".keras" and p.exists():
        keras_file, config_file = p, p.parent / "config.json"
    else:
        raise UserError(f"model not found: {path} (give a model dir or a .keras file)")
    if not config_file.exists():
        raise UserError(f"{config_file} missing: the export needs the training config")
    cfg = config_from_dict(json.loads(config_file.read_text()))
    try:
        model = keras.saving.load_model(keras_file, compile=False)
    except Exception as err:
        raise UserError(f"cannot load {keras_file}: {err}") from None
    return model, cfg


def read_metadata(saved_model_dir) -> dict:
    """The export's metadata (window, geometry, K, threshold, versions)."""
    path = Path(saved_model_dir) / "assets" / METADATA_FILE
    if not path.exists():
        raise UserError(
            f"{saved_model_dir}: not a radnet-tf SavedModel (no assets/{METADATA_FILE})"
        )
    return json.loads(path.read_text())


def lesion_rule_of(meta) -> tuple:
    """(mask_threshold, mask_opening) of an export's metadata; exports from before the
    lesion mask was exported: (MASK_THRESHOLD, False)."""
    return float(meta.get("mask_threshold", MASK_THRESHOLD)), bool(meta.get("mask_opening", False))


def brain_window_config(meta):
    """The PreprocessConfig of an export's grid (spacing, FOV, size) with the brain window
    only: the geometry of its masks, for display and for mapping them back to the source."""
    from radnet_tf.preprocess import PreprocessConfig

    return PreprocessConfig(
        window_center=meta["window_center"],
        window_width=meta["window_width"],
        extra_windows=(),
        out_spacing=meta["out_spacing_mm"],
        fov_mm=meta["fov_mm"],
        out_size=meta["input_size"],
    )


def load_saved_model(path):
    """(loaded SavedModel, its metadata, its version folder) of a version folder, an export
    root (its highest version) or a built-in model's name."""
    import tensorflow as tf

    p = resolve(path)
    if not (p / "saved_model.pb").exists():
        versions = (
            sorted(int(v.name) for v in p.iterdir() if v.name.isdigit()) if p.is_dir() else []
        )
        if not versions:
            raise UserError(
                f"no SavedModel at {path} (expected saved_model.pb or numbered versions)"
            )
        p = p / str(versions[-1])
    meta = read_metadata(p)
    return tf.saved_model.load(str(p)), meta, p


def _variable_name(name: str) -> str:
    """A variable's path without ":0" and without the "_<n>" that Keras' global name
    counters add to inner layers (an export made in a process that had built other LSTMs
    names them "forward_lstm_1")."""
    return re.sub(r"_\d+(?=/|$)", "", name.split(":")[0])


def keras_model_of(loaded: LoadedModel):
    """The keras.Model of any loaded form: the model itself (kind "keras"), or for an
    export one rebuilt from the export's config with the export's variables assigned in
    order (each checked by name and shape).

    Raises:
      UserError: the export's variables do not fit the model its metadata describes.
    """
    if loaded.keras_model is not None:
        return loaded.keras_model
    from radnet_tf.modeling.model import build_model

    model = build_model(loaded.cfg, use_cudnn=False)
    saved = [v for v in loaded.saved.variables if "seed_generator" not in v.name]
    if len(saved) != len(model.weights):
        raise UserError(
            f"{loaded.path}: the export holds {len(saved)} variables, the model its metadata "
            f"describes {len(model.weights)}"
        )
    for weight, variable in zip(model.weights, saved):
        if _variable_name(variable.name) != _variable_name(weight.path) or tuple(
            variable.shape
        ) != tuple(weight.shape):
            raise UserError(
                f"{loaded.path}: variable {variable.name} {tuple(variable.shape)} does not fit "
                f"{weight.path} {tuple(weight.shape)} of the model its metadata describes"
            )
        weight.assign(variable.numpy())
    return model
