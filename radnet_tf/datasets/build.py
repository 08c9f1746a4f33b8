"""DICOM studies -> sharded TFRecords, locally (multiprocessing) or on Apache Beam.

    python -m radnet_tf.datasets.build --dicom-root DIR --labels labels.csv --out OUT \
        [--slice-labels slice_labels.csv] [--masks MASKS_DIR] [--shards 8] [--workers 2] \
        [--config configs/radnet.yaml] [--runner local|DirectRunner|DataflowRunner ...]
    python -m radnet_tf.datasets.build --rsna-root stage_2_train --rsna-labels stage_2_train.csv \
        --out OUT [--workers N] [--runner ...]          # RSNA-2019 as shipped
        (radnet_tf.datasets.rsna)
    python -m radnet_tf.datasets.build --cq500-root CQ500 --cq500-reads reads.csv --out OUT \
        [--reads-label majority] [--series-policy ...]  # CQ500 zips/folders
        (radnet_tf.datasets.cq500)
    python -m radnet_tf.datasets.build --nifti-volumes ct_scans --nifti-masks masks \
        [--nifti-slice-labels slices.csv] --out OUT     # NIfTI + masks (radnet_tf.io.nifti)

Output in OUT: `studies-SSSSS-of-NNNNN.tfrecord.gz` shards (schema: radnet_tf.records.schema) and
`manifest.csv` (pandas-readable: one row per study written or skipped, with the reason)
plus `manifest.json` (counts, spacing statistics, geometry, the manifest digest).

Local runner: studies are assigned to shards deterministically (sorted study ids, round
robin); each worker writes whole shards under a temporary name and renames them when
complete, with a per-shard manifest part. Re-running after a crash or kill keeps complete
shards and rewrites the rest: no duplicated or half-written records.

Beam runner: the same per-study conversion in a Beam pipeline (`--runner` and any standard
Beam pipeline options after `--`), written with `WriteToTFRecord`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from radnet_tf.cli import add_verbose, cli_main, say
from radnet_tf.errors import UserError
from radnet_tf.io.uid_warnings import uid_line


def _beam():
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise UserError("Apache Beam is not installed: pip install 'radnet-tf[beam]'") from None
    return beam, PipelineOptions


def _convert_and_write(beam, tasks, out, shards, pcfg):
    """A PCollection of conversion tasks -> record shards (WriteToTFRecord) and manifest
    rows (`beam_rows*.jsonl` in `out`, read back by `_read_jsonl`)."""
    from radnet_tf.records import schema as records
    from radnet_tf.records.convert import convert_study

    class Convert(beam.DoFn):
        def process(self, task):
            try:
                record, row = convert_study(task, pcfg)
            except UserError as err:
                yield beam.pvalue.TaggedOutput(
                    "rows", {"study_id": task.study_id, "status": "skipped", "reason": str(err)}
                )
                return
            yield record
            yield beam.pvalue.TaggedOutput(
                "rows", {**row, "status": "written", "reason": "", "shard": "beam"}
            )

    results = tasks | "Convert" >> beam.ParDo(Convert()).with_outputs("rows", main="records")
    _ = results.records | "Write" >> beam.io.WriteToTFRecord(
        str(Path(out) / "studies"),
        file_name_suffix=records.SHARD_SUFFIX,
        num_shards=max(1, shards),
        compression_type=beam.io.filesystem.CompressionTypes.GZIP,
    )
    _ = (
        results.rows
        | "RowsJson" >> beam.Map(json.dumps)
        | "WriteRows"
        >> beam.io.WriteToText(str(Path(out) / "beam_rows"), file_name_suffix=".jsonl")
    )


def _read_jsonl(out, prefix):
    """Reads and removes the `prefix*.jsonl` parts a pipeline wrote into `out`."""
    rows = []
    for part in sorted(Path(out).glob(f"{prefix}*.jsonl")):
        rows += [json.loads(line) for line in part.read_text().splitlines() if line]
        part.unlink()
    return rows


def run_beam(tasks, skipped_rows, out, shards, pcfg, beam_args, manifest_extra=None):
    """The same conversion as an Apache Beam pipeline (DirectRunner in tests)."""
    beam, PipelineOptions = _beam()
    from radnet_tf.records.convert import build_source, claim_output, manifest_frame, write_manifest

    out = Path(out)
    claim_output(out, build_source(pcfg, tasks))
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        _convert_and_write(
            beam,
            p | "Studies" >> beam.Create(tasks) | "Reshuffle" >> beam.Reshuffle(),
            out,
            shards,
            pcfg,
        )
    return write_manifest(
        out, [manifest_frame(_read_jsonl(out, "beam_rows"))], pcfg, skipped_rows, manifest_extra
    )


def run_beam_rsna(root, labels, duplicates, out, shards, pcfg, beam_args):
    """RSNA-2019 on Beam: header index -> key by series -> group -> task -> convert ->
    shards, so no single machine holds the index; the same records and manifest as the
    local runner. The defect counts are made afterwards from the index the pipeline wrote."""
    import hashlib

    import pandas as pd

    beam, PipelineOptions = _beam()
    from radnet_tf.datasets import rsna
    from radnet_tf.records.convert import build_source, claim_output, manifest_frame, write_manifest

    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise UserError(f"RSNA image folder not found: {root}")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.dcm"))
    if not files:
        raise UserError(f"{root}: no .dcm files")
    labels_by_id = rsna.label_map(labels)
    digest = hashlib.sha256(json.dumps([files, sorted(labels_by_id.items())]).encode()).hexdigest()[
        :16
    ]
    claim_output(out, build_source(pcfg, [], {"rsna_beam": digest}))
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        index = (
            p
            | "Files" >> beam.Create(files)
            | "Headers" >> beam.Map(lambda f: rsna.header_row(root / f, root))
        )
        _ = (
            index
            | "IndexJson" >> beam.Map(json.dumps)
            | "WriteIndex"
            >> beam.io.WriteToText(str(out / "beam_index"), file_name_suffix=".jsonl")
        )
        tasks = (
            index
            | "Readable" >> beam.Filter(lambda r: r["status"] == "ok")
            | "BySeries" >> beam.Map(lambda r: ((r["study_uid"], r["series_uid"]), r))
            | "GroupSeries" >> beam.GroupByKey()
            | "SeriesTask" >> beam.Map(lambda kv: rsna.series_task(root, list(kv[1]), labels_by_id))
            | "Labelled" >> beam.Filter(lambda task: task is not None)
        )
        _convert_and_write(beam, tasks, out, shards, pcfg)
    index = (
        pd.DataFrame(_read_jsonl(out, "beam_index"))
        .reindex(columns=rsna.INDEX_COLUMNS)
        .sort_values("file")
    )
    index = index.reset_index(drop=True)
    report = rsna.RsnaReport(duplicate_label_rows=duplicates)
    _, skipped = rsna.series_tasks(root, index, labels, report)
    table_path = rsna.write_index_table(index, out)
    extra = {"rsna": report.to_dict(), "index": Path(table_path).name}
    return write_manifest(
        out, [manifest_frame(_read_jsonl(out, "beam_rows"))], pcfg, skipped, extra
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.build_tfrecords",
        description="Convert DICOM studies to windowed-geometry TFRecords "
        "(schema: radnet_tf.records.schema).",
        epilog="Beam pipeline options (e.g. --project, --region, --temp_location) go after '--'.",
    )
    parser.add_argument("--dicom-root", help="folder with one sub-folder per study")
    parser.add_argument(
        "--rsna-root", help="RSNA-2019 flat image folder (stage_2_train/ or stage_2_train_images/)"
    )
    parser.add_argument(
        "--rsna-labels", help="RSNA label CSV (ID,Label; six rows per image), with --rsna-root"
    )
    parser.add_argument(
        "--cq500-root", help="CQ500 folder: CQ500-CT-<n>.zip files and/or unpacked study folders"
    )
    parser.add_argument("--cq500-reads", help="CQ500 reads.csv, with --cq500-root")
    parser.add_argument(
        "--nifti-volumes",
        help="folder of CT volumes <id>.nii[.gz] (PhysioNet CT-ICH, INSTANCE, BHSD)",
    )
    parser.add_argument(
        "--nifti-masks",
        help="folder of masks <id>.nii[.gz] on the volumes' grids (binary or classes 1-5)",
    )
    parser.add_argument(
        "--nifti-slice-labels",
        help="PhysioNet-style slice CSV (PatientNumber, SliceNumber, subtype columns)",
    )
    parser.add_argument(
        "--nifti-mask-kind",
        default="auto",
        help="auto (class labels when a mask holds a value above 1), binary or classes",
    )
    parser.add_argument(
        "--reads-label",
        default="majority",
        help="CQ500 label rule: majority (default), any-reader, R1, R2 or R3",
    )
    parser.add_argument(
        "--series-policy",
        default="",
        help="which series of a multi-series study: 'thickness=MIN-MAX,exclude=REGEX' (default: "
        "soft-tissue kernels, 0.5-5.5 mm, most slices; see radnet_tf.io.dicom.SeriesPolicy) or "
        "'any'",
    )
    parser.add_argument("--labels", help="CSV with study_id,label (with --dicom-root)")
    parser.add_argument(
        "--images-csv",
        help="pre-windowed 2D images: CSV with image,label[,mask,study_id,slice_index]",
    )
    parser.add_argument(
        "--images-root", default=".", help="folder the --images-csv paths are relative to"
    )
    parser.add_argument(
        "--image-window",
        type=float,
        nargs=2,
        metavar=("CENTER", "WIDTH"),
        help="the HU window the images were rendered with (required with --images-csv)",
    )
    parser.add_argument("--image-spacing", type=float, help="mm per image pixel, if known")
    parser.add_argument(
        "--slice-labels", help="CSV with study_id,sop_instance_uid,label[,EDH,IPH,IVH,SAH,SDH]"
    )
    parser.add_argument("--masks", help="folder of <study_id>.npz masks (mask, sop_instance_uids)")
    parser.add_argument("--out", required=True, help="output folder (a local path)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--config", help="YAML config giving the geometry (input_size, out_spacing, fov_mm)"
    )
    parser.add_argument("--runner", default="local", help="'local' (default) or a Beam runner name")
    parser.add_argument("--no-progress", action="store_true")
    return add_verbose(parser)


def _check_args(args):
    """One clear line for a bad combination of flags, before any work."""
    if "://" in args.out:
        raise UserError(
            "--out must be a local folder (remote paths such as gs:// are not supported). "
            f"Received: {args.out}"
        )
    if args.shards < 1 or args.workers < 1:
        raise UserError(
            f"--shards and --workers must be >= 1. Received: --shards {args.shards} --workers "
            f"{args.workers}"
        )
    names = ("dicom_root", "images_csv", "rsna_root", "cq500_root", "nifti_volumes")
    if sum(bool(getattr(args, name)) for name in names) > 1:
        raise UserError(
            "give one input: --dicom-root, --images-csv, --rsna-root, --cq500-root or "
            "--nifti-volumes"
        )
    if args.series_policy:
        from radnet_tf.io.dicom import SeriesPolicy

        SeriesPolicy.parse(args.series_policy)  # a bad policy fails here, not in every worker
    if args.cq500_root and not args.cq500_reads:
        raise UserError("--cq500-root needs --cq500-reads (reads.csv)")
    if args.rsna_root and not args.rsna_labels:
        raise UserError(
            "--rsna-root needs --rsna-labels (the ID,Label CSV); unlabelled images are not "
            "converted"
        )
    if args.images_csv and not args.image_window:
        raise UserError(
            "--images-csv needs --image-window CENTER WIDTH (the window the images were "
            "rendered with)"
        )
    other_input = any(getattr(args, name) for name in names[1:])
    if not other_input and not (args.dicom_root and args.labels):
        raise UserError(
            "give --dicom-root and --labels (or --images-csv, or --rsna-root and --rsna-labels)"
        )


def _tasks(args):
    """(study tasks or None when Beam indexes RSNA itself, skipped rows, manifest extras)
    of the input the flags name."""
    from radnet_tf.records.convert import folder_tasks, image_tasks

    if args.nifti_volumes:
        from radnet_tf.io.nifti import nifti_tasks

        tasks, skipped = nifti_tasks(
            args.nifti_volumes, args.nifti_masks, args.nifti_slice_labels, args.nifti_mask_kind
        )
        return tasks, skipped, None
    if args.cq500_root:
        from radnet_tf.datasets import cq500

        reads = cq500.load_reads(args.cq500_reads, args.reads_label)
        tasks, skipped = cq500.study_tasks(args.cq500_root, reads, args.series_policy)
        return tasks, skipped, {"labels": f"CQ500 reads, rule {args.reads_label}"}
    if args.rsna_root:
        return _rsna_tasks(args)
    if args.images_csv:
        tasks = image_tasks(
            args.images_csv, args.images_root, args.image_window, args.image_spacing
        )
        return tasks, [], None
    tasks, skipped = folder_tasks(args.dicom_root, args.labels, args.slice_labels, args.masks)
    if args.series_policy:
        tasks = [dataclasses.replace(t, series_policy=args.series_policy) for t in tasks]
    return tasks, skipped, None


def _rsna_tasks(args):
    """RSNA-2019 as shipped: the header index and the series tasks (local runner only; on
    Beam the index is built inside the pipeline)."""
    from radnet_tf.datasets import rsna

    if args.runner != "local":
        return None, [], None
    labels, duplicates = rsna.load_labels(args.rsna_labels)
    report = rsna.RsnaReport(duplicate_label_rows=duplicates)
    index = rsna.index_headers(
        args.rsna_root, args.out, workers=args.workers, progress=not args.no_progress
    )
    tasks, skipped = rsna.series_tasks(args.rsna_root, index, labels, report)
    table_path = rsna.write_index_table(index, args.out)
    return tasks, skipped, {"rsna": report.to_dict(), "index": Path(table_path).name}


def _run(args, tasks, skipped, pcfg, manifest_extra, beam_args):
    """Runs the conversion on the chosen runner; returns (summary, manifest extras)."""
    from radnet_tf.records.convert import run_local

    options = ["--runner", args.runner] + beam_args
    if args.rsna_root and args.runner != "local":
        from radnet_tf.datasets import rsna

        labels, duplicates = rsna.load_labels(args.rsna_labels)
        _, summary = run_beam_rsna(
            args.rsna_root, labels, duplicates, args.out, args.shards, pcfg, options
        )
        return summary, {"rsna": summary["rsna"]}
    if args.runner == "local":
        _, summary = run_local(tasks, skipped, args.out, args.shards, args.workers, pcfg,
                               not args.no_progress, manifest_extra=manifest_extra)
        return summary, manifest_extra
    _, summary = run_beam(tasks, skipped, args.out, args.shards, pcfg, options, manifest_extra)
    return summary, manifest_extra


@cli_main
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, beam_args = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    _check_args(args)
    from radnet_tf.config import load_config

    pcfg = load_config(args.config).preprocess_config()
    tasks, skipped, manifest_extra = _tasks(args)
    if tasks is not None and not tasks:
        raise UserError("no study to convert")
    start = time.perf_counter()
    summary, manifest_extra = _run(args, tasks, skipped, pcfg, manifest_extra, beam_args)
    elapsed = time.perf_counter() - start
    say(
        f"wrote {summary['studies_written']} studies ({summary['slices']} slices, "
        f"{summary['positives']} positive) to {args.out} in {elapsed:.1f} s; "
        f"skipped {summary['studies_skipped']} (see manifest.csv)"
    )
    if summary.get("rendered_windows"):
        say(
            f"note: rendered with window {', '.join(summary['rendered_windows'])}: the records "
            "hold only the HU inside it; models whose windows reach outside it are refused "
            "(train with --config finetune_brain, or init_from=builtin-brain)"
        )
    if summary.get("invalid_uid_values"):
        say(uid_line(summary["invalid_uid_values"], "the converted series"))
    if manifest_extra and "rsna" in manifest_extra:
        say(
            "RSNA data set defects handled: "
            + ", ".join(f"{k} {v}" for k, v in manifest_extra["rsna"].items())
        )


if __name__ == "__main__":
    main()
