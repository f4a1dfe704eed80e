"""Whether a new version (the challenger) replaces the served one (the champion).

Rule (docs/evaluation.md has a worked example):

1. The challenger's evaluation set needs ``EVAL_MIN_PER_CLASS`` images of each class, and its AUC's
   95 % interval must lie above 0.5; otherwise it is never promoted -- first version included --
   and the reason says how many more images of which class would be needed.
2. With no champion (or one whose files cannot be read) a challenger that passes 1 is promoted.
3. Otherwise both are scored on the evaluation images *neither trained on*: the challenger's
   evaluation set less the champion's recorded training images (``train_ids.json``; a champion
   from before that record only on images that arrived after it was trained). The challenger is
   promoted when the paired DeLong 95 % interval of AUC(challenger) − AUC(champion) has its lower
   end above −``PROMOTION_MARGIN`` (non-inferiority: a model trained on fresher data replaces the
   served one unless it is shown to be worse by more than the margin). Fewer than
   ``EVAL_MIN_PER_CLASS`` comparable images of a class: the champion stays, saying so.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from config.settings import Settings
from trainer.data import Normalizer, StoredImages, eval_transform, evaluation_loader
from trainer.errors import ModelNotFound
from trainer.evaluate import CLASS_INDEX, evaluate
from trainer.modeling import load_artifacts
from trainer.registry import promoted_entry
from trainer.report import Scored
from trainer.stats import AucEstimate, auc_estimate, images_needed, paired_auc_difference

log = logging.getLogger(__name__)

TRAIN_IDS_FILE = "train_ids.json"
# Past this many times the current evaluation set, the reason stops counting images to add and
# says that a better model is the shorter way (the split still fills the evaluation side first).
FEASIBLE_EVAL_GROWTH = 4
AI = CLASS_INDEX["ai"]


def rule_text(settings: Settings) -> str:
    return (
        f"promote when the evaluation set has >= {settings.eval_min_per_class} images per class, the "
        "AUC's 95% lower bound is above 0.5, and (against a champion, on images neither trained on) "
        f"the paired DeLong 95% interval of the AUC difference has its lower end above "
        f"-{settings.promotion_margin}"
    )


def images_to_add(
    wanted: dict[str, int], have: dict[str, int], totals: dict[str, int] | None
) -> dict[str, int]:
    """Labelled images of each class to add so that the evaluation side reaches ``wanted``.

    New images go to the evaluation side first while it is short (trainer/split.py), one for one,
    but a class's evaluation side never holds more than half the class: past that, each evaluation
    image needs one training image beside it. ``totals``: the class sizes (None: no cap known).
    """
    out = {}
    for label, want in wanted.items():
        more = max(0, want - have.get(label, 0))
        if totals is not None and more:
            more = max(more, 2 * want - totals.get(label, 0))
        out[label] = more
    return out


def _add_text(more: dict[str, int]) -> str:
    return " and ".join(f"{n} more {label}" for label, n in more.items() if n > 0)


def chance_check(
    settings: Settings, challenger: Scored, totals: dict[str, int] | None = None
) -> tuple[AucEstimate | None, str | None, dict[str, int] | None]:
    """(estimate, None, None) when the challenger may be promoted on its own; otherwise (estimate,
    reason, the evaluation images per class the gate needs -- ``eval_wanted``, which the next split
    fills first with new images)."""
    labels = (challenger.labels == AI).astype(int)
    n_ai, n_real = int(labels.sum()), int(len(labels) - labels.sum())
    have = {"real": n_real, "ai": n_ai}
    need = settings.eval_min_per_class
    wanted: dict[str, int] | None  # the evaluation images per class the gate needs, when known
    if min(n_real, n_ai) < need:
        wanted = {label: max(n, need) for label, n in have.items()}
        missing = [name for name, n in have.items() if n == 0]
        what = f"lacks the class {', '.join(missing)}" if missing else "is too small to decide"
        return (
            auc_estimate(labels, challenger.margins),
            f"not promoted: the evaluation set {what} ({n_real} real, {n_ai} ai; "
            f"EVAL_MIN_PER_CLASS={need}); add {_add_text(images_to_add(wanted, have, totals))} "
            "labelled image(s) not near-duplicates of the training images (new images go to the "
            "evaluation side until it has enough)",
            wanted,
        )
    est = auc_estimate(labels, challenger.margins)
    assert est is not None  # both classes are present (checked above)
    if est.better_than_chance():
        return est, None, None
    lo, hi = est.ci95
    needed = images_needed(est)
    wanted = None
    if needed is None:
        more = (
            "the model shows no signal: more images will not help unless the labels can be told "
            "apart by pixels"
        )
    elif needed[0] + needed[1] > FEASIBLE_EVAL_GROWTH * (n_real + n_ai):
        # True at this AUC, but no dataset will get there: new images still go to evaluation first
        # (up to half of each class, so training keeps the other half), and the reason says what
        # helps more than images alone.
        wanted = {"real": n_real + needed[1], "ai": n_ai + needed[0]}
        more = (
            f"the model shows little signal: at this AUC about {wanted['real']} real + {wanted['ai']} ai "
            "evaluation images would be needed; new images go to the evaluation side first (up to half "
            "of each class), but a better model is the shorter way -- more labelled images for "
            "training, or a pretrained backbone (TRAIN_PRETRAINED, TRAIN_PRETRAINED_FILE)"
        )
    else:
        wanted = {"real": n_real + needed[1], "ai": n_ai + needed[0]}
        more = (
            f"at this AUC the evaluation side would need {wanted['real']} real + {wanted['ai']} ai "
            f"images: add {_add_text(images_to_add(wanted, have, totals))} labelled image(s) not "
            "near-duplicates of the training images (new images go to the evaluation side first)"
        )
    return (
        est,
        f"not promoted: AUC {est.auc:.3f} [95% CI {lo:.3f}, {hi:.3f}] on {n_real} real + {n_ai} ai "
        f"images cannot be told from chance (lower bound <= 0.5); {more}",
        wanted,
    )


def decide_promotion(
    settings: Settings,
    challenger: Scored,
    eval_data: StoredImages,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    totals: dict[str, int] | None = None,
) -> dict:
    """The decision with its figures: promoted, reason, rule, compared_with, auc_difference (+ CI),
    eval_wanted (evaluation images per class the gate needs; None when it needs no more) ...

    ``totals``: labelled images per class outside the held-out sets (the split's class sizes), so
    that "add N images" accounts for the evaluation side's cap of half a class.
    """
    est, refused, wanted = chance_check(settings, challenger, totals)
    base = {
        "rule": rule_text(settings),
        "auc": None if est is None else round(est.auc, 4),
        "auc_ci95": None if est is None else [round(x, 4) for x in est.ci95],
        "eval_wanted": wanted,
    }
    if refused is not None or est is None:
        return _decision(base, False, refused or "not promoted: no AUC", None)
    incumbent = promoted_entry(settings.models_dir, settings.model_name)
    if incumbent is None:
        return _decision(
            base, True, f"first promoted version of this model: AUC {_ci(est)}, better than chance", None
        )
    folder = settings.models_dir / incumbent["model"] / incumbent["version"]
    try:
        comparable, why = comparable_subset(folder, challenger)
        if comparable is None:
            return _decision(
                base,
                True,
                f"{incumbent['version']} {why}; the challenger passes the chance test (AUC {_ci(est)})",
                incumbent["version"],
            )
        old = score_saved_model(folder, eval_data, comparable, settings, device, amp_dtype)
    # ValueError: a model.json that is not JSON; UnpicklingError: weights torch cannot load.
    except (ModelNotFound, RuntimeError, OSError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        log.warning("promoted %s cannot be scored (%s); promoting the new version", incumbent["version"], exc)
        return _decision(
            base, True, f"promoted {incumbent['version']} could not be scored: {exc}", incumbent["version"]
        )
    return compare_with_champion(settings, base, incumbent["version"], comparable, old, challenger, totals)


def compare_with_champion(
    settings: Settings,
    base: dict,
    version: str,
    new: Scored,
    old: Scored,
    evaluation: Scored | None = None,
    totals: dict[str, int] | None = None,
) -> dict:
    """``evaluation``: the challenger's whole evaluation set (``new`` is its part the champion never
    trained on), to say how many evaluation images a comparison that is too small would need."""
    keep = np.isin([s.id for s in new.samples], [s.id for s in old.samples])
    new = new.subset(keep)
    old_by_id = dict(zip((s.id for s in old.samples), old.margins, strict=True))
    old_scores = np.array([old_by_id[s.id] for s in new.samples])
    labels = (new.labels == AI).astype(int)
    n_ai, n_real = int(labels.sum()), int(len(labels) - labels.sum())
    if min(n_ai, n_real) < settings.eval_min_per_class:
        # New images are never in the champion's training set: each one added to the evaluation
        # side adds one comparable image.
        everyone = evaluation if evaluation is not None else new
        have = {
            "real": int((everyone.labels != AI).sum()),
            "ai": int((everyone.labels == AI).sum()),
        }
        short = {
            "real": max(0, settings.eval_min_per_class - n_real),
            "ai": max(0, settings.eval_min_per_class - n_ai),
        }
        wanted = {label: have[label] + short[label] for label in have}
        return _decision(
            {**base, "eval_wanted": wanted},
            False,
            f"not promoted: only {n_real} real and {n_ai} ai evaluation images were "
            f"never trained on by either model (EVAL_MIN_PER_CLASS={settings.eval_min_per_class}); "
            f"{version} stays; add {_add_text(images_to_add(wanted, have, totals))} labelled image(s) "
            "(new images go to the evaluation side first)",
            version,
            n_compared=len(labels),
        )
    paired = paired_auc_difference(labels, new.margins, old_scores)
    assert paired is not None  # both classes are present (checked above)
    lo, hi = paired.ci()
    promoted = lo > -settings.promotion_margin
    verdict = "promoted" if promoted else "not promoted"
    reason = (
        f"{verdict}: AUC {paired.new.auc:.4f} vs {paired.old.auc:.4f} of {version} on {n_real} real + "
        f"{n_ai} ai images neither trained on; difference {paired.difference:+.4f} "
        f"[95% CI {lo:+.4f}, {hi:+.4f}], margin {settings.promotion_margin}"
    )
    return _decision(
        base,
        promoted,
        reason,
        version,
        n_compared=len(labels),
        difference=paired.difference,
        ci=(lo, hi),
        incumbent={
            "val_auc": round(paired.old.auc, 6),
            "val_auc_ci95": [round(x, 4) for x in paired.old.ci95],
        },
    )


def comparable_subset(folder: Path, challenger: Scored) -> tuple[Scored | None, str | None]:
    """The challenger's evaluation images the champion never trained on, or (None, why not)."""
    record = folder / TRAIN_IDS_FILE
    ids = [s.id for s in challenger.samples]
    if record.is_file():
        trained = set(json.loads(record.read_text(encoding="utf-8")))
        return challenger.subset(~np.isin(ids, list(trained))), None
    card = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    trained_at = card.get("trained_at")
    if not trained_at:
        return None, "has no record of its training images"
    # Trained before this record existed: only images stored after it was trained are safe.
    after = np.array([s.created_at > trained_at for s in challenger.samples], dtype=bool)
    if not after.any():
        return None, (
            "has no record of its training images and every evaluation image is older than it, "
            "so it cannot be scored fairly"
        )
    return challenger.subset(after), None


