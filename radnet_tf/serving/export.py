"""`python -m radnet_tf.export`: a trained model -> SavedModel for TensorFlow Serving.

    python -m radnet_tf.export MODEL_DIR_OR_KERAS [--out saved_models/radnet] [--version N]
        [--threshold 0.5] [--min-run 3] [--mask-threshold 0.5]

Layout: `OUT/<version>/` (TF Serving's versioned layout; next free version by default),
written to a temporary directory and renamed when complete.

Signatures (inputs -> outputs, one study per request):
  serving_default  slices float32 [S, N, N, C] (preprocessed, in [0, 1]; C = 1 brain
                   window, plus one channel per `extra_windows` entry, in that order)
  predict_hu       hu int16 [S, H, W] + pixel_spacing float32 [2] (row, col mm); the
                   windows, in-plane resampling and FOV run in-graph with the training
                   preprocessing code (radnet_tf.preprocess)
  outputs (both):  slice_probabilities float32 [S]; masks float32 [S, N, N] (mean of the
                   three auxiliary heads' probabilities, on the model grid; zeros for the
                   `densenet` variant); lesion_mask bool [S, N, N] (masks >= the mask
                   threshold on slices whose probability >= the slice threshold, opened
                   in-plane with mask_opening: radnet_tf.decision.lesion_mask); ct_positive bool
                   []; ct_score float32 [];
                   longest_positive_run int32 []; min_run_applied int32 [] (rule:
                   radnet_tf.decision, threshold and K fixed at export; K' = min(K, S));
                   models trained with `targets: subtypes` add subtype_probabilities
                   float32 [S, 5], ct_subtypes bool [5], ct_subtype_scores float32 [5]
                   (EDH, IPH, IVH, SAH, SDH; the rule per subtype at its threshold) and
                   subtype_masks float32 [S, N, N, 5] (the aux heads' class channels),
                   subtype_lesion_masks bool [S, N, N, 5] (each gated by its subtype)

Only core TF ops are in the graph (the LSTM is rebuilt with use_cudnn=False). The inputs
are declared with unknown rank and checked in-graph, so a server (which feeds tensors
without Python-side checks) answers INVALID_ARGUMENT with a message naming the expected
shape for: wrong rank, wrong slice size or channel count, zero slices, more than
MAX_SLICES slices, NaN/Inf, non-positive or non-finite spacing.
`assets.extra/tf_serving_warmup_requests` holds warm-up requests and
`assets/radnet_metadata.json` the window, geometry, K, slice and mask thresholds, versions, config
digest,
`trained_on` (what the model was trained on) and `held_out` (what its held-out studies
measured, mask Dice included, when exported from a model dir the trainer evaluated).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from radnet_tf import atomic
from radnet_tf.cli import add_verbose, cli_main, say
from radnet_tf.contract import (
    CT_POSITIVE,
    CT_SCORE,
    CT_SUBTYPE_SCORES,
    CT_SUBTYPES,
    LESION_MASK,
    LONGEST_POSITIVE_RUN,
    MASK_OUTPUTS,
    MASKS,
    MIN_RUN_APPLIED,
    OUTPUT_SLICE,
    OUTPUT_SUBTYPES,
    SLICE_PROBABILITIES,
    SUBTYPE_LESION_MASKS,
    SUBTYPE_MASKS,
    SUBTYPE_PROBABILITIES,
    SUBTYPES,
)
from radnet_tf.errors import UserError
from radnet_tf.serving.loader import METADATA_FILE, load_trained, model_file  # noqa: F401

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_SLICES = 1024  # slices per request (a 0.5 mm whole-head series has ~500)
MAX_MATRIX = 4096  # rows or columns of a predict_hu slice


def servable_copy(model, cfg):
    """The same weights in a model built with use_cudnn=False (no CudnnRNN in the graph)."""
    from radnet_tf.modeling.model import build_model

    clone = build_model(cfg, use_cudnn=False)
    clone.set_weights(model.get_weights())
    return clone


def make_archive(model, cfg, threshold, min_run, mask_threshold=None):
    """keras.export.ExportArchive with the serving signatures (see module docstring).

    ExportArchive (rather than a bare tf.Module) tracks Keras 3 variables so that the TF1
    session loader, which TF Serving's C++ loader mirrors, restores them.
    """
    import keras
    import tensorflow as tf

    from radnet_tf import preprocess

    rule = (
        threshold,
        min_run,
        cfg.mask_threshold if mask_threshold is None else float(mask_threshold),
    )
    n, c = cfg.input_size, cfg.input_channels
    pcfg = cfg.preprocess_config()

    def run(slices):
        return _outputs(model, _guarded_slices(slices, n, c), cfg, *rule)

    def serve_hu(hu, pixel_spacing):
        hu, spacing = _guarded_hu(hu, pixel_spacing)
        return run(preprocess.preprocess_study(hu, spacing, pcfg))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", run, input_signature=[tf.TensorSpec(None, tf.float32, name="slices")]
    )
    archive.add_endpoint(
        "predict_hu",
        serve_hu,
        input_signature=[
            tf.TensorSpec(None, tf.int16, name="hu"),
            tf.TensorSpec(None, tf.float32, name="pixel_spacing"),
        ],
    )
    return archive


# The inputs have unknown rank and every check is in the graph, so a server (which feeds
# tensors without Python-side checks) gets them too. Each check assumes the ones before it
# passed, so exactly one fails; invalid input never reaches an op that could fail on its
# shape (tf.cond hands the model a dummy instead), so the error a client sees is always the
# check's message.
def _check(condition, message):
    import tensorflow as tf

    return tf.debugging.Assert(condition, [tf.constant(message)])


def _padded_dims(x, rank):
    """The first `rank` dims of x's shape, -1 where x has fewer (never fails)."""
    import tensorflow as tf

    return tf.concat([tf.shape(x), tf.fill([rank], -1)], 0)[:rank]


