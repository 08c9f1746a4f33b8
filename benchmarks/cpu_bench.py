"""CPU benchmarks behind BENCHMARKS.md. Each figure is a ratio against a baseline run in the
same process (the machines are shared and noisy; absolute times drift).

    python benchmarks/cpu_bench.py [--only ingest,synth,convert,input,model,export] [--shared ../shared/data]
    python benchmarks/cpu_bench.py --only train64     # one process per size: peak RSS is per process
    python benchmarks/cpu_bench.py --only train256

Prints one JSON line per measurement.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def emit(**kw):
    print(json.dumps(kw), flush=True)


def timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_ingest(shared):
    import pydicom

    from radnet_tf import preprocess
    from radnet_tf.dicom_io import read_series

    folder = Path(shared) / "cq500" / "CQ500-CT-0"
    files = sorted(folder.iterdir())
    bare, _ = timed(lambda: [pydicom.dcmread(f).pixel_array for f in files], 2)
    read, series = timed(lambda: read_series(folder), 2)
    pre, _ = timed(lambda: preprocess.preprocess_study(series.hu, series.pixel_spacing).numpy(), 2)
    n = len(files)
    emit(bench="ingest_cq500_238", slices=n, bare_pydicom_slices_per_s=round(n / bare, 1),
         reader_slices_per_s=round(n / read, 1), reader_plus_preprocess_slices_per_s=round(n / (read + pre), 1),
         ratio_reader_plus_preprocess_vs_bare_decode=round(bare / (read + pre), 3))


def bench_synth():
    from radnet_tf import synth

    with tempfile.TemporaryDirectory() as tmp:
        n = 20
        dt, _ = timed(lambda: synth.generate_cohort(f"{tmp}/one", n, seed=0))
        dt2, _ = timed(lambda: synth.generate_cohort(f"{tmp}/two", n, seed=0, workers=2))
        phantom_only, _ = timed(lambda: [synth.make_phantom(np.random.default_rng([0, i])) for i in range(n)])
    emit(bench="synth_default_512x512x32", studies=n, seconds_per_study=round(dt / n, 3),
         projected_100_studies_one_core_s=round(100 * dt / n, 1), phantom_share=round(phantom_only / dt, 3),
         two_workers_seconds_per_study=round(dt2 / n, 3), speedup_two_workers=round(dt / dt2, 2))


def bench_convert(shared_unused=None):
    from radnet_tf import preprocess, synth
    from radnet_tf.config import Config
    from radnet_tf.convert import discover_tasks, load_label_tables, run_local
    from radnet_tf.dicom_io import read_series

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth.generate_cohort(tmp / "c", 8, seed=1, cfg=synth.SynthConfig(num_slices=16))
        labels, per_slice = load_label_tables(tmp / "c" / "labels.csv", tmp / "c" / "slice_labels.csv")
        tasks, skipped = discover_tasks(tmp / "c" / "dicom", labels, per_slice, tmp / "c" / "masks")
        for name, cfg in (("paper_256px_1mm", Config()), ("default_128px_2mm", Config(input_size=128, out_spacing=2.0))):
            pcfg = cfg.preprocess_config()

            def bare():
                for t in tasks:
                    s = read_series(t.dicom_dir)
                    preprocess.resample_hu(s.hu, s.pixel_spacing, pcfg)

            base, _ = timed(bare)
            one, _ = timed(lambda: run_local(tasks, skipped, tmp / f"o1{name}", 4, 1, pcfg, progress=False))
            two, (table, summary) = timed(lambda: run_local(tasks, skipped, tmp / f"o2{name}", 4, 2, pcfg, progress=False))
            slices = summary["slices"]
            disk = sum(p.stat().st_size for p in (tmp / f"o2{name}").glob("*.tfrecord.gz"))
            emit(bench=f"convert_{name}", studies=len(tasks), slices=slices,
                 bare_reader_preprocess_slices_per_s=round(slices / base, 1),
                 workers1_slices_per_s=round(slices / one, 1), workers2_slices_per_s=round(slices / two, 1),
                 ratio_workers1_vs_bare=round(base / one, 3), ratio_workers2_vs_workers1=round(one / two, 3),
                 bytes_per_slice_on_disk=int(disk / slices),
                 bytes_per_slice_raw=pcfg.out_size**2 * 3)


def bench_input_and_model(records):
    import keras

    from radnet_tf import data
    from radnet_tf.config import load_config
    from radnet_tf.losses import compile_losses
    from radnet_tf.model import build_model

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
    files = data.list_shards(records)
    ds = data.train_dataset(files, cfg, cfg.batch_size)
    it = iter(ds)
    next(it)
    steps = 30
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    input_rate = steps * cfg.batch_size * cfg.crop_slices / (time.perf_counter() - t0)
    model = build_model(cfg)
    losses, weights = compile_losses(cfg, model.output_names)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=losses, loss_weights=weights)
    x, y = next(it)
    model.train_on_batch(x, y)
    t_step, _ = timed(lambda: model.train_on_batch(x, y), 5)
    train_rate = cfg.batch_size * cfg.crop_slices / t_step
    # fraction of a real fit step spent waiting for input
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace the train function first
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=10, epochs=1, verbose=0)
    fit_step = (time.perf_counter() - t0) / 10
    emit(bench="input_vs_training_default", input_slices_per_s=round(input_rate, 1),
         train_slices_per_s=round(train_rate, 1), ratio_input_vs_training=round(input_rate / train_rate, 2),
         train_step_s=round(t_step, 3), fit_step_s=round(fit_step, 3),
         input_wait_fraction=round(max(0.0, fit_step - t_step) / fit_step, 3))


def bench_model_cpu():
    import tensorflow as tf

    from radnet_tf.config import Config
    from radnet_tf.model import build_model

    cfg = Config()
    model = build_model(cfg)
    # FLOPs per slice: profile the forward pass of one 1-slice study.
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, 1, 256, 256, 1], tf.float32))
    from tensorflow.python.profiler import model_analyzer, option_builder

    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    flops = model_analyzer.profile(concrete.graph, options=opts).total_float_ops
    x = np.random.default_rng(0).uniform(size=(1, 32, 256, 256, 1)).astype(np.float32)
    model(x[:, :2])
    t_inf, _ = timed(lambda: model(x, training=False), 3)
    a = tf.random.uniform((2048, 2048))
    tf.linalg.matmul(a, a)
    t_mm, _ = timed(lambda: tf.linalg.matmul(a, a).numpy(), 5)
    mm_flops = 2 * 2048**3 / t_mm
    achieved = flops * 32 / t_inf
    emit(bench="model_cpu_256", params=model.count_params(), gflop_per_slice=round(flops / 1e9, 2),
         infer_s_per_32_slice_ct=round(t_inf, 2), infer_ms_per_slice=round(1000 * t_inf / 32, 1),
         achieved_gflops=round(achieved / 1e9, 1), matmul_gflops=round(mm_flops / 1e9, 1),
         ratio_achieved_vs_matmul=round(achieved / mm_flops, 3))


def bench_train_step(size):
    """Paper-size RADnet, one 32-slice study per step, SGD: second-step time and peak RSS."""
    import resource

    import keras

    from radnet_tf.config import Config
    from radnet_tf.losses import compile_losses
    from radnet_tf.model import build_model

    cfg = Config(input_size=size, out_spacing=256.0 / size)
    model = build_model(cfg)
    losses, weights = compile_losses(cfg, model.output_names)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=losses, loss_weights=weights)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(1, 32, size, size, 1)).astype(np.float32)
    y = {"slice_probability": (rng.uniform(size=(1, 32)) > 0.5).astype(np.float32)}
    for name in ("mask_1", "mask_2", "mask_3"):
        y[name] = (rng.uniform(size=(1, 32, size, size, 1)) > 0.9).astype(np.float32)
    first, _ = timed(lambda: model.train_on_batch(x, y))
    step, _ = timed(lambda: model.train_on_batch(x, y), 2)
    emit(bench=f"train_step_cpu_{size}", slices=32, first_step_s=round(first, 1), step_s=round(step, 2),
         slices_per_s=round(32 / step, 2), peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))


def bench_export(shared, saved_model):
    import tensorflow as tf

    from radnet_tf import predict
    from radnet_tf.dicom_io import read_series
    from radnet_tf.export import load_trained

    sm, meta, path = predict.load_saved_model(saved_model)
    model_dir = Path(meta["config"]["work_dir"]) / "model"
    model, cfg = load_trained(model_dir)
    fn = sm.signatures["serving_default"]
    n = cfg.input_size
    for s in (32, 238):
        x = np.random.default_rng(s).uniform(size=(s, n, n, 1)).astype(np.float32)
        fn(slices=tf.constant(x))
        model(x[None], training=False)
        t_sig, _ = timed(lambda: fn(slices=tf.constant(x))["slice_probabilities"].numpy(), 5)
        t_keras, _ = timed(lambda: model(x[None], training=False)["slice_probability"].numpy(), 5)
        emit(bench=f"export_latency_{s}_slices_{n}px", signature_s=round(t_sig, 4), keras_s=round(t_keras, 4),
             ratio_signature_vs_keras=round(t_sig / t_keras, 3))
    folder = Path(shared) / "cq500" / "CQ500-CT-0"
    series = read_series(folder)
    with tempfile.TemporaryDirectory() as tmp:
        predict.predict_series(series, sm, meta)  # warm the signature for this shape
        t0 = time.perf_counter()
        result = predict.main([str(folder), "--model", str(path), "--out", tmp])
        total = time.perf_counter() - t0
    emit(bench="predict_cq500_238", total_s=round(total, 2), **result["timings"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="ingest,synth,convert,input,model,export")
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--records", default="runs/default/records-128px-2mm")
    parser.add_argument("--saved-model", default="saved_models/radnet")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if "ingest" in only:
        bench_ingest(args.shared)
    if "synth" in only:
        bench_synth()
    if "convert" in only:
        bench_convert()
    if "input" in only:
        bench_input_and_model(args.records)
    if "model" in only:
        bench_model_cpu()
    if "export" in only:
        bench_export(args.shared, args.saved_model)
    for size in (64, 256):
        if f"train{size}" in only:
            bench_train_step(size)


if __name__ == "__main__":
    main()
