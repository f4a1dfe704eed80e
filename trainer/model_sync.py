"""What Exposr-Core pulls: the promoted model's version, metrics and where to download its weights.

No torch import: the API answers /models/latest from here.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict

from config.settings import Settings
from trainer.errors import ArtifactMissing, ModelNotFound
from trainer.model_store import ModelRegistry

METRIC_KEYS = ("val_acc", "val_auc", "val_auc_ci95", "val_loss", "precision", "recall", "f1")


class LatestPayload(TypedDict):
    """What ``GET /models/latest`` answers for a registered entry (app/schemas.py ``LatestModel``)."""

    model_version: str
    timestamp: str | None
    metrics: dict[str, Any]
    download_url: str
    model: str
    architecture: str | None
    sha256: str | None
    evaluation: dict[str, Any]  # auc, auc_ci95, n, ece, unseen_generators
    temperature: float
    threshold: float | None
    threshold_target_fpr: float | None
    threshold_tpr: float | None
    threshold_tpr_ci95: list[float] | None
    threshold_warning: str | None
    report_url: str | None


def push_latest_model(config: Settings, at: datetime | None = None) -> LatestPayload | None:
    """{model_version, timestamp, metrics, download_url} of the served model (the ``champion``
    alias), None if there is none; with ``at``, of the version served at that instant.

    Read through the model registry (trainer/model_store.py): MODELS_DIR, or the bucket with
    STORAGE_DRIVER=s3."""
    registry = ModelRegistry(config)
    entry = registry.champion() if at is None else registry.served_at(config.model_name, at)
    return None if entry is None else latest_payload(dict(entry))


def latest_payload(entry: dict) -> LatestPayload:
    """What /models/latest answers for a registered entry."""
    return {
        "model_version": entry["version"],
        "timestamp": entry.get("timestamp"),
        "metrics": {k: entry.get(k) for k in METRIC_KEYS},
        "download_url": f"/models/{entry['model']}/{entry['version']}/weights.pt",
        "model": entry["model"],
        "architecture": entry.get("architecture"),
        "sha256": entry.get("sha256"),
        # Headline figures of honest evaluation (docs/evaluation.md): AUC with its 95 % interval and
        # sample size; P(ai) = softmax(logits / temperature)[ai].
        "evaluation": {
            "auc": entry.get("val_auc"),
            "auc_ci95": entry.get("val_auc_ci95"),
            "n": entry.get("eval_n"),
            "ece": entry.get("ece"),
            "unseen_generators": entry.get("unseen_generators") or {},
        },
        "temperature": entry.get("temperature", 1.0),
        # The operating threshold on calibrated P(ai) at SERVE_TARGET_FPR (docs/evaluation.md);
        # None for versions trained before it was computed.
        "threshold": entry.get("threshold"),
        "threshold_target_fpr": entry.get("threshold_target_fpr"),
        "threshold_tpr": entry.get("threshold_tpr"),
        "threshold_tpr_ci95": entry.get("threshold_tpr_ci95"),
        "threshold_warning": entry.get("threshold_warning"),
        "report_url": (
            f"/models/{entry['model']}/{entry['version']}/report" if entry.get("report") else None
        ),
    }


def why_none_served(entries: list[dict], model_name: str) -> str:
    """What /models/latest and `exposr-trainer predict` say when no version of ``model_name`` is
    served: how many were trained, that none passed the promotion gate, and where the newest one's
    report (which says why) is."""
    mine = [e for e in entries if e.get("model") == model_name and e.get("version")]
    if not mine:
        return (
            f"no {model_name!r} model trained yet: POST /train (or `exposr-trainer train`) once the "
            "dataset is large enough"
        )
    newest = mine[-1]
    versions = f"{mine[0]['version']}" if len(mine) == 1 else f"{mine[0]['version']}..{newest['version']}"
    reason = str(newest.get("promotion_reason") or "").strip()
    return (
        f"no {model_name!r} model is served: {len(mine)} version(s) trained ({versions}), none passed the "
        f"promotion gate; the newest, {newest['version']}: {reason or 'no reason recorded'} "
        f"(report: /models/{model_name}/{newest['version']}/report; score with it anyway: "
        f"`exposr-trainer predict --version {newest['version']}` or "
        f"POST /models/{model_name}/{newest['version']}/predict)"
    )


def get_model_path(config: Settings, model_name: str | None = None, version: str | None = None) -> Path:
    """Path of a registered version's weights.pt (the promoted one when ``version`` is None).

    Raises ModelNotFound when no such version is registered or its weights file is missing; only
    registered names and versions are looked up, so a request cannot point outside models_dir.
    """
    name = model_name or config.model_name
    registry = ModelRegistry.local(config)
    entry = registry.champion(name) if version is None else registry.entry(name, version)
    if entry is None:
        what = "no promoted version" if version is None else f"no version {version!r}"
        raise ModelNotFound(f"model {name!r} has {what} in {config.models_dir / 'registry.json'}")
    try:
        return registry.path(entry, "weights.pt")
    except ArtifactMissing as exc:
        raise ModelNotFound(str(exc)) from exc
