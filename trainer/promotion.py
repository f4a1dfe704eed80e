"""Whether a new version replaces the served one.

Rule (also in README.md): the new model and the currently promoted one are both scored on
the *new* validation split; the new one is promoted when its validation AUC is higher, or equal
(within 1e-6) with a validation loss no higher.  The first version of a model is always promoted;
so is a new one when the promoted version's files are missing or unreadable.
"""

from __future__ import annotations

import copy
import logging
import pickle

import torch

from config.settings import Settings
from trainer.data import Normalizer, StoredImages, eval_transform, make_loader
from trainer.errors import ModelNotFound
from trainer.evaluate import classification_metrics, evaluate
from trainer.modeling import load_artifacts
from trainer.registry import promoted_entry

log = logging.getLogger(__name__)

TIE = 1e-6


def decide_promotion(settings: Settings, metrics: dict, val_data: StoredImages,
                     device: torch.device, amp_dtype: torch.dtype | None) -> dict:
    """{"promoted", "reason", "compared_with", "incumbent_metrics"} for the new model's ``metrics``."""
    incumbent = promoted_entry(settings.models_dir, settings.model_name)
    if incumbent is None:
        return _decision(True, "first promoted version of this model", None, None)
    folder = settings.models_dir / incumbent["model"] / incumbent["version"]
    try:
        old = score_saved_model(folder, val_data, settings, device, amp_dtype)
    # ValueError: a model.json that is not JSON; UnpicklingError: weights torch cannot load.
    except (ModelNotFound, RuntimeError, OSError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        log.warning("promoted %s cannot be scored (%s); promoting the new version", incumbent["version"], exc)
        return _decision(True, f"promoted {incumbent['version']} could not be scored: {exc}",
                         incumbent["version"], None)
    better = at_least_as_good(metrics, old)
    reason = (f"val_auc {_fmt(metrics['val_auc'])} vs {_fmt(old['val_auc'])}, val_loss "
              f"{_fmt(metrics['val_loss'])} vs {_fmt(old['val_loss'])} of {incumbent['version']} "
              "on the same validation split")
    return _decision(better, reason, incumbent["version"], old)


def at_least_as_good(new: dict, old: dict) -> bool:
    """Higher AUC wins; an AUC tie goes to the lower (or equal) loss."""
    new_auc, old_auc = _num(new["val_auc"]), _num(old["val_auc"])
    if abs(new_auc - old_auc) > TIE:
        return new_auc > old_auc
    return _num(new["val_loss"], worst=float("inf")) <= _num(old["val_loss"], worst=float("inf")) + TIE


def score_saved_model(folder, val_data: StoredImages, settings: Settings, device: torch.device,
                      amp_dtype: torch.dtype | None) -> dict:
    """Metrics of a saved model on ``val_data``, with that model's own preprocessing."""
    model, pre, _ = load_artifacts(folder, device)
    data = copy.copy(val_data)
    data.transform, data.reduce_to = eval_transform(pre), pre.decode_side
    loader = make_loader(data, batch_size=settings.train_batch_size, shuffle=False,
                         workers=settings.train_workers, seed=settings.train_seed,
                         pin_memory=device.type == "cuda")
    scores = evaluate(model, loader, Normalizer(pre, device), amp_dtype)
    return classification_metrics(scores.labels, scores.probs, scores.loss)


def _decision(promoted: bool, reason: str, compared_with: str | None, old: dict | None) -> dict:
    return {"promoted": promoted, "reason": reason, "compared_with": compared_with,
            "incumbent_metrics": None if old is None else {
                k: old[k] for k in ("val_acc", "val_auc", "val_loss", "precision", "recall", "f1")}}


def _num(value, worst: float = float("-inf")) -> float:
    return worst if value is None else float(value)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
