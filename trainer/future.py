"""Future generators: the AI generators seen last are kept out of training and reported apart, the
temporal protocol of AI-GenBench (train on the generators up to a point in time, test on the
later ones), chosen automatically instead of by a list an operator must think of; and AUC by month
of ingest. No torch.

A generator's **first-seen time** is the earliest ``created_at`` of its AI images in the dataset.
``EVAL_FUTURE_GENERATORS=k`` holds out the k generators first seen most recently (ties broken by
name). Unset, k is 1 when at least ``MIN_GENERATORS`` AI generators each have
``EVAL_MIN_PER_CLASS`` images, else 0 and ``reason`` says why. Generators ``unknown`` and unnamed
images never count (there is no telling when "unknown" appeared).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

MIN_GENERATORS = 3  # AI generators with EVAL_MIN_PER_CLASS images each before one is held out by default
UNNAMED = frozenset({"", "unknown"})


@dataclass(frozen=True)
class FutureChoice:
    held_out: tuple[str, ...]
    first_seen: dict[str, str] = field(default_factory=dict)  # every named AI generator
    k: int = 0
    reason: str | None = None  # why none (or fewer than asked) are held out


def choose_future(samples: Sequence, k: int | None, min_per_class: int) -> FutureChoice:
    """Which generators are the future, from the labelled samples (``generator``, ``created_at``)."""
    first: dict[str, str] = {}
    counts: Counter = Counter()
    for s in samples:
        name = s.generator or ""
        if s.label != "ai" or name in UNNAMED:
            continue
        counts[name] += 1
        if name not in first or s.created_at < first[name]:
            first[name] = s.created_at
    big = sorted(g for g, n in counts.items() if n >= min_per_class)
    reason = None
    if k is None:
        if len(big) >= MIN_GENERATORS:
            k = 1
        else:
            k = 0
            reason = (
                f"no future generator held out: {len(big)} AI generator(s) have {min_per_class} images "
                f"each (EVAL_MIN_PER_CLASS), at least {MIN_GENERATORS} are needed (EVAL_FUTURE_GENERATORS "
                "unset); name generators on the sources (generator:) or set EVAL_FUTURE_GENERATORS"
            )
    newest = sorted(first, key=lambda g: (first[g], g), reverse=True)
    # At least one generator must stay in training: holding them all out leaves nothing to learn.
    held = tuple(newest[: min(k, max(0, len(newest) - 1))])
    if k and len(held) < k:
        reason = (
            f"EVAL_FUTURE_GENERATORS={k} but only {len(first)} named AI generator(s): {len(held)} held "
            "out, at least one must train"
        )
    return FutureChoice(held, dict(sorted(first.items())), k, reason)


def month(created_at: str) -> str:
    return created_at[:7]  # ISO 8601: "2026-11"


def by_month(samples: Sequence, labels: np.ndarray, margins: np.ndarray, figure: Callable) -> dict:
    """``{"2026-11": {auc, auc_ci95, n: {real, ai}}}`` over the evaluation images by month of ingest;
    ``figure(labels, scores)`` is trainer.report's (AUC and interval, or why there is none)."""
    months = np.array([month(s.created_at) for s in samples], dtype=object)
    out = {}
    for m in sorted(set(months.tolist())):
        mine = months == m
        fig = figure(labels[mine], margins[mine])
        out[m] = {
            "auc": fig["auc"],
            "auc_ci95": fig["auc_ci95"],
            "n": {"real": fig["n_real"], "ai": fig["n_ai"]},
            **({"note": fig["note"]} if "note" in fig else {}),
        }
    return out
