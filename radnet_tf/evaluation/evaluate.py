"""`python -m radnet_tf.evaluate`: the paper's CT-level evaluation, tables and figures.

    python -m radnet_tf.evaluate --model runs/default/model [--model OTHER ...] \
        --data RECORDS [--split validation|train|calibration|all] [--val-data RECORDS] \
        [--threshold T] [--min-run K] [--mask-threshold M] [--target-sensitivity 0.95] \
        [--readers reads.csv --manifest manifest.csv] --out DIR

Per model (a model dir: the model its run_info.json names; or a SavedModel version dir):
slice probabilities -> CT verdict with the one rule in `radnet_tf.decision` (>= K
consecutive slices at the slice threshold; K = the slice count for shorter studies) and
the continuous CT score. --threshold / --min-run / --mask-threshold replace the model's own
operating point to explore others. Outputs in DIR/<model name>/:
  slices.csv, studies.csv, summary.csv (slice and CT level: accuracy, recall, precision,
  F1, specificity, ROC AUC, PR AUC, confusion counts, bootstrap 95% CIs as `<metric>_lo`
  and `<metric>_hi` columns; where the records hold reference masks, a "mask" row: Dice,
  per-study Dice, pixel recall and precision of the served lesion mask -- the fused mask
  at the model's mask threshold on slices at or above its slice threshold,
  `decision.lesion_mask_np` -- and the share of negative studies given any mask), and PNGs:
  roc_pr.png, confusion.png, reliability.png, training_curves.png (model dirs),
  study_strips.png. Parquet copies are written when pyarrow is installed.
Operating point: the slice threshold giving >= --target-sensitivity at CT level, chosen on
--val-data (or, flagged "optimistic", on the evaluated set itself); its metrics are in
summary.csv as level "ct@target".
With several models: table1.csv / table1.md (ablation). With --readers: table2.csv /
table2.md, readers_vs_model.png and kappa.csv (Cohen's kappa between readers and model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from radnet_tf import atomic
from radnet_tf.cli import add_verbose, cli_main, say
from radnet_tf.contract import (
    MASKS,
    OUTPUT_SLICE,
    OUTPUT_SUBTYPES,
    SLICE_PROBABILITIES,
    SUBTYPE_PROBABILITIES,
    SUBTYPES,
)
from radnet_tf.errors import UserError
from radnet_tf.evaluation.metrics import (
    binary_metrics,
    bootstrap_ci,
    ct_metrics,
    slice_auc_ci,
    study_table,
)

PAPER_METRICS = ("accuracy", "recall", "precision", "f1")


def _atomic_table(frame: pd.DataFrame, path: Path):
    atomic.write_csv(frame, path)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return
    with atomic.atomic_path(path.with_suffix(".parquet")) as tmp:
        frame.to_parquet(tmp, index=False)


def _savefig(fig, path):
    from radnet_tf.plotting import save_figure

    save_figure(fig, path, dpi=90)


def _export_slice_fn(saved, meta):
    """The `serving_default` signature of an export as a slice function: a batch of
    preprocessed studies [1, S, N, N, C] -> dict of numpy outputs keyed by the Keras names."""
    fn = saved.signatures["serving_default"]
    names = [(OUTPUT_SLICE, SLICE_PROBABILITIES)]
    if not str(meta.get("masks", "")).startswith("none"):  # a densenet export serves zeros
        names.append((MASKS, MASKS))
    if SUBTYPE_PROBABILITIES in fn.structured_outputs:
        names.append((OUTPUT_SUBTYPES, SUBTYPE_PROBABILITIES))

    def slice_fn(x):
        out = fn(slices=x[0])
        return {k: out[v].numpy() for k, v in names}

    return slice_fn


class Predictor:
    """A Keras model dir or a SavedModel as a slice function for `radnet_tf.evaluation.scoring`.

    Attributes: cfg (Config, with the model's threshold and K), name (str), history
    (training history frame or None).
    """

    def __init__(self, path):
        from radnet_tf.serving import loader

        loaded = loader.load(path)
        self.cfg, self.history = loaded.cfg, None
        if loaded.kind == "saved_model":
            self.slice_fn = _export_slice_fn(loaded.saved, loaded.meta)
            self.name = f"{loaded.meta['model']}-v{loaded.meta['version']}"
        else:
            from radnet_tf.evaluation.scoring import keras_slice_fn

            p = Path(path)
            self.slice_fn = keras_slice_fn(loaded.keras_model, self.cfg, masks=True)
            self.name = p.name if p.name not in ("model", "") else self.cfg.variant
            if (p / "history.csv").exists():
                self.history = pd.read_csv(p / "history.csv")

    def predict(self, files, split, with_masks=False):
        """`radnet_tf.evaluation.scoring.StudyPredictions` of one split of the records (with
        `with_masks`, also the fused masks' overlap with the records' reference masks)."""
        from radnet_tf.evaluation.scoring import predict_studies

        return predict_studies(self.slice_fn, files, self.cfg, split, with_masks=with_masks)


def threshold_for_sensitivity(studies: pd.DataFrame, target: float) -> float:
    """Largest slice threshold whose CT-level recall is >= target (via ct_score)."""
    pos = np.sort(studies.loc[studies.label == 1, "ct_score"].to_numpy())[::-1]
    if pos.size == 0:
        raise UserError("no positive studies to choose a threshold on")
    k = int(np.ceil(target * pos.size))
    return float(np.clip(pos[k - 1], 1e-6, 1 - 1e-6))


def expected_calibration_error(labels, probs, bins=10) -> float:
    labels, probs = np.asarray(labels, float), np.asarray(probs, float)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(probs, edges) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(labels[sel].mean() - probs[sel].mean())
    return float(ece)


def _target_row(pred, preds, studies, target, val_files):
    """The CT-level row at the threshold that reaches `target` sensitivity, chosen on the
    validation records when given (else on the evaluated set: optimistic)."""
    cfg = pred.cfg
    if val_files is not None:
        vp = pred.predict(val_files, "validation")
        basis = study_table(vp.keys, vp.labels, vp.probs, cfg.slice_threshold, cfg.ct_min_run)
        note = "validation"
    else:
        basis, note = studies, "optimistic: chosen on the evaluated set"
    if not (basis.label == 1).any():
        return {
            "level": "ct@target",
            "threshold": np.nan,
            "min_run": cfg.ct_min_run,
            "threshold_basis": f"not computed: no positive studies ({note})",
        }
    t = threshold_for_sensitivity(basis, target)
    at = study_table(preds.keys, preds.labels, preds.probs, t, cfg.ct_min_run)
    return {
        "level": "ct@target",
        "threshold": t,
        "min_run": cfg.ct_min_run,
        "threshold_basis": note,
        **ct_metrics(at),
    }


def _write_subtypes(preds, studies, cfg, out):
    """Per subtype: the CT calls in studies.csv, AUCs and operating points (subtypes.csv),
    confusion (subtype_confusion.csv) and RSNA's weighted log loss."""
    from radnet_tf.decision import ct_decision_labels_np
    from radnet_tf.evaluation.scoring import rsna_log_loss, subtype_tables

    thresholds = cfg.resolved_subtype_thresholds
    calls = [ct_decision_labels_np(p, thresholds, cfg.ct_min_run) for p in preds.subtype_probs]
    for j, name in enumerate(SUBTYPES):
        studies[f"ct_{name}"] = [bool(c["ct_positive"][j]) for c in calls]
        studies[f"ct_score_{name}"] = [float(c["ct_score"][j]) for c in calls]
    _atomic_table(studies, out / "studies.csv")
    per_label, confusion = subtype_tables(preds, thresholds, cfg.ct_min_run)
    per_label["rsna_weighted_log_loss_slices"] = rsna_log_loss(preds)
    _atomic_table(per_label, out / "subtypes.csv")
    with atomic.atomic_path(out / "subtype_confusion.csv") as tmp:
        confusion.to_csv(tmp)


def evaluate_one(pred: Predictor, files, split, out: Path, target, val_files=None, n_boot=500):
    """Tables and figures for one model at `pred.cfg`'s threshold and K; returns
    (summary frame, studies frame, number of studies shorter than K)."""
    from radnet_tf.evaluation.scoring import mask_scores, score_studies

    cfg = pred.cfg
    preds = pred.predict(files, split, with_masks=True)
    scored = score_studies(preds, cfg.slice_threshold, cfg.ct_min_run)
    studies, slices = scored["studies"], scored["slices"]
    known = slices[slices.label >= 0]
    rows = [
        {
            "level": "slice",
            "threshold": cfg.slice_threshold,
            "min_run": np.nan,
            **scored["slice_metrics"],
        }
    ]
    ci = bootstrap_ci(
        studies, lambda t: {k: ct_metrics(t)[k] for k in PAPER_METRICS}, n_boot=n_boot
    )
    ci_cols = {f"{k}_{side}": ci[k][i] for k in ci for i, side in enumerate(("lo", "hi"))}
    rows.append(
        {
            "level": "ct",
            "threshold": cfg.slice_threshold,
            "min_run": cfg.ct_min_run,
            **scored["ct_metrics"],
            **ci_cols,
        }
    )
    rows.append(_target_row(pred, preds, studies, target, val_files))
    rows[0]["ece"] = expected_calibration_error(known.label, known.probability)
    auc_ci = slice_auc_ci(slices, n_boot)
    if auc_ci:
        rows[0]["roc_auc_lo"], rows[0]["roc_auc_hi"] = auc_ci
    masks = mask_scores(preds, cfg.slice_threshold) if preds.mask_counts else {"n": 0}
    if masks["n"]:  # studies with a reference mask: the lesion masks predict and --seg deliver
        rows.append({"level": "mask", "threshold": cfg.mask_threshold, "min_run": np.nan, **masks})
    summary = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_table(slices, out / "slices.csv")
    _atomic_table(studies, out / "studies.csv")
    _atomic_table(summary, out / "summary.csv")
    plot_all(
        out,
        studies,
        known,
        preds.probs,
        preds.keys,
        cfg,
        pred.history,
        ci_auc=_auc_ci(studies, n_boot),
    )
    if preds.subtype_probs:
        _write_subtypes(preds, studies, cfg, out)
    return summary, studies, scored["short_studies"]


def _auc_ci(studies, n_boot):
    if studies.label.nunique() < 2:
        return None
    from sklearn.metrics import roc_auc_score

    def fn(t):
        return {"auc": roc_auc_score(t.label, t.ct_score) if t.label.nunique() == 2 else np.nan}

    return bootstrap_ci(studies, fn, n_boot=n_boot)["auc"]


def plot_all(out, studies, known_slices, probs, keys, cfg, history, ci_auc=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_curve, roc_curve

    if studies.label.nunique() == 2:
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
        fpr, tpr, _ = roc_curve(studies.label, studies.ct_score)
        ci = f" (95% CI {ci_auc[0]:.2f}-{ci_auc[1]:.2f})" if ci_auc else ""
        a.plot(fpr, tpr, label=f"AUC {ct_metrics(studies).get('roc_auc', float('nan')):.3f}{ci}")
        a.plot([0, 1], [0, 1], "k:", lw=0.8)
        a.set(xlabel="1 - specificity", ylabel="sensitivity", title="CT-level ROC")
        a.legend(loc="lower right", fontsize=8)
        prec, rec, _ = precision_recall_curve(studies.label, studies.ct_score)
        b.plot(rec, prec)
        b.set(xlabel="recall", ylabel="precision", title="CT-level PR")
        _savefig(fig, out / "roc_pr.png")
    fig, ax = plt.subplots(figsize=(4, 4))
    ConfusionMatrixDisplay.from_predictions(
        studies.label, studies.ct_positive.astype(int), labels=[0, 1], ax=ax, colorbar=False
    )
    ax.set_title(f"CT level (K={cfg.ct_min_run}, t={cfg.slice_threshold})")
    _savefig(fig, out / "confusion.png")
    if known_slices.label.nunique() == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        frac, mean = calibration_curve(known_slices.label, known_slices.probability, n_bins=10)
        ax.plot(mean, frac, "o-")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(
            xlabel="predicted probability", ylabel="observed frequency", title="slice reliability"
        )
        _savefig(fig, out / "reliability.png")
    if history is not None and len(history):
        cols = [c for c in history.columns if c.endswith("loss") and "mask" not in c]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for c in cols:
            ax.plot(history["epoch"] + 1, history[c], label=c)
        ax.set(xlabel="epoch", ylabel="loss", title="training curves")
        ax.legend(fontsize=7)
        _savefig(fig, out / "training_curves.png")
    n = min(8, len(probs))
    fig, axes = plt.subplots(n, 1, figsize=(7, 1.1 * n + 0.5), squeeze=False)
    for ax, p, k, lab in zip(axes[:, 0], probs[:n], keys[:n], studies.label[:n]):
        pos = np.asarray(p) >= cfg.slice_threshold
        ax.bar(np.arange(len(p)), p, color=np.where(pos, "tab:red", "tab:blue"))
        ax.axhline(cfg.slice_threshold, color="k", lw=0.6, ls="--")
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{k[:6]}\ny={lab}", fontsize=7)
    axes[-1, 0].set_xlabel(
        f"slice; red = p >= threshold; CT positive if >= {cfg.ct_min_run} consecutive red"
    )
    _savefig(fig, out / "study_strips.png")


def table_markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(v) for v in row.values) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value, lo=None, hi=None):
    text = f"{100 * value:.2f}%"
    if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
        text += f" ({100 * lo:.1f}-{100 * hi:.1f})"
    return text


