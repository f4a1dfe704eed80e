"""Edited copies of one picture: crops (down to half the area), flips, 90° rotations, re-encodes,
resizes and small colour changes, found so the split can keep them on one side.

pHash alone (trainer/split.py's radius) misses them: a flip or a rotation moves 30-34 of 64 bits,
a crop to 60 % of the area about as many. Each image gets a **signature** from one 64 x 64 grey
thumbnail of the whole picture (squashed to a square, as pHash does):

* eight **dihedral pHashes** -- the pHash of each flip/rotation of the picture, all eight from the
  one 8 x 8 low-frequency DCT block (a horizontal flip changes the sign of the odd horizontal
  frequencies, a vertical flip of the odd vertical ones, a transpose swaps the axes);
* **window pHashes** of sub-windows of the picture on a fixed grid (widths and heights 1, 0.85,
  0.77 and 0.7 of the picture, at 3, 4 and 5 places along each axis): a crop of at least half the area
  lies close to one of them, so its own pHash lands near that window's.

Hash matches only nominate candidates. Each candidate pair is **verified** on the thumbnails: the
normalised cross-correlation of the candidate's picture with the matched transform (or the best
window around the matched one) must reach ``VERIFY_MIN_NCC``. Unrelated pictures that happen to
share a hash (two ID portraits on the same backdrop) fail it; brightness and contrast changes do
not move it. Figures (recall, false joins, cost per image): docs/evaluation.md, from
``bench/copies_bench.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.fft import dctn
from threadpoolctl import threadpool_limits

THUMB = 64  # side of the stored grey thumbnail
COLOUR = 8  # side of the colour thumbnail the content-only baseline sees (no generation trace survives)
HASH_SIDE = 32  # pHash's resample
CHECK_SIDE = 24  # side of the pictures compared by cross-correlation
CHECK_BASE = 32  # the thumbnail is box-reduced to this before windows are sampled for that
SIGNATURE_VERSION = 1  # bump when the thumbnail, the windows or the hashes change
# Window grid: (fraction of the width or height, places along the axis from start to end).
WINDOW_FRACTIONS = ((0.85, 3), (0.77, 4), (0.7, 5))
DIHEDRAL_RADIUS = 10  # bits: a flipped/rotated copy's transform hash against the original's hash
WINDOW_RADIUS = 16  # bits: a crop's hash against the nearest grid window of its original
VERIFY_MIN_NCC = 0.8  # measured in docs/evaluation.md (bench/copies_bench.py)
MIN_AREA = 0.5  # the smallest crop (share of the original's area) searched for
_BLOCK_CELLS = 1_000_000  # hash comparisons per step: ~10 MB of temporaries


def _windows() -> list[tuple[float, float, float, float]]:
    """(x0, y0, w, h) in fractions of the picture; the whole picture first."""
    spans = [(0.0, 1.0)]
    for f, places in WINDOW_FRACTIONS:
        spans += [(float(x), f) for x in np.linspace(0.0, 1.0 - f, places)]
    out = [(x, y, w, h) for (x, w), (y, h) in itertools.product(spans, spans) if w * h >= MIN_AREA - 0.02]
    out.remove((0.0, 0.0, 1.0, 1.0))
    return [(0.0, 0.0, 1.0, 1.0), *out]


WINDOWS = _windows()


@dataclass(frozen=True)
class Signature:
    thumb: np.ndarray  # (THUMB, THUMB) uint8, grey, the whole picture squashed to a square
    dihedral: np.ndarray  # (8,) uint64: pHash of each flip/rotation (index 0: the picture as is)
    windows: np.ndarray  # (len(WINDOWS),) uint64: pHash of each grid window (index 0: whole)
    aspect: float  # width / height of the original picture
    colour: np.ndarray  # (COLOUR, COLOUR, 3) uint8: a tiny colour thumbnail (the content-only baseline)

    def to_bytes(self) -> bytes:
        return (
            np.float64(self.aspect).tobytes()
            + self.dihedral.astype("<u8").tobytes()
            + self.windows.astype("<u8").tobytes()
            + self.thumb.astype(np.uint8).tobytes()
            + self.colour.astype(np.uint8).tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Signature:
        n_win = len(WINDOWS)
        want = 8 + 8 * 8 + 8 * n_win + THUMB * THUMB + COLOUR * COLOUR * 3
        if len(data) != want:
            raise ValueError(f"a signature of {len(data)} bytes (version {SIGNATURE_VERSION} has {want})")
        aspect = float(np.frombuffer(data[:8], "<f8")[0])
        dihedral = np.frombuffer(data[8:72], "<u8").astype(np.uint64)
        windows = np.frombuffer(data[72 : 72 + 8 * n_win], "<u8").astype(np.uint64)
        at = 72 + 8 * n_win
        thumb = np.frombuffer(data[at : at + THUMB * THUMB], np.uint8).reshape(THUMB, THUMB)
        colour = np.frombuffer(data[at + THUMB * THUMB :], np.uint8).reshape(COLOUR, COLOUR, 3)
        return cls(thumb, dihedral, windows, aspect, colour)


def signature(image: Image.Image) -> Signature:
    """The signature of a decoded picture (any mode; EXIF orientation already applied)."""
    rgb = image.convert("RGB")
    grey = rgb.convert("L")
    # Box-reduce large pictures first (cheap), then one Lanczos resample to the thumbnail.
    factor = min(grey.size) // (4 * THUMB)
    if factor > 1:
        grey = grey.reduce(factor)
    thumb = np.asarray(grey.resize((THUMB, THUMB), Image.Resampling.LANCZOS), dtype=np.uint8)
    as_float = Image.fromarray(thumb.astype(np.float32), mode="F")
    blocks = _dct_blocks(np.stack([_resample(as_float, w) for w in WINDOWS]))
    return Signature(
        thumb=thumb,
        dihedral=_bits(np.stack(dihedral_blocks(blocks[0]))),
        windows=_bits(blocks),
        aspect=image.width / image.height,
        colour=np.asarray(rgb.resize((COLOUR, COLOUR), Image.Resampling.BOX), dtype=np.uint8),
    )


def _resample(
    image: Image.Image, window: tuple[float, float, float, float], side: int = HASH_SIDE
) -> np.ndarray:
    x, y, w, h = window
    box = (x * THUMB, y * THUMB, (x + w) * THUMB, (y + h) * THUMB)
    return np.asarray(image.resize((side, side), Image.Resampling.BILINEAR, box=box), dtype=np.float64)


def _dct_blocks(pixels: np.ndarray) -> np.ndarray:
    """(K, 8, 8): the low-frequency DCT-II block pHash thresholds (rows: vertical frequency) of each
    of K pictures (K, side, side), in one call."""
    return dctn(pixels, type=2, norm=None, axes=(1, 2))[:, :8, :8]


def dihedral_blocks(block: np.ndarray) -> list[np.ndarray]:
    """The DCT block of each of the 8 flips/rotations, from the picture's own block.

    Reversing a signal multiplies its k-th DCT-II coefficient by (-1)^k, so a horizontal flip
    negates the odd columns, a vertical flip the odd rows; a transpose transposes the block.
    Order: identity, flip left-right, flip up-down, rotate 180, transpose, then the transpose
    followed by each flip (the two 90° rotations and the anti-transpose).
    """
    odd = np.array([(-1) ** k for k in range(8)], dtype=np.float64)
    lr, ud = block * odd[None, :], block * odd[:, None]
    t = block.T
    return [
        block,
        lr,
        ud,
        lr * odd[:, None],
        t,
        t * odd[None, :],
        t * odd[:, None],
        t * odd[None, :] * odd[:, None],
    ]


def dihedral_arrays(pixels: np.ndarray) -> list[np.ndarray]:
    """The same 8 transforms applied to a picture, in dihedral_blocks' order."""
    t = pixels.T
    return [
        pixels,
        pixels[:, ::-1],
        pixels[::-1, :],
        pixels[::-1, ::-1],
        t,
        t[:, ::-1],
        t[::-1, :],
        t[::-1, ::-1],
    ]


