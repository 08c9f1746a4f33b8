"""Client for a radnet-tf model on TensorFlow Serving.

    python -m serving.client DICOM_DIR --url http://localhost:8501 [--model radnet]
    python -m serving.client DICOM_DIR --grpc localhost:8500

Reads the series with the project's reader (no identifiers leave it), sends the raw HU
volume to the `predict_hu` signature (the server does windowing, resampling and the CT
rule) over REST `:predict` (columnar "inputs") or gRPC `PredictionService/Predict`, and
prints the verdict as JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from radnet_tf.errors import UserError, cli_main

SIGNATURE = "predict_hu"
GRPC_MAX_MESSAGE = 1 << 30  # 1 GiB: a thin-slice CT is ~125 MB as int16


def rest_request(hu, pixel_spacing, signature=SIGNATURE) -> dict:
    """The REST body (columnar format: https://www.tensorflow.org/tfx/serving/api_rest)."""
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise UserError(f"hu must be [S, H, W]. Received: shape={hu.shape}")
    return {
        "signature_name": signature,
        "inputs": {"hu": hu.astype(np.int16).tolist(), "pixel_spacing": [float(s) for s in pixel_spacing]},
    }


def grpc_request(hu, pixel_spacing, model="radnet", signature=SIGNATURE, version=None):
    """A tensorflow_serving PredictRequest for the predict_hu signature."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    request.inputs["hu"].CopyFrom(tf.make_tensor_proto(np.asarray(hu, np.int16)))
    request.inputs["pixel_spacing"].CopyFrom(tf.make_tensor_proto(np.asarray(pixel_spacing, np.float32)))
    return request


def parse_outputs(outputs: dict) -> dict:
    """Server outputs (REST 'outputs' dict or numpy arrays) -> verdict dict."""
    probs = np.asarray(outputs["slice_probabilities"], np.float32)
    return {
        "ct_positive": bool(np.asarray(outputs["ct_positive"])),
        "ct_score": round(float(np.asarray(outputs["ct_score"])), 4),
        "longest_positive_run": int(np.asarray(outputs["longest_positive_run"])),
        "slice_probabilities": [round(float(p), 4) for p in probs],
    }


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

    options = [("grpc.max_send_message_length", GRPC_MAX_MESSAGE), ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as err:
            raise UserError(f"gRPC {target}: {err.code().name}: {err.details()}") from None
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__.split("\n")[0])
    parser.add_argument("dicom_dir")
    parser.add_argument("--url", default="http://localhost:8501", help="REST base URL")
    parser.add_argument("--grpc", help="host:port of the gRPC endpoint (instead of REST)")
    parser.add_argument("--model", default="radnet")
    parser.add_argument("--min-slices", type=int, default=1)
    args = parser.parse_args(argv)
    from radnet_tf.dicom_io import read_series

    series = read_series(args.dicom_dir, min_slices=args.min_slices)
    if args.grpc:
        outputs = predict_grpc(args.grpc, grpc_request(series.hu, series.pixel_spacing, args.model))
    else:
        outputs = predict_rest(args.url, args.model, rest_request(series.hu, series.pixel_spacing))
    result = {"study_key": series.study_key, **parse_outputs(outputs), "series": series.summary()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
