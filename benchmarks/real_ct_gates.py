"""The real-CT gates of the built-in model (issue "A head phantom real CT cannot tell apart").

    python benchmarks/real_ct_gates.py --model saved_models/radnet [--shared ../shared/data]
    [--hu-offsets=-10,-5,5]
        [--figure benchmarks/results/real_ct_gate1.png]

Gate 1, real normal-looking series (../shared ge-head-tilt, CQ500-CT-0): the CT verdict
must be negative and at most 10% of the slices positive.
Gate 2, real ICH slices (CQ500-CT-1/CT000000.dcm, CQ500-CT-310/693_UNCR.dcm, every reader:
ICH): the slice probability must reach the model's threshold, and the strongest point of
the predicted mask, mapped back to the source pixels, must fall inside a BHX box of that
slice (bhx_boxes.csv, pixel coordinates of the original slice). Also reported, outside
the gates: the served lesion mask's volume on the normal series and, on the ICH slices,
its pixels and the share of them inside a box. A third normal head, the Visible Human
male (../shared vhp-male-head, a post-mortem scan), is reported the same way as gate 1 but
counts for nothing (`"probe": "normal_not_a_gate"`; `--also-normal` names others).
Prints one JSON line per case and a summary line; exits 0 whatever the outcome (it
measures, it does not gate CI). --figure also draws, for each gate-1 series, up to six of
its positive slices (evenly spread over the series) at the model's input with the
served lesion mask: where the model errs on a normal head.
"""

import argparse
import ast
import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NORMAL = ("ge-head-tilt", "cq500/CQ500-CT-0")
ICH = ("cq500/CQ500-CT-1/CT000000.dcm", "cq500/CQ500-CT-310/693_UNCR.dcm")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="saved_models/radnet")
    parser.add_argument(
        "--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument(
        "--hu-offsets",
        default="",
        help="also report gate 1's positive-slice fraction with every HU above -200 shifted by "
        "these offsets (comma-separated, e.g. -10,-5,5): how much the model leans on absolute "
        "brightness (scanners' calibration differs by a few HU)",
    )
    parser.add_argument(
        "--figure", default="", help="PNG of the gate-1 series' positive slices with their masks"
    )
    parser.add_argument(
        "--also-normal",
        default="vhp-male-head",
        help="comma-separated normal series under --shared reported like gate 1 but not counted "
        "(skipped when absent; '' for none)",
    )
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd

    from radnet_tf import preprocess
    from radnet_tf.contract import LESION_MASK, MASKS
    from radnet_tf.io.dicom import read_series
    from radnet_tf.io.seg import to_source_grid
    from radnet_tf.serving.predict import predict_series
    from radnet_tf.serving.loader import brain_window_config, load_saved_model

    shared = Path(args.shared)
    saved, meta, path = load_saved_model(args.model)
    threshold = meta["slice_threshold"]
    pcfg = brain_window_config(meta)
    passed, shown = [], []
    extra = [
        x.strip()
        for x in args.also_normal.split(",")
        if x.strip() and (shared / x.strip()).exists()
    ]
    for name in [*NORMAL, *extra]:
        gate = name in NORMAL  # the others are reported the same way but not counted
        series = read_series(shared / name)
        result, out, _ = predict_series(series, saved, meta)
        probs = np.asarray(result["slice_probabilities"])
        fraction = float(np.mean(probs >= threshold))
        line = {"gate": 1} if gate else {"probe": "normal_not_a_gate"}
        line.update(
            series=name,
            slices=series.num_slices,
            ct_positive=result["ct_positive"],
            positive_slice_fraction=round(fraction, 3),
            lesion_volume_ml=result["hemorrhage_volume_ml"],
        )
        if gate:
            line["passes"] = (not result["ct_positive"]) and fraction <= 0.10
            passed.append(line["passes"])
            if args.figure:
                shown.append((name, series, probs, out[LESION_MASK]))
        print(json.dumps(line), flush=True)
        for offset in [int(x) for x in args.hu_offsets.split(",") if x.strip()] if gate else []:
            shifted = dataclasses.replace(
                series,
                hu=np.where(
                    series.hu > -200, series.hu.astype(np.int32) + offset, series.hu
                ).astype(np.int16),
            )
            probs = np.asarray(predict_series(shifted, saved, meta)[0]["slice_probabilities"])
            print(
                json.dumps(
                    {
                        "probe": "hu_offset",
                        "series": name,
                        "offset_hu": offset,
                        "positive_slice_fraction": round(float(np.mean(probs >= threshold)), 3),
                    }
                ),
                flush=True,
            )
    boxes = pd.read_csv(shared / "cq500" / "bhx_boxes.csv")
    for name in ICH:
        series = read_series(shared / name, min_slices=1)
        result, out, _ = predict_series(series, saved, meta)
        prob = float(result["slice_probabilities"][0])
        center = preprocess.head_center_np(series.hu)
        # strongest point of the fused mask, on the source pixels (nearest model pixel)
        fused = out[MASKS]
        best = np.unravel_index(int(np.argmax(fused)), fused.shape)
        marker = np.zeros(fused.shape, bool)
        marker[best] = True
        source = to_source_grid(marker, series, pcfg, center)[0]
        ys, xs = np.nonzero(source)
        # None when the peak lies in the model's padding, outside the source slice
        peak = [round(float(xs.mean()), 1), round(float(ys.mean()), 1)] if ys.size else None
        slice_boxes = [
            ast.literal_eval(b)
            for b in boxes.box[boxes.SOPInstanceUID == series.sop_instance_uids[0]]
        ]
        inside = peak is not None and any(
            b["x"] <= peak[0] <= b["x"] + b["width"] and b["y"] <= peak[1] <= b["y"] + b["height"]
            for b in slice_boxes
        )
        ok = prob >= threshold and inside
        passed.append(ok)
        # the served lesion mask (what predict's volume and --seg deliver) on the source pixels:
        # how much of it lies inside a reader's box (measured, not part of the gate)
        lesion = to_source_grid(out[LESION_MASK], series, pcfg, center)[0]
        in_box = np.zeros(lesion.shape, bool)
        for b in slice_boxes:
            in_box[
                int(b["y"]) : int(np.ceil(b["y"] + b["height"])) + 1,
                int(b["x"]) : int(np.ceil(b["x"] + b["width"])) + 1,
            ] = True
        print(
            json.dumps(
                {
                    "gate": 2,
                    "slice": name,
                    "probability": round(prob, 4),
                    "threshold": round(threshold, 4),
                    "mask_peak_xy": peak,
                    "mask_peak_value": round(float(fused.max()), 3),
                    "boxes": len(slice_boxes),
                    "peak_inside_a_box": inside,
                    "lesion_pixels": int(lesion.sum()),
                    "lesion_inside_boxes": round(float((lesion & in_box).sum() / lesion.sum()), 3)
                    if lesion.any()
                    else None,
                    "passes": ok,
                }
            ),
            flush=True,
        )
    print(
        json.dumps(
            {
                "model": str(path),
                "trained_on": meta.get("trained_on"),
                "gates_passed": int(sum(passed)),
                "cases": len(passed),
            }
        ),
        flush=True,
    )
    if args.figure:
        draw_positive_slices(shown, threshold, pcfg, Path(args.figure))