def _guarded_slices(slices, n, c):
    """`slices` (any rank, float32) checked in-graph to be [S, n, n, c] with 0 < S <=
    MAX_SLICES and finite; returns float32 [S, n, n, c] (a dummy slice when a check fails,
    which then raises)."""
    import tensorflow as tf

    want = f"slices must be float32 [S, {n}, {n}, {c}]"
    dims = _padded_dims(slices, 4)
    rank_ok = tf.equal(tf.rank(slices), 4)
    size_ok = rank_ok & tf.reduce_all(tf.equal(dims[1:], [n, n, c]))
    count_ok = size_ok & (dims[0] > 0) & (dims[0] <= MAX_SLICES)
    finite = tf.reduce_all(tf.math.is_finite(slices))
    checks = [
        _check(rank_ok, f"{want}: wrong rank"),
        _check(~rank_ok | size_ok, f"{want}: wrong slice size or channel count"),
        _check(~size_ok | (dims[0] > 0), "request has zero slices"),
        _check(
            ~size_ok | (dims[0] <= MAX_SLICES),
            f"request has more than {MAX_SLICES} slices; send fewer slices per request",
        ),
        _check(~count_ok | finite, "slices contain NaN or Inf"),
    ]
    with tf.control_dependencies(checks):
        return tf.cond(
            count_ok & finite,
            lambda: tf.reshape(slices, [-1, n, n, c]),
            lambda: tf.zeros([1, n, n, c], tf.float32),
        )


