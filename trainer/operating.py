"""Operating points: the threshold on calibrated P(ai) at a target false-positive rate, the TPR it
gives, and the TPR's 95 % interval by bootstrap over near-duplicate groups (plain numpy, no torch).

Exposr-Core needs a threshold, not an AUC. The rule, on the evaluation images' calibrated scores
(report.json ``evaluation.images[].p_ai``), calling "ai" when ``p_ai >= threshold``:

* ``k = floor(target_fpr * n_real)`` real images may be called "ai";
* the threshold is the smallest score (of either class) strictly above the ``(k+1)``-th highest
  real score, so at most ``k`` real images reach it and as many AI images as possible do; when no
  score lies above it, the threshold is that real score plus ``THRESHOLD_STEP`` (nothing is
  called "ai" then, TPR 0).

The TPR interval resamples whole groups (near-duplicates stay together, trainer/split.py) with
replacement ``BOOTSTRAP_ROUNDS`` times, recomputes the threshold and the TPR in each, and takes the
2.5 % and 97.5 % percentiles: the interval carries the uncertainty of the threshold itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

TARGET_FPRS = (0.01, 0.05)
BOOTSTRAP_ROUNDS = 1000
BOOTSTRAP_SEED = 25
THRESHOLD_STEP = 1e-6  # the scores in report.json carry 6 decimals


def key(fpr: float) -> str:
    """``fpr_0.01``: the report's name of the operating point at a target FPR."""
    return f"fpr_{fpr:g}"


def threshold_at(real: np.ndarray, ai: np.ndarray, target_fpr: float) -> float:
    """The threshold of the module doc's rule (``real`` and ``ai``: calibrated scores)."""
    if len(real) == 0:
        raise ValueError("no real image: a false-positive rate cannot be measured")
    k = math.floor(target_fpr * len(real) + 1e-9)
    if k >= len(real):
        return float(min(real.min(), ai.min()) if len(ai) else real.min())
    boundary = float(np.sort(real)[::-1][k])  # the (k+1)-th highest real score
    scores = np.concatenate([real, ai])
    above = scores[scores > boundary]
    return float(above.min()) if len(above) else boundary + THRESHOLD_STEP


def rates(real: np.ndarray, ai: np.ndarray, threshold: float) -> tuple[float, float | None]:
    """(FPR, TPR) when ``p_ai >= threshold`` is called "ai"; TPR None without AI images."""
    fpr = float((real >= threshold).mean()) if len(real) else float("nan")
    tpr = float((ai >= threshold).mean()) if len(ai) else None
    return fpr, tpr


def operating_points(
    labels: Sequence[str],
    scores: Sequence[float],
    groups: Sequence[str],
    targets: Iterable[float] = TARGET_FPRS,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """``{"fpr_0.01": {threshold, tpr, tpr_ci95, fpr, n, warning}, ...}`` (design.md §13).

    ``labels``: "ai" / "real" per image; ``scores``: calibrated P(ai); ``groups``: each image's
    near-duplicate group (the bootstrap's unit)."""
    y = np.array([label == "ai" for label in labels], dtype=bool)
    p = np.asarray(scores, dtype=np.float64)
    if len(y) != len(p) or len(y) != len(groups):
        raise ValueError(f"{len(y)} labels, {len(p)} scores and {len(groups)} groups: they must align")
    real, ai = p[~y], p[y]
    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    member = np.array([index[g] for g in groups], dtype=np.int64)
    out: dict = {}
    for target in sorted(set(targets)):
        point = {"target_fpr": target, "n": {"real": int(len(real)), "ai": int(len(ai))}}
        if len(real) == 0 or len(ai) == 0:
            out[key(target)] = {
                **point,
                "threshold": None,
                "tpr": None,
                "tpr_ci95": None,
                "fpr": None,
                "warning": "the evaluation set needs images of both classes for an operating point",
            }
            continue
        threshold = threshold_at(real, ai, target)
        fpr, tpr = rates(real, ai, threshold)
        out[key(target)] = {
            **point,
            "threshold": round(threshold, 6),
            "fpr": round(fpr, 4),
            "tpr": None if tpr is None else round(tpr, 4),
            "tpr_ci95": _bootstrap(y, p, member, len(names), target, rounds, seed),
            "warning": too_small(len(real), target),
        }
    return out


def too_small(n_real: int, target: float) -> str | None:
    """The warning when fewer than 1/FPR real images cannot show one false positive at that rate."""
    needed = math.ceil(1 / target - 1e-9)
    if n_real >= needed:
        return None
    return (
        f"the evaluation set has {n_real} real images; an FPR of {target:g} needs at least {needed} "
        f"to be measured (with fewer, no real image may be called ai and the threshold is only above "
        f"the highest real score): add real images before relying on this threshold"
    )


def _bootstrap(
    y: np.ndarray, p: np.ndarray, member: np.ndarray, n_groups: int, target: float, rounds: int, seed: int
) -> list[float] | None:
    rng = np.random.default_rng(seed)
    order = np.argsort(member, kind="stable")
    starts = np.searchsorted(member[order], np.arange(n_groups + 1))
    tprs: list[float] = []
    for _ in range(rounds):
        drawn = rng.integers(0, n_groups, n_groups)
        rows = np.concatenate([order[starts[g] : starts[g + 1]] for g in drawn])
        real, ai = p[rows][~y[rows]], p[rows][y[rows]]
        if len(real) == 0 or len(ai) == 0:
            continue
        _, tpr = rates(real, ai, threshold_at(real, ai, target))
        if tpr is not None:
            tprs.append(tpr)
    if not tprs:
        return None
    lo, hi = np.percentile(tprs, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def served_threshold(points: dict, target: float) -> dict:
    """What model.json, the registry entry and /models/latest carry: the threshold at
    ``SERVE_TARGET_FPR`` with the TPR it gives."""
    point = points.get(key(target)) or {}
    return {
        "threshold": point.get("threshold"),
        "threshold_target_fpr": target,
        "threshold_tpr": point.get("tpr"),
        "threshold_tpr_ci95": point.get("tpr_ci95"),
        "threshold_warning": point.get("warning"),
    }
