"""A model version's evidence as plots, redrawn from its ``report.json`` alone (numpy, no torch).

The per-image rows (``evaluation.images``: label, margin, P(ai) before and after temperature) give
the ROC and PR curves, the score histograms, the reliability diagram and the confusion matrix; the
per-epoch rows (``training.epochs``) give the loss and AUC curves. Reports written before those rows
existed get a sentence saying the plot needs a newer training instead of a plot.

Curves use the margins (the score the report's AUC is computed on; P(ai) ranks the images the same
way, and rounding it could merge scores the margins keep apart).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from markupsafe import Markup

from app.ui.plots import (
    Frame,
    Interval,
    Series,
    bar_plot,
    empty,
    horizontal_bars,
    interval_plot,
    line_plot,
    matrix,
    nice_ticks,
)
from trainer.results import DECISION_THRESHOLD

NEEDS_NEWER = (
    "this plot needs a newer training: the report of this version has no {what} "
    "(it was trained before reports kept them)"
)
HIST_BINS = 20
RELIABILITY_BINS = 10
MAX_CURVE_POINTS = 2000  # beyond this, points on straight runs of the ROC/PR curve are left out


def eval_rows(report: dict | None) -> list[dict]:
    images = ((report or {}).get("evaluation") or {}).get("images")
    if not isinstance(images, list):
        return []
    return [r for r in images if isinstance(r, dict) and r.get("label") in ("real", "ai")]


def arrays(rows: list[dict], key: str = "margin") -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([1 if r["label"] == "ai" else 0 for r in rows], dtype=np.int64)
    scores = np.array([float(r[key]) for r in rows], dtype=np.float64)
    return labels, scores


def roc_points(labels: np.ndarray, scores: np.ndarray) -> list[tuple[float, float]]:
    """(FPR, TPR) at every distinct score used as the threshold (score >= t is "ai"), from (0, 0)."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order], scores[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last image of each run of equal scores
    tps, fps = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    pos, neg = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    points = [(0.0, 0.0), *zip((fps / neg).tolist(), (tps / pos).tolist(), strict=True)]
    return thin(points)


