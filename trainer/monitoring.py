"""The served model over time: weekly figures of the champion on images stored after it was
trained and labelled since, and whether it has degraded (numpy and scipy, no torch, no I/O).

A **week** is an ISO week of the image's ``created_at`` (``2026-W49``, Monday to Sunday, UTC). For
each week that has ended, one row::

    {"week": "2026-W49", "n": {"real": 41, "ai": 37}, "auc": 0.81, "auc_ci95": [0.71, 0.9],
     "psi": 0.07, "ks_p": 0.42, "by_generator": {...}, "scorers": {...}}

* ``auc``: the labeler's stored score (the local champion or Exposr-Core, ``scorers`` says which
  and how many) against the image's label, DeLong interval (trainer/stats.py); None with fewer
  than ``min_per_class`` images of a class.
* ``by_generator``: the AUC of each generator's AI images of the week against the week's real
  images, for generators with at least ``min_per_class`` AI images.
* ``psi`` (population stability index) and ``ks_p`` (two-sample Kolmogorov-Smirnov p-value) of the
  week's scores against the champion's evaluation-set scores (report.json's ``p_ai``): ten bins at
  the reference's deciles; PSI = Σ (a − e) ln(a / e) with each share floored at ``PSI_FLOOR``.
  None with fewer than ``MIN_FOR_DRIFT`` scores in the week.

The app stores each row once its week has ended and never recomputes it (app/monitoring.py).
``degradation`` says why the latest row means the model has degraded: its AUC's upper bound is
below the lower bound of the champion's evaluation AUC at promotion, or PSI > ``PSI_ALARM`` with
the KS test rejecting the same distribution at ``KS_ALPHA`` (see there why).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import ks_2samp

from trainer.stats import auc_estimate

PSI_BINS = 10
PSI_FLOOR = 1e-4
PSI_ALARM = 0.25  # the usual reading: < 0.1 stable, 0.1-0.25 some shift, > 0.25 a large shift
MIN_FOR_DRIFT = 20  # scores in a week before PSI and KS are computed
# PSI's alarm also needs the KS test to reject "same distribution" at this level: two samples of one
# distribution have an expected PSI of about (bins - 1)(1/n + 1/m), 0.3 for 40 new scores against
# 120, so PSI alone would cry wolf every week at the sizes a week brings.
KS_ALPHA = 0.01


@dataclass(frozen=True)
class Observation:
    """One image stored after the champion's training: when, its label, the labeler's P(ai)."""

    created_at: str
    label: str  # "real" | "ai"
    score: float
    generator: str | None = None
    scorer: str = "unknown"


def parse_time(value: str) -> datetime:
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def iso_week(value: str) -> str:
    year, week, _ = parse_time(value).astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def week_end(week: str) -> datetime:
    """The first instant after the ISO week ``2026-W49``."""
    year, number = week.split("-W")
    monday = datetime.fromisocalendar(int(year), int(number), 1).replace(tzinfo=UTC)
    return monday + timedelta(days=7)


def psi(reference: ArrayLike, actual: ArrayLike, bins: int = PSI_BINS) -> float:
    ref, act = np.asarray(reference, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    observed = np.bincount(np.searchsorted(edges, act, side="right"), minlength=len(edges) + 1) / len(act)
    e, a = np.maximum(expected, PSI_FLOOR), np.maximum(observed, PSI_FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def _auc(labels: np.ndarray, scores: np.ndarray, min_per_class: int) -> tuple[float | None, list | None]:
    n_ai, n_real = int(labels.sum()), int((~labels).sum())
    if min(n_ai, n_real) < min_per_class:
        return None, None
    est = auc_estimate(labels.astype(int), scores)
    assert est is not None
    return round(est.auc, 4), [round(x, 4) for x in est.ci95]


def week_row(week: str, items: list[Observation], reference: Sequence[float], min_per_class: int) -> dict:
    labels = np.array([o.label == "ai" for o in items], dtype=bool)
    scores = np.array([o.score for o in items], dtype=np.float64)
    auc, ci = _auc(labels, scores, min_per_class)
    by_generator = {}
    for generator, n in sorted(Counter(o.generator or "unknown" for o in items if o.label == "ai").items()):
        if n < min_per_class:
            continue
        mine = np.array([o.label != "ai" or (o.generator or "unknown") == generator for o in items])
        g_auc, g_ci = _auc(labels[mine], scores[mine], min_per_class)
        by_generator[generator] = {"auc": g_auc, "auc_ci95": g_ci, "n_ai": n}
    drift = len(scores) >= MIN_FOR_DRIFT and len(reference) > 0
    return {
        "week": week,
        "n": {"real": int((~labels).sum()), "ai": int(labels.sum())},
        "auc": auc,
        "auc_ci95": ci,
        "psi": round(psi(reference, scores), 4) if drift else None,
        "ks_p": round(float(ks_2samp(reference, scores).pvalue), 6) if drift else None,
        "by_generator": by_generator,
        "scorers": dict(sorted(Counter(o.scorer for o in items).items())),
    }


def weekly_rows(
    observations: Iterable[Observation],
    reference: Sequence[float],
    min_per_class: int,
    now: datetime,
    include_open: bool = False,
) -> list[dict]:
    """A row per week that has ended before ``now`` (and, with ``include_open``, the running week's
    figures so far, marked ``"partial": true``), oldest first."""
    weeks: dict[str, list[Observation]] = {}
    for o in observations:
        weeks.setdefault(iso_week(o.created_at), []).append(o)
    rows = []
    for week in sorted(weeks):
        ended = week_end(week) <= now
        if ended or include_open:
            rows.append({**week_row(week, weeks[week], reference, min_per_class), "partial": not ended})
    return rows


def degradation(row: dict, promotion_lower: float | None) -> str | None:
    """Why ``row`` (the latest week) means the model has degraded, or None."""
    reasons = []
    ci = row.get("auc_ci95")
    if ci is not None and promotion_lower is not None and ci[1] < promotion_lower:
        reasons.append(
            f"the AUC of week {row['week']} is {row['auc']} (95 % interval {ci[0]}-{ci[1]}), wholly below "
            f"the lower bound {promotion_lower} of the champion's evaluation AUC at promotion"
        )
    ks_p = row.get("ks_p")
    if row.get("psi") is not None and row["psi"] > PSI_ALARM and ks_p is not None and ks_p < KS_ALPHA:
        reasons.append(
            f"the scores of week {row['week']} have shifted from the evaluation set's: PSI {row['psi']} "
            f"> {PSI_ALARM} (KS p = {row.get('ks_p')})"
        )
    return "; ".join(reasons) or None
