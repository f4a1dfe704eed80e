"""Scoring a model on the validation split, and the metrics computed from its scores.

The metric functions are plain numpy so they can be checked against an independent
implementation; ``ai`` is the positive class (class index 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from trainer.results import DECISION_THRESHOLD  # P(ai) at or above this is called "ai"

CLASS_INDEX = {"real": 0, "ai": 1}


@dataclass
class Scores:
    """Model output over a loader: P(ai), true labels and dataset positions, aligned."""

    probs: np.ndarray
    labels: np.ndarray
    margins: np.ndarray  # logit(ai) - logit(real): P(ai) = sigmoid(margin / T), T the temperature
    positions: np.ndarray
    loss: float
    skipped: set[int]  # dataset positions of the images that could not be read


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, prepare, amp_dtype: torch.dtype | None = None) -> Scores:
    """Score every readable image of ``loader`` (batches of images, labels, positions, skipped positions).

    ``prepare`` moves a batch to the model's device and normalises it (trainer.data.Normalizer).
    """
    model.eval()
    probs, labels, positions, margins, loss_sum, skipped = [], [], [], [], 0.0, set()
    for images, targets, where, unreadable in loader:
        skipped.update(unreadable)
        if len(targets) == 0:
            continue
        images = prepare(images)
        with _autocast(images.device, amp_dtype):
            logits = model(images)
        logits = logits.float().cpu()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        probs.append(logits.softmax(dim=1)[:, CLASS_INDEX["ai"]])
        margins.append(logits[:, CLASS_INDEX["ai"]] - logits[:, CLASS_INDEX["real"]])
        labels.append(targets)
        positions.append(where)
    n = sum(len(t) for t in labels)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Scores(np.zeros(0), empty, np.zeros(0), empty, float("nan"), skipped)
    return Scores(
        torch.cat(probs).numpy(),
        torch.cat(labels).numpy(),
        torch.cat(margins).numpy(),
        torch.cat(positions).numpy(),
        loss_sum / n,
        skipped,
    )


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Area under the ROC curve as the Mann-Whitney U statistic, ties counted half (midranks).

    None when one class is absent: the AUC is undefined then.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = midranks(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each tie run
    return (ends - (counts - 1) / 2.0)[inverse]


def classification_metrics(
    labels: ArrayLike, probs: ArrayLike, loss: float, threshold: float = DECISION_THRESHOLD
) -> dict:
    """Accuracy, AUC, precision/recall/F1 for "ai", the confusion matrix and the threshold used."""
    y = np.asarray(labels)
    predicted = (np.asarray(probs) >= threshold).astype(int)
    tp = int(((predicted == 1) & (y == 1)).sum())
    fp = int(((predicted == 1) & (y == 0)).sum())
    fn = int(((predicted == 0) & (y == 1)).sum())
    tn = int(((predicted == 0) & (y == 0)).sum())
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall) if precision is not None and recall else 0.0
    return {
        "val_acc": _ratio(tp + tn, len(y)),
        "val_auc": roc_auc(y, probs),
        "val_loss": None if math.isnan(loss) else float(loss),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "threshold": threshold,
    }


def accuracy_by_source(
    labels: ArrayLike, probs: ArrayLike, sources: Sequence[str], threshold: float = DECISION_THRESHOLD
) -> dict[str, dict]:
    """{source: {"n", "accuracy"}}: shows when one source is easy and another is not."""
    correct = (np.asarray(probs) >= threshold).astype(int) == np.asarray(labels)
    names = np.asarray(sources)
    return {
        str(src): {"n": int((names == src).sum()), "accuracy": float(correct[names == src].mean())}
        for src in sorted(set(names.tolist()))
    }


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None