def _guarded_hu(hu, pixel_spacing):
    """(hu int16 [S, H, W], spacing float32 [2]) checked in-graph: 0 < S <= MAX_SLICES,
    8 <= H, W <= MAX_MATRIX, two finite spacings > 0 (dummies when a check fails, which
    then raises)."""
    import tensorflow as tf

    dims = _padded_dims(hu, 3)
    rank_ok = tf.equal(tf.rank(hu), 3)
    count_ok = rank_ok & (dims[0] > 0) & (dims[0] <= MAX_SLICES)
    size_ok = count_ok & tf.reduce_all(dims[1:] >= 8) & tf.reduce_all(dims[1:] <= MAX_MATRIX)
    spacing = tf.concat([tf.reshape(pixel_spacing, [-1]), [1.0, 1.0]], 0)[:2]
    spacing_shape_ok = tf.equal(tf.size(pixel_spacing), 2)
    spacing_ok = (
        spacing_shape_ok & tf.reduce_all(tf.math.is_finite(spacing)) & tf.reduce_all(spacing > 0)
    )
    checks = [
        _check(rank_ok, "hu must be int16 [S, H, W]: wrong rank"),
        _check(~rank_ok | (dims[0] > 0), "request has zero slices"),
        _check(
            ~rank_ok | (dims[0] <= MAX_SLICES),
            f"request has more than {MAX_SLICES} slices; send fewer slices per request",
        ),
        _check(~count_ok | tf.reduce_all(dims[1:] >= 8), "hu slices must be at least 8x8"),
        _check(
            ~count_ok | tf.reduce_all(dims[1:] <= MAX_MATRIX),
            f"hu slices must be at most {MAX_MATRIX}x{MAX_MATRIX}",
        ),
        _check(~size_ok | spacing_shape_ok, "pixel_spacing must be float32 [2] (row, col mm)"),
        _check(~(size_ok & spacing_shape_ok) | spacing_ok, "pixel_spacing must be > 0 and finite"),
    ]
    valid = size_ok & spacing_ok
    with tf.control_dependencies(checks):
        hu = tf.cond(
            valid,
            lambda: tf.reshape(hu, dims),
            lambda: tf.fill([1, 8, 8], tf.constant(-1024, tf.int16)),
        )
        spacing = tf.where(valid, spacing, tf.ones([2]))
    return hu, spacing


def _outputs(model, slices, cfg, threshold, min_run, mask_threshold):
    """The serving outputs (module docstring) of one study's preprocessed slices
    float32 [S, N, N, C]."""
    import tensorflow as tf

    from radnet_tf.decision import ct_decision, lesion_mask

    out = model(slices[None], training=False)
    probs = out[OUTPUT_SLICE][0]
    heads = [out[name][0, ..., 0] for name in MASK_OUTPUTS if name in out]
    masks = tf.add_n(heads) / len(heads) if heads else tf.zeros(tf.shape(slices)[:3])
    decision = ct_decision(probs, threshold, min_run)
    result = {
        SLICE_PROBABILITIES: probs,
        MASKS: masks,
        LESION_MASK: lesion_mask(masks, probs, mask_threshold, threshold, cfg.mask_opening),
        CT_POSITIVE: decision["ct_positive"],
        CT_SCORE: decision["ct_score"],
        LONGEST_POSITIVE_RUN: decision["longest_positive_run"],
        MIN_RUN_APPLIED: decision["min_run_applied"],
    }
    if OUTPUT_SUBTYPES in out:  # targets: subtypes; the outputs above keep their meaning
        result.update(_subtype_outputs(out, slices, cfg, min_run, mask_threshold))
    return result


def _subtype_outputs(out, slices, cfg, min_run, mask_threshold):
    """The subtype outputs of a `targets: subtypes` model (module docstring)."""
    import tensorflow as tf

    from radnet_tf.decision import ct_decision_labels, lesion_mask

    n = cfg.input_size
    subtypes = out[OUTPUT_SUBTYPES][0]
    thresholds = cfg.resolved_subtype_thresholds
    per_label = ct_decision_labels(subtypes, thresholds, min_run)
    class_heads = [out[name][0, ..., 1:] for name in MASK_OUTPUTS if name in out]
    masks = (
        tf.add_n(class_heads) / len(class_heads)
        if class_heads
        else tf.zeros(tf.stack([tf.shape(slices)[0], n, n, len(SUBTYPES)]))
    )
    return {
        SUBTYPE_PROBABILITIES: subtypes,
        CT_SUBTYPES: per_label["ct_positive"],
        CT_SUBTYPE_SCORES: per_label["ct_score"],
        SUBTYPE_MASKS: masks,
        SUBTYPE_LESION_MASKS: lesion_mask(
            masks, subtypes, mask_threshold, thresholds, cfg.mask_opening
        ),
    }


