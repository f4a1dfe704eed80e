"""Whether a new version (the challenger) replaces the served one (the champion).

Rule (docs/evaluation.md has a worked example):

1. The challenger's evaluation set needs ``EVAL_MIN_PER_CLASS`` images of each class, and its AUC's
   95 % interval must lie above 0.5; otherwise it is never promoted -- first version included --
   and the reason says how many more images of which class would be needed.
2. With no champion (or one whose files cannot be read) a challenger that passes 1 is promoted.
3. Otherwise both are scored on the evaluation images *neither trained on*, by content: the
   challenger's evaluation set less every image with the id or the SHA-256 of one of the
   champion's training images (``train_ids.json``) or in the same split group as one (a crop, a
   flip, a re-post: trainer/copies.py) -- so the same files re-ingested into a new dataset are
   still recognised. A record from before the SHA-256s were kept is completed from the index for
   the ids it still holds, and the reason says when the rest could be excluded by id only; a
   champion from before any record only on images that arrived after it was trained. The challenger is
   promoted when the paired DeLong 95 % interval of AUC(challenger) − AUC(champion) has its lower
   end above −``PROMOTION_MARGIN`` (non-inferiority, which must be *shown*: at small sizes the
   champion stays whatever the challenger; each decision states the difference it could detect at
   80 % power). Fewer than ``EVAL_MIN_PER_CLASS`` comparable images of a class: the champion
   stays, saying so.
4. With at least ``EVAL_MIN_PER_CLASS`` comparable images of held-out generators, the challenger
   must be non-inferior there too (:func:`with_unseen`; ``decided_by`` says which criterion decided).
5. With ``PROMOTION_CONTENT_BASELINE`` the model must also beat the content-only baseline
   (trainer/baseline.py) on the same images, paired, the interval above 0 (:func:`baseline_check`).
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
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
from trainer.results import RegistryEntry
from trainer.stats import AucEstimate, auc_estimate, images_needed, min_detectable, paired_auc_difference

log = logging.getLogger(__name__)

TRAIN_IDS_FILE = "train_ids.json"
# Past this many times the current evaluation set, the reason stops counting images to add and
# says that a better model is the shorter way (the split still fills the evaluation side first).
FEASIBLE_EVAL_GROWTH = 4
AI = CLASS_INDEX["ai"]


@dataclass
class TrainingRecord:
    """What a version trained on (``train_ids.json``): ids, and their SHA-256s where recorded."""

    ids: list[str]
    sha256: list[str] | None  # None: written before the SHA-256s were kept


def training_record(samples: Sequence) -> dict:
    """The ``train_ids.json`` document: ids and SHA-256s of the training images, sorted by id."""
    ordered = sorted(samples, key=lambda s: s.id)
    return {"ids": [s.id for s in ordered], "sha256": [s.sha256 for s in ordered]}


def read_training_record(folder: Path) -> TrainingRecord | None:
    """The record of a version folder; None when it has none. Reads both the current document and
    the older plain list of ids."""
    path = Path(folder) / TRAIN_IDS_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(doc, list):
        return TrainingRecord([str(i) for i in doc], None)
    return TrainingRecord([str(i) for i in doc["ids"]], [str(h) for h in doc["sha256"]])


def rule_text(settings: Settings) -> str:
    baseline = (
        ", the paired 95% interval of AUC(model) - AUC(content-only baseline) lies above 0"
        if settings.promotion_content_baseline
        else ""
    )
    return (
        f"promote when the evaluation set has >= {settings.eval_min_per_class} images per class, the "
        f"AUC's 95% lower bound is above 0.5{baseline}, and (against a champion, on images neither "
        f"trained on by content) the paired DeLong 95% interval of the AUC difference has its lower end "
        f"above -{settings.promotion_margin}, on held-out generators too when they have >= "
        f"{settings.eval_min_per_class} images"
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


def baseline_check(
    settings: Settings, base: dict, challenger: Scored, baseline: np.ndarray
) -> tuple[dict, str | None]:
    """The paired comparison with the content-only baseline (trainer/baseline.py) on the same
    images; with PROMOTION_CONTENT_BASELINE the reason to refuse when the model does not beat it."""
    labels = (challenger.labels == AI).astype(int)
    paired = paired_auc_difference(labels, challenger.margins, baseline)
    if paired is None:
        return base, None
    lo, hi = paired.ci()
    base = {
        **base,
        "content_baseline_auc": round(paired.old.auc, 4),
        "model_minus_baseline": round(paired.difference, 4),
        "model_minus_baseline_ci95": [round(lo, 4), round(hi, 4)],
    }
    if not settings.promotion_content_baseline or lo > 0:
        return base, None
    return base, (
        f"not promoted: no better than a content-only baseline: AUC {paired.new.auc:.4f} vs "
        f"{paired.old.auc:.4f} of a logistic regression on 8x8 colour thumbnails, on the same "
        f"{len(labels)} images; difference {paired.difference:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}] "
        "(must lie above 0): the model may see what is pictured, not how it was made"
    )


def decide_promotion(
    settings: Settings,
    challenger: Scored,
    eval_data: StoredImages,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    totals: dict[str, int] | None = None,
    dataset: Sequence = (),
    group_of: dict[str, str] | None = None,
    unseen: tuple[StoredImages, Scored] | None = None,
    baseline_scores: np.ndarray | None = None,
) -> dict:
    """The decision with its figures: promoted, reason, rule, compared_with, auc_difference (+ CI),
    eval_wanted (evaluation images per class the gate needs; None when it needs no more) ...

    ``totals``: labelled images per class outside the held-out sets (the split's class sizes), so
    that "add N images" accounts for the evaluation side's cap of half a class.
    ``dataset`` (every labelled sample) and ``group_of`` (the split's groups) let the champion's
    training images be excluded by content and group, not by id alone. ``unseen``: the held-out
    images and the challenger's scores on them; the images of held-out generators enter the
    decision when there are at least ``EVAL_MIN_PER_CLASS`` of them (:func:`with_unseen`)."""
    est, refused, wanted = chance_check(settings, challenger, totals)
    base = _base_figures(settings, est, wanted)
    if refused is not None or est is None:
        return _decision(base, False, refused or "not promoted: no AUC", None)
    if baseline_scores is not None:
        base, refused = baseline_check(settings, base, challenger, baseline_scores)
        if refused is not None:
            return _decision(base, False, refused, None)
    incumbent = promoted_entry(settings.models_dir, settings.model_name)
    if incumbent is None:
        return _decision(
            base, True, f"first promoted version of this model: AUC {_ci(est)}, better than chance", None
        )
    return against_champion(
        settings,
        base,
        est,
        incumbent,
        challenger,
        eval_data,
        device,
        amp_dtype,
        totals,
        dataset,
        group_of,
        unseen,
    )


def _base_figures(settings: Settings, est: AucEstimate | None, wanted: dict[str, int] | None) -> dict:
    """The decision's figures before any comparison: the rule, the AUC against chance, its power."""
    return {
        "rule": rule_text(settings),
        "auc": None if est is None else round(est.auc, 4),
        "auc_ci95": None if est is None else [round(x, 4) for x in est.ci95],
        "eval_wanted": wanted,
        # Power (80 %) at this size: the AUC gain over chance the chance test could show.
        "min_detectable_auc_above_chance": None if est is None else round(min_detectable(est.variance), 4),
        "min_detectable_auc_difference": None,
    }


def against_champion(
    settings: Settings,
    base: dict,
    est: AucEstimate,
    incumbent: RegistryEntry,
    challenger: Scored,
    eval_data: StoredImages,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    totals: dict[str, int] | None,
    dataset: Sequence,
    group_of: dict[str, str] | None,
    unseen: tuple[StoredImages, Scored] | None,
) -> dict:
    """The decision against the served version: scored on the images neither trained on (paired
    DeLong, then the held-out generators); promoted when the champion cannot be scored at all."""
    folder = settings.models_dir / incumbent["model"] / incumbent["version"]
    try:
        comparable, why, excluded = comparable_subset(folder, challenger, dataset, group_of or {})
        base = {**base, "excluded_from_comparison": excluded}
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
    decision = compare_with_champion(
        settings, base, incumbent["version"], comparable, old, challenger, totals
    )
    decision = _unseen_part(
        settings,
        decision,
        folder,
        incumbent["version"],
        comparable,
        old,
        unseen,
        dataset,
        group_of,
        device,
        amp_dtype,
    )
    if excluded.get("note"):
        decision["reason"] += f"; {excluded['note']}"
    return decision


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
        everyone = evaluation if evaluation is not None else new
        return _too_few_comparable(settings, base, version, n_real, n_ai, everyone, totals)
    paired = paired_auc_difference(labels, new.margins, old_scores)
    assert paired is not None  # both classes are present (checked above)
    lo, hi = paired.ci()
    detectable = min_detectable(paired.variance)
    base = {**base, "min_detectable_auc_difference": round(detectable, 4)}
    promoted = lo > -settings.promotion_margin
    verdict = "promoted" if promoted else "not promoted"
    reason = (
        f"{verdict}: AUC {paired.new.auc:.4f} vs {paired.old.auc:.4f} of {version} on {n_real} real + "
        f"{n_ai} ai images neither trained on; difference {paired.difference:+.4f} "
        f"[95% CI {lo:+.4f}, {hi:+.4f}], margin {settings.promotion_margin}; at this size only a "
        f"difference of about {detectable:.3f} would be detected (80% power)"
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


def _too_few_comparable(
    settings: Settings,
    base: dict,
    version: str,
    n_real: int,
    n_ai: int,
    everyone: Scored,
    totals: dict[str, int] | None,
) -> dict:
    """Not promoted: too few images neither model trained on; how many evaluation images to add."""
    # New images are never in the champion's training set: each one added to the evaluation
    # side adds one comparable image.
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
        n_compared=n_real + n_ai,
    )


def _unseen_part(
    settings: Settings,
    decision: dict,
    folder: Path,
    version: str,
    comparable: Scored,
    old: Scored,
    unseen: tuple[StoredImages, Scored] | None,
    dataset: Sequence,
    group_of: dict[str, str] | None,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict:
    """Scores the champion on the held-out generators' images (never trained on by either, by
    content) and applies :func:`with_unseen`; the real side is the comparison's real images."""
    if unseen is None or decision.get("n_compared") is None:
        return with_unseen(settings, decision, version, None, None)
    data, held = unseen
    wanted = set(settings.holdout_generators)
    ai = np.array([s.generator in wanted for s in held.samples], dtype=bool) & (held.labels == AI)
    held_ai, _, _ = comparable_subset(folder, held.subset(ai), dataset, group_of)
    if held_ai is None or len(held_ai.labels) < settings.eval_min_per_class:
        return with_unseen(settings, decision, version, held_ai, None)
    try:
        old_ai = score_saved_model(folder, data, held_ai, settings, device, amp_dtype)
    except (ModelNotFound, RuntimeError, OSError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        log.warning("promoted %s cannot be scored on the held-out generators (%s)", version, exc)
        return with_unseen(settings, decision, version, None, None)
    in_both = {s.id for s in old.samples}
    real = np.array([s.id in in_both for s in comparable.samples], dtype=bool) & (comparable.labels != AI)
    new_real = comparable.subset(real)
    old_by_id = dict(zip((s.id for s in old.samples), old.margins, strict=True))
    scored_ai = {s.id for s in old_ai.samples}
    new_ai = held_ai.subset(np.array([s.id in scored_ai for s in held_ai.samples], dtype=bool))
    old_ai_by_id = dict(zip((s.id for s in old_ai.samples), old_ai.margins, strict=True))
    new_all = Scored(
        new_real.samples + new_ai.samples,
        np.concatenate([new_real.labels, new_ai.labels]),
        np.concatenate([new_real.margins, new_ai.margins]),
    )
    old_all = Scored(
        new_all.samples,
        new_all.labels,
        np.array([old_by_id[s.id] for s in new_real.samples] + [old_ai_by_id[s.id] for s in new_ai.samples]),
    )
    return with_unseen(settings, decision, version, new_all, old_all)


def with_unseen(
    settings: Settings, decision: dict, version: str, new: Scored | None, old: Scored | None
) -> dict:
    """Adds the unseen-generator criterion to an in-distribution decision against a champion.

    ``new``/``old``: both models' scores on the same images -- the held-out generators' AI images
    and the comparison's real images. With at least ``EVAL_MIN_PER_CLASS`` of each class the
    challenger must also be non-inferior there (paired DeLong, the same margin); ``decided_by``
    says which criterion decided: ``in-distribution``, ``unseen generators`` or ``both``.
    """
    out = {**decision, "unseen_generators": None, "decided_by": "in-distribution"}
    if decision.get("n_compared") is None or new is None or old is None:
        n_ai = 0 if new is None else int((new.labels == AI).sum())
        out["unseen_generators"] = {
            "used": False,
            "note": f"not in the decision: {n_ai} comparable images of held-out generators "
            f"(EVAL_HOLDOUT_GENERATORS; at least EVAL_MIN_PER_CLASS={settings.eval_min_per_class} needed)",
        }
        return out
    labels = (new.labels == AI).astype(int)
    n_ai, n_real = int(labels.sum()), int(len(labels) - labels.sum())
    if min(n_ai, n_real) < settings.eval_min_per_class:
        out["unseen_generators"] = {
            "used": False,
            "note": f"not in the decision: {n_ai} ai and {n_real} real comparable images "
            f"(at least EVAL_MIN_PER_CLASS={settings.eval_min_per_class} of each needed)",
        }
        return out
    paired = paired_auc_difference(labels, new.margins, old.margins)
    assert paired is not None  # both classes are present (checked above)
    lo, hi = paired.ci()
    ok = lo > -settings.promotion_margin
    out["unseen_generators"] = {
        "used": True,
        "n_real": n_real,
        "n_ai": n_ai,
        "auc": round(paired.new.auc, 4),
        "incumbent_auc": round(paired.old.auc, 4),
        "auc_difference": round(paired.difference, 4),
        "auc_difference_ci95": [round(lo, 4), round(hi, 4)],
        "min_detectable_auc_difference": round(min_detectable(paired.variance), 4),
    }
    in_dist = bool(decision["promoted"])
    out["promoted"] = in_dist and ok
    out["decided_by"] = "both" if in_dist == ok else ("unseen generators" if in_dist else "in-distribution")
    what = (
        f"on held-out generators AUC {paired.new.auc:.4f} vs {paired.old.auc:.4f} of {version} "
        f"({n_real} real + {n_ai} ai), difference {paired.difference:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}]"
    )
    if in_dist and not ok:
        out["reason"] = (
            f"not promoted: worse than {version} on unseen generators by more than the margin "
            f"{settings.promotion_margin}: {what}; in-distribution it passed ({decision['reason']})"
        )
    else:
        out["reason"] = f"{decision['reason']}; {what}"
    return out


def comparable_subset(
    folder: Path, challenger: Scored, dataset: Sequence = (), group_of: dict[str, str] | None = None
) -> tuple[Scored | None, str | None, dict]:
    """The challenger's evaluation images the champion never trained on -- by id, SHA-256 and split
    group -- or (None, why not); with what was excluded for which reason."""
    group_of = group_of or {}
    record = read_training_record(folder)
    if record is not None:
        return _exclude_trained(record, challenger, dataset, group_of)
    excluded = {"same_id": 0, "same_sha256": 0, "same_group": 0, "basis": "arrival time", "note": None}
    card = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    trained_at = card.get("trained_at")
    if not trained_at:
        return None, "has no record of its training images", excluded
    # Trained before this record existed: only images stored after it was trained are safe.
    after = np.array([s.created_at > trained_at for s in challenger.samples], dtype=bool)
    if not after.any():
        return (
            None,
            (
                "has no record of its training images and every evaluation image is older than it, "
                "so it cannot be scored fairly"
            ),
            excluded,
        )
    return challenger.subset(after), None, excluded


def _exclude_trained(
    record: TrainingRecord, challenger: Scored, dataset: Sequence, group_of: dict[str, str]
) -> tuple[Scored | None, str | None, dict]:
    """The challenger's images less those whose id, SHA-256 or split group the record names."""
    ids = [s.id for s in challenger.samples]
    trained_ids = set(record.ids)
    note = None
    if record.sha256 is not None:
        trained_sha = set(record.sha256)
    else:  # an older record: the SHA-256s of the ids the index still holds
        by_id = {s.id: s.sha256 for s in dataset}
        trained_sha = {by_id[i] for i in trained_ids if i in by_id}
        unknown = len(trained_ids) - len(trained_sha)
        if unknown:
            note = (
                f"{unknown} of the champion's {len(trained_ids)} training images are no longer in "
                "the index and its record has no SHA-256s: those are excluded by id only"
            )
    # Groups (in today's split) holding a training image of the champion, found by content.
    trained_groups = {
        group_of[s.id]
        for s in dataset
        if (s.sha256 in trained_sha or s.id in trained_ids) and s.id in group_of
    }
    same_id = np.isin(ids, list(trained_ids))
    same_sha = np.array([s.sha256 in trained_sha for s in challenger.samples], dtype=bool) & ~same_id
    same_group = (
        np.array([group_of.get(s.id) in trained_groups for s in challenger.samples], dtype=bool)
        & ~same_id
        & ~same_sha
    )
    keep = ~(same_id | same_sha | same_group)
    excluded = {
        "same_id": int(same_id.sum()),
        "same_sha256": int(same_sha.sum()),
        "same_group": int(same_group.sum()),
        "basis": "ids only" if record.sha256 is None and note else "content",
        "note": note,
    }
    return challenger.subset(keep), None, excluded


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