def _bits(blocks: np.ndarray) -> np.ndarray:
    """(K,) uint64: each 8 x 8 block's pHash, its coefficients above their median, first bit highest."""
    flat = blocks.reshape(len(blocks), 64)
    packed = np.packbits(flat > np.median(flat, axis=1, keepdims=True), axis=1)  # (K, 8) bytes
    return packed.view(">u8").reshape(-1).astype(np.uint64)


# ---- matching ------------------------------------------------------------------------------------


def _ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of each row of ``a`` (W, N) with ``b`` (N,): one matrix-vector
    product and one row-wise sum of squares."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean()
    num = a @ b
    denom = np.sqrt(np.einsum("ij,ij->i", a, a) * (b @ b))
    return np.where(denom > 1e-9, num / np.maximum(denom, 1e-9), 0.0)


def _gradients(a: np.ndarray) -> np.ndarray:
    """(..., S, S) pictures -> (..., (S - 1) * 2 (S - 1)): horizontal then vertical differences."""
    s = a.shape[-1]
    grads = np.concatenate([np.diff(a, axis=-1)[..., :-1, :], np.diff(a, axis=-2)[..., :, :-1]], axis=-1)
    return grads.reshape(*a.shape[:-2], (s - 1) * 2 * (s - 1))


def _similarity(a: np.ndarray, b: np.ndarray, at_least: float | None = None) -> np.ndarray:
    """The lower of the cross-correlations of the pictures ``a`` (W, S, S) with ``b`` (S, S) and of
    their gradients: smooth pictures (a sky, a backdrop) correlate on their shading alone; their
    edges must line up as well.

    ``at_least``: only whether a similarity reaches it matters, so the gradients are compared only
    for the pictures whose own correlation reaches it (the others' similarity is their own
    correlation, already below)."""
    flat = a.reshape(len(a), -1)
    pixels = _ncc(flat, b.reshape(-1))
    todo = np.arange(len(a)) if at_least is None else np.flatnonzero(pixels >= at_least)
    if len(todo):
        pixels[todo] = np.minimum(pixels[todo], _ncc(_gradients(a[todo]), _gradients(b)))
    return pixels


