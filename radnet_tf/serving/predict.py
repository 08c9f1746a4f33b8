"""`python -m radnet_tf.predict DICOM_DIR [--model saved_models/radnet/N] [--out DIR]`

A quick look at one study on CPU: reads the series with the project's reader, runs the
exported SavedModel's `predict_hu` signature (preprocessing in-graph), prints JSON (CT
verdict, score, per-slice probabilities, longest run, estimated hemorrhage volume, series
geometry, timings) and, with --out, writes `overview.png` (slices in brain window with mask
contours and probabilities, plus the probability strip) and `prediction.json`.

A single DICOM file (or a one-slice series) works: the CT rule is then applied with
K = the slice count, and the JSON's `rule` says so. A model trained on the synthetic
phantom prints a one-line warning when applied to real DICOM.

Lesion mask (the volume, the overview's contours and the DICOM SEG): the fused mask at or
above the export's mask threshold, on slices whose probability is at or above the slice
threshold, opened in-plane when the export says `mask_opening`
(`radnet_tf.decision.lesion_mask_np`; exports from before the mask threshold: 0.5, no
opening; `loader.lesion_rule_of`). Hemorrhage volume: lesion-mask voxels on the model grid
x out_spacing^2 x slice spacing, in mL. The JSON's `model.held_out` repeats what the export's
held-out
studies measured; when their mask Dice is below UNRELIABLE_MASK_DICE (0.1) a one-line
warning says the volume and segmentation are not reliable. No patient identifier is
printed or written: the study is named by its pseudonymous key.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from radnet_tf import atomic
from radnet_tf.cli import add_verbose, cli_main, say
from radnet_tf.contract import (
    CT_POSITIVE,
    CT_SCORE,
    CT_SUBTYPE_SCORES,
    CT_SUBTYPES,
    LESION_MASK,
    LONGEST_POSITIVE_RUN,
    MASKS,
    MIN_RUN_APPLIED,
    SLICE_PROBABILITIES,
    SUBTYPE_LESION_MASKS,
    SUBTYPE_MASKS,
    SUBTYPE_PROBABILITIES,
    SUBTYPES,
)
from radnet_tf.errors import UserError


SUBTYPE_COLOURS = (
    "tab:orange",
    "tab:red",
    "tab:purple",
    "tab:green",
    "tab:cyan",
)  # EDH, IPH, IVH, SAH, SDH
# Below this held-out mask Dice, predict warns that its volume and segmentation are not reliable.
UNRELIABLE_MASK_DICE = 0.1


def predict_series(series, saved, meta):
    """Runs `predict_hu` on a CTSeries; returns (result dict, outputs as numpy, timings)."""
    import tensorflow as tf

    from radnet_tf.decision import ct_decision_np

    t0 = time.perf_counter()
    out = saved.signatures["predict_hu"](
        hu=tf.constant(series.hu), pixel_spacing=tf.constant(series.pixel_spacing, tf.float32)
    )
    out = {k: v.numpy() for k, v in out.items()}
    model_s = time.perf_counter() - t0
    probs = out[SLICE_PROBABILITIES]
    check = ct_decision_np(probs, meta["slice_threshold"], meta["ct_min_run"])
    if check["ct_positive"] != bool(out[CT_POSITIVE]):  # one rule, two implementations
        raise RuntimeError(f"CT rule disagrees between the export and radnet_tf.decision: {check}")
    lesion_masks(out, meta)
    spacing = meta["out_spacing_mm"]
    slice_mm = series.slice_spacing if np.isfinite(series.slice_spacing) else series.slice_thickness
    slice_mm = float(slice_mm) if np.isfinite(slice_mm) else 0.0
    volume_ml = float(out[LESION_MASK].sum() * spacing * spacing * slice_mm / 1000.0)
    result = {
        "study_key": series.study_key,
        "ct_positive": bool(out[CT_POSITIVE]),
        "ct_score": round(float(out[CT_SCORE]), 4),
        "longest_positive_run": int(out[LONGEST_POSITIVE_RUN]),
        "min_run_applied": int(out.get(MIN_RUN_APPLIED, check["min_run_applied"])),
        "rule": rule_text(
            meta["ct_min_run"], meta["slice_threshold"], len(probs), calibrated_for(meta)
        ),
        "mask_rule": mask_rule_text(meta),
        SLICE_PROBABILITIES: [round(float(p), 4) for p in probs],
        "hemorrhage_volume_ml": round(volume_ml, 2) if slice_mm else None,
        "series": series.summary(),
        "model": {
            "name": meta["model"],
            "version": meta["version"],
            "trained_on": meta.get("trained_on", "unknown"),
            "held_out": meta.get("held_out"),
        },
    }
    if SUBTYPE_PROBABILITIES in out:  # a model trained with targets: subtypes
        thresholds = meta.get("subtype_thresholds") or [meta["slice_threshold"]] * len(SUBTYPES)
        result["subtypes"] = {
            name: {
                "ct_positive": bool(out[CT_SUBTYPES][j]),
                "ct_score": round(float(out[CT_SUBTYPE_SCORES][j]), 4),
                "threshold": thresholds[j],
                "slices": [
                    int(i)
                    for i in np.flatnonzero(out[SUBTYPE_PROBABILITIES][:, j] >= thresholds[j])
                ],
                "volume_ml": round(
                    float(
                        out[SUBTYPE_LESION_MASKS][..., j].sum()
                        * spacing
                        * spacing
                        * slice_mm
                        / 1000.0
                    ),
                    2,
                )
                if slice_mm and SUBTYPE_LESION_MASKS in out
                else None,
            }
            for j, name in enumerate(SUBTYPES)
        }
    return result, out, model_s


def mask_rule_text(meta) -> str:
    """The lesion-mask rule of an export, in words."""
    from radnet_tf.serving.loader import lesion_rule_of

    m, opening = lesion_rule_of(meta)
    return f"mask >= {m:g} on slices with probability >= {meta['slice_threshold']}" + (
        ", opened in-plane (3 x 3)" if opening else ""
    )


def lesion_masks(out, meta):
    """Adds LESION_MASK (and SUBTYPE_LESION_MASKS for subtype models) to the served outputs
    `out` with `radnet_tf.decision.lesion_mask_np` at the export's thresholds; where the
    export serves them too, the two must agree (one rule, two implementations).

    Raises:
      RuntimeError: the export's lesion mask disagrees with radnet_tf.decision.
    """
    from radnet_tf.decision import lesion_mask_np
    from radnet_tf.serving.loader import lesion_rule_of

    m, opening = lesion_rule_of(meta)
    computed = {
        LESION_MASK: lesion_mask_np(
            out[MASKS], out[SLICE_PROBABILITIES], m, meta["slice_threshold"], opening
        )
    }
    if SUBTYPE_MASKS in out:
        thresholds = meta.get("subtype_thresholds") or [meta["slice_threshold"]] * len(SUBTYPES)
        computed[SUBTYPE_LESION_MASKS] = lesion_mask_np(
            out[SUBTYPE_MASKS], out[SUBTYPE_PROBABILITIES], m, thresholds, opening
        )
    for name, mask in computed.items():
        if name in out and not np.array_equal(out[name], mask):
            raise RuntimeError(
                f"{name} disagrees between the export and radnet_tf.decision "
                f"({int(np.count_nonzero(out[name] != mask))} pixels)"
            )
        out[name] = mask


def write_seg(path, dicom_dir, series, out, meta):
    """Writes the DICOM SEG for `predict --seg`; returns {"path", "segments"} or a reason."""
    import pydicom

    from radnet_tf.io.seg import unsupported_sources, write_segmentation
    from radnet_tf.serving.loader import brain_window_config

    reason = unsupported_sources(series)
    if reason:  # the prediction itself is still written
        from radnet_tf.cli import say

        say(f"warning: no segmentation written: {reason}", err=True)
        return {"path": None, "segments": [], "note": f"no segmentation written: {reason}"}
    root = Path(dicom_dir)
    files = [root] if root.is_file() else [p for p in sorted(root.rglob("*")) if p.is_file()]
    wanted, source_files = set(series.sop_instance_uids), {}
    for f in files:
        try:
            uid = str(
                pydicom.dcmread(
                    f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
                ).SOPInstanceUID
            )
        except Exception:  # not DICOM: the reader skipped it too
            continue
        if uid in wanted:
            source_files[uid] = f
    if SUBTYPE_LESION_MASKS in out:
        masks, names = out[SUBTYPE_LESION_MASKS], list(SUBTYPES)
    else:
        masks, names = out[LESION_MASK][..., None], ["Hemorrhage"]
    pcfg = brain_window_config(meta)
    segments = write_segmentation(path, series, source_files, masks, names, pcfg, meta)
    if not segments:
        return {"path": None, "segments": [], "note": "no mask voxel: no segmentation written"}
    return {"path": str(path), "segments": segments}


def calibrated_for(meta):
    """The series length (slices) the export's threshold was calibrated for, or None (the
    training studies' own length, or an export from before `calibration_series_slices`)."""
    n = (meta.get("config") or {}).get("calibration_series_slices") or 0
    return int(n) or None


