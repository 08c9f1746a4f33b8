"""The built-in default's data: a cached synthetic cohort and its records in `work_dir`.

    work_dir/synth/                      the cohort (radnet_tf.phantom.generate layout) + spec.json
    work_dir/records-<N>px-<mm>mm/       its records on the model grid + source.json

Both are rebuilt when what they were made from changes (cohort size, seed, generator
version; grid geometry) and reused otherwise; a killed run resumes. Records hold HU on the
model grid, so only the geometry (not the windows) keys them.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from radnet_tf import atomic
from radnet_tf.cli import say


def prepare_synthetic(cfg, progress=True) -> str:
    """Generates (cached) the synthetic cohort of `cfg` and its records; returns the
    records folder (str)."""
    from radnet_tf.phantom import generate as synth
    from radnet_tf.records.convert import SOURCE_FILE, build_source, folder_tasks, run_local

    work = Path(cfg.work_dir)
    cohort = work / "synth"
    spec = {
        "studies": cfg.synth_studies,
        "slices": cfg.synth_slices,
        "matrix": cfg.synth_matrix,
        "seed": cfg.synth_seed,
        "generator": synth.GENERATOR_VERSION,
    }
    spec_path, partial = cohort / "spec.json", cohort / "spec.partial.json"

    def matches(path, expected):
        return path.exists() and json.loads(path.read_text()) == expected

    if not matches(spec_path, spec):
        if cohort.exists() and not matches(partial, spec):
            shutil.rmtree(cohort)  # a cohort of another spec or generator: never mix studies
        cohort.mkdir(parents=True, exist_ok=True)
        atomic.write_text(partial, json.dumps(spec))  # a killed run with the same spec resumes
        say(f"generating {cfg.synth_studies} synthetic studies in {cohort}")
        synth.generate_cohort(
            cohort,
            cfg.synth_studies,
            cfg.synth_seed,
            synth.SynthConfig(matrix=cfg.synth_matrix, num_slices=cfg.synth_slices),
            progress=progress,
            workers=min(2, os.cpu_count() or 1),
        )
        os.replace(partial, spec_path)  # the spec file's final rename marks the cohort complete
    pcfg = cfg.preprocess_config()
    rec_dir = work / f"records-{pcfg.out_size}px-{pcfg.out_spacing:g}mm"
    tasks, skipped = folder_tasks(
        cohort / "dicom", cohort / "labels.csv", cohort / "slice_labels.csv", cohort / "masks"
    )
    source = build_source(pcfg, tasks, {"cohort": spec})
    if (rec_dir / "manifest.json").exists() and matches(rec_dir / SOURCE_FILE, source):
        return str(rec_dir)
    if rec_dir.exists() and not matches(rec_dir / SOURCE_FILE, source):
        shutil.rmtree(rec_dir)  # records of another cohort or geometry: a cache, rebuilt
    say(f"converting to TFRecords in {rec_dir}")
    workers = min(2, os.cpu_count() or 1)
    run_local(
        tasks, skipped, rec_dir, 4, workers, pcfg, progress=progress, source_extra={"cohort": spec}
    )
    return str(rec_dir)
