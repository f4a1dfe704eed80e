"""Two registered versions side by side, from their registry entries, cards and reports (no torch).

The paired AUC difference is promotion's own test (trainer.stats.paired_auc_difference, the paired
DeLong interval that trainer/promotion.py decides with), computed here from the per-image margins
both reports kept, on the images *both* versions evaluated. An image's side of the split is decided
once and never moves (trainer/split.py), so an image in both evaluation sets was trained on by
neither. Nothing is scored again: a version whose report has no per-image rows cannot be compared
this way, and the page says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.ui.evidence import eval_rows, roc_plot, roc_points
from trainer.stats import paired_auc_difference

SIDE_BY_SIDE = (
    ("val_auc", "AUC"),
    ("val_acc", "accuracy"),
    ("f1", "F1"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("val_loss", "validation loss"),
    ("ece", "ECE (after temperature)"),
    ("temperature", "temperature"),
    ("eval_n", "evaluation images"),
)
CHANGES = (
    ("dataset_size", "dataset size"),
    ("train_size", "training images"),
    ("val_size", "evaluation images"),
    ("architecture", "architecture"),
    ("image_size", "image size"),
    ("epochs", "epochs"),
    ("device", "device"),
)
# Card fields that describe how a version was trained (model.json); the rest is identity or checksums.
CARD_SKIP = {"sha256", "weights_file", "version", "model", "metrics", "trained_at", "timestamp"}


def side_by_side(a: dict, b: dict) -> list[dict]:
    rows = []
    for key, title in SIDE_BY_SIDE:
        va, vb = a.get(key), b.get(key)
        if va is None and vb is None:
            continue
        row = {"title": title, "a": va, "b": vb, "a_ci": None, "b_ci": None}
        if key == "val_auc":
            row["a_ci"], row["b_ci"] = a.get("val_auc_ci95"), b.get("val_auc_ci95")
        rows.append(row)
    return rows


def changes(entry_a: dict, entry_b: dict, card_a: dict | None, card_b: dict | None) -> list[dict]:
    """What differs between the two trainings: data sizes, architecture, settings."""
    out = []
    for key, title in CHANGES:
        va, vb = entry_a.get(key), entry_b.get(key)
        if va != vb:
            out.append({"what": title, "a": va, "b": vb})
    card_a, card_b = card_a or {}, card_b or {}
    for key in sorted((set(card_a) | set(card_b)) - CARD_SKIP - {k for k, _ in CHANGES}):
        va, vb = card_a.get(key), card_b.get(key)
        if va != vb:
            out.append({"what": f"model.json {key}", "a": va, "b": vb})
    return out


def paired(report_a: dict | None, report_b: dict | None) -> dict[str, Any]:
    """AUC(b) - AUC(a) with its paired 95 % interval on the images both evaluated, or why not."""
    rows_a = {r["id"]: r for r in eval_rows(report_a)}
    rows_b = {r["id"]: r for r in eval_rows(report_b)}
    missing = [name for name, rows in (("first", rows_a), ("second", rows_b)) if not rows]
    if missing:
        return {
            "ok": False,
            "why": f"the {' and '.join(missing)} version's report has no per-image scores "
            "(evaluation.images): it was trained before reports kept them; train a newer version",
        }
    common = sorted(set(rows_a) & set(rows_b))
    relabelled = [i for i in common if rows_a[i]["label"] != rows_b[i]["label"]]
    common = [i for i in common if rows_a[i]["label"] == rows_b[i]["label"]]
    labels = np.array([1 if rows_b[i]["label"] == "ai" else 0 for i in common], dtype=np.int64)
    n_ai, n_real = int(labels.sum()), int(len(labels) - labels.sum())
    base = {"n_common": len(common), "n_real": n_real, "n_ai": n_ai, "n_relabelled": len(relabelled)}
    if n_ai == 0 or n_real == 0:
        return {
            **base,
            "ok": False,
            "why": f"the two evaluation sets share {len(common)} images ({n_real} real, {n_ai} ai): "
            "both classes are needed for an AUC",
        }
    a = np.array([float(rows_a[i]["margin"]) for i in common])
    b = np.array([float(rows_b[i]["margin"]) for i in common])
    result = paired_auc_difference(labels, b, a)
    assert result is not None  # both classes are present (checked above)
    lo, hi = result.ci()
    plot = roc_plot(
        {"first": roc_points(labels, a), "second": roc_points(labels, b)},
        title=f"ROC of both versions on the {len(common)} images both evaluated",
    )
    return {
        **base,
        "ok": True,
        "auc_a": result.old.auc,
        "auc_b": result.new.auc,
        "auc_a_ci": result.old.ci95,
        "auc_b_ci": result.new.ci95,
        "difference": result.difference,
        "ci": (lo, hi),
        "roc": plot,
    }