def _base(sig: Signature) -> np.ndarray:
    """The thumbnail at CHECK_BASE (antialiased), what windows are sampled from for verification."""
    image = Image.fromarray(sig.thumb.astype(np.float32), mode="F")
    return np.asarray(image.resize((CHECK_BASE, CHECK_BASE), Image.Resampling.BOX), dtype=np.float64)


def _interpolation(coords: np.ndarray, n: int) -> np.ndarray:
    """(..., n) bilinear weights: row ``i`` picks coordinate ``coords[i]`` (pixels) of a line of n."""
    c = np.clip(coords, 0, n - 1).reshape(-1)
    low = np.minimum(c.astype(int), n - 2)
    frac = c - low
    weights = np.zeros((len(c), n))
    rows = np.arange(len(c))
    weights[rows, low] = 1 - frac
    weights[rows, low + 1] = frac
    return weights.reshape(*coords.shape, n)


_STEPS = (np.arange(CHECK_SIDE) + 0.5) / CHECK_SIDE
_ORIGIN = np.zeros(1)
_SHIFTS = np.linspace(-0.12, 0.12, 7)  # window centre offsets searched around a match


def _sample_windows(
    base: np.ndarray, cx: float, cy: float, sizes: np.ndarray, shifts: np.ndarray
) -> np.ndarray:
    """(len(sizes) * P * P, S, S), P = len(shifts): bilinear samples, CHECK_SIDE x CHECK_SIDE, of
    ``base``'s windows of each size (w, h) (fractions) centred at (cx + dx, cy + dy) for every dx
    and dy in ``shifts``, moved inside the picture where they would leave it.

    Bilinear sampling is separable: a window is ``Ry @ base @ Rx.T``, its rows' weights times the
    picture times its columns'. The windows of one size share those weights by row and by column,
    so all of them are two batched matrix products (a gather per sample point cost 10 ms a
    verification; this is ~0.2 ms)."""
    n, s, k, p = base.shape[0], CHECK_SIDE, len(sizes), len(shifts)
    w, h = sizes[:, 0:1], sizes[:, 1:2]
    x0 = np.clip(cx + shifts[None, :] - w / 2, 0.0, 1.0 - w)  # (k, P) window starts
    y0 = np.clip(cy + shifts[None, :] - h / 2, 0.0, 1.0 - h)
    cols = _interpolation((x0[..., None] + _STEPS * w[..., None]) * n - 0.5, n).reshape(k, p * s, n)
    rows = _interpolation((y0[..., None] + _STEPS * h[..., None]) * n - 0.5, n).reshape(k, p * s, n)
    grid = (rows @ base) @ cols.transpose(0, 2, 1)  # (k, P*S rows of y, P*S columns of x)
    return grid.reshape(k, p, s, p, s).transpose(0, 1, 3, 2, 4).reshape(-1, s, s)


def _whole(sig: Signature, cache: dict | None, key: int) -> np.ndarray:
    if cache is not None and key in cache:
        return cache[key]
    out = _sample_windows(_base(sig), 0.5, 0.5, np.array([[1.0, 1.0]]), _ORIGIN)[0]  # the whole picture
    if cache is not None:
        cache[key] = out
    return out


def verify_transform(
    a: Signature, b: Signature, transform: int, cache: dict | None = None, ka: int = -1, kb: int = -2
) -> float:
    """Cross-correlation of ``b`` with transform ``transform`` of ``a`` (dihedral_blocks' order)."""
    picture = dihedral_arrays(_whole(a, cache, ka))[transform]
    return float(_similarity(picture[None], _whole(b, cache, kb))[0])


