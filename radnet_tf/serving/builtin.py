"""The built-in models, shipped inside the package as SavedModels (`loader.BUILTINS`):

  * `builtin`: the `make run` model (brain and subdural windows), for DICOM in HU;
  * `builtin-brain`: the brain window only, for images rendered in a brain window (8-bit
    PNG/JPEG collections) as well as DICOM: `builtin` fine-tuned on the phantom with
    its subdural channel dropped (`configs/brain_window.yaml`).

    radnet-predict DICOM_DIR                      # uses `builtin` (the default)
    python -m radnet_tf.serving.builtin EXPORT [--name builtin-brain] [--commit C] [--gates G]

The second command regenerates one from an export: the export is copied without its
warm-up requests into its folder under `radnet_tf/serving/builtin/`, and `card.json` beside
it records where it came from (the commit, the gates' output when given) and its slice
probabilities on a fixed phantom study (`reference_study`), which a test compares with what
the shipped model answers. After a phantom generator change, `--refresh-reference`
records the shipped model's answers on the new reference study (the model is unchanged).

They are trained on the synthetic phantom only (MODEL_CARD.md): starting points for
fine-tuning and a demonstration, not validated hemorrhage detectors.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from radnet_tf import atomic
from radnet_tf.cli import add_verbose, cli_main, say
from radnet_tf.errors import UserError
from radnet_tf.phantom.generate import GENERATOR_VERSION
from radnet_tf.serving.loader import BUILTIN, BUILTINS, builtin_model_path, read_metadata

REFERENCE_SEED = (2026, 0)  # the phantom study the card records outputs for


def card(name=BUILTIN) -> dict:
    """A shipped model's card.json: provenance, gate figures, reference outputs."""
    return json.loads((builtin_model_path(name).parent / "card.json").read_text())


def reference_study():
    """(hu int16 [S, H, W], pixel_spacing float32 [2]) of a fixed small phantom study with
    a bleed: 16 slices of 256 x 256, drawn from default_rng(REFERENCE_SEED)."""
    import numpy as np

    from radnet_tf.phantom.generate import SynthConfig, make_phantom

    cfg = SynthConfig(matrix=256, num_slices=16, tilt_fraction=0.0)
    phantom = make_phantom(np.random.default_rng(REFERENCE_SEED), cfg, positive=True)
    return phantom.hu, np.array([phantom.pixel_spacing] * 2, np.float32)


def slice_probabilities(saved) -> list:
    """The model's slice probabilities on `reference_study()` (predict_hu signature)."""
    import tensorflow as tf

    hu, spacing = reference_study()
    out = saved.signatures["predict_hu"](hu=tf.constant(hu), pixel_spacing=tf.constant(spacing))
    return [round(float(p), 6) for p in out["slice_probabilities"].numpy()]


def install(export, commit="", gates=None, name=BUILTIN, made_by=None) -> Path:
    """Copies `export` (a SavedModel version folder) into the package as the built-in
    model `name`, without warm-up requests, and writes its card. Returns the model folder."""
    import tensorflow as tf

    export = Path(export)
    meta = read_metadata(export)
    target = builtin_model_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(target) as tmp:
        shutil.copytree(export, tmp, ignore=shutil.ignore_patterns("assets.extra"))
    info = {
        "name": name,
        "made_by": made_by
        or "make run (the built-in default config), then python -m "
        "radnet_tf.serving.builtin saved_models/radnet/<version>",
        "commit": commit,
        "trained_on": meta.get("trained_on"),
        "held_out": meta.get("held_out"),
        "real_ct_gates": gates or [],
        "reference_study": {
            "seed": list(REFERENCE_SEED),
            "matrix": 256,
            "slices": 16,
            "generator": GENERATOR_VERSION,
        },
        "reference_slice_probabilities": slice_probabilities(tf.saved_model.load(str(target))),
    }
    atomic.write_text(target.parent / "card.json", json.dumps(info, indent=2) + "\n")
    return target


def refresh_reference(name=BUILTIN) -> Path:
    """Rewrites a shipped model's reference study and answers in its card (after a phantom
    generator change; the model itself is kept). Returns the card's path."""
    import tensorflow as tf

    info = card(name)
    info["reference_study"]["generator"] = GENERATOR_VERSION
    saved = tf.saved_model.load(str(builtin_model_path(name)))
    info["reference_slice_probabilities"] = slice_probabilities(saved)
    path = builtin_model_path(name).parent / "card.json"
    atomic.write_text(path, json.dumps(info, indent=2) + "\n")
    return path


@cli_main
def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m radnet_tf.serving.builtin",
        description="Make an export of `make run` the package's built-in model.",
    )
    add_verbose(parser)
    parser.add_argument(
        "export", nargs="?", help="SavedModel version folder (saved_models/radnet/N)"
    )
    parser.add_argument(
        "--refresh-reference",
        action="store_true",
        help="only record the shipped model's answers on the current reference study",
    )
    parser.add_argument("--name", default=BUILTIN, choices=sorted(BUILTINS))
    parser.add_argument("--made-by", help="the command that trained it (for the card)")
    parser.add_argument("--commit", default="", help="the commit that trained it")
    parser.add_argument("--gates", help="JSON lines of benchmarks/real_ct_gates.py on it")
    args = parser.parse_args(argv)
    if args.refresh_reference:
        say(f"reference answers of {args.name} written to {refresh_reference(args.name)}")
        return
    if not args.export or not (Path(args.export) / "saved_model.pb").exists():
        raise UserError(f"not a SavedModel version folder: {args.export}")
    gates = None
    if args.gates:
        lines = Path(args.gates).read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.startswith("{")]
        gates = [{k: v for k, v in row.items() if k != "model"} for row in rows]
    path = install(args.export, args.commit, gates, args.name, args.made_by)
    say(f"built-in model {args.name} written to {path}")


if __name__ == "__main__":
    main()
