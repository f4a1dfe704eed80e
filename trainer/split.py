"""The train/evaluation split: decided once per near-duplicate group, stored, never moved.

Why: a champion re-scored on a split that reshuffles as the dataset grows is graded on its own
training images (it wins every time). Here every labelled image gets a *side* the first time a
training sees it, and keeps it:

1. Images are grouped: perceptual hashes within ``SPLIT_NEAR_DUP_DISTANCE`` bits (wider than
   ingest's rejection radius, measured in docs/evaluation.md), edited copies -- crops down to half
   the area, flips, 90° rotations -- found from content signatures (trainer/copies.py), the same
   source-given ``group_hint`` (one CivitAI post, an edit and its original), or a stored
   ``split_group``; transitively (union-find).
2. A group with members that already have a side: new members take it. A new image that joins a
   train group *and* an evaluation group is ``excluded`` from both (it would leak either way).
3. A new group gets the key of its smallest id, and goes to evaluation while the evaluation set
   still needs images of its classes -- ``VAL_FRACTION`` of each class, at least
   ``EVAL_MIN_PER_CLASS``, at least what the promotion gate last asked for (``gate_wanted``: the
   newest version's ``eval_wanted``, trainer/promotion.py), at most half the class -- in the order
   of a hash of its key (deterministic, independent of arrival order); otherwise to training.
   So when the gate said "add N real images", the next N new real images go to evaluation.

Only new decisions are returned for storing; a stored side is never changed, so no image a model
trained on can ever reach a later evaluation set.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dataset.facts import EDIT_PREFIX
from trainer.copies import Signature, copy_pairs

TRAIN, EVAL, EXCLUDED = "train", "eval", "excluded"
_BLOCK_CELLS = 1_000_000  # pairwise distances per step: ~10 MB of temporaries (10 bytes a cell) at any N


@dataclass
class SplitPlan:
    train: list = field(default_factory=list)  # trains (not held out)
    eval: list = field(default_factory=list)  # in-distribution evaluation (not held out)
    held_out: list = field(default_factory=list)  # held-out generators/sources: never trained on
    excluded: list = field(default_factory=list)  # bridges a train and an evaluation group
    decided: dict[str, tuple[str, str]] = field(default_factory=dict)  # new (group, side) to store
    group_of: dict[str, str] = field(default_factory=dict)
    side_of: dict[str, str] = field(default_factory=dict)


def hamming_groups(phashes: Sequence[int], max_distance: int) -> list[int]:
    """Group index for each hash: hashes within ``max_distance`` bits share a group (transitively).

    ``max_distance = 0`` still joins identical hashes; a negative one joins nothing.
    """
    parent = list(range(len(phashes)))
    if max_distance >= 0 and len(phashes) > 1:
        hashes = _as_uint64(phashes)
        for i, j in close_pairs(hashes, hashes, max_distance):
            if i < j:
                _union(parent, i, j)
    return [_find(parent, i) for i in range(len(phashes))]


def _as_uint64(phashes: Iterable[int]) -> np.ndarray:
    return np.array([int(h) & 0xFFFF_FFFF_FFFF_FFFF for h in phashes], dtype=np.uint64)


def close_pairs(rows: np.ndarray, cols: np.ndarray, max_distance: int):
    """(i, j) with popcount(rows[i] ^ cols[j]) <= max_distance, block by block (bounded memory)."""
    if len(rows) == 0 or len(cols) == 0:
        return
    per_block = max(1, _BLOCK_CELLS // len(cols))
    for start in range(0, len(rows), per_block):
        distances = np.bitwise_count(rows[start : start + per_block, None] ^ cols[None, :])
        r, c = np.nonzero(distances <= max_distance)
        yield from zip((r + start).tolist(), c.tolist(), strict=True)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving keeps the trees flat
        i = parent[i]
    return i


def _union(parent: list[int], i: int, j: int) -> None:
    ri, rj = _find(parent, i), _find(parent, j)
    if ri != rj:
        parent[max(ri, rj)] = min(ri, rj)


def order_key(group: str) -> str:
    """Where a new group stands in the queue for the evaluation set: a hash, so not arrival order."""
    return hashlib.sha256(group.encode("utf-8")).hexdigest()


def eval_targets(
    samples: Sequence,
    eval_fraction: float,
    min_per_class: int,
    gate_wanted: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Evaluation images wanted per class: the fraction, at least the minimum and what the gate asked
    for, at most half the class."""
    totals = Counter(s.label for s in samples)
    gate = gate_wanted or {}
    return {
        label: min(max(math.ceil(n * eval_fraction), min_per_class, int(gate.get(label, 0))), n // 2)
        for label, n in totals.items()
    }


def assign_splits(
    samples: Sequence,
    *,
    radius: int,
    eval_fraction: float,
    min_per_class: int,
    holdout_generators: Iterable[str] = (),
    holdout_sources: Iterable[str] = (),
    gate_wanted: Mapping[str, int] | None = None,
    signatures: Mapping[str, Signature] | None = None,
) -> SplitPlan:
    """Sides for every labelled sample (stored ones kept, new ones decided); see the module doc.

    ``signatures``: {sample id: content signature}; without them edited copies are not looked for.
    """
    ordered = sorted(samples, key=lambda s: s.id)
    held = _held_out(ordered, set(holdout_generators), set(holdout_sources))
    parent = _link(ordered, radius, signatures)
    components: dict[int, list[int]] = {}
    for i in range(len(ordered)):
        components.setdefault(_find(parent, i), []).append(i)

    plan = SplitPlan()
    fresh: list[tuple[str, list[int]]] = []
    for members in components.values():
        stored = {ordered[i].split_group: ordered[i].split for i in members if ordered[i].split}
        if not stored:
            fresh.append((min(ordered[i].id for i in members), members))
            continue
        sides = set(stored.values()) - {EXCLUDED}
        side = sides.pop() if len(sides) == 1 else EXCLUDED
        group = min(g for g, s in stored.items() if s == side) if side != EXCLUDED else min(stored)
        for i in members:
            s = ordered[i]
            plan.group_of[s.id] = s.split_group or group
            plan.side_of[s.id] = s.split or side
            if not s.split:
                plan.decided[s.id] = (group, side)

    in_distribution = [s for s in ordered if s.id not in held]
    wanted = eval_targets(in_distribution, eval_fraction, min_per_class, gate_wanted)
    have = Counter(s.label for s in in_distribution if plan.side_of.get(s.id) == EVAL)
    for group, members in sorted(fresh, key=lambda gm: order_key(gm[0])):
        need = Counter(ordered[i].label for i in members if ordered[i].id not in held)
        if need:
            goes_eval = all(have[label] + n <= wanted.get(label, 0) for label, n in need.items())
        else:  # held out only: a natural draw, so the side is sensible if the hold-out is lifted
            goes_eval = int(order_key(group)[:8], 16) / 0xFFFFFFFF < eval_fraction
        side = EVAL if goes_eval else TRAIN
        if goes_eval:
            have.update(need)
        for i in members:
            plan.group_of[ordered[i].id], plan.side_of[ordered[i].id] = group, side
            plan.decided[ordered[i].id] = (group, side)
    _sort_into_sides(plan, ordered, held)
    return plan


def _sort_into_sides(plan: SplitPlan, ordered: Sequence, held: set[str]) -> None:
    """Each sample into its list: held out, train, evaluation or excluded (in id order)."""
    for s in ordered:
        side = plan.side_of[s.id]
        if s.id in held:
            plan.held_out.append(s)
        elif side == TRAIN:
            plan.train.append(s)
        elif side == EVAL:
            plan.eval.append(s)
        else:
            plan.excluded.append(s)


def leakage(plan: SplitPlan, radius: int) -> dict:
    """report.json's ``leakage`` (design.md §13): how close each evaluated image (evaluation set and
    held-out generators/sources) comes to the nearest training image, in perceptual-hash bits.

    The split keeps groups within ``radius`` bits on one side, so ``eval_within_radius_of_train``
    must be 0; more means the grouping was bypassed (a stored side moved, a hash changed) and the
    evaluation figures are inflated by near-copies of training images."""
    evaluated = [*plan.eval, *plan.held_out]
    nearest: dict[str, int | None] = {}
    if plan.train and evaluated:
        train = _as_uint64(s.phash for s in plan.train)
        per_block = max(1, _BLOCK_CELLS // len(train))
        for start in range(0, len(evaluated), per_block):
            block = evaluated[start : start + per_block]
            rows = _as_uint64(s.phash for s in block)
            distances = np.bitwise_count(rows[:, None] ^ train[None, :]).min(axis=1)
            nearest.update({s.id: int(d) for s, d in zip(block, distances.tolist(), strict=True)})
    else:
        nearest = {s.id: None for s in evaluated}
    known = [d for d in nearest.values() if d is not None]
    return {
        "invariant_hash_radius": radius,
        "eval_within_radius_of_train": sum(d <= radius for d in known),
        "min_distance": min(known) if known else None,
        "nearest_train_distance": dict(sorted(nearest.items())),
    }


def _held_out(samples: Sequence, generators: set[str], sources: set[str]) -> set[str]:
    return {s.id for s in samples if (s.generator in generators) or (s.source in sources)}


def _link(ordered: Sequence, radius: int, signatures: Mapping[str, Signature] | None = None) -> list[int]:
    """Union-find parents: new samples joined to every sample within the radius and to their edited
    copies (or originals), plus hints/groups.

    Only pairs with at least one undecided member are looked for (decided ones already carry their
    group), so a retrain costs new x all comparisons, not all x all.
    """
    parent = list(range(len(ordered)))
    position = {s.id: i for i, s in enumerate(ordered)}
    new = [i for i, s in enumerate(ordered) if not s.split]
    if radius >= 0 and new:
        everyone = _as_uint64(s.phash for s in ordered)
        for a, b in close_pairs(everyone[new], everyone, radius):
            _union(parent, new[a], b)
    if signatures and new:
        for a, b in copy_pairs([signatures.get(s.id) for s in ordered], new):
            _union(parent, a, b)
    by_key: dict[str, int] = {}
    for i, s in enumerate(ordered):
        keys = [f"group:{s.split_group}"] if s.split_group else []
        hint = s.group_hint
        if hint:
            keys.append(f"hint:{hint}")
            if hint.startswith(EDIT_PREFIX) and hint[len(EDIT_PREFIX) :] in position:
                _union(parent, i, position[hint[len(EDIT_PREFIX) :]])
        for key in keys:
            if key in by_key:
                _union(parent, i, by_key[key])
            else:
                by_key[key] = i
    return parent