def _warmup_requests(path, n, channels=1, num_slices=8):
    """Writes PredictionLog warm-up records (one per signature) to `path`; returns False
    (with a note) and writes nothing when tensorflow-serving-api is not installed."""
    import numpy as np
    import tensorflow as tf

    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:
        say(
            "note: tensorflow-serving-api is not installed, so the export has no warm-up "
            "requests (pip install 'radnet-tf[serving]' adds them)",
            err=True,
        )
        return False
    path.parent.mkdir(exist_ok=True)
    requests = []
    req = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(signature_name="serving_default")
    )
    req.inputs["slices"].CopyFrom(
        tf.make_tensor_proto(np.zeros((num_slices, n, n, channels), np.float32))
    )
    requests.append(req)
    req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name="predict_hu"))
    req.inputs["hu"].CopyFrom(
        tf.make_tensor_proto(np.full((num_slices, 512, 512), -1024, np.int16))
    )
    req.inputs["pixel_spacing"].CopyFrom(tf.make_tensor_proto(np.array([0.45, 0.45], np.float32)))
    requests.append(req)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=r)
            )
            writer.write(log.SerializeToString())
    return True


def next_version(export_dir) -> int:
    root = Path(export_dir)
    versions = (
        [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()]
        if root.exists()
        else []
    )
    return max(versions, default=0) + 1


