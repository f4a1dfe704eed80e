"""The end-of-training summary as a rich Table, for the CLI (which prints it)."""

from __future__ import annotations

from rich.table import Table

_ROWS = (
    ("val_auc", "validation AUC"),
    ("val_acc", "validation accuracy"),
    ("val_loss", "validation loss"),
    ("precision", "precision (ai)"),
    ("recall", "recall (ai)"),
    ("f1", "F1 (ai)"),
)


def summary_table(result: dict) -> Table:
    """Version, promotion, sizes, metrics, confusion matrix and per-source accuracy of a training."""
    table = Table(title=f"Training {result.get('model')} {result.get('version')}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row(
        "promoted", _decision(bool(result.get("promoted")), str(result.get("promotion_reason") or ""))
    )
    table.add_row("architecture", str(result.get("architecture")))
    table.add_row(
        "images",
        f"{result.get('dataset_size')} ({result.get('train_size')} train, "
        f"{result.get('val_size')} validation, {result.get('skipped_images', 0)} skipped)",
    )
    metrics = result.get("metrics", {})
    for key, label in _ROWS:
        table.add_row(label, _fmt(metrics.get(key)))
    ci, n = result.get("val_auc_ci95"), result.get("eval_n")
    if ci:
        sizes = f" on {n.get('real')} real + {n.get('ai')} ai" if isinstance(n, dict) else ""
        table.add_row("AUC 95% interval", f"[{_fmt(ci[0])}, {_fmt(ci[1])}]{sizes} (report.json)")
    if result.get("shortcut_warning"):
        table.add_row("shortcut audit", f"[yellow]{result['shortcut_warning']}[/yellow]")
    cm = metrics.get("confusion_matrix")
    if cm:
        table.add_row(
            "confusion (threshold {:.2f})".format(metrics.get("threshold", 0.5)),
            f"real→real {cm['tn']}, real→ai {cm['fp']}, ai→real {cm['fn']}, ai→ai {cm['tp']}",
        )
    for source, row in sorted(metrics.get("by_source", {}).items()):
        table.add_row(f"accuracy on {source}", f"{_fmt(row['accuracy'])} (n={row['n']})")
    table.add_row("weights", f"{result.get('weights')} sha256 {str(result.get('sha256'))[:12]}…")
    if "duration_s" in result:
        table.add_row("duration", f"{result['duration_s']} s")
    return table


def _decision(promoted: bool, reason: str) -> str:
    """ "no: AUC 0.61 ..." -- the reason's own "not promoted:" would say it twice."""
    answer = "yes" if promoted else "no"
    for prefix in ("not promoted: ", "promoted: "):
        if reason.startswith(prefix):
            reason = reason[len(prefix) :]
            break
    return f"{answer}: {reason}" if reason else answer


def _fmt(value) -> str:
    """Three decimals: an AUC or accuracy on tens to thousands of evaluation images means no more."""
    return "n/a" if value is None else f"{value:.3f}"