def score_saved_model(
    folder,
    val_data: StoredImages,
    subset: Scored,
    settings: Settings,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> Scored:
    """Margins of a saved model on the samples of ``subset`` (which index ``val_data`` by id)."""
    model, pre, _ = load_artifacts(folder, device)
    wanted = {s.id for s in subset.samples}
    # subset() keeps the sha256s aligned with the keys: the cached picture read is the image's own
    data = val_data.subset([i for i, sample in enumerate(val_data.samples) if sample.id in wanted])
    data.transform, data.reduce_to, data.quality = eval_transform(pre), pre.decode_side, pre.cache_quality
    scores = evaluate(model, evaluation_loader(data, settings, device), Normalizer(pre, device), amp_dtype)
    return Scored(
        [data.samples[i] for i in scores.positions], np.asarray(scores.labels), np.asarray(scores.margins)
    )


def _decision(
    base: dict,
    promoted: bool,
    reason: str,
    compared_with: str | None,
    *,
    n_compared: int | None = None,
    difference: float | None = None,
    ci: tuple[float, float] | None = None,
    incumbent: dict | None = None,
) -> dict:
    return {
        **base,
        "promoted": promoted,
        "reason": reason,
        "compared_with": compared_with,
        "n_compared": n_compared,
        "auc_difference": None if difference is None else round(difference, 4),
        "auc_difference_ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)],
        "incumbent_metrics": incumbent,
    }


def _ci(est: AucEstimate) -> str:
    lo, hi = est.ci95
    return f"{est.auc:.3f} [95% CI {lo:.3f}, {hi:.3f}] on {est.n_neg} real + {est.n_pos} ai"
