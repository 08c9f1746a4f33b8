"""Client for a radnet-tf model on TensorFlow Serving.

    python serving/client.py DICOM_DIR [--grpc localhost:8500] [--model radnet]
    python serving/client.py DICOM_DIR --rest http://localhost:8501

Reads the series with the project's reader (no identifiers leave it), sends the raw HU
volume to the `predict_hu` signature (the server does windowing, resampling and the CT
rule) and prints the verdict as JSON.

gRPC (`PredictionService/Predict`, default) sends the volume as one binary int16 tensor:
a 300-slice 512x512 study is ~150 MB. REST (`:predict`, columnar "inputs") is kept as an
option, but JSON spells every voxel as text: the same study is ~0.5 GB of JSON and slow to
encode and parse on both sides.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from radnet_tf.cli import add_verbose, cli_main
from radnet_tf.contract import (
    CT_POSITIVE,
    CT_SCORE,
    LESION_MASK,
    LONGEST_POSITIVE_RUN,
    MIN_RUN_APPLIED,
    SLICE_PROBABILITIES,
)
from radnet_tf.errors import UserError

SIGNATURE = "predict_hu"
GRPC_MAX_MESSAGE = 1 << 30  # 1 GiB: a thin-slice CT is ~125 MB as int16


def check_inputs(hu, pixel_spacing):
    """Validates a predict_hu request before it is sent (the server checks again).

    Args:
      hu: integer array [S, H, W] (HU). pixel_spacing: 2 positive finite floats (mm).
    Returns:
      (hu int16 [S, H, W], pixel_spacing float64 [2]).
    Raises:
      UserError: wrong rank, non-integer or out-of-int16 values, zero slices, bad spacing.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise UserError(f"hu must be [S, H, W]. Received: shape={hu.shape}")
    if hu.shape[0] == 0:
        raise UserError("hu has zero slices")
    if not np.issubdtype(hu.dtype, np.integer):
        raise UserError(f"hu must hold integer HU (int16). Received: dtype={hu.dtype}")
    if hu.size and (hu.min() < -32768 or hu.max() > 32767):
        raise UserError(f"hu values must fit int16. Received: range [{hu.min()}, {hu.max()}]")
    spacing = np.asarray(pixel_spacing, np.float64).ravel()
    if spacing.shape != (2,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise UserError(
            f"pixel_spacing must be 2 positive numbers (row, col mm). Received: {spacing.tolist()}"
        )
    return hu.astype(np.int16), spacing


def rest_request(hu, pixel_spacing, signature=SIGNATURE) -> dict:
    """The REST body (columnar format: https://www.tensorflow.org/tfx/serving/api_rest)."""
    hu, spacing = check_inputs(hu, pixel_spacing)
    return {
        "signature_name": signature,
        "inputs": {"hu": hu.tolist(), "pixel_spacing": [float(s) for s in spacing]},
    }


def grpc_request(hu, pixel_spacing, model="radnet", signature=SIGNATURE, version=None):
    """A tensorflow_serving PredictRequest for the predict_hu signature."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    hu, pixel_spacing = check_inputs(hu, pixel_spacing)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    request.inputs["hu"].CopyFrom(tf.make_tensor_proto(hu))
    request.inputs["pixel_spacing"].CopyFrom(tf.make_tensor_proto(pixel_spacing.astype(np.float32)))
    return request


def parse_outputs(outputs: dict) -> dict:
    """Server outputs (REST 'outputs' dict or numpy arrays) -> verdict dict (with the lesion
    mask's pixel count on the model grid and the slices it marks, when the export serves it)."""
    probs = np.asarray(outputs[SLICE_PROBABILITIES], np.float32)
    result = {
        CT_POSITIVE: bool(np.asarray(outputs[CT_POSITIVE])),
        CT_SCORE: round(float(np.asarray(outputs[CT_SCORE])), 4),
        LONGEST_POSITIVE_RUN: int(np.asarray(outputs[LONGEST_POSITIVE_RUN])),
        SLICE_PROBABILITIES: [round(float(p), 4) for p in probs],
    }
    if MIN_RUN_APPLIED in outputs:  # exports before 0.2 lack it
        result[MIN_RUN_APPLIED] = int(np.asarray(outputs[MIN_RUN_APPLIED]))
    if LESION_MASK in outputs:  # exports before the lesion mask lack it
        lesion = np.asarray(outputs[LESION_MASK], bool)
        result["lesion_mask_pixels"] = int(lesion.sum())  # on the model grid
        result["lesion_slices"] = [
            int(i) for i in np.flatnonzero(lesion.reshape(len(lesion), -1).any(axis=1))
        ]
    return result


def predict_rest(url, model, body, timeout=300):
    import requests

    endpoint = f"{url.rstrip('/')}/v1/models/{model}:predict"
    try:
        resp = requests.post(endpoint, json=body, timeout=timeout)
    except requests.RequestException as err:
        raise UserError(f"cannot reach {endpoint}: {err}") from None
    if resp.status_code != 200:
        raise UserError(f"server answered {resp.status_code}: {resp.text[:300]}")
    return resp.json()["outputs"]


def predict_grpc(target, request, timeout=300):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    options = [
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
    ]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as err:
            raise UserError(f"gRPC {target}: {err.code().name}: {err.details()}") from None
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m radnet_tf.serving.client", description=__doc__.split("\n")[0]
    )
    add_verbose(parser)
    parser.add_argument("dicom_dir")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument(
        "--grpc", default="localhost:8500", help="host:port of the gRPC endpoint (default)"
    )
    transport.add_argument(
        "--rest",
        metavar="URL",
        help="REST base URL, e.g. http://localhost:8501 (JSON: ~3x the bytes)",
    )
    parser.add_argument("--model", default="radnet")
    parser.add_argument("--min-slices", type=int, default=1)
    args = parser.parse_args(argv)
    from radnet_tf.io.dicom import read_series

    series = read_series(args.dicom_dir, min_slices=args.min_slices)
    if args.rest:
        outputs = predict_rest(args.rest, args.model, rest_request(series.hu, series.pixel_spacing))
    else:
        outputs = predict_grpc(args.grpc, grpc_request(series.hu, series.pixel_spacing, args.model))
    result = {"study_key": series.study_key, **parse_outputs(outputs), "series": series.summary()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
