"""A trained version on its way into the registry: ``NewVersion`` gathers once what its
``model.json`` and its registry entry say of it, ``register()`` writes its files into the staging
folder and commits them (trainer/registry.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from config.clock import iso_seconds
from config.settings import Settings
from dataset.manager import Sample
from trainer.data import Preprocessing
from trainer.modeling import save_artifacts
from trainer.operating import served_threshold
from trainer.promotion import TRAIN_IDS_FILE, training_record
from trainer.registry import commit_version, write_json_atomic
from trainer.report import headline
from trainer.results import RegistryEntry

REPORT_FILE = "report.json"
METRICS_IN_REGISTRY = ("val_acc", "val_auc", "val_loss", "precision", "recall", "f1")


@dataclass(frozen=True)
class NewVersion:
    """A trained, evaluated version before it is committed."""

    settings: Settings
    metrics: dict  # the evaluation's metrics (trainer.report.EvalResult.metrics)
    sizes: dict[str, int]  # dataset_size, train_size, val_size
    report: dict  # report.json, promotion section included
    device: str  # "cpu" or "cuda"

    @property
    def promotion(self) -> dict:
        return self.report["promotion"]

    def threshold(self) -> dict:
        """The served threshold at SERVE_TARGET_FPR, as model.json and the registry carry it."""
        return served_threshold(self.report["operating_points"], self.settings.serve_target_fpr)

    def model_json(self) -> dict:
        """The training's facts in model.json (trainer.modeling.save_artifacts adds the rest)."""
        settings = self.settings
        return {
            "model": settings.model_name,
            "architecture": settings.train_arch,
            "metrics": self.metrics,
            **self.sizes,
            "seed": settings.train_seed,
            "epochs": settings.train_epochs,
            "trained_at": iso_seconds(),
            "temperature": self.report["evaluation"]["temperature"],
            "train_mode": settings.train_mode,
            "ema_decay": settings.train_ema_decay or None,
            "evaluation": headline(self.report),
            **self.threshold(),
        }

    def registry_entry(self, sha256: str) -> RegistryEntry:
        """The version's row in models/registry.json (commit_version adds its name and weights)."""
        settings, report, promotion = self.settings, self.report, self.promotion
        ev = report["evaluation"]
        entry = {
            "val_auc_ci95": ev["auc_ci95"],
            "eval_n": ev["n"],
            "temperature": ev["temperature"],
            "ece": ev["ece"],
            "report": REPORT_FILE,
            "shortcut_warning": report["shortcut"]["warning"],
            "unseen_generators": headline(report)["unseen_generators"],
            **self.threshold(),
            "model": settings.model_name,
            "timestamp": iso_seconds(),
            **self.sizes,
            **{k: self.metrics[k] for k in METRICS_IN_REGISTRY},
            "architecture": settings.train_arch,
            "image_size": settings.train_image_size,
            "sha256": sha256,
            "promoted": promotion["promoted"],
            "promotion_reason": promotion["reason"],
            "auc_difference": promotion["auc_difference"],
            "auc_difference_ci95": promotion["auc_difference_ci95"],
            "compared_with": promotion["compared_with"],
            "incumbent_metrics": promotion["incumbent_metrics"],
            "eval_wanted": promotion.get("eval_wanted"),
            "epochs": settings.train_epochs,
            "device": self.device,
        }
        return cast(RegistryEntry, entry)


def register(
    staging: Path, version: NewVersion, model: torch.nn.Module, pre: Preprocessing, train_set: list[Sample]
) -> RegistryEntry:
    """Weights, model.json, report.json and train_ids.json into ``staging``, then committed as the
    next version (with its champion row when promoted); returns the committed entry."""
    sha256 = save_artifacts(staging, model, pre, version.model_json())
    write_json_atomic(staging / REPORT_FILE, version.report)
    write_json_atomic(staging / TRAIN_IDS_FILE, training_record(train_set))
    entry = commit_version(
        version.settings.models_dir,
        staging,
        dict(version.registry_entry(sha256)),
        compared_with=version.promotion["compared_with"],
    )
    return cast(RegistryEntry, entry)