def export_model(
    model,
    cfg,
    export_dir,
    version=None,
    threshold=None,
    min_run=None,
    warmup=True,
    trained_on=None,
    held_out=None,
    mask_threshold=None,
):
    """Exports `model` to `export_dir/<version>` atomically; returns that path.

    `trained_on` (str) goes into the metadata: what the model learned from (e.g. the
    synthetic phantom and its generator version, or the user's records); `held_out`
    (dict from `held_out_from`, or None) what its held-out studies measured."""
    import keras
    import tensorflow as tf

    import radnet_tf

    threshold = cfg.slice_threshold if threshold is None else float(threshold)
    min_run = cfg.ct_min_run if min_run is None else int(min_run)
    mask_threshold = cfg.mask_threshold if mask_threshold is None else float(mask_threshold)
    if not 0 < threshold < 1 or min_run < 1 or not 0 < mask_threshold < 1:
        raise UserError(
            "threshold and mask threshold must be in (0, 1) and min_run >= 1. "
            f"Received: {threshold}, {mask_threshold}, {min_run}"
        )
    root = Path(export_dir)
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(root) if version is None else int(version)
    final = root / str(version)
    if final.exists():
        raise UserError(f"{final} exists; choose another --version")
    archive = make_archive(servable_copy(model, cfg), cfg, threshold, min_run, mask_threshold)
    with atomic.atomic_path(final) as tmp:
        archive.write_out(str(tmp), verbose=False)
        metadata = {
            "model": cfg.variant,
            "version": version,
            "radnet_tf": radnet_tf.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "window_center": cfg.window_center,
            "window_width": cfg.window_width,
            "extra_windows": [list(w) for w in cfg.extra_windows],
            "out_spacing_mm": cfg.out_spacing,
            "fov_mm": cfg.fov_mm,
            "input_size": cfg.input_size,
            "ct_min_run": min_run,
            "slice_threshold": threshold,
            "mask_threshold": mask_threshold,
            "mask_opening": bool(cfg.mask_opening),
            "short_study_rule": "studies with fewer than ct_min_run slices use K = their slice "
            "count",
            "labels": ["any", *SUBTYPES] if cfg.targets == "subtypes" else ["any"],
            "subtype_thresholds": cfg.resolved_subtype_thresholds
            if cfg.targets == "subtypes"
            else None,
            "trained_on": trained_on or "unknown",
            "held_out": held_out,
            "masks": "mean of the three auxiliary-head probabilities"
            if cfg.variant != "densenet"
            else "none (zeros)",
            "lesion_mask": "masks >= mask_threshold on slices with probability >= slice_threshold"
            + (", opened in-plane (3 x 3)" if cfg.mask_opening else ""),
            "config_digest": cfg.digest(),
            "config": cfg.to_dict(),
        }
        (tmp / "assets").mkdir(exist_ok=True)
        (tmp / "assets" / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        if warmup:
            _warmup_requests(tmp / "assets.extra" / WARMUP_FILE, cfg.input_size, cfg.input_channels)
        os.chmod(tmp, 0o755)
    return final


def held_out_from(model_dir):
    """The held-out figures the trainer wrote into `model_dir/val_metrics.csv`, for the
    export's metadata: dict with studies, threshold (the slice threshold they were measured
    at), ct_accuracy, ct_recall, ct_specificity, ct_roc_auc, slice_roc_auc and, when the
    records held reference masks, mask_dice and the mask_threshold it was measured at
    (floats; None where undefined); None when the
    model dir has no held-out evaluation."""
    import math

    import pandas as pd

    path = Path(model_dir) / "val_metrics.csv"
    if not path.is_file():
        return None
    rows = pd.read_csv(path).set_index("level")

    def number(level, column):
        v = rows.loc[level, column] if level in rows.index and column in rows.columns else math.nan
        return None if pd.isna(v) else float(v)

    config = (
        json.loads((Path(model_dir) / "config.json").read_text())
        if (Path(model_dir) / "config.json").is_file()
        else {}
    )
    out = {
        "studies": int(rows.loc["ct", "n"]),
        "threshold": config.get("slice_threshold"),
        "ct_accuracy": number("ct", "accuracy"),
        "ct_recall": number("ct", "recall"),
        "ct_specificity": number("ct", "specificity"),
        "ct_roc_auc": number("ct", "roc_auc"),
        "slice_roc_auc": number("slice", "roc_auc"),
    }
    if "mask" in rows.index:
        out["mask_dice"] = number("mask", "dice")
        out["mask_threshold"] = number(
            "mask", "threshold"
        )  # None: a model dir from before it was recorded
    return out


def trained_on_of(model_path, cfg) -> str:
    """What a model was trained on: its model dir's `run_info.json` says (the trainer
    records it); else the records its config names, or the phantom (version unknown)."""
    info = Path(model_path) / "run_info.json"
    if info.is_file() and json.loads(info.read_text()).get("trained_on"):
        return json.loads(info.read_text())["trained_on"]
    return (
        f"records: {cfg.data}" if cfg.data else "synthetic phantom (generator version not recorded)"
    )


def _export_source(source):
    """(keras model, Config, trained_on, held_out) of any loadable model (an export keeps
    its own metadata's lineage and held-out figures)."""
    from radnet_tf.serving import loader

    loaded = loader.load(source)
    model = loader.keras_model_of(loaded)
    if loaded.kind == "saved_model":
        return model, loaded.cfg, loaded.meta.get("trained_on"), loaded.meta.get("held_out")
    held_out = held_out_from(source) if Path(source).is_dir() else None
    folder = Path(source) if Path(source).is_dir() else Path(source).parent
    return model, loaded.cfg, trained_on_of(folder, loaded.cfg), held_out


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m radnet_tf.export", description=__doc__.split("\n")[0]
    )
    add_verbose(parser)
    parser.add_argument(
        "model",
        nargs="?",
        help="model dir (the model its run_info.json names), .keras file, SavedModel "
        "export or 'builtin'",
    )
    parser.add_argument("--model", dest="model_flag", help="the same as MODEL")
    parser.add_argument("--out", default=None, help="export root (default: config export_dir)")
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: next free)"
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="slice threshold (default: the model's)"
    )
    parser.add_argument(
        "--min-run", type=int, default=None, help="K consecutive slices (default: the model's)"
    )
    parser.add_argument(
        "--mask-threshold",
        type=float,
        default=None,
        help="lesion-mask threshold (default: the model's)",
    )
    args = parser.parse_args(argv)
    source = args.model_flag or args.model
    if not source or (args.model and args.model_flag):
        raise UserError("give one model: MODEL or --model (a model dir, .keras, export or builtin)")
    model, cfg, trained_on, held_out = _export_source(source)
    path = export_model(
        model,
        cfg,
        args.out or cfg.export_dir,
        args.version,
        args.threshold,
        args.min_run,
        trained_on=trained_on,
        held_out=held_out,
        mask_threshold=args.mask_threshold,
    )
    say(f"exported {cfg.variant} to {path}")
    return path


if __name__ == "__main__":
    main()