def ablation_table(summaries: dict) -> pd.DataFrame:
    """Table 1: rows = paper metrics, columns = models, CT level with 95% CIs."""
    table = {"metric": list(PAPER_METRICS)}
    for name, summary in summaries.items():
        ct = summary[summary.level == "ct"].iloc[0]
        table[name] = [_fmt(ct[m], ct.get(f"{m}_lo"), ct.get(f"{m}_hi")) for m in PAPER_METRICS]
    return pd.DataFrame(table)


FINDINGS = ("ICH", "IPH", "IVH", "SAH", "SDH", "EDH")


def reader_table_by_finding(readers_csv, manifest_csv, studies: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2 per finding: for ICH and each subtype, each reader and the model
    against the readers' majority (>= 2 of 3) — accuracy, recall, precision, F1 — and
    Cohen's kappa of each rater with R1, R2, R3 and the majority.

    `studies` needs study_key and ct_positive (the ICH call); a subtype model's studies
    also have ct_<T> columns (EDH, IPH, IVH, SAH, SDH), else the model has no row for them.

    Returns:
      DataFrame with columns finding, rater, n, accuracy, recall, precision, f1,
      kappa_R1, kappa_R2, kappa_R3, kappa_majority.
    """
    from sklearn.metrics import cohen_kappa_score

    reads = pd.read_csv(readers_csv)
    if "name" not in reads.columns:
        raise UserError(f"{readers_csv}: needs a 'name' column with the study ids")
    manifest = pd.read_csv(manifest_csv, dtype={"study_id": str})
    merged = reads.merge(
        manifest[["study_id", "study_key"]], left_on="name", right_on="study_id"
    ).merge(studies, on="study_key")
    if merged.empty:
        raise UserError("no study of the readers file is in the evaluated set")
    rows = []
    for finding in FINDINGS:
        readers = {
            r: merged[f"{r}:{finding}"].astype(int)
            for r in ("R1", "R2", "R3")
            if f"{r}:{finding}" in merged
        }
        if len(readers) < 3:
            continue
        majority = (sum(readers.values()) >= 2).astype(int)
        model_col = "ct_positive" if finding == "ICH" else f"ct_{finding}"
        raters = dict(readers)
        if model_col in merged:
            raters["model"] = merged[model_col].astype(int)
        for name, calls in raters.items():
            m = binary_metrics(majority, calls)
            row = {
                "finding": finding,
                "rater": name,
                "n": len(calls),
                **{k: round(m[k], 4) for k in PAPER_METRICS},
            }
            for other, ref in (*readers.items(), ("majority", majority)):
                both_constant = calls.nunique() == 1 and ref.nunique() == 1
                row[f"kappa_{other}"] = (
                    1.0
                    if (both_constant and (calls.values == ref.values).all())
                    else round(float(cohen_kappa_score(ref, calls)), 4)
                )
            rows.append(row)
    return pd.DataFrame(rows)


def reader_table(readers_csv, manifest_csv, studies: pd.DataFrame, finding="ICH", reference=None):
    """Table 2: readers vs model at CT level, plus Cohen's kappa between all raters.

    readers_csv: one row per study (`name` = study_id), columns like 'R1:ICH' (0/1).
    manifest_csv: the records manifest (study_id -> study_key).
    reference: optional {study_id: label}; default the study labels in `studies`.
    """
    from sklearn.metrics import cohen_kappa_score

    reads = pd.read_csv(readers_csv)
    if "name" not in reads.columns:
        raise UserError(f"{readers_csv}: needs a 'name' column with the study ids")
    cols = [c for c in reads.columns if c.endswith(f":{finding}")]
    if not cols:
        raise UserError(f"{readers_csv}: no reader columns ending in ':{finding}'")
    manifest = pd.read_csv(manifest_csv, dtype={"study_id": str})
    merged = reads.merge(manifest[["study_id", "study_key"]], left_on="name", right_on="study_id")
    merged = merged.merge(studies, on="study_key")
    if merged.empty:
        raise UserError("no study of the readers file is in the evaluated set")
    truth = merged["label"] if reference is None else merged["name"].map(reference)
    raters = {c.split(":")[0]: merged[c].astype(int) for c in cols}
    raters["model"] = merged["ct_positive"].astype(int)
    table = {"metric": list(PAPER_METRICS)}
    for name, calls in raters.items():
        m = binary_metrics(truth, calls)
        table[name] = [round(m[k], 4) for k in PAPER_METRICS]
    names = list(raters)
    kappa = pd.DataFrame(
        [
            [cohen_kappa_score(raters[a], raters[b]) if a != b else 1.0 for b in names]
            for a in names
        ],
        index=names,
        columns=names,
    )
    return pd.DataFrame(table), kappa


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m radnet_tf.evaluate", description=__doc__.split("\n")[0]
    )
    add_verbose(parser)
    parser.add_argument(
        "--model", action="append", required=True, help="model dir or SavedModel (repeat)"
    )
    parser.add_argument("--data", required=True, help="TFRecord folder or glob")
    parser.add_argument(
        "--split", default="validation", choices=["validation", "train", "calibration", "all"]
    )
    parser.add_argument(
        "--val-data", help="records to choose the operating point on (validation split)"
    )
    parser.add_argument(
        "--threshold", type=float, help="slice threshold of the CT rule (default: the model's)"
    )
    parser.add_argument(
        "--min-run", type=int, help="K consecutive slices of the CT rule (default: the model's)"
    )
    parser.add_argument(
        "--mask-threshold",
        type=float,
        help="mask threshold of the lesion mask (default: the model's)",
    )
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    parser.add_argument("--readers", help="reader calls CSV (CQ500 reads.csv format)")
    parser.add_argument(
        "--manifest", help="records manifest.csv (study_id -> study_key), with --readers"
    )
    parser.add_argument("--bootstrap", type=int, default=500)
    parser.add_argument("--out", required=True)
    return parser


def _check_args(args):
    """One clear line for each out-of-range flag."""
    if not 0 < args.target_sensitivity <= 1:
        raise UserError(
            f"--target-sensitivity must be in (0, 1]. Received: {args.target_sensitivity}"
        )
    for name in ("threshold", "mask_threshold"):
        value = getattr(args, name)
        if value is not None and not 0 < value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be in (0, 1). Received: {value}")
    if args.min_run is not None and args.min_run < 1:
        raise UserError(f"--min-run must be >= 1. Received: {args.min_run}")
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1. Received: {args.bootstrap}")
    if args.readers and not args.manifest:
        raise UserError("--readers needs --manifest (the records manifest.csv)")


def ct_line(ct, studies) -> str:
    """The CT-level result line: the paper's metrics, or for a set of one class what can be
    computed (sensitivity of an all-positive set, specificity of an all-negative one)."""
    if studies.label.nunique() == 2:
        return "CT " + ", ".join(f"{k} {ct[k]:.3f}" for k in PAPER_METRICS)
    if (studies.label == 1).all():
        return (
            f"CT sensitivity {ct['recall']:.3f} ({int(ct['tp'])} of {int(ct['n'])} called "
            "positive; every study is positive: specificity, precision and ROC AUC need "
            "negative studies)"
        )
    return (
        f"CT specificity {ct['specificity']:.3f} ({int(ct['fp'])} of {int(ct['n'])} called "
        "positive; every study is negative: sensitivity, precision and ROC AUC need "
        "positive studies)"
    )


def _evaluate_model_arg(path, args, files, val_files, out, rendered=()):
    """Evaluates one --model; prints its CT (and mask) lines. Returns (name, summary frame,
    per-study frame). `rendered`: the records' display windows (`rendered_windows`); a
    model needing HU outside them is refused."""
    from radnet_tf.evaluation.scoring import short_study_note
    from radnet_tf.preprocess import check_windows_available

    pred = Predictor(path)
    check_windows_available(pred.cfg.preprocess_config().windows, rendered, f"records {args.data}")
    for flag, key in (
        ("threshold", "slice_threshold"),
        ("min_run", "ct_min_run"),
        ("mask_threshold", "mask_threshold"),
    ):
        if getattr(args, flag) is not None:
            setattr(pred.cfg, key, getattr(args, flag))
    summary, studies, short = evaluate_one(
        pred, files, args.split, out / pred.name, args.target_sensitivity, val_files, args.bootstrap
    )
    ct = summary[summary.level == "ct"].iloc[0]
    note = short_study_note(short, len(studies), pred.cfg.ct_min_run)
    if note:
        say(f"{pred.name}: note: {note}")
    say(
        f"{pred.name}: {ct_line(ct, studies)} (n={int(ct['n'])}, threshold "
        f"{pred.cfg.slice_threshold:.3f}, K={pred.cfg.ct_min_run})"
    )
    sl = summary[summary.level == "slice"].iloc[0]
    if "roc_auc_lo" in sl and pd.notna(sl["roc_auc_lo"]):
        say(
            f"{pred.name}: slice ROC AUC {sl['roc_auc']:.3f} (95% CI {sl['roc_auc_lo']:.3f}-"
            f"{sl['roc_auc_hi']:.3f}, studies resampled; n={int(sl['n'])} labelled slices)"
        )
    if (summary.level == "mask").any():
        m = summary[summary.level == "mask"].iloc[0]
        say(
            f"{pred.name}: mask (>= {m['threshold']:.2f} on positive slices) Dice {m['dice']:.3f}, "
            f"positive studies' mean {m['study_dice']:.3f} (n={int(m['n'])} studies with a "
            "reference mask)"
        )
    return pred.name, summary, studies


def write_reader_comparison(readers, manifest, studies, out):
    """Table 2 (readers vs the model), kappas and their figures under `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t2, kappa = reader_table(readers, manifest, studies)
    _atomic_table(t2, out / "table2.csv")
    atomic.write_text(out / "table2.md", table_markdown(t2))
    with atomic.atomic_path(out / "kappa.csv") as tmp:
        kappa.to_csv(tmp)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    t2.set_index("metric").T.plot.bar(ax=ax)
    ax.set(ylim=(0, 1), title="readers vs model (CT level)")
    _savefig(fig, out / "readers_vs_model.png")
    by_finding = reader_table_by_finding(readers, manifest, studies)
    _atomic_table(by_finding, out / "table2_by_finding.csv")
    atomic.write_text(out / "table2_by_finding.md", table_markdown(by_finding))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    by_finding.pivot(index="finding", columns="rater", values="kappa_majority").reindex(
        [f for f in FINDINGS if f in set(by_finding.finding)]
    ).plot.bar(ax=ax)
    ax.set(
        ylim=(-1, 1),
        ylabel="Cohen's kappa with the majority",
        title="readers and model per finding",
    )
    _savefig(fig, out / "readers_by_finding.png")


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    _check_args(args)
    from radnet_tf.records import dataset as data

    files = data.list_shards(args.data)
    val_files = data.list_shards(args.val_data) if args.val_data else None
    out = Path(args.out)
    summaries, last_studies = {}, None
    rendered = data.rendered_windows(files)
    for path in args.model:
        name, summaries[name], last_studies = _evaluate_model_arg(
            path, args, files, val_files, out, rendered
        )
    if len(summaries) > 1:
        t1 = ablation_table(summaries)
        _atomic_table(t1, out / "table1.csv")
        atomic.write_text(out / "table1.md", table_markdown(t1))
    if args.readers:
        write_reader_comparison(args.readers, args.manifest, last_studies, out)
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
