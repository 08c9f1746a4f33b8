"""CPU benchmarks behind BENCHMARKS.md. Each figure is a ratio against a baseline run in the
same process (the machines are shared and noisy; absolute times drift).

    python benchmarks/cpu_bench.py [--only ingest,synth,convert,input,model,export] [--shared
    ../shared/data]
    python benchmarks/cpu_bench.py --only multiframe   # CQ500-CT-0 as one enhanced CT object
    (highdicom)
    python benchmarks/cpu_bench.py --only train64     # one process per size: peak RSS is per
    process
    python benchmarks/cpu_bench.py --only train256
    python benchmarks/cpu_bench.py --tiny --only all    # seconds-long smoke run (tests)

Prints one JSON line per measurement. `--tiny` runs every benchmark at toy sizes on data it
makes itself (no ../shared, no trained model): the figures mean nothing, the run proves the
script still works (tests/test_benchmarks.py).
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


TINY = dict(
    input_size=32,
    out_spacing=8.0,
    depth=7,
    growth_rate=2,
    initial_filters=4,
    lstm_units=3,
    head_filters=2,
    crop_slices=4,
    batch_size=2,
)


def _tiny_series(folder, slices=4):
    from radnet_tf.phantom import generate as synth

    cfg = synth.SynthConfig(matrix=64, num_slices=slices, pixel_spacing_range=(3.4, 3.4))
    synth.write_dicom_series(
        synth.make_phantom(np.random.default_rng(0), cfg), folder, np.random.default_rng(0)
    )
    return folder


def bench_ingest(folder, name="ingest_cq500_238"):
    import pydicom

    from radnet_tf import preprocess
    from radnet_tf.config import Config
    from radnet_tf.io.dicom import read_series

    files = sorted(Path(folder).iterdir())
    pcfg = Config().preprocess_config()
    bare, _ = timed(lambda: [pydicom.dcmread(f).pixel_array for f in files], 2)
    read, series = timed(lambda: read_series(folder), 2)
    pre, _ = timed(
        lambda: preprocess.preprocess_study(series.hu, series.pixel_spacing, pcfg).numpy(), 2
    )
    n = len(files)
    emit(
        bench=name,
        slices=n,
        bare_pydicom_slices_per_s=round(n / bare, 1),
        reader_slices_per_s=round(n / read, 1),
        reader_plus_preprocess_slices_per_s=round(n / (read + pre), 1),
        ratio_reader_plus_preprocess_vs_bare_decode=round(bare / (read + pre), 3),
    )


def bench_multiframe(folder, name="multiframe_cq500_238"):
    """The reader on a series as classic slices against the same slices converted (by
    highdicom) into one Legacy Converted Enhanced CT object, read frame by frame."""
    import warnings

    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    from radnet_tf.io.dicom import read_series

    sources = [pydicom.dcmread(f) for f in sorted(Path(folder).iterdir())]
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom's notes on the sources' de-identified names
        hd.legacy.LegacyConvertedEnhancedCTImage(
            sources,
            series_instance_uid=sources[0].SeriesInstanceUID,
            series_number=1,
            sop_instance_uid=generate_uid(),
            instance_number=1,
        ).save_as(Path(tmp) / "mf.dcm")
        classic_s, classic = timed(lambda: read_series(folder), 2)
        frames_s, frames = timed(lambda: read_series(Path(tmp) / "mf.dcm"), 2)
    emit(
        bench=name,
        slices=classic.num_slices,
        identical_hu=bool(np.array_equal(classic.hu, frames.hu)),
        classic_s=round(classic_s, 3),
        multiframe_s=round(frames_s, 3),
        ratio_multiframe_vs_classic=round(frames_s / classic_s, 3),
    )


def bench_synth(tiny=False):
    from radnet_tf.phantom import generate as synth

    # The built-in default's cohort: 512 x 512 x 16 (configs/default.yaml synth_*).
    n, cfg = (
        (2, synth.SynthConfig(matrix=64, num_slices=4))
        if tiny
        else (40, synth.SynthConfig(num_slices=16))
    )
    synth.make_phantom(np.random.default_rng(0), cfg)  # the atlas: built or read once per process
    with tempfile.TemporaryDirectory() as tmp:
        dt, _ = timed(lambda: synth.generate_cohort(f"{tmp}/one", n, seed=0, cfg=cfg))
        dt2, _ = timed(lambda: synth.generate_cohort(f"{tmp}/two", n, seed=0, cfg=cfg, workers=2))
        phantom_only, _ = timed(
            lambda: [synth.make_phantom(np.random.default_rng([0, i]), cfg) for i in range(n)]
        )
        write_s, save_as_s = _write_vs_save_as(synth, cfg, Path(tmp) / "w")
    emit(
        bench=f"synth_{cfg.matrix}x{cfg.matrix}x{cfg.num_slices}",
        studies=n,
        seconds_per_study=round(dt / n, 3),
        projected_100_studies_one_core_s=round(100 * dt / n, 1),
        phantom_share=round(phantom_only / dt, 3),
        two_workers_seconds_per_study=round(dt2 / n, 3),
        speedup_two_workers=round(dt / dt2, 2),
        projected_400_studies_two_workers_s=round(400 * dt2 / n, 1),
        write_series_s=round(write_s, 4),
        save_as_series_s=round(save_as_s, 4),
        ratio_write_vs_save_as=round(write_s / save_as_s, 3),
    )


def _write_vs_save_as(synth, cfg, folder):
    """Seconds to write one study with `write_dicom_series`, and with pydicom's `save_as`
    per slice (the writer it replaced) for the same datasets: best of 3 each."""
    import pydicom

    phantom = synth.make_phantom(np.random.default_rng([0, 0]), cfg)
    write_s = min(
        timed(lambda: synth.write_dicom_series(phantom, folder, np.random.default_rng(0)))[0]
        for _ in range(3)
    )
    datasets = [(p, pydicom.dcmread(p)) for p in sorted(folder.iterdir())]
    save_as_s = min(
        timed(lambda: [ds.save_as(p, enforce_file_format=True) for p, ds in datasets])[0]
        for _ in range(3)
    )
    return write_s, save_as_s


def bench_convert(tiny=False):
    from radnet_tf import preprocess
    from radnet_tf.phantom import generate as synth
    from radnet_tf.config import Config
    from radnet_tf.records.convert import folder_tasks, run_local
    from radnet_tf.io.dicom import read_series

    studies, scfg = (
        (2, synth.SynthConfig(matrix=64, num_slices=4))
        if tiny
        else (8, synth.SynthConfig(num_slices=16))
    )
    grids = (
        [("tiny_32px_8mm", Config(input_size=32, out_spacing=8.0))]
        if tiny
        else [
            ("paper_256px_1mm", Config()),
            ("default_168px_1.5mm", Config(input_size=168, out_spacing=1.5)),
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth.generate_cohort(tmp / "c", studies, seed=1, cfg=scfg)
        tasks, skipped = folder_tasks(
            tmp / "c" / "dicom",
            tmp / "c" / "labels.csv",
            tmp / "c" / "slice_labels.csv",
            tmp / "c" / "masks",
        )
        for name, cfg in grids:
            pcfg = cfg.preprocess_config()

            def bare():
                for t in tasks:
                    s = read_series(t.dicom_dir)
                    preprocess.resample_hu(s.hu, s.pixel_spacing, pcfg)

            base, _ = timed(bare)
            one, _ = timed(
                lambda: run_local(tasks, skipped, tmp / f"o1{name}", 4, 1, pcfg, progress=False)
            )
            two, (table, summary) = timed(
                lambda: run_local(tasks, skipped, tmp / f"o2{name}", 4, 2, pcfg, progress=False)
            )
            slices = summary["slices"]
            disk = sum(p.stat().st_size for p in (tmp / f"o2{name}").glob("*.tfrecord.gz"))
            emit(
                bench=f"convert_{name}",
                studies=len(tasks),
                slices=slices,
                bare_reader_preprocess_slices_per_s=round(slices / base, 1),
                workers1_slices_per_s=round(slices / one, 1),
                workers2_slices_per_s=round(slices / two, 1),
                ratio_workers1_vs_bare=round(base / one, 3),
                ratio_workers2_vs_workers1=round(one / two, 3),
                bytes_per_slice_on_disk=int(disk / slices),
                bytes_per_slice_raw=pcfg.out_size**2 * 3,
            )


def bench_input_and_model(records, overrides=()):
    import keras

    from radnet_tf.records import dataset as data
    from radnet_tf.config import load_config
    from radnet_tf.modeling.losses import compile_losses
    from radnet_tf.modeling.model import build_model

    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "default.yaml", list(overrides)
    )
    files = data.list_shards(records)
    ds = data.train_dataset(files, cfg, cfg.batch_size)
    it = iter(ds)
    next(it)
    steps = 3 if overrides else 30
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
    fit_steps = 2 if overrides else 10
    model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # trace the train function first
    t0 = time.perf_counter()
    model.fit(ds, steps_per_epoch=fit_steps, epochs=1, verbose=0)
    fit_step = (time.perf_counter() - t0) / fit_steps
    emit(
        bench="input_vs_training_default",
        input_slices_per_s=round(input_rate, 1),
        train_slices_per_s=round(train_rate, 1),
        ratio_input_vs_training=round(input_rate / train_rate, 2),
        train_step_s=round(t_step, 3),
        fit_step_s=round(fit_step, 3),
        input_wait_fraction=round(max(0.0, fit_step - t_step) / fit_step, 3),
    )


def bench_model_cpu(tiny=False):
    import tensorflow as tf

    from radnet_tf.config import Config
    from radnet_tf.modeling.model import build_model

    cfg = Config(**TINY) if tiny else Config()
    n = cfg.input_size
    model = build_model(cfg)
    # FLOPs per slice: profile the forward pass of one 1-slice study.
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, 1, n, n, 1], tf.float32))
    from tensorflow.python.profiler import model_analyzer, option_builder

    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    flops = model_analyzer.profile(concrete.graph, options=opts).total_float_ops
    x = np.random.default_rng(0).uniform(size=(1, 32, n, n, 1)).astype(np.float32)
    model(x[:, :2])
    t_inf, _ = timed(lambda: model(x, training=False), 3)
    a = tf.random.uniform((256, 256) if tiny else (2048, 2048))
    tf.linalg.matmul(a, a)
    t_mm, _ = timed(lambda: tf.linalg.matmul(a, a).numpy(), 5)
    mm_flops = 2 * int(a.shape[0]) ** 3 / t_mm
    achieved = flops * 32 / t_inf
    emit(
        bench=f"model_cpu_{n}",
        params=model.count_params(),
        gflop_per_slice=round(flops / 1e9, 2),
        infer_s_per_32_slice_ct=round(t_inf, 2),
        infer_ms_per_slice=round(1000 * t_inf / 32, 1),
        achieved_gflops=round(achieved / 1e9, 1),
        matmul_gflops=round(mm_flops / 1e9, 1),
        ratio_achieved_vs_matmul=round(achieved / mm_flops, 3),
    )


def bench_train_step(size, tiny=False):
    """Paper-size RADnet, one 32-slice study per step, SGD: second-step time and peak RSS."""
    import resource

    import keras

    from radnet_tf.config import Config
    from radnet_tf.contract import MASK_OUTPUTS, OUTPUT_SLICE
    from radnet_tf.modeling.losses import compile_losses
    from radnet_tf.modeling.model import build_model

    cfg = Config(**TINY) if tiny else Config(input_size=size, out_spacing=256.0 / size)
    size = cfg.input_size
    model = build_model(cfg)
    losses, weights = compile_losses(cfg, model.output_names)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss=losses, loss_weights=weights
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(1, 32, size, size, 1)).astype(np.float32)
    y = {OUTPUT_SLICE: (rng.uniform(size=(1, 32)) > 0.5).astype(np.float32)}
    for name in MASK_OUTPUTS:
        y[name] = (rng.uniform(size=(1, 32, size, size, 1)) > 0.9).astype(np.float32)
    first, _ = timed(lambda: model.train_on_batch(x, y))
    step, _ = timed(lambda: model.train_on_batch(x, y), 2)
    emit(
        bench=f"train_step_cpu_{size}",
        slices=32,
        first_step_s=round(first, 1),
        step_s=round(step, 2),
        slices_per_s=round(32 / step, 2),
        peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    )


def bench_export(folder, saved_model, model=None, cfg=None, name="predict_cq500_238"):
    """Signature vs Keras latency, then `predict` on a DICOM folder. The Keras model is the
    one the export came from (its model dir), unless given."""
    import contextlib
    import io

    import tensorflow as tf

    from radnet_tf.serving import predict
    from radnet_tf.serving import loader
    from radnet_tf.contract import OUTPUT_SLICE, SLICE_PROBABILITIES
    from radnet_tf.io.dicom import read_series
    from radnet_tf.serving.loader import load_trained

    sm, meta, path = loader.load_saved_model(saved_model)
    if model is None:
        model, cfg = load_trained(
            Path(meta["config"]["model_dir"] or Path(meta["config"]["work_dir"]) / "model")
        )
    fn = sm.signatures["serving_default"]
    n, c = cfg.input_size, cfg.input_channels
    for s in (4, 8) if name != "predict_cq500_238" else (32, 238):
        x = np.random.default_rng(s).uniform(size=(s, n, n, c)).astype(np.float32)
        fn(slices=tf.constant(x))
        model(x[None], training=False)
        t_sig, _ = timed(lambda: fn(slices=tf.constant(x))[SLICE_PROBABILITIES].numpy(), 5)
        t_keras, _ = timed(lambda: model(x[None], training=False)[OUTPUT_SLICE].numpy(), 5)
        emit(
            bench=f"export_latency_{s}_slices_{n}px",
            signature_s=round(t_sig, 4),
            keras_s=round(t_keras, 4),
            ratio_signature_vs_keras=round(t_sig / t_keras, 3),
        )
    series = read_series(folder)
    with tempfile.TemporaryDirectory() as tmp:
        predict.predict_series(series, sm, meta)  # warm the signature for this shape
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # predict prints its JSON
            result = predict.main([str(folder), "--model", str(path), "--out", tmp])
        total = time.perf_counter() - t0
    emit(bench=name, total_s=round(total, 2), **result["timings"])


def run_tiny(only):
    """Every benchmark at toy sizes on data made here (smoke run; figures mean nothing)."""
    from radnet_tf.config import Config
    from radnet_tf.records.convert import folder_tasks, run_local
    from radnet_tf.phantom import generate as synth

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        series = _tiny_series(tmp / "series")
        if "ingest" in only:
            bench_ingest(series, name="ingest_tiny")
        if "multiframe" in only:
            bench_multiframe(series, name="multiframe_tiny")
        if "synth" in only:
            bench_synth(tiny=True)
        if "convert" in only:
            bench_convert(tiny=True)
        if "input" in only:
            synth.generate_cohort(
                tmp / "c",
                10,
                seed=3,
                cfg=synth.SynthConfig(matrix=64, num_slices=6, pixel_spacing_range=(3.3, 3.5)),
            )
            tasks, skipped = folder_tasks(
                tmp / "c" / "dicom",
                tmp / "c" / "labels.csv",
                tmp / "c" / "slice_labels.csv",
                tmp / "c" / "masks",
            )
            run_local(
                tasks, skipped, tmp / "r", 2, 1, Config(**TINY).preprocess_config(), progress=False
            )
            # every study trains (the 70:30 split of 10 studies can leave one class out)
            bench_input_and_model(
                tmp / "r", [f"{k}={v}" for k, v in TINY.items()] + ["val_fraction=0.01"]
            )
        if "model" in only:
            bench_model_cpu(tiny=True)
        if "train" in only:
            bench_train_step(32, tiny=True)
        if "export" in only:
            from radnet_tf.serving.export import export_model
            from radnet_tf.modeling.model import build_model

            cfg = Config(**TINY, extra_windows=[[80, 200]])
            model = build_model(cfg)
            export_model(model, cfg, tmp / "sm", warmup=False)
            bench_export(series, tmp / "sm", model, cfg, name="predict_tiny")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", default="ingest,synth,convert,input,model,export", help="comma list, or 'all'"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="toy sizes on data made here: a smoke run"
    )
    parser.add_argument(
        "--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--records", default="runs/default/records-168px-1.5mm")
    parser.add_argument("--saved-model", default="saved_models/radnet")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if "all" in only:
        only = {"ingest", "multiframe", "synth", "convert", "input", "model", "export", "train"}
    if args.tiny:
        return run_tiny(only)
    cq500 = Path(args.shared) / "cq500" / "CQ500-CT-0"
    if "ingest" in only:
        bench_ingest(cq500)
    if "multiframe" in only:
        bench_multiframe(cq500)
    if "synth" in only:
        bench_synth()
    if "convert" in only:
        bench_convert()
    if "input" in only:
        bench_input_and_model(args.records)
    if "model" in only:
        bench_model_cpu()
    if "export" in only:
        bench_export(cq500, args.saved_model)
    for size in (64, 256):
        if f"train{size}" in only:
            bench_train_step(size)


if __name__ == "__main__":
    main()