def verify_crop(
    original: Signature,
    crop: Signature,
    near: tuple[float, float, float, float],
    cache: dict | None = None,
    key: int = -1,
    bases: dict | None = None,
    original_key: int = -1,
    at_least: float | None = None,
) -> float:
    """Best cross-correlation of ``crop`` with a window of ``original`` around the grid window ``near``.

    The crop's shape fixes the window's height from its width (both pictures' aspects are known);
    the width is searched around the matched window's, the position around its centre: 7 widths,
    7 x 7 positions. ``at_least``: only whether the best reaches it matters (the split's question),
    so a result below it is only known to be below (:func:`_similarity`).
    """
    ratio = original.aspect / crop.aspect  # h = w * ratio keeps the crop's shape
    x0, y0, w0, h0 = near
    cx, cy = x0 + w0 / 2, y0 + h0 / 2
    sizes = []
    for w in (np.sqrt(w0 * h0 / ratio) * np.array([0.8, 0.87, 0.94, 1.0, 1.07, 1.14, 1.22])).tolist():
        h = w * ratio
        if max(w, h) > 1.0:
            w, h = w / max(w, h), h / max(w, h)
        if w * h >= MIN_AREA - 0.1:
            sizes.append((w, h))
    if not sizes:
        return -1.0
    known = bases.get(original_key) if bases is not None else None
    base = known if known is not None else _base(original)
    if bases is not None:
        bases[original_key] = base
    samples = _sample_windows(base, cx, cy, np.array(sizes), _SHIFTS)
    return float(_similarity(samples, _whole(crop, cache, key), at_least).max())


def _pairs_within(rows: np.ndarray, cols: np.ndarray, radius: int) -> Iterable[tuple[int, int, int]]:
    """(i, j, distance) with popcount(rows[i] ^ cols[j]) <= radius, block by block (bounded memory)."""
    if len(rows) == 0 or len(cols) == 0:
        return
    per_block = max(1, _BLOCK_CELLS // len(cols))
    for start in range(0, len(rows), per_block):
        distances = np.bitwise_count(rows[start : start + per_block, None] ^ cols[None, :])
        r, c = np.nonzero(distances <= radius)
        yield from zip((r + start).tolist(), c.tolist(), distances[r, c].tolist(), strict=True)


def copy_pairs(signatures: Sequence[Signature | None], new: Iterable[int]) -> list[tuple[int, int]]:
    """(i, j) pairs, i < j, one of them in ``new``, where one is an edited copy of the other.

    Candidates: a transform hash of a new picture within DIHEDRAL_RADIUS of another's hash; a new
    picture's hash within WINDOW_RADIUS of one of another's windows, or the reverse. Each candidate
    is verified (module doc); a pair once verified is not looked at again.
    """
    have = [k for k, s in enumerate(signatures) if s is not None]
    fresh = sorted({k for k in new if signatures[k] is not None})
    if not fresh or len(have) < 2:
        return []
    sig: dict[int, Signature] = {k: s for k, s in enumerate(signatures) if s is not None}
    pos = np.array(have)
    n_tr, n_win = 8, len(WINDOWS)
    whole = np.array([sig[k].dihedral[0] for k in have], dtype=np.uint64)
    # (distance, kind, a, b, which): the closest candidates are verified first.
    candidates: list[tuple[int, int, int, int, int]] = []
    trans = np.array([sig[k].dihedral[t] for k in fresh for t in range(1, n_tr)], dtype=np.uint64)
    for r, c, d in _pairs_within(trans, whole, DIHEDRAL_RADIUS):
        candidates.append((d, 0, fresh[r // (n_tr - 1)], int(pos[c]), r % (n_tr - 1) + 1))
    wins_all = np.array([w for k in have for w in sig[k].windows[1:]], dtype=np.uint64)
    new_whole = np.array([sig[k].dihedral[0] for k in fresh], dtype=np.uint64)
    for r, c, d in _pairs_within(new_whole, wins_all, WINDOW_RADIUS):  # a new crop of an older picture
        candidates.append((d, 1, int(pos[c // (n_win - 1)]), fresh[r], c % (n_win - 1) + 1))
    wins_new = np.array([w for k in fresh for w in sig[k].windows[1:]], dtype=np.uint64)
    for r, c, d in _pairs_within(wins_new, whole, WINDOW_RADIUS):  # an older crop of a new picture
        candidates.append((d, 1, fresh[r // (n_win - 1)], int(pos[c]), r % (n_win - 1) + 1))
    found: set[tuple[int, int]] = set()
    # Thousands of small products (~170 x 32 x 170): a second BLAS thread doubles their CPU time
    # and leaves their wall time as it was (measured in docs/evaluation.md).
    with threadpool_limits(limits=1, user_api="blas"):
        small: dict[int, np.ndarray] = {}
        bases: dict[int, np.ndarray] = {}
        for _, kind, a, b, which in sorted(candidates):
            pair = (min(a, b), max(a, b))
            if a == b or pair in found:
                continue
            if kind == 0:
                ncc = verify_transform(sig[a], sig[b], which, small, a, b)
            else:
                ncc = verify_crop(sig[a], sig[b], WINDOWS[which], small, b, bases, a, VERIFY_MIN_NCC)
            if ncc >= VERIFY_MIN_NCC:
                found.add(pair)
    return sorted(found)
