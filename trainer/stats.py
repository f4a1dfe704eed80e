"""The statistics behind every figure that decides something: AUC with its uncertainty, the paired
champion/challenger test, calibration, and the metadata-only shortcut probe.

Plain numpy (no torch), so each function can be checked against an independent computation.

* AUC variance: DeLong et al. (1988), in the fast midrank form of Sun & Xu (2014). A paired
  comparison of two models scored on the *same* images uses the covariance of their structural
  components, so the shared difficulty of the images cancels out.
* When the data are perfectly separated DeLong's variance is 0 and its interval collapses to a
  point; then the Hanley & McNeil (1982) variance at a shrunken AUC ``(U + 1/2) / (n1 n0 + 1)``
  is used instead, so that 3 + 3 perfectly ranked images never look like certainty.
* Calibration: expected calibration error over equal-width bins, and temperature scaling (Guo et
  al. 2017) fitted by minimising the negative log-likelihood over log T.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
Z80 = 0.8416212335729143  # one-sided 80 % normal quantile (power)
ECE_BINS = 15
T_MIN, T_MAX = 0.25, 20.0  # temperature search range


@dataclass(frozen=True)
class AucEstimate:
    auc: float
    variance: float
    n_pos: int
    n_neg: int

    @property
    def ci95(self) -> tuple[float, float]:
        half = Z95 * math.sqrt(self.variance)
        return max(0.0, self.auc - half), min(1.0, self.auc + half)

    def better_than_chance(self) -> bool:
        """The lower end of the 95 % interval lies above 0.5."""
        return self.ci95[0] > 0.5


def _midranks(values: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def _components(labels: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUC, V10 per positive, V01 per negative): DeLong's structural components via midranks."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    m, n = len(pos), len(neg)
    all_ranks = _midranks(np.concatenate([pos, neg]))
    pos_ranks, neg_ranks = _midranks(pos), _midranks(neg)
    v10 = (all_ranks[:m] - pos_ranks) / n  # share of negatives below each positive
    v01 = 1.0 - (all_ranks[m:] - neg_ranks) / m  # share of positives above each negative
    auc = float(v10.mean())
    return auc, v10, v01


def _check(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    return y, s


def auc_estimate(labels: ArrayLike, scores: ArrayLike) -> AucEstimate | None:
    """AUC with its DeLong variance; None when a class is missing (the AUC is undefined)."""
    y, s = _check(labels, scores)
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m == 0 or n == 0:
        return None
    auc, v10, v01 = _components(y, s)
    var = (np.var(v10, ddof=1) / m if m > 1 else 0.0) + (np.var(v01, ddof=1) / n if n > 1 else 0.0)
    if var <= 0.0:
        var = hanley_mcneil_variance((auc * m * n + 0.5) / (m * n + 1), m, n)
    return AucEstimate(auc, float(var), m, n)


def hanley_mcneil_variance(auc: float, n_pos: int, n_neg: int) -> float:
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (
        n_pos * n_neg
    )


@dataclass(frozen=True)
class PairedDifference:
    """AUC(new) - AUC(old) on the same images, with the DeLong variance of the difference."""

    new: AucEstimate
    old: AucEstimate
    difference: float
    variance: float

    def ci(self, z: float = Z95) -> tuple[float, float]:
        half = z * math.sqrt(max(self.variance, 0.0))
        return self.difference - half, self.difference + half


def paired_auc_difference(
    labels: ArrayLike, new_scores: ArrayLike, old_scores: ArrayLike
) -> PairedDifference | None:
    y, a = _check(labels, new_scores)
    _, b = _check(labels, old_scores)
    new, old = auc_estimate(y, a), auc_estimate(y, b)
    if new is None or old is None:
        return None
    m, n = new.n_pos, new.n_neg
    _, a10, a01 = _components(y, a)
    _, b10, b01 = _components(y, b)
    s10 = np.cov(np.vstack([a10, b10]), ddof=1) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([a01, b01]), ddof=1) if n > 1 else np.zeros((2, 2))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    if var <= 0.0:  # both perfect, or identical rankings: fall back to the two marginal variances
        var = new.variance + old.variance if new.auc != old.auc else 0.0
    return PairedDifference(new, old, new.auc - old.auc, float(var))


def min_detectable(variance: float) -> float:
    """The smallest true difference a 95 % interval with this variance excludes 0 for, 80 % of the
    time: (z_0.975 + z_0.8) x standard error. For an AUC, the gain over chance (0.5) it could show;
    for a paired difference, the gain over the champion."""
    return (Z95 + Z80) * math.sqrt(max(variance, 0.0))


def images_needed(estimate: AucEstimate) -> tuple[int, int] | None:
    """More (positives, negatives) after which this AUC's 95 % interval would clear 0.5, assuming the
    AUC stays where it is and the variance shrinks as 1/n; None when the AUC is not above 0.5."""
    if estimate.auc <= 0.5:
        return None
    scale = (Z95 * math.sqrt(estimate.variance) / (estimate.auc - 0.5)) ** 2
    if scale <= 1.0:
        return 0, 0
    return (
        math.ceil(estimate.n_pos * scale) - estimate.n_pos,
        math.ceil(estimate.n_neg * scale) - estimate.n_neg,
    )


# ---- calibration ---------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -500, 500)))


def expected_calibration_error(labels: ArrayLike, probs: ArrayLike, bins: int = ECE_BINS) -> float:
    """Σ_bins (n_bin / N) · |mean P(ai) − share of ai| over equal-width bins of P(ai)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() / len(y) * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def fit_temperature(labels: ArrayLike, margins: ArrayLike) -> float:
    """T > 0 minimising the log loss of sigmoid(margin / T); margin = logit(ai) − logit(real).

    Golden-section search over log T in [T_MIN, T_MAX] (the loss is convex in 1/T, so one minimum).
    T_MIN bounds sharpening: a calibration part of a few dozen perfectly ranked images would
    otherwise drive T towards 0 and every P(ai) to 0 or 1.
    """
    y = np.asarray(labels, dtype=np.float64)
    z = np.asarray(margins, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        return 1.0

    def nll(log_t: float) -> float:
        p = np.clip(sigmoid(z / math.exp(log_t)), 1e-12, 1 - 1e-12)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))


