"""Deterministic, stratified train/validation split in which near-duplicates stay together.

Samples whose 64-bit perceptual hashes lie within ``max_distance`` bits of each other are joined
(union-find, transitively) into one group; whole groups go to one side, so the validation score is
never inflated by a near-copy of a training image.  The same samples and seed give the same split,
whatever order the samples arrive in.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import numpy as np

_BLOCK_CELLS = 4_000_000  # pairwise distances computed per step: bounds memory (~32 MB) at any N


class SampleLike(Protocol):
    id: str
    label: str
    phash: int


def hamming_groups(phashes: Sequence[int], max_distance: int) -> list[int]:
    """Group index for each hash: hashes within ``max_distance`` bits share a group (transitively).

    ``max_distance = 0`` still joins identical hashes; a negative one joins nothing.
    """
    parent = list(range(len(phashes)))
    if max_distance >= 0 and len(phashes) > 1:
        hashes = np.array([int(h) & 0xFFFF_FFFF_FFFF_FFFF for h in phashes], dtype=np.uint64)
        for i, j in _close_pairs(hashes, max_distance):
            _union(parent, i, j)
    return [_find(parent, i) for i in range(len(phashes))]


def _close_pairs(hashes: np.ndarray, max_distance: int):
    """Index pairs (i < j) within the radius, computed block by block with popcount on XOR."""
    rows_per_block = max(1, _BLOCK_CELLS // len(hashes))
    for start in range(0, len(hashes), rows_per_block):
        block = hashes[start:start + rows_per_block]
        distances = np.bitwise_count(block[:, None] ^ hashes[None, start:])  # upper triangle only
        rows, cols = np.nonzero(distances <= max_distance)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if r < c:
                yield start + r, start + c


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving keeps the trees flat
        i = parent[i]
    return i


def _union(parent: list[int], i: int, j: int) -> None:
    ri, rj = _find(parent, i), _find(parent, j)
    if ri != rj:
        parent[max(ri, rj)] = min(ri, rj)


def split_samples(samples: Sequence[SampleLike], val_fraction: float, seed: int,
                  max_distance: int) -> tuple[list, list]:
    """(train, val): about ``val_fraction`` of each label in val, near-duplicate groups unsplit."""
    ordered = sorted(samples, key=lambda s: s.id)  # arrival order must not change the split
    roots = hamming_groups([s.phash for s in ordered], max_distance)
    groups: dict[int, list] = {}
    for sample, root in zip(ordered, roots, strict=True):
        groups.setdefault(root, []).append(sample)
    members = sorted(groups.values(), key=lambda g: g[0].id)
    random.Random(seed).shuffle(members)

    totals = Counter(s.label for s in ordered)
    target = {label: _val_target(n, val_fraction) for label, n in totals.items()}
    in_val: Counter = Counter()
    train, val = [], []
    for group in members:
        need = Counter(s.label for s in group)
        if all(in_val[label] + n <= target[label] for label, n in need.items()):
            val += group
            in_val.update(need)
        else:
            train += group
    return sorted(train, key=lambda s: s.id), sorted(val, key=lambda s: s.id)


def _val_target(count: int, val_fraction: float) -> int:
    # At least one of each class in validation (when the class has two), else no AUC can be had.
    return max(1, round(count * val_fraction)) if count >= 2 else 0
