"""The content-only baseline a model must beat: a logistic regression on 8 x 8 colour thumbnails.

No generation trace survives an 8 x 8 thumbnail; what it can still see is *what* is pictured and
its colours (AI ID portraits with no real counterpart, a colour cast of one source). A detector
that does no better than it on the same images has not been shown to detect generation.

The probe is fitted on the training side (its AUC cross-validated there, folds by split group)
and scored on the evaluation side; the report puts its AUC with interval next to the model's,
with the paired DeLong difference model - baseline on the same images. The thumbnails come with
the content signatures (trainer/signatures.py), so the baseline costs no extra decode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from trainer.copies import Signature
from trainer.evaluate import CLASS_INDEX
from trainer.report import Scored
from trainer.stats import (
    auc_estimate,
    cross_validated_auc,
    logistic_fit,
    min_detectable,
    paired_auc_difference,
    sigmoid,
)

AI = CLASS_INDEX["ai"]
FEATURES = "8x8 colour thumbnail (192 values), logistic regression, L2"
L2 = 10.0  # 192 features on a few hundred images: a firm penalty keeps the probe from memorising


def features(sig: Signature) -> np.ndarray:
    return sig.colour.astype(np.float64).ravel() / 255.0


def content_baseline(
    train: Sequence, evaluated: Scored, signatures: Mapping[str, Signature], group_of: Mapping[str, str]
) -> tuple[dict, np.ndarray | None]:
    """(the report block, the probe's scores aligned with ``evaluated`` or None when it cannot be fitted)."""
    fit_on = [s for s in train if s.id in signatures]
    y = np.array([CLASS_INDEX[s.label] == AI for s in fit_on], dtype=np.float64)
    block: dict = {"features": FEATURES, "n_train": len(fit_on)}
    have = np.array([s.id in signatures for s in evaluated.samples], dtype=bool)
    if len(fit_on) < 4 or y.min() == y.max() or not have.all():
        missing = int((~have).sum())
        block.update(
            auc=None,
            auc_ci95=None,
            note=f"not fitted: {len(fit_on)} training images with a signature"
            + (f", {missing} evaluation images without one" if missing else ""),
        )
        return block, None
    x = np.stack([features(signatures[s.id]) for s in fit_on])
    block["cv_auc_train"] = _round(cross_validated_auc(x, y, [group_of.get(s.id, s.id) for s in fit_on]))
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    w = logistic_fit((x - mean) / std, y, l2=L2)
    xe = (np.stack([features(signatures[s.id]) for s in evaluated.samples]) - mean) / std
    scores = sigmoid(np.hstack([xe, np.ones((len(xe), 1))]) @ w)
    labels = (evaluated.labels == AI).astype(int)
    est = auc_estimate(labels, scores)
    paired = paired_auc_difference(labels, evaluated.margins, scores)
    block.update(
        n_real=int((labels == 0).sum()),
        n_ai=int(labels.sum()),
        auc=None if est is None else round(est.auc, 4),
        auc_ci95=None if est is None else [round(v, 4) for v in est.ci95],
        model_minus_baseline=None if paired is None else round(paired.difference, 4),
        model_minus_baseline_ci95=None if paired is None else [round(v, 4) for v in paired.ci()],
        min_detectable_auc_difference=None if paired is None else round(min_detectable(paired.variance), 4),
    )
    return block, scores


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
