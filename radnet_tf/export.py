"""`python -m radnet_tf.export`: a trained model -> SavedModel for TensorFlow Serving.

    python -m radnet_tf.export MODEL_DIR_OR_KERAS [--out saved_models/radnet] [--version N]
        [--threshold 0.5] [--min-run 3]

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
                   `densenet` variant); ct_positive bool []; ct_score float32 [];
                   longest_positive_run int32 [] (rule: radnet_tf.decision, with the
                   threshold and K fixed at export)

Only core TF ops are in the graph (the LSTM is rebuilt with use_cudnn=False). Bad inputs
(zero slices, non-finite values, non-positive spacing, wrong shape) fail with
INVALID_ARGUMENT. `assets.extra/tf_serving_warmup_requests` holds warm-up requests and
`assets/radnet_metadata.json` the window, geometry, K, threshold, versions and config digest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from radnet_tf.errors import UserError, cli_main

METADATA_FILE = "radnet_metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"


def load_trained(path):
    """(keras model, Config) from a model dir (best.keras, else final.keras) or .keras file."""
    import keras

    from radnet_tf import losses  # noqa: F401  (registers custom objects)
    from radnet_tf import model as model_lib  # noqa: F401
    from radnet_tf.config import config_from_dict

    p = Path(path)
    if p.is_dir():
        candidates = [p / "best.keras", p / "final.keras"]
        keras_file = next((c for c in candidates if c.exists()), None)
        if keras_file is None:
            raise UserError(f"{p}: no best.keras or final.keras in the model dir")
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


def servable_copy(model, cfg):
    """The same weights in a model built with use_cudnn=False (no CudnnRNN in the graph)."""
    from radnet_tf.model import build_model

    clone = build_model(cfg, use_cudnn=False)
    clone.set_weights(model.get_weights())
    return clone


def make_archive(model, cfg, threshold, min_run):
    """keras.export.ExportArchive with the serving signatures (see module docstring).

    ExportArchive (rather than a bare tf.Module) tracks Keras 3 variables so that the TF1
    session loader, which TF Serving's C++ loader mirrors, restores them.
    """
    import keras
    import tensorflow as tf

    from radnet_tf import preprocess
    from radnet_tf.decision import ct_decision
    from radnet_tf.model import MASK_OUTPUTS

    n = cfg.input_size
    pcfg = cfg.preprocess_config()

    def run(slices):
        checks = [
            tf.debugging.assert_positive(tf.shape(slices)[0], message="request has zero slices"),
            tf.debugging.assert_all_finite(slices, message="slices contain NaN or Inf"),
        ]
        with tf.control_dependencies(checks):
            slices = tf.identity(slices)
        out = model(slices[None], training=False)
        probs = out["slice_probability"][0]
        heads = [out[name][0, ..., 0] for name in MASK_OUTPUTS if name in out]
        masks = tf.add_n(heads) / len(heads) if heads else tf.zeros(tf.shape(slices)[:3])
        decision = ct_decision(probs, threshold, min_run)
        return {
            "slice_probabilities": probs,
            "masks": masks,
            "ct_positive": decision["ct_positive"],
            "ct_score": decision["ct_score"],
            "longest_positive_run": decision["longest_positive_run"],
        }

    def serve_hu(hu, pixel_spacing):
        checks = [
            tf.debugging.assert_positive(tf.shape(hu)[0], message="request has zero slices"),
            tf.debugging.assert_greater_equal(tf.shape(hu)[1:], 8, message="slices must be at least 8x8"),
            tf.debugging.assert_positive(pixel_spacing, message="pixel_spacing must be > 0"),
        ]
        with tf.control_dependencies(checks):
            hu = tf.identity(hu)
        return run(preprocess.preprocess_study(hu, pixel_spacing, pcfg))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", run, input_signature=[tf.TensorSpec([None, n, n, cfg.input_channels], tf.float32, name="slices")]
    )
    archive.add_endpoint(
        "predict_hu",
        serve_hu,
        input_signature=[
            tf.TensorSpec([None, None, None], tf.int16, name="hu"),
            tf.TensorSpec([2], tf.float32, name="pixel_spacing"),
        ],
    )
    return archive


def _warmup_requests(path, n, channels=1, num_slices=8):
    """Writes PredictionLog warm-up records (one per signature)."""
    import numpy as np
    import tensorflow as tf

    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:
        raise UserError("tensorflow-serving-api is needed for warm-up requests: pip install 'radnet-tf[serving]'") from None
    requests = []
    req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name="serving_default"))
    req.inputs["slices"].CopyFrom(tf.make_tensor_proto(np.zeros((num_slices, n, n, channels), np.float32)))
    requests.append(req)
    req = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name="predict_hu"))
    req.inputs["hu"].CopyFrom(tf.make_tensor_proto(np.full((num_slices, 512, 512), -1024, np.int16)))
    req.inputs["pixel_spacing"].CopyFrom(tf.make_tensor_proto(np.array([0.45, 0.45], np.float32)))
    requests.append(req)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=r))
            writer.write(log.SerializeToString())


def next_version(export_dir) -> int:
    root = Path(export_dir)
    versions = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.exists() else []
    return max(versions, default=0) + 1


def export_model(model, cfg, export_dir, version=None, threshold=None, min_run=None, warmup=True):
    """Exports `model` to `export_dir/<version>` atomically; returns that path."""
    import keras
    import tensorflow as tf

    import radnet_tf

    threshold = cfg.slice_threshold if threshold is None else float(threshold)
    min_run = cfg.ct_min_run if min_run is None else int(min_run)
    if not 0 < threshold < 1 or min_run < 1:
        raise UserError(f"threshold must be in (0, 1) and min_run >= 1. Received: {threshold}, {min_run}")
    root = Path(export_dir)
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(root) if version is None else int(version)
    final = root / str(version)
    if final.exists():
        raise UserError(f"{final} exists; choose another --version")
    archive = make_archive(servable_copy(model, cfg), cfg, threshold, min_run)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=root))
    try:
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
            "masks": "mean of the three auxiliary-head probabilities" if cfg.variant != "densenet" else "none (zeros)",
            "config_digest": cfg.digest(),
            "config": cfg.to_dict(),
        }
        (tmp / "assets").mkdir(exist_ok=True)
        (tmp / "assets" / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        if warmup:
            (tmp / "assets.extra").mkdir(exist_ok=True)
            _warmup_requests(tmp / "assets.extra" / WARMUP_FILE, cfg.input_size, cfg.input_channels)
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_metadata(saved_model_dir) -> dict:
    """The export's metadata (window, geometry, K, threshold, versions)."""
    path = Path(saved_model_dir) / "assets" / METADATA_FILE
    if not path.exists():
        raise UserError(f"{saved_model_dir}: not a radnet-tf SavedModel (no assets/{METADATA_FILE})")
    return json.loads(path.read_text())


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m radnet_tf.export", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="model dir (best.keras / final.keras + config.json) or .keras file")
    parser.add_argument("--out", default=None, help="export root (default: config export_dir)")
    parser.add_argument("--version", type=int, default=None, help="version number (default: next free)")
    parser.add_argument("--threshold", type=float, default=None, help="slice threshold (default: config)")
    parser.add_argument("--min-run", type=int, default=None, help="K consecutive slices (default: config)")
    args = parser.parse_args(argv)
    model, cfg = load_trained(args.model)
    path = export_model(model, cfg, args.out or cfg.export_dir, args.version, args.threshold, args.min_run)
    print(f"exported {cfg.variant} to {path}")


if __name__ == "__main__":
    main()