def rule_text(min_run, threshold, num_slices, calibrated_slices=None) -> str:
    """The CT rule as applied to a study of `num_slices` slices, in words (with the series
    length the threshold was calibrated for, when it was)."""
    from radnet_tf.decision import applied_min_run

    k = applied_min_run(num_slices, min_run)
    text = f">= {k} consecutive slices with probability >= {threshold}"
    if k < min_run:
        text += f" (the model's K = {min_run}, shortened to the study's {num_slices} slice(s))"
    if calibrated_slices:
        text += (
            f"; threshold calibrated for {calibrated_slices}-slice series, "
            f"this one has {num_slices}"
        )
    return text


def overview_png(path, out, meta, probs, threshold, max_slices=48):
    """Writes the slice grid (brain window, mask contours, probabilities) and the strip."""
    from radnet_tf.decision import applied_min_run, longest_run_np
    from radnet_tf.plotting import grid_indices, pyplot, save_figure

    plt = pyplot()
    slices = out["slices"]
    s = len(probs)
    idx, cols, rows = grid_indices(s, max_slices)
    panel = max(2.0, 6.0 / cols)  # inches per slice: a one- or two-slice study stays readable
    fig = plt.figure(figsize=(panel * cols, panel * rows + 1.6))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1] * rows + [0.8])
    for k, i in enumerate(idx):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        ax.imshow(slices[i], cmap="gray", vmin=0, vmax=1)
        if SUBTYPE_LESION_MASKS in out:  # one colour per subtype
            for j, colour in enumerate(SUBTYPE_COLOURS):
                if out[SUBTYPE_LESION_MASKS][i, ..., j].any():
                    ax.contour(
                        out[SUBTYPE_LESION_MASKS][i, ..., j].astype(np.float32),
                        levels=[0.5],
                        colors=colour,
                        linewidths=0.8,
                    )
        elif out[LESION_MASK][i].any():
            ax.contour(
                out[LESION_MASK][i].astype(np.float32), levels=[0.5], colors="red", linewidths=0.8
            )
        ax.set_title(
            f"{i}: p={probs[i]:.2f}", fontsize=8, color="red" if probs[i] >= threshold else "black"
        )
        ax.axis("off")
    ax = fig.add_subplot(grid[rows, :])
    ax.bar(np.arange(s), probs, color=["tab:red" if p >= threshold else "tab:blue" for p in probs])
    ax.axhline(threshold, color="k", lw=0.8, ls="--")
    ax.set_xlim(-0.5, s - 0.5)
    ax.set_ylim(0, 1)
    ax.set_xlabel("slice (inferior -> superior)")
    ax.set_ylabel("p(hemorrhage)")
    ax.set_title(
        f"longest run {longest_run_np(np.asarray(probs) >= threshold)} "
        f"(positive if >= {applied_min_run(s, meta['ct_min_run'])})",
        fontsize=9,
    )
    if SUBTYPE_MASKS in out:
        from matplotlib.lines import Line2D

        fig.legend(
            [Line2D([0], [0], color=c) for c in SUBTYPE_COLOURS],
            list(SUBTYPES),
            loc="upper right",
            ncol=len(SUBTYPES),
            fontsize=8,
            frameon=False,
        )
    fig.tight_layout()
    save_figure(fig, path)


