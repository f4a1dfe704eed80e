"""The evaluation report (models/{name}/{version}/report.json): every figure with its sample size
and 95 % interval, computed only on images the model never trained on.

Sections (docs/evaluation.md explains each with a worked example): ``evaluation`` (AUC, interval,
accuracy, calibration, the exact evaluation ids), ``by_generator`` and ``by_source`` (AUC per
group), ``unseen_generators`` / ``unseen_sources`` (held out of training entirely),
``robustness`` (JPEG q=65, half size, both, and the laundering chains of trainer/launder.py),
``shortcut`` (metadata-only probe before training, format-swap probe after), ``promotion``
(trainer/promotion.py). ``audit()`` runs the metadata probe before training; ``build_report()``
scores the fitted model and assembles the report.

AUC of a group: the group's images of one class against the evaluation images of the other class
(a generator's AI images against all real evaluation images; a camera's real photos against all AI
evaluation images); a group that has both classes is scored on its own images only. Fewer than
``SUBGROUP_MIN_PER_CLASS`` images of a class: ``"too few to evaluate"`` with the counts.
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from config.clock import iso_seconds
from config.progress import Progress
from config.settings import Settings
from dataset.facts import has_exif
from dataset.manager import Sample
from dataset.storage import StorageDriver, StorageError
from trainer.data import Preprocessing, StoredImages, eval_transform, make_loader
from trainer.evaluate import CLASS_INDEX, DECISION_THRESHOLD, evaluate
from trainer.future import FutureChoice, by_month
from trainer.launder import CHAINS, LAUNDER_MAX_IMAGES, Launder
from trainer.loaders import stored_images
from trainer.modeling import Network
from trainer.operating import TARGET_FPRS, operating_points
from trainer.progress import stage
from trainer.sides import Sides
from trainer.split import SplitPlan, leakage, order_key
from trainer.stats import (
    auc_estimate,
    cross_validated_auc,
    expected_calibration_error,
    fit_temperature,
    sigmoid,
)

log = logging.getLogger(__name__)

SUBGROUP_MIN_PER_CLASS = 5
# A temperature fitted on fewer images than this (or on one class) would be noise: T stays 1.
# Measured on the acceptance pictures: T fitted on 10 images moved ECE from 0.23 to 0.33.
CALIBRATION_MIN_IMAGES = 30
FORMAT_SWAP_MAX_IMAGES = 200  # the format-swap probe scores at most this many evaluation images twice
ROBUSTNESS = {  # name -> what is done to the decoded picture before the evaluation transform
    "jpeg65": ("jpeg", 65, 1.0),
    "resize50": (None, None, 0.5),
    "jpeg65_resize50": ("jpeg", 65, 0.5),
}
AI = CLASS_INDEX["ai"]


@dataclass
class Scored:
    """Scores of a set of samples, aligned: the samples that could be read, their labels and margins."""

    samples: list
    labels: np.ndarray
    margins: np.ndarray

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        return sigmoid(self.margins / temperature)

    def subset(self, keep: np.ndarray) -> Scored:
        return Scored(
            [s for s, k in zip(self.samples, keep, strict=True) if k], self.labels[keep], self.margins[keep]
        )


def scored(samples: Sequence, scores) -> Scored:
    """trainer.evaluate.Scores -> Scored (positions index ``samples``)."""
    return Scored(
        [samples[i] for i in scores.positions], np.asarray(scores.labels), np.asarray(scores.margins)
    )


def figure(labels: np.ndarray, scores: np.ndarray) -> dict:
    """{n, n_real, n_ai, auc, auc_ci95} or the reason there is no AUC."""
    n_ai, n_real = int((labels == AI).sum()), int((labels != AI).sum())
    out: dict = {"n": int(len(labels)), "n_real": n_real, "n_ai": n_ai}
    if min(n_ai, n_real) < SUBGROUP_MIN_PER_CLASS:
        return {
            **out,
            "auc": None,
            "auc_ci95": None,
            "note": f"too few to evaluate (at least {SUBGROUP_MIN_PER_CLASS} of each class needed)",
        }
    est = auc_estimate((labels == AI).astype(int), scores)
    assert est is not None  # both classes are present (checked above)
    return {**out, "auc": round(est.auc, 4), "auc_ci95": [round(x, 4) for x in est.ci95]}


def by_attribute(eval_set: Scored, attribute: Callable[[Any], str], others: Scored | None = None) -> dict:
    """AUC per value of ``attribute`` (generator, source) -- see the module doc for who is compared.

    ``others``: where the opposite class comes from (the in-distribution evaluation set) when the
    groups are held-out images; defaults to ``eval_set`` itself.
    """
    others = others if others is not None else eval_set
    values = np.array([attribute(s) for s in eval_set.samples], dtype=object)
    out = {}
    for value in sorted({str(v) for v in values}):
        mine = values == value
        ai, real = mine & (eval_set.labels == AI), mine & (eval_set.labels != AI)
        pos = eval_set.margins[ai] if ai.any() else others.margins[others.labels == AI]
        neg = eval_set.margins[real] if real.any() else others.margins[others.labels != AI]
        labels = np.concatenate([np.full(len(pos), AI), np.full(len(neg), 1 - AI)])
        out[value] = figure(labels, np.concatenate([pos, neg]))
    return out


def calibrate(eval_set: Scored, group_of: dict[str, str]) -> dict:
    """Temperature fitted on the calibration half of the evaluation groups, ECE on the other half."""
    calib = np.array(
        [int(order_key(group_of.get(s.id, s.id))[-1], 16) % 2 == 0 for s in eval_set.samples], dtype=bool
    )
    fit, test = eval_set.subset(calib), eval_set.subset(~calib)
    fit_y = (fit.labels == AI).astype(int)
    if len(set(fit_y.tolist())) < 2 or len(test.labels) == 0 or len(fit_y) < CALIBRATION_MIN_IMAGES:
        temperature = 1.0
        note = (
            f"not calibrated: the calibration half has {len(fit_y)} images "
            f"(at least {CALIBRATION_MIN_IMAGES} of both classes needed), T = 1"
        )
    else:
        temperature, note = fit_temperature(fit_y, fit.margins), None
    test_y = (test.labels == AI).astype(int)
    return {
        "temperature": round(temperature, 4),
        "ece_uncalibrated": _round(expected_calibration_error(test_y, test.probs())),
        "ece": _round(expected_calibration_error(test_y, test.probs(temperature))),
        "n_calibration": int(len(fit.labels)),
        "n_ece": int(len(test.labels)),
        "note": note,
    }


def evaluation_block(eval_set: Scored, calibration: dict, threshold: float = DECISION_THRESHOLD) -> dict:
    probs = eval_set.probs(calibration["temperature"])
    head = figure(eval_set.labels, eval_set.margins)
    acc = float(((probs >= threshold).astype(int) == (eval_set.labels == AI)).mean()) if len(probs) else None
    return {
        "image_ids": sorted(s.id for s in eval_set.samples),
        "images": per_image_scores(eval_set, calibration["temperature"]),
        "n": {"real": head["n_real"], "ai": head["n_ai"]},
        "auc": head["auc"],
        "auc_ci95": head["auc_ci95"],
        "acc": _round(acc),
        **{k: calibration[k] for k in ("ece", "ece_uncalibrated", "temperature", "n_calibration", "n_ece")},
        "calibration_note": calibration["note"],
        **({"note": head["note"]} if "note" in head else {}),
    }


def per_image_scores(eval_set: Scored, temperature: float) -> list[dict]:
    """Every evaluation image with its score before and after temperature, sorted by id: enough to
    redraw every figure and plot of the evaluation from report.json alone (AUC, DeLong interval,
    ROC/PR curves, histograms, reliability, the confusion matrix at any threshold)."""
    raw, calibrated = eval_set.probs(), eval_set.probs(temperature)
    rows = [
        {
            "id": s.id,
            "sha256": s.sha256,
            "label": "ai" if label == AI else "real",
            "generator": s.generator,
            "source": s.source,
            "margin": round(float(margin), 6),
            "p_ai_raw": round(float(p_raw), 6),
            "p_ai": round(float(p_cal), 6),
        }
        for s, label, margin, p_raw, p_cal in zip(
            eval_set.samples, eval_set.labels, eval_set.margins, raw, calibrated, strict=True
        )
    ]
    return sorted(rows, key=lambda row: row["id"])


# ---- perturbations scored by the trainer ----------------------------------------------------------


class Perturb:
    """Applied to the decoded picture before the evaluation transform (picklable for workers)."""

    def __init__(self, fmt: str | None, quality: int | None, scale: float) -> None:
        self.fmt, self.quality, self.scale = fmt, quality, scale

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.scale != 1.0:
            size = (max(1, round(image.width * self.scale)), max(1, round(image.height * self.scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
        if self.fmt is not None:
            buf = io.BytesIO()
            options = {"quality": self.quality} if self.fmt == "jpeg" else {}
            image.save(buf, format=self.fmt.upper(), **options)
            buf.seek(0)
            image = Image.open(buf).convert("RGB")
        return image


class Chain:
    def __init__(self, first, then) -> None:
        self.first, self.then = first, then

    def __call__(self, image):
        return self.then(self.first(image))


def perturbed(data, perturb: Perturb):
    """A copy of a StoredImages whose transform applies ``perturb`` first."""
    out = copy.copy(data)
    out.transform = Chain(perturb, data.transform)
    return out


def laundered(data, chain: str):
    """A copy of a StoredImages whose every picture goes through the laundering chain ``chain``
    (trainer/launder.py), from its original, before the evaluation transform."""
    out = copy.copy(data)
    out.launder = Launder(1.0, (chain,))
    return out


def robustness_block(clean_auc: float | None, results: dict[str, Scored]) -> dict:
    out = {}
    for name, result in results.items():
        fig = figure(result.labels, result.margins)
        drop = None if fig["auc"] is None or clean_auc is None else round(clean_auc - fig["auc"], 4)
        out[name] = {"auc": fig["auc"], "auc_ci95": fig["auc_ci95"], "drop": drop, "n": fig["n"]}
    return out


def format_swap_auc(as_png: Scored, as_jpeg: Scored) -> dict:
    """AUC of telling the PNG copy from the JPEG q=95 copy of the same pictures by score (≈ 0.5 wanted)."""
    common = sorted({s.id for s in as_png.samples} & {s.id for s in as_jpeg.samples})
    png = dict(zip((s.id for s in as_png.samples), as_png.margins, strict=True))
    jpg = dict(zip((s.id for s in as_jpeg.samples), as_jpeg.margins, strict=True))
    labels = np.array([1] * len(common) + [0] * len(common))
    scores = np.array([png[i] for i in common] + [jpg[i] for i in common])
    est = auc_estimate(labels, scores) if common else None
    return {
        "format_swap_auc": None if est is None else round(est.auc, 4),
        "format_swap_auc_ci95": None if est is None else [round(x, 4) for x in est.ci95],
        "format_swap_n": len(common),
    }


# ---- shortcut probe (before training) -------------------------------------------------------------


def metadata_features(
    samples: Sequence, facts: Callable[[object], tuple[int, bool]], with_source: bool = True
) -> np.ndarray:
    """format one-hot, width, height, log bytes, EXIF present (and source one-hot) per sample."""
    formats = {f: i for i, f in enumerate(sorted({str(s.format) for s in samples}))}
    names = sorted({str(s.source) for s in samples}) if with_source else []
    sources = {src: i for i, src in enumerate(names)}
    # Filled row by row into one array: a list of Python float lists cost ~300 bytes per image.
    out = np.zeros((len(samples), len(formats) + 4 + len(sources)), dtype=np.float64)
    for row, s in enumerate(samples):
        size, exif = facts(s)
        out[row, formats[str(s.format)]] = 1.0
        out[row, len(formats) : len(formats) + 4] = (s.width, s.height, np.log1p(size), exif)
        if sources:
            out[row, len(formats) + 4 + sources[str(s.source)]] = 1.0
    return out


def shortcut_probe(
    samples: Sequence, facts: Callable[[object], tuple[int, bool]], group_of: dict[str, str], warn_auc: float
) -> dict:
    """Cross-validated AUC of a logistic regression that sees only file metadata (no pixels)."""
    labels = np.array([CLASS_INDEX[s.label] for s in samples])
    groups = [group_of.get(s.id, s.id) for s in samples]
    features = metadata_features(samples, facts, True)  # facts read once: the file-only columns come first
    n_file = len({str(s.format) for s in samples}) + 4
    with_source = cross_validated_auc(features, labels, groups)
    file_only = cross_validated_auc(features[:, :n_file], labels, groups)
    worst = max((a for a in (with_source, file_only) if a is not None), default=None)
    warning = None
    if worst is not None and worst >= warn_auc:
        what = (
            "file traits alone (format, size, bytes, EXIF)"
            if file_only is not None and file_only >= warn_auc
            else "file traits and the source name"
        )
        warning = (
            f"the dataset can be separated without looking at pixels: {what} give a cross-validated "
            f"AUC of {worst:.2f} (SHORTCUT_WARN_AUC={warn_auc}); the model may learn where images "
            "come from rather than how they were made. Add real and AI images of the same formats, "
            "sizes and sources."
        )
    return {
        "metadata_probe_auc": _round(with_source),
        "metadata_probe_auc_without_source": _round(file_only),
        "metadata_probe_n": int(len(labels)),
        "warn_auc": warn_auc,
        "warning": warning,
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def audit(settings: Settings, sides: Sides, progress: Progress | None = None) -> dict:
    """The shortcut audit before training: can file metadata alone tell the classes apart?"""
    stage(progress, "audit")
    plan = sides.plan
    shortcut = shortcut_probe(
        plan.train + plan.eval, facts_reader(sides.storage), plan.group_of, settings.shortcut_warn_auc
    )
    if shortcut["warning"]:
        log.warning("shortcut audit: %s", shortcut["warning"])
    if progress is not None:
        progress(
            {
                "stage": "audit",
                "shortcut_warning": shortcut["warning"],
                "metadata_probe_auc": shortcut["metadata_probe_auc"],
            }
        )
    return shortcut


def facts_reader(storage: StorageDriver) -> Callable[[Any], tuple[int, bool]]:
    """(bytes, has EXIF) of a sample: from the index, or read from storage for older rows."""

    def facts(sample: Sample) -> tuple[int, bool]:
        if sample.size_bytes is not None and sample.has_exif is not None:
            return sample.size_bytes, bool(sample.has_exif)
        try:
            data = storage.get(sample.image_key)
        except StorageError:
            return 0, False
        return len(data), has_exif(data)

    return facts


# ---- the report of a fitted model -----------------------------------------------------------------


@dataclass
class EvalResult:
    """The fitted model evaluated: report.json but its promotion and training sections, and what the
    promotion decision is taken from."""

    report: dict
    metrics: dict  # the fit's metrics with the interval of the AUC and the accuracy by source
    evaluated: Scored  # the evaluation side's scores
    unseen: tuple[StoredImages, Scored] | None  # the held-out images and their scores
    baseline_scores: np.ndarray | None  # the content-only baseline's, aligned with ``evaluated``


@dataclass
class Scorer:
    """Scores a StoredImages with the fitted model, in order, in one pass."""

    settings: Settings
    net: Network

    def __call__(self, data: StoredImages, workers: int = 0) -> Scored:
        loader = make_loader(
            data,
            batch_size=self.settings.train_batch_size,
            shuffle=False,
            workers=workers,
            seed=self.settings.train_seed,
            persistent=False,
        )
        return scored(data.samples, evaluate(self.net.model, loader, self.net.prepare, self.net.amp_dtype))


def build_report(
    settings: Settings, net: Network, sides: Sides, val_data: StoredImages, evaluated: Scored, shortcut: dict
) -> tuple[dict, tuple[StoredImages, Scored] | None]:
    """(report.json without its promotion section, the held-out images and their scores or None):
    every figure on images the model never trained on."""
    score, plan = Scorer(settings, net), sides.plan
    calibration = calibrate(evaluated, plan.group_of)
    block = evaluation_block(evaluated, calibration)
    held_data = (
        stored_images(
            sides.storage, plan.held_out, eval_transform(net.pre), net.pre, settings, val_data.cache
        )
        if plan.held_out
        else None
    )
    held = score(held_data) if held_data is not None else None
    robust = robustness(score, val_data, evaluated, block["auc"], settings.train_workers)
    swap = format_swap(score, sides.storage, val_data, net.pre, settings)
    report = {
        "version": None,
        "model": settings.model_name,
        "created_at": iso_seconds(),
        "split": split_block(settings, plan),
        "evaluation": block,
        "by_generator": by_attribute(evaluated, _generator),
        "by_source": by_attribute(evaluated, _source),
        **unseen_blocks(settings, held, evaluated),
        "robustness": robust,
        "future_generators": future_report(sides.future, held, evaluated),
        "by_month": by_month(evaluated.samples, evaluated.labels, evaluated.margins, figure),
        "shortcut": {**shortcut, **swap},
        "leakage": leakage(plan, settings.split_near_dup_distance),
        "operating_points": operating_points(
            [row["label"] for row in block["images"]],
            [row["p_ai"] for row in block["images"]],
            [plan.group_of.get(row["id"], row["id"]) for row in block["images"]],
            (*TARGET_FPRS, settings.serve_target_fpr),
        ),
    }
    return report, ((held_data, held) if held_data is not None and held is not None else None)


def split_block(settings: Settings, plan: SplitPlan) -> dict:
    return {
        "train": len(plan.train),
        "eval": len(plan.eval),
        "held_out": len(plan.held_out),
        "excluded": len(plan.excluded),
        "newly_decided": len(plan.decided),
        "radius": settings.split_near_dup_distance,
        "eval_min_per_class": settings.eval_min_per_class,
        "holdout_generators": sorted(settings.holdout_generators),
        "holdout_sources": sorted(settings.holdout_sources),
    }


def robustness(
    score: Scorer, val_data: StoredImages, evaluated: Scored, clean_auc: float | None, workers: int
) -> dict:
    """AUC and drop after JPEG q=65, half size, both (every evaluation image) and after the
    laundering chains (at most LAUNDER_MAX_IMAGES, evenly spread: seconds per 12 MP picture, so in
    ``workers`` processes; their drop is taken from the clean AUC of the same images)."""
    robust = (
        {name: score(perturbed(val_data, Perturb(*how))) for name, how in ROBUSTNESS.items()}
        if len(val_data)
        else {}
    )
    few_positions = np.unique(
        np.linspace(0, len(val_data) - 1, min(len(val_data), LAUNDER_MAX_IMAGES)).astype(int)
    )
    launder_set = val_data.subset(few_positions.tolist()) if len(val_data) else None
    chains = (
        {name: score(laundered(launder_set, name), workers) for name in CHAINS}
        if launder_set is not None
        else {}
    )
    launder_ids = {s.id for s in launder_set.samples} if launder_set is not None else set()
    clean_few = evaluated.subset(np.array([s.id in launder_ids for s in evaluated.samples], dtype=bool))
    return robustness_block(clean_auc, robust) | robustness_block(
        figure(clean_few.labels, clean_few.margins)["auc"], chains
    )


def format_swap(
    score: Scorer, storage: StorageDriver, val_data: StoredImages, pre: Preprocessing, settings: Settings
) -> dict:
    """The format-swap probe on the first FORMAT_SWAP_MAX_IMAGES evaluation images ({} without any)."""
    few = stored_images(
        storage, val_data.samples[:FORMAT_SWAP_MAX_IMAGES], eval_transform(pre), pre, settings, val_data.cache
    )
    if not len(few):
        return {}
    return format_swap_auc(
        score(perturbed(few, Perturb("png", None, 1.0))), score(perturbed(few, Perturb("jpeg", 95, 1.0)))
    )


def unseen_blocks(settings: Settings, held: Scored | None, evaluated: Scored) -> dict:
    """``unseen_generators`` and ``unseen_sources``: AUC per held-out generator and source."""
    unseen_gen: dict = {}
    unseen_src: dict = {}
    if held is not None:
        in_gen = np.array([s.generator in settings.holdout_generators for s in held.samples], dtype=bool)
        unseen_gen = by_attribute(held.subset(in_gen), _generator, others=evaluated) if in_gen.any() else {}
        in_src = np.array([s.source in settings.holdout_sources for s in held.samples], dtype=bool)
        unseen_src = by_attribute(held.subset(in_src), _source, others=evaluated) if in_src.any() else {}
    return {"unseen_generators": unseen_gen, "unseen_sources": unseen_src}


def future_report(future: FutureChoice, held: Scored | None, evaluated: Scored) -> dict:
    """``future_generators``: the held-out newest generators' AI images against the real evaluation
    images, AUC with interval and n; each generator apart under ``by_generator``."""
    out: dict = {
        "held_out": list(future.held_out),
        "k": future.k,
        "first_seen": future.first_seen,
        "reason": future.reason,
    }
    mine = (
        np.array([s.generator in future.held_out and s.label == "ai" for s in held.samples], dtype=bool)
        if held is not None and future.held_out
        else None
    )
    if held is None or mine is None or not mine.any():
        return {**out, "auc": None, "auc_ci95": None, "n": {"real": 0, "ai": 0}}
    ai = held.subset(mine)
    real = evaluated.subset(evaluated.labels != CLASS_INDEX["ai"])
    fig = figure(np.concatenate([ai.labels, real.labels]), np.concatenate([ai.margins, real.margins]))
    return {
        **out,
        "auc": fig["auc"],
        "auc_ci95": fig["auc_ci95"],
        "n": {"real": fig["n_real"], "ai": fig["n_ai"]},
        **({"note": fig["note"]} if "note" in fig else {}),
        "by_generator": by_attribute(ai, _generator, others=evaluated),
    }


def headline(report: dict) -> dict:
    """The figures /models/latest and /metrics carry: AUC with its interval and sample size."""
    ev = report["evaluation"]
    unseen = {
        g: {"auc": f["auc"], "auc_ci95": f["auc_ci95"], "n": f["n"]}
        for g, f in report.get("unseen_generators", {}).items()
    }
    return {
        "auc": ev["auc"],
        "auc_ci95": ev["auc_ci95"],
        "n": ev["n"],
        "acc": ev["acc"],
        "ece": ev["ece"],
        "temperature": ev["temperature"],
        "unseen_generators": unseen,
        "future_generators": {
            k: report.get("future_generators", {}).get(k) for k in ("held_out", "auc", "auc_ci95", "n")
        },
        "shortcut_warning": report["shortcut"].get("warning"),
    }


def backbone_warning(settings: Settings) -> str | None:
    """A linear probe or fine-tune of a backbone without pretrained weights: said in the report, the
    log and the result (the audit promoted a linear head on a random-weight network, unwarned)."""
    if settings.train_pretrained:
        return None
    what = "a linear probe on its random features" if settings.train_mode == "linear_probe" else "a fine-tune"
    return (
        f"the backbone {settings.train_arch} has no pretrained weights (TRAIN_PRETRAINED=false): this is "
        f"{what} from scratch; compare its AUC with the content-only baseline in the report "
        "before trusting it"
    )


def _generator(sample: Sample) -> str:
    return sample.generator or "unknown"


def _source(sample: Sample) -> str:
    return sample.source
