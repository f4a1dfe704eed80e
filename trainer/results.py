"""What a training hands to the other packages, typed once: the registry entry of a version and
``train_model``'s result (a training job's result). No torch here: the app imports it."""

from __future__ import annotations

from typing import Any, TypedDict

# P(ai) at or above this is called "ai" (trainer/evaluate.py scores with it; the console draws the
# confusion matrix at it). Here, without torch, so the app can read it.
DECISION_THRESHOLD = 0.5


class RegistryEntry(TypedDict, total=False):
    """One version in ``models/registry.json`` (``trainer.registry``)."""

    model: str
    version: str
    weights: str  # {model}/{version}/weights.pt, relative to MODELS_DIR
    timestamp: str
    architecture: str
    image_size: int
    sha256: str
    promoted: bool
    promotion_reason: str
    val_acc: float | None
    val_auc: float | None
    val_loss: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    val_auc_ci95: list[float] | None
    eval_n: int
    temperature: float
    ece: float | None
    report: str
    shortcut_warning: str | None
    unseen_generators: Any
    threshold: float | None  # P(ai) >= threshold is "ai" at SERVE_TARGET_FPR (trainer/operating.py)
    threshold_target_fpr: float
    threshold_tpr: float | None
    threshold_tpr_ci95: list[float] | None
    threshold_warning: str | None
    auc_difference: float | None
    auc_difference_ci95: list[float] | None
    compared_with: str | None
    incumbent_metrics: dict[str, Any] | None
    epochs: int
    device: str
    dataset_size: int
    train_size: int
    val_size: int


class TrainResult(RegistryEntry, total=False):
    """``train_model(settings, progress)``: the registered entry plus the run's facts."""

    metrics: dict[str, Any]  # val_acc, val_auc, val_loss, precision, recall, f1, confusion matrix ...
    skipped_images: int  # distinct images that could not be read or decoded
    skipped_ids: list[str]  # the first 50 of them, sorted
    cache: dict[str, Any]  # the training cache's counts (TRAIN_CACHE)
    duration_s: float
    train_losses: list[float]
    class_weights: dict[str, float] | None
    resumed_from_epoch: int | None  # a killed run continued from this epoch (trainer/checkpoint.py)
    linear_probe: dict[str, Any]  # TRAIN_MODE=linear_probe: embedded, reused, features, seconds
    rank: str  # torchrun: "follower" on the ranks other than 0 (trainer/distributed.py)
    world_size: int  # torchrun: the number of ranks that trained
    backbone_warning: str | None  # TRAIN_PRETRAINED=false: the backbone had no pretrained weights