def _load_export(path):
    """(loaded SavedModel, its metadata); a Keras model dir or file is refused with one line."""
    from radnet_tf.serving import loader

    p = loader.resolve(path)
    if not loader.is_saved_model(p) and ((p / "run_info.json").exists() or p.suffix == ".keras"):
        raise UserError(
            f"predict needs a SavedModel export; export {path} first: radnet-export {path}"
        )
    saved, meta, _ = loader.load_saved_model(p)
    return saved, meta


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m radnet_tf.predict", description="Predict one DICOM study."
    )
    add_verbose(parser)
    parser.add_argument("dicom_dir", help="folder of one study, or a single DICOM file")
    parser.add_argument(
        "--model",
        default="builtin",
        help="SavedModel dir (a version, or its parent: latest); default: the built-in model "
        "shipped in the package (trained on the synthetic phantom only)",
    )
    parser.add_argument("--out", help="folder for overview.png and prediction.json")
    parser.add_argument(
        "--seg",
        metavar="OUT.dcm",
        help="also write a DICOM Segmentation of the masks (highdicom): "
        "one segment per subtype present (subtype models) or one 'Hemorrhage' segment",
    )
    parser.add_argument("--tilt", choices=["correct", "reject"], default="correct")
    parser.add_argument(
        "--min-slices", type=int, default=1, help="fewest slices accepted (default 1)"
    )
    return parser