# ---- shortcut probe ------------------------------------------------------------------------------


def logistic_fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> np.ndarray:
    """Weights (bias last) of an L2-regularised logistic regression, by Newton's method."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    reg = np.eye(xb.shape[1]) * l2
    reg[-1, -1] = 0.0  # no penalty on the bias
    for _ in range(iters):
        p = sigmoid(xb @ w)
        grad = xb.T @ (p - y) + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(w)), grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def cross_validated_auc(
    x: np.ndarray, y: np.ndarray, groups: Sequence[object], folds: int = 5
) -> float | None:
    """Out-of-fold AUC of a logistic regression on ``x``: folds by group (near-duplicates together),
    features standardised on each training fold. None when a class is missing."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) < 4 or y.min() == y.max():
        return None
    keys = sorted({str(g) for g in groups})
    fold_of_group = {g: i % folds for i, g in enumerate(sorted(keys, key=_stable_hash))}
    fold = np.array([fold_of_group[str(g)] for g in groups])
    scores = np.zeros(len(y))
    for k in range(folds):
        test = fold == k
        train = ~test
        if not test.any() or y[train].min() == y[train].max():
            scores[test] = 0.5 if test.any() else scores[test]
            continue
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        std[std == 0] = 1.0
        w = logistic_fit((x[train] - mean) / std, y[train])
        scores[test] = sigmoid(np.hstack([(x[test] - mean) / std, np.ones((int(test.sum()), 1))]) @ w)
    est = auc_estimate(y.astype(int), scores)
    return None if est is None else est.auc


def _stable_hash(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode("utf-8")).hexdigest()