def pr_points(labels: np.ndarray, scores: np.ndarray) -> list[tuple[float, float]]:
    """(recall, precision) of the "ai" class at every distinct threshold, highest threshold first."""
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order], scores[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps, called = np.cumsum(y)[last], last + 1
    pos = max(int(y.sum()), 1)
    return thin(list(zip((tps / pos).tolist(), (tps / called).tolist(), strict=True)))


def thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most about MAX_CURVE_POINTS: interior points of straight horizontal/vertical runs go first."""
    if len(points) <= MAX_CURVE_POINTS:
        return points
    kept = [points[0]]
    for prev, here, after in zip(points, points[1:], points[2:], strict=False):
        straight = (prev[0] == here[0] == after[0]) or (prev[1] == here[1] == after[1])
        if not straight:
            kept.append(here)
    kept.append(points[-1])
    step = max(1, len(kept) // MAX_CURVE_POINTS)
    return kept[::step] + ([kept[-1]] if (len(kept) - 1) % step else [])


def trapezoid_auc(points: list[tuple[float, float]]) -> float:
    xs, ys = zip(*points, strict=True)
    return float(np.trapezoid(ys, xs))  # numpy >= 2.0 (pyproject)


def roc_plot(
    curves: dict[str, list[tuple[float, float]]], title: str = "ROC curve (evaluation set)"
) -> Markup:
    frame = Frame(
        title, (0, 1), (0, 1), x_label="false positive rate (real called ai)", y_label="true positive rate"
    )
    series = [
        Series(name, [p[0] for p in pts], [p[1] for p in pts], points=len(pts) <= 40, dashed=n > 0)
        for n, (name, pts) in enumerate(curves.items())
    ]
    return line_plot(series, frame, diagonal="chance (AUC 0.5)")


def histogram(rows: list[dict], threshold: float) -> Markup:
    labels, probs = arrays(rows, "p_ai")
    edges = np.linspace(0, 1, HIST_BINS + 1)
    counts = {
        name: np.histogram(probs[labels == cls], bins=edges)[0].tolist()
        for name, cls in (("real", 0), ("ai", 1))
    }
    high = max([1, *counts["real"], *counts["ai"]])
    frame = Frame(
        "P(ai) by true class", (0, 1), (0, high * 1.1), x_label="P(ai) after temperature", y_label="images"
    )
    frame.y_ticks = [t for t in _int_ticks(high * 1.1)]
    frame.reference(threshold, 0, threshold, high * 1.1, f"served threshold {threshold:g}")
    return bar_plot(edges.tolist(), counts, frame)


def _int_ticks(high: float) -> list[float]:
    return nice_ticks(0, high, 5, integer=True)


def reliability(rows: list[dict], report: dict) -> Markup:
    """Observed share of ai against mean P(ai), per bin, before and after temperature."""
    labels = np.array([1 if r["label"] == "ai" else 0 for r in rows])
    series = []
    ev = report.get("evaluation") or {}
    for key, name, dashed in (("p_ai_raw", "before temperature", True), ("p_ai", "after temperature", False)):
        probs = np.array([float(r[key]) for r in rows])
        bins = np.minimum((probs * RELIABILITY_BINS).astype(int), RELIABILITY_BINS - 1)
        xs, ys = [], []
        for b in range(RELIABILITY_BINS):
            mine = bins == b
            if mine.any():
                xs.append(float(probs[mine].mean()))
                ys.append(float(labels[mine].mean()))
        ece = ev.get("ece_uncalibrated" if key == "p_ai_raw" else "ece")
        label = f"{name}" + (f" (ECE {ece:.3f})" if isinstance(ece, int | float) else "")
        series.append(Series(label, xs, ys, dashed=dashed))
    temperature = ev.get("temperature")
    title = "reliability" + (f" (T = {temperature:g})" if isinstance(temperature, int | float) else "")
    frame = Frame(title, (0, 1), (0, 1), x_label="mean P(ai) in the bin", y_label="share that is ai")
    return line_plot(series, frame, diagonal="perfect calibration")


def confusion(rows: list[dict], threshold: float) -> tuple[Markup, dict]:
    labels, probs = arrays(rows, "p_ai")
    called = probs >= threshold
    tn, fp = int(((labels == 0) & ~called).sum()), int(((labels == 0) & called).sum())
    fn, tp = int(((labels == 1) & ~called).sum()), int(((labels == 1) & called).sum())
    plot = matrix(
        [[tn, fp], [fn, tp]],
        ["true real", "true ai"],
        ["called real", "called ai"],
        f"confusion at the served threshold, P(ai) ≥ {threshold:g}",
    )
    total = max(1, tn + fp + fn + tp)
    return plot, {"tn": tn, "fp": fp, "fn": fn, "tp": tp, "accuracy": (tn + tp) / total}


def group_rows(groups: Any, suffix: str = "") -> list[Interval]:
    rows = []
    for name, fig in sorted((groups or {}).items()):
        if not isinstance(fig, dict):
            continue
        ci = fig.get("auc_ci95") if isinstance(fig.get("auc_ci95"), list) else None
        n = fig.get("n")
        counts = (
            f"{fig.get('n_real')} real + {fig.get('n_ai')} ai" if "n_real" in fig else (f"n={n}" if n else "")
        )
        note = fig.get("note") or "no AUC"
        rows.append(
            Interval(
                f"{name}{suffix}",
                fig.get("auc") if isinstance(fig.get("auc"), int | float) else None,
                ci[0] if ci else None,
                ci[1] if ci else None,
                f"{note} ({counts})" if counts else note,
            )
        )
    return rows


def robustness(report: dict) -> Markup:
    clean = (report.get("evaluation") or {}).get("auc")
    rows = []
    for name, fig in sorted((report.get("robustness") or {}).items()):
        if not isinstance(fig, dict):
            continue
        drop = fig.get("drop")
        if drop is None and isinstance(fig.get("auc"), int | float) and isinstance(clean, int | float):
            drop = clean - fig["auc"]
        if isinstance(drop, int | float):
            auc = fig.get("auc")
            tip = f"{name}: AUC {auc:.3f}, drop {drop:+.3f}" if isinstance(auc, int | float) else name
            rows.append((name, float(drop), tip))
    return horizontal_bars(rows, "AUC drop under each change (positive: worse)", "AUC lost")


def epochs(report: dict) -> tuple[Markup, Markup]:
    rows = [r for r in ((report.get("training") or {}).get("epochs") or []) if isinstance(r, dict)]
    if not rows:
        text = NEEDS_NEWER.format(what="per-epoch curve (training.epochs)")
        return empty(text), empty(text)
    xs = [float(r.get("epoch") or i + 1) for i, r in enumerate(rows)]
    x_ticks = [(t, f"{t:g}") for t in _epoch_ticks(xs)]
    losses = [
        Series(k, xs, [r.get(k) for r in rows], dashed=k == "val_loss") for k in ("train_loss", "val_loss")
    ]
    values = [v for s in losses for v in s.ys if isinstance(v, int | float)]
    loss_frame = Frame(
        "loss per epoch", (min(xs), max(xs)), (0, max(values or [1]) * 1.1), x_label="epoch", y_label="loss"
    )
    loss_frame.x_ticks = x_ticks
    auc_frame = Frame("validation AUC and accuracy per epoch", (min(xs), max(xs)), (0, 1), x_label="epoch")
    auc_frame.x_ticks = x_ticks
    metrics = [Series(k, xs, [r.get(k) for r in rows], dashed=k == "val_acc") for k in ("val_auc", "val_acc")]
    return line_plot(losses, loss_frame), line_plot(metrics, auc_frame)


def _epoch_ticks(xs: list[float]) -> list[float]:
    return [t for t in nice_ticks(min(xs), max(xs), 6, integer=True) if min(xs) <= t <= max(xs)]


def served_threshold(card: dict | None) -> tuple[float, str]:
    """The threshold the version serves with: model.json's ``threshold`` when it has one, else the
    trainer's decision threshold."""
    value = (card or {}).get("threshold")
    if isinstance(value, int | float) and 0.0 <= value <= 1.0:
        return float(value), "model.json threshold"
    return DECISION_THRESHOLD, "the trainer's decision threshold (model.json has none)"


def model_evidence(report: dict | None, card: dict | None) -> dict[str, Any]:
    """Every plot of the model page, or the sentence that replaces it."""
    report = report or {}
    rows = eval_rows(report)
    threshold, threshold_from = served_threshold(card)
    out: dict[str, Any] = {"threshold": threshold, "threshold_from": threshold_from, "n_images": len(rows)}
    if rows and len({r["label"] for r in rows}) == 2:
        labels, margins = arrays(rows)
        roc = roc_points(labels, margins)
        out["roc"] = roc_plot({"this version": roc})
        out["roc_auc"] = trapezoid_auc(roc)
        pr = pr_points(labels, margins)
        frame = Frame(
            "precision-recall (ai is positive)", (0, 1), (0, 1), x_label="recall", y_label="precision"
        )
        out["pr"] = line_plot(
            [Series("this version", [p[0] for p in pr], [p[1] for p in pr], points=len(pr) <= 40)], frame
        )
        out["histogram"] = histogram(rows, threshold)
        out["reliability"] = reliability(rows, report)
        out["confusion"], out["confusion_counts"] = confusion(rows, threshold)
    else:
        text = NEEDS_NEWER.format(what="per-image scores (evaluation.images)")
        if rows:
            text = "the evaluation set has one class only: no curve can be drawn"
        for key in ("roc", "pr", "histogram", "reliability", "confusion"):
            out[key] = empty(text)
    generators = group_rows(report.get("by_generator")) + group_rows(
        report.get("unseen_generators"), " (held out)"
    )
    sources = group_rows(report.get("by_source")) + group_rows(report.get("unseen_sources"), " (held out)")
    out["by_generator"] = interval_plot(generators, "AUC by generator, 95% interval")
    out["by_source"] = interval_plot(sources, "AUC by source, 95% interval")
    out["robustness"] = (
        robustness(report) if report.get("robustness") else empty("no robustness checks in this report")
    )
    out["loss"], out["auc_curve"] = epochs(report)
    return out


def monitoring(rows: list[dict]) -> Markup:
    """The served version over time (app/monitoring.py): AUC with its interval per ended week, oldest
    at the top, PSI and a degradation in each week's note."""
    if not rows:
        return empty(
            "no monitoring week yet: rows appear once a week of new labelled, scored images has ended"
        )
    out = []
    for row in rows:
        name = f"{row['week']} (n {row['n'].get('real', 0)}+{row['n'].get('ai', 0)}, PSI {row.get('psi')})"
        ci = row.get("auc_ci95") or [None, None]
        note = "too few to evaluate" if row.get("auc") is None else ""
        out.append(
            Interval(("DEGRADED " if row.get("degraded") else "") + name, row.get("auc"), ci[0], ci[1], note)
        )
    return interval_plot(out, "live AUC per week, 95% interval")
