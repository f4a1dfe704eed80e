"""Data for the console tests: registered model versions and images with chosen metadata.

Versions are registered with the trainer's own registry functions (staging folder, commit), with
a small weights file: the console only reads the registry, the cards and the reports.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from pathlib import Path

import numpy as np

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


def image_rows(seed: int, n_real: int = 30, n_ai: int = 30, ids: list[str] | None = None, skill: float = 1.5):
    """Per-image evaluation rows as report.json keeps them (trainer/report.py per_image_scores): a
    model of some skill (margins of ai images shifted up by ``skill``), temperature 1.5."""
    rng = np.random.default_rng(seed)
    labels = ["real"] * n_real + ["ai"] * n_ai
    ids = ids or [str(uuid.UUID(int=i + 1)) for i in range(len(labels))]
    rows = []
    for image_id, label in zip(ids, labels, strict=True):
        margin = float(rng.normal(skill if label == "ai" else -skill / 2, 1.5))
        rows.append(
            {
                "id": image_id,
                "sha256": hashlib.sha256(image_id.encode()).hexdigest(),
                "label": label,
                "generator": ("SDXL 1.0" if int(image_id[-1], 16) % 2 else "Flux.1 D")
                if label == "ai"
                else "camera",
                "source": "pexels" if label == "real" else "civitai",
                "margin": round(margin, 6),
                "p_ai_raw": round(1 / (1 + math.exp(-margin)), 6),
                "p_ai": round(1 / (1 + math.exp(-margin / 1.5)), 6),
            }
        )
    return sorted(rows, key=lambda r: r["id"])


def epoch_rows(epochs: int = 4) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": round(0.7 / e, 4),
            "val_loss": round(0.6 / e + 0.1, 4),
            "val_auc": round(0.6 + 0.08 * e, 4),
            "val_acc": round(0.55 + 0.07 * e, 4),
            "lr": 0.001,
        }
        for e in range(1, epochs + 1)
    ]


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
