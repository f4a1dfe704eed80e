"""Data for the console tests: registered model versions and images with chosen metadata.

Versions are registered with the trainer's own registry functions (staging folder, commit), with
a small weights file: the console only reads the registry, the cards and the reports.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.images import encode, jpeg, scene
from trainer.registry import commit_version, make_staging_dir

EVIL = "<script>alert('x')</script>"


def report_for(
    version: str,
    auc: float,
    promoted: bool = False,
    compared_with: str | None = "v1",
    reason: str = "AUC below the served version's",
) -> dict:
    """A report.json shaped as design.md section 9 describes."""
    return {
        "version": version,
        "evaluation": {
            "image_ids": ["a", "b"],
            "n": {"real": 12, "ai": 9},
            "auc": auc,
            "auc_ci95": [auc - 0.05, auc + 0.03],
            "acc": 0.81,
            "ece": 0.04,
            "ece_uncalibrated": 0.11,
            "temperature": 1.7,
        },
        "by_generator": {"SDXL 1.0": {"n": 5, "auc": 0.95, "auc_ci95": [0.9, 0.98]}},
        "by_source": {"pexels": {"n": 6, "auc": 0.94}},
        "unseen_generators": {"Flux.1 D": {"n": 3, "auc": 0.71, "auc_ci95": [0.6, 0.8]}},
        "robustness": {"jpeg65": {"auc": 0.91}},
        "shortcut": {"metadata_probe_auc": 0.62, "format_swap_auc": 0.5, "warning": None},
        "promotion": {
            "promoted": promoted,
            "rule": "AUC not worse than the served version's",
            "compared_with": compared_with,
            "auc_difference": -0.03,
            "auc_difference_ci95": [-0.07, 0.01],
            "reason": reason,
        },
    }


def register_version(
    models_dir: Path,
    *,
    val_auc: float,
    promoted: bool,
    reason: str,
    compared_with: str | None = None,
    report: dict | None = None,
    **extra,
) -> dict:
    staging = make_staging_dir(models_dir)
    weights = b"not a real state dict, the console never loads it " + str(val_auc).encode()
    (staging / "weights.pt").write_bytes(weights)
    sha = hashlib.sha256(weights).hexdigest()
    card = {
        "model": "vit",
        "architecture": "resnet10t",
        "image_size": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "class_index": {"real": 0, "ai": 1},
        "num_classes": 2,
        "positive_class": "ai",
        "weights_file": "weights.pt",
        "sha256": sha,
        "metrics": {"val_auc": val_auc},
    }
    (staging / "model.json").write_text(json.dumps(card))
    if report is not None:
        (staging / "report.json").write_text(json.dumps(report))
    entry = {
        "model": "vit",
        "timestamp": "2026-11-01T10:00:00Z",
        "dataset_size": 40,
        "train_size": 36,
        "val_size": 4,
        "val_auc": val_auc,
        "val_acc": val_auc - 0.1,
        "val_loss": 0.5,
        "precision": 0.8,
        "recall": 0.7,
        "f1": 0.75,
        "architecture": "resnet10t",
        "sha256": sha,
        "promoted": promoted,
        "promotion_reason": reason,
        **extra,
    }
    return commit_version(models_dir, staging, entry, compared_with=compared_with)


def image_bytes(seed: int) -> bytes:
    return encode(scene(seed), "PNG") if seed % 2 else jpeg(seed)


__all__ = ["EVIL", "image_bytes", "register_version", "report_for", "scene"]
