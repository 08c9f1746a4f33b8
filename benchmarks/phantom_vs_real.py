"""The phantom beside real head CT, at the model's input (issue: a head phantom real CT cannot
tell apart, gate 4).

    python benchmarks/phantom_vs_real.py [--shared ../shared/data] [--out FIG.png] [--seed 0]

For each real series (../shared: CQ500-CT-0, ge-head-tilt) one whole-head phantom is drawn
with that series' slice thickness, pixel spacing and matrix. Both go through the built-in
default's preprocessing (configs/default.yaml: 1.5 mm, 250 mm FOV, brain window) and are
shown at three anatomical levels, taken at fixed fractions of each series' brain extent
(skull base 15%, ventricles 50%, vertex 88%), with the HU histograms of the head (model
grid, brain-window range). Prints one JSON line per series with histogram statistics and
the brain's HU by depth under the skull (`rim_profile`), the share of slices whose
skull is a closed ring (`closed_skull_fraction`) and the share of the brain deeper than 4
mm that reads 60-90 HU (`deep_dense_fraction`).
The shared series are only compared against, never used to set the phantom.
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REAL = ("cq500/CQ500-CT-0", "ge-head-tilt")
LEVELS = (("skull base", 0.15), ("ventricles", 0.5), ("vertex", 0.88))


def brain_extent(hu_model):
    """(first, last) slice index with at least 20% of the most 15-50 HU pixels of any
    slice; hu_model float [S, N, N] HU."""
    import numpy as np

    brain = ((hu_model > 15) & (hu_model < 50)).reshape(len(hu_model), -1).sum(1)
    present = np.flatnonzero(brain > 0.2 * brain.max())
    return int(present[0]), int(present[-1])


def slices_between(hu_model, levels):
    """range of slice indices between two fractions `levels` of the brain's extent."""
    lo, hi = brain_extent(hu_model)
    return range(int(lo + levels[0] * (hi - lo)), int(lo + levels[1] * (hi - lo)) + 1)


def inside_skull(hu_slice):
    """bool [N, N]: pixels enclosed by the slice's skull (>= 150 HU, gaps of up to ~6
    pixels closed), the skull itself excluded."""
    from scipy import ndimage

    bone = hu_slice >= 150
    return ndimage.binary_fill_holes(ndimage.binary_closing(bone, iterations=3)) & ~bone


def levels(hu_model):
    """Slice indices at LEVELS of the brain's extent; hu_model float [S, N, N] HU."""
    lo, hi = brain_extent(hu_model)
    return [int(round(lo + f * (hi - lo))) for _, f in LEVELS]


RIM_DEPTHS_MM = (3.0, 6.0, 9.0, 15.0)


def rim_profile(hu_model, spacing_mm, levels=(0.35, 0.85)):
    """Brain HU by depth under the inner table, on slices between `levels` of the brain's extent.

    Depth is the in-plane distance (pixels x spacing_mm) from a pixel to the skull (>= 150
    HU) inside the closed skull; brain pixels are 10-70 HU. Returns {depth mm: median HU}
    for RIM_DEPTHS_MM (each +- half a pixel) and "rise_3_15" (3 mm minus 15 mm).
    """
    import numpy as np
    from scipy import ndimage

    picked = {d: [] for d in RIM_DEPTHS_MM}
    for k in slices_between(hu_model, levels):
        s = hu_model[k]
        inside = inside_skull(s)
        depth = ndimage.distance_transform_edt(inside) * spacing_mm
        tissue = inside & (s > 10) & (s < 70)
        for d in RIM_DEPTHS_MM:
            picked[d].append(s[tissue & (np.abs(depth - d) <= spacing_mm / 2)])
    out = {f"{d:g}": round(float(np.median(np.concatenate(v))), 1) for d, v in picked.items()}
    out["rise_3_15"] = round(out["3"] - out["15"], 1)
    return out


def closed_skull_fraction(hu_model, levels=(0.15, 0.85), min_inside=0.2):
    """Share of slices between `levels` of the brain's extent whose skull (>= 150 HU, closed
    by 3 pixels) encloses at least `min_inside` of the slice's 15-50 HU pixels: a real
    skull is a closed ring from the skull base up; a template's faint bone leaves gaps."""
    brain = (hu_model > 15) & (hu_model < 50)
    picked = slices_between(hu_model, levels)
    closed = 0
    for k in picked:
        closed += int(
            (inside_skull(hu_model[k]) & brain[k]).sum() >= min_inside * max(1, brain[k].sum())
        )
    return round(closed / len(picked), 3)