def draw_positive_slices(shown, threshold, pcfg, out, per_series=6):
    """shown: [(name, CTSeries, probs float [S], lesion masks bool [S, N, N])] -> PNG at `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from radnet_tf import atomic, preprocess

    fig, axes = plt.subplots(
        len(shown), per_series, figsize=(3 * per_series, 3.3 * len(shown)), squeeze=False
    )
    for row, (name, series, probs, masks) in zip(axes, shown):
        model = preprocess.resample_to_fov_np(
            series.hu.astype(np.float32),
            np.asarray(series.pixel_spacing, np.float32),
            preprocess.head_center_np(series.hu),
            pcfg,
        )
        positive = np.flatnonzero(probs >= threshold)
        picks = (
            positive[np.linspace(0, len(positive) - 1, min(per_series, len(positive))).astype(int)]
            if len(positive)
            else []
        )
        for ax in row:
            ax.axis("off")
        for ax, k in zip(row, picks):
            ax.imshow(
                preprocess.brain_window_np(model[k], pcfg.window_center, pcfg.window_width),
                cmap="gray",
                vmin=0,
                vmax=1,
            )
            m = np.asarray(masks[k], np.float32)
            ax.imshow(np.ma.masked_less(m, 0.5), cmap="autumn", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(
                f"{name.split('/')[-1]} slice {k + 1}/{len(probs)}, p {probs[k]:.2f}", fontsize=8
            )
    fig.suptitle(
        f"positive slices (p >= {threshold:.2f}) of normal-looking series; red: the served lesion "
        "mask",
        fontsize=9,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=60, format="png")
    print(json.dumps({"figure": str(out)}), flush=True)


if __name__ == "__main__":
    main()
