"""Data-set ingest at scale: the RSNA header index and DICOM conversion vs bare decoding.

    python benchmarks/cpu_datasets.py [--files 20000] [--shared ../shared/data]
    python benchmarks/cpu_datasets.py --tiny          # seconds-long smoke run (tests)

1. Header index (radnet_tf.datasets.rsna.index_headers) on a synthetic RSNA-layout folder of at
   least --files files (64 x 64 slices: header parsing does not depend on the matrix, but
   real 512 x 512 files are 0.5 MB, so a cold disk reads more): files/s with 1 and 2 worker
   processes, against a bare `pydicom.dcmread(stop_before_pixels=True)` loop over the same
   files in this process, and the projected time for RSNA's ~752,000 files.
2. Conversion per core: `read_series` + `preprocess_study` against bare
   `pydicom.dcmread(f).pixel_array` of the same files, on CQ500-CT-0 (238 JPEG-lossless
   slices, tilted 8.5 degrees) and the Visible Human head (82 RLE slices, no tilt), with
   the time split into decode, the rest of the reader (tilt shear, HU) and preprocessing.
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

RSNA_FILES = 752_000


def emit(**kw):
    print(json.dumps(kw), flush=True)


def best_of(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_index(files_wanted, tmp):
    import shutil

    import pydicom

    from radnet_tf.datasets import rsna
    from radnet_tf.phantom import generate as synth
    from radnet_tf.phantom.layouts import write_rsna

    slices = 32
    cfg = synth.SynthConfig(matrix=64, num_slices=slices, pixel_spacing_range=(3.3, 3.5))
    t0 = time.perf_counter()
    write_rsna(tmp / "rsna", max(1, -(-files_wanted // slices)), 0, cfg)
    made = time.perf_counter() - t0
    root = tmp / "rsna" / "stage_2_train"
    files = sorted(root.iterdir())

    def header(path):
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:  # the planted unparsable file
            return None

    bare, _ = best_of(lambda: [header(f) for f in files], 1)
    one, index = best_of(lambda: rsna.index_headers(root, tmp / "idx1", workers=1), 1)
    two, _ = best_of(lambda: rsna.index_headers(root, tmp / "idx2", workers=2), 1)
    reuse, _ = best_of(lambda: rsna.index_headers(root, tmp / "idx2", workers=2), 1)
    n = len(files)
    emit(
        bench="rsna_header_index",
        files=n,
        generate_s=round(made, 1),
        bare_dcmread_headers_files_per_s=round(n / bare, 1),
        index_1_worker_files_per_s=round(n / one, 1),
        index_2_workers_files_per_s=round(n / two, 1),
        ratio_index_1_worker_vs_bare=round(bare / one, 3),
        speedup_2_workers=round(one / two, 2),
        rerun_reusing_index_s=round(reuse, 2),
        projected_752k_files_2_workers_min=round(RSNA_FILES / (n / two) / 60, 1),
        unparsable_files_found=int((index.status != "ok").sum()),
    )
    shutil.rmtree(tmp / "rsna")


def bench_conversion(folder, name, repeat=2):
    import pydicom

    from radnet_tf import preprocess
    from radnet_tf.io import dicom as dicom_io
    from radnet_tf.config import Config

    folder = Path(folder)
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.lower().startswith(("readme", "license"))
    )
    pcfg = Config().preprocess_config()
    bare, _ = best_of(lambda: [pydicom.dcmread(f).pixel_array for f in files], repeat)
    read, series = best_of(lambda: dicom_io.read_series(folder), repeat)
    pre, _ = best_of(
        lambda: preprocess.preprocess_study(series.hu, series.pixel_spacing, pcfg).numpy(), repeat
    )
    shear = 0.0
    if series.tilt_corrected:
        import numpy as np

        positions = np.array(
            [
                np.asarray(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, float)
                for f in files
            ]
        )
        order = np.argsort(positions @ np.cross(series.orientation[:3], series.orientation[3:]))
        work = series.hu.copy()  # sheared in place, as the reader does
        shear, _ = best_of(
            lambda: dicom_io._shear_to_normal(
                work, positions[order], series.orientation, series.pixel_spacing, out=work
            ),
            repeat,
        )
    n = len(files)
    emit(
        bench=f"convert_per_core_{name}",
        slices=n,
        tilt_deg=round(series.tilt_deg, 1),
        bare_decode_slices_per_s=round(n / bare, 1),
        reader_plus_preprocess_slices_per_s=round(n / (read + pre), 1),
        ratio_vs_bare_decode=round(bare / (read + pre), 3),
        seconds_bare_decode=round(bare, 2),
        seconds_reader=round(read, 2),
        seconds_reader_beyond_decode=round(read - bare, 2),
        seconds_tilt_shear=round(shear, 2),
        seconds_preprocess=round(pre, 2),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--files", type=int, default=20000, help="files in the synthetic RSNA folder"
    )
    parser.add_argument(
        "--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument(
        "--tiny", action="store_true", help="smoke run: 64 files, a synthetic series"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bench_index(64 if args.tiny else args.files, tmp)
        if args.tiny:
            import numpy as np

            from radnet_tf.phantom import generate as synth

            cfg = synth.SynthConfig(matrix=64, num_slices=4, pixel_spacing_range=(3.4, 3.4))
            synth.write_dicom_series(
                synth.make_phantom(np.random.default_rng(0), cfg),
                tmp / "s",
                np.random.default_rng(0),
            )
            bench_conversion(tmp / "s", "tiny", repeat=1)
            return
        shared = Path(args.shared)
        for folder, name in (
            (shared / "cq500" / "CQ500-CT-0", "cq500_ct0_238"),
            (shared / "vhp-male-head", "vhp_head_82"),
        ):
            if folder.is_dir():
                bench_conversion(folder, name)
            else:
                emit(bench=f"convert_per_core_{name}", skipped=f"{folder} absent")


if __name__ == "__main__":
    main()
