"""The evaluation report (models/{name}/{version}/report.json): every figure with its sample size
and 95 % interval, computed only on images the model never trained on.

Sections (docs/evaluation.md explains each with a worked example): ``evaluation`` (AUC, interval,
accuracy, calibration, the exact evaluation ids), ``by_generator`` and ``by_source`` (AUC per
group), ``unseen_generators`` / ``unseen_sources`` (held out of training entirely),
``robustness`` (JPEG q=65, half size, both, and the laundering chains of trainer/launder.py),
``shortcut`` (metadata-only probe before training, format-swap probe after), ``promotion``
(trainer/promotion.py).

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

from trainer.evaluate import CLASS_INDEX, DECISION_THRESHOLD
from trainer.launder import Launder
from trainer.split import order_key
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