def _warn_about(meta):
    """Warning lines (stderr) for a model whose calls or masks are not to be relied on."""
    trained_on = str(meta.get("trained_on", ""))
    if trained_on.startswith("synthetic phantom") and "records:" not in trained_on:
        say(
            "warning: this model was trained on the synthetic phantom only; its calls on real CT "
            "are not validated",
            err=True,
        )
    dice = (meta.get("held_out") or {}).get("mask_dice")
    if dice is not None and dice < UNRELIABLE_MASK_DICE:
        say(
            f"warning: this model's masks scored Dice {dice:.3f} on its held-out studies; the "
            "hemorrhage volume and segmentation are not reliable",
            err=True,
        )


def _write_overview(folder, series, out, meta):
    """overview.png in `folder`: the brain-window slices with the masks and probabilities."""
    from radnet_tf import preprocess
    from radnet_tf.serving.loader import brain_window_config

    cfg_pre = brain_window_config(meta)
    out["slices"] = preprocess.preprocess_study(series.hu, series.pixel_spacing, cfg_pre).numpy()[
        ..., 0
    ]
    folder.mkdir(parents=True, exist_ok=True)
    overview_png(
        folder / "overview.png", out, meta, out[SLICE_PROBABILITIES], meta["slice_threshold"]
    )


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.min_slices < 1:
        raise UserError(f"--min-slices must be >= 1. Received: {args.min_slices}")
    from radnet_tf.io.dicom import read_series

    timings = {}
    t0 = time.perf_counter()
    saved, meta = _load_export(args.model)
    timings["load_model_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    series = read_series(args.dicom_dir, tilt=args.tilt, min_slices=args.min_slices)
    timings["read_s"] = time.perf_counter() - t0
    _warn_about(meta)
    result, out, model_s = predict_series(series, saved, meta)
    timings["model_s"] = model_s  # includes in-graph preprocessing
    if args.out:
        t0 = time.perf_counter()
        _write_overview(Path(args.out), series, out, meta)
        timings["write_s"] = time.perf_counter() - t0
    if args.seg:
        t0 = time.perf_counter()
        result["segmentation"] = write_seg(args.seg, args.dicom_dir, series, out, meta)
        timings["seg_s"] = time.perf_counter() - t0
    result["timings"] = {k: round(v, 3) for k, v in timings.items()}
    text = json.dumps(result, indent=2)
    if args.out:
        atomic.write_text(Path(args.out) / "prediction.json", text)
    print(text)
    return result


if __name__ == "__main__":
    main()