def deep_dense_fraction(hu_model, spacing_mm, levels=(0.15, 0.85), depth_mm=4.0):
    """Share of the brain deeper than `depth_mm` under the inner table (in-plane, inside
    the closed skull, -20-120 HU) that reads 60-90 HU, blood's range, on slices between
    `levels` of the brain's extent: normal structures a model must not take for blood
    (a dense falx and tentorium, sinuses, calcification's partial volume)."""
    from scipy import ndimage

    dense = total = 0
    for k in slices_between(hu_model, levels):
        s = hu_model[k]
        inside = inside_skull(s)
        deep = (
            inside
            & (ndimage.distance_transform_edt(inside) * spacing_mm > depth_mm)
            & (s > -20)
            & (s < 120)
        )
        total += int(deep.sum())
        dense += int((deep & (s >= 60) & (s < 90)).sum())
    return round(dense / max(total, 1), 4)


def head_stats(hu_model):
    import numpy as np

    v = hu_model[(hu_model > -20) & (hu_model < 120)]
    soft = v[(v >= 0) & (v < 60)]
    return {
        "median_0_60": round(float(np.median(soft)), 1),
        "p10_p90_0_60": [round(float(x), 1) for x in np.percentile(soft, [10, 90])],
        "fraction_60_90_of_-20_120": round(float(np.mean((v >= 60) & (v < 90))), 4),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--out", default="benchmarks/results/phantom_vs_real.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from radnet_tf import atomic
    from radnet_tf.phantom import generate as synth
    from radnet_tf.config import load_config
    from radnet_tf.io.dicom import read_series
    from radnet_tf.preprocess import brain_window_np, head_center_np, resample_to_fov_np

    pcfg = load_config().preprocess_config()
    rows = []
    for i, name in enumerate(REAL):
        real = read_series(Path(args.shared) / name)
        sp = float(real.pixel_spacing[0])
        thickness = float(real.slice_spacing)
        n = int(min(400, np.ceil(175.0 / thickness)))
        # untilted: the raw images of a tilted phantom drift across the field of view; read
        # back and sheared, a tilted study is its untilted twin (test_synth), what is drawn here
        cfg = synth.SynthConfig(
            matrix=int(real.hu.shape[-1]),
            num_slices=n,
            pixel_spacing_range=(sp, sp),
            slice_thickness_range=(thickness, thickness),
            tilt_fraction=0.0,
        )
        phantom = synth.make_phantom(np.random.default_rng([args.seed, i]), cfg, positive=False)
        pair = []
        for label, hu, spacing in (
            (f"real: {name}", real.hu, real.pixel_spacing),
            (f"phantom, {thickness:.2f} mm", phantom.hu, (phantom.pixel_spacing,) * 2),
        ):
            model = resample_to_fov_np(
                hu.astype(np.float32), np.asarray(spacing, np.float32), head_center_np(hu), pcfg
            )
            pair.append((label, model))
            stats = {
                **head_stats(model),
                "rim_hu": rim_profile(model, pcfg.out_spacing),
                "closed_skull": closed_skull_fraction(model),
                "deep_60_90": deep_dense_fraction(model, pcfg.out_spacing),
            }
            print(json.dumps({"series": label, "slices": len(hu), **stats}), flush=True)
        rows.append(pair)

    fig, axes = plt.subplots(
        2 * len(rows), len(LEVELS) + 1, figsize=(4 * (len(LEVELS) + 1), 8 * len(rows))
    )
    c, w = pcfg.window_center, pcfg.window_width
    for r, pair in enumerate(rows):
        for j, (label, model) in enumerate(pair):
            ax_row = axes[2 * r + j]
            for (level, _), k, ax in zip(LEVELS, levels(model), ax_row):
                ax.imshow(brain_window_np(model[k], c, w), cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"{label}\n{level} (slice {k})", fontsize=9)
                ax.axis("off")
            hist_ax = ax_row[-1]
            for lab, mod in pair:
                v = mod[(mod > -20) & (mod < 120)]
                hist_ax.hist(
                    v,
                    bins=np.arange(-20, 121, 2),
                    density=True,
                    histtype="step",
                    label=lab.split(",")[0],
                )
            hist_ax.set_xlabel("HU (head, model grid)")
            hist_ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=60, format="png")
    print(json.dumps({"figure": str(out)}))


if __name__ == "__main__":
    main()
