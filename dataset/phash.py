"""The 64-bit pHash of ``imagehash.phash``, bit for bit, at less than half its cost per image.

``imagehash.phash(img)`` is ``img.convert("L").resize((32, 32), LANCZOS)``, a 2-D DCT (scipy's
``fftpack.dct`` twice), and each of the 8 x 8 lowest frequencies compared with their median. On
the small images ingest hashes (the shorter side 128-255 px after ``phash_int``'s box reduce),
Pillow's Lanczos resize is ~70 % of that: for every call it recomputes its kernel weights (a few
thousand ``sin`` calls, holding the GIL) and then convolves. Here the weights are Pillow's own --
``precompute_coeffs`` and ``normalize_coeffs_8bpc`` of Pillow's ``libImaging/Resample.c``, the same
double arithmetic and the same ``sin``, rounded to the same 22-bit fixed point -- computed once per
input size and kept, and each pass is one float64 matrix product. Every product and sum is an
integer below 2**53, so it is exact; adding half, scaling by 2**-22 and flooring is the C code's
``>> 22``, and clipping to 0..255 its ``clip8``. The passes go in Pillow's order (13.0: vertical
first when the height shrinks by more than twice as much as the width), each rounded to 8 bits as
Pillow rounds it, so the 32 x 32 pixels are Pillow's exactly.

The first call in a process checks that claim against the installed Pillow on sizes on both sides
of the order rule (``matches_pillow``); should a Pillow release ever resample differently, every
hash is computed by ``imagehash.phash`` itself from then on, never a different hash.
tests/dataset/test_phash.py compares pixels and hashes on thousands of random sizes and contents.
"""

from __future__ import annotations

import functools
import math
import threading

import imagehash
import numpy as np
import scipy.fftpack
from PIL import Image

SIDE = 32  # imagehash.phash: hash_size 8 x highfreq_factor 4
HASH_BITS = 8  # the 8 x 8 lowest frequencies
_ONE = float(1 << 22)  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2
_HALF = float(1 << 21)
_LANCZOS_SUPPORT = 3.0

# numpy's OpenBLAS runs a product of m * n * k above ~1-2 million on every core; two decode threads
# doing that at once were 3x slower than one thread each (the pool's threads spin for each other's
# work). Products are cut into pieces of at most this many multiply-adds, which it runs on the
# calling thread (measured: one core up to 850k, all cores from 2M on numpy 2's OpenBLAS).
_PRODUCT_MAX = 1 << 19


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@functools.lru_cache(maxsize=2048)  # ~150 KB at most per size (255 x 32 doubles is 65 KB)
def lanczos_weights(in_size: int, out_size: int = SIDE) -> np.ndarray:
    """Pillow's fixed-point Lanczos weights from ``in_size`` to ``out_size`` samples as an
    ``(in_size, out_size)`` float64 matrix: column j holds output j's taps at their input rows."""
    scale = in_size / out_size  # (double)(in1 - in0) / outSize, box (0, in_size): exact in float
    filterscale = scale if scale >= 1.0 else 1.0
    support = _LANCZOS_SUPPORT * filterscale
    inv_filterscale = 1.0 / filterscale
    weights = np.zeros((in_size, out_size))
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero, as int() does
        xmax = min(int(center + support + 0.5), in_size) - xmin
        taps = [_lanczos((x + xmin - center + 0.5) * inv_filterscale) for x in range(xmax)]
        total = 0.0
        for w in taps:  # summed in order, as the C loop does
            total += w
        for x, w in enumerate(taps):
            if total != 0.0:
                w = w / total
            weights[xmin + x, xx] = int(-0.5 + w * _ONE) if w < 0 else int(0.5 + w * _ONE)
    weights.setflags(write=False)
    return weights


def _to_8bit(sums: np.ndarray) -> np.ndarray:
    """``clip8(sum + 2**21)``: Pillow's rounding of a pass's fixed-point sums, in place."""
    sums += _HALF
    sums *= 1.0 / _ONE  # a power of two: exact
    np.floor(sums, out=sums)
    return np.clip(sums, 0.0, 255.0, out=sums)


def _rows_times(a: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``a @ weights`` in row blocks small enough for one core (see _PRODUCT_MAX)."""
    rows = max(1, _PRODUCT_MAX // (a.shape[1] * weights.shape[1]))
    if rows >= a.shape[0]:
        return a @ weights
    return np.concatenate([a[i : i + rows] @ weights for i in range(0, a.shape[0], rows)])


def resize_lanczos(gray: np.ndarray) -> np.ndarray:
    """An 8-bit grey ``(h, w)`` array resized to SIDE x SIDE: ``Image.resize((32, 32), LANCZOS)``."""
    height, width = gray.shape
    a = gray.astype(np.float64)
    # Pillow 13's ImagingResampleInner: vertical first when the height shrinks more than twice as
    # much as the width does (each pass is rounded to 8 bits, so the order shows in the pixels)
    vertical_first = height - SIDE > 0 and height - SIDE > (width - SIDE) * 2
    if vertical_first:
        a = _to_8bit(_rows_times(a.T, lanczos_weights(height)).T)
    if width != SIDE:
        a = _to_8bit(_rows_times(a, lanczos_weights(width)))
    if not vertical_first and height != SIDE:
        a = _to_8bit(_rows_times(a.T, lanczos_weights(height)).T)
    return a.astype(np.uint8)


def hash_bits(pixels: np.ndarray) -> np.ndarray:
    """imagehash.phash's 64 bits (row by row) of the SIDE x SIDE grey ``pixels``: the same DCT
    calls, and the median of 64 values as numpy computes it (the mean of the 32nd and 33rd)."""
    low = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:HASH_BITS, :HASH_BITS]
    ordered = np.sort(low, axis=None)
    middle = ordered.size // 2
    return (low > (ordered[middle - 1] + ordered[middle]) / 2).ravel()


def phash_bits(img: Image.Image) -> np.ndarray:
    """``imagehash.phash(img).hash.flatten()``, the same 64 booleans."""
    if not _exact():
        return imagehash.phash(img).hash.flatten()
    grey = img if img.mode == "L" else img.convert("L")
    return hash_bits(resize_lanczos(np.asarray(grey)))


# Sizes around Pillow's pass-order rule and the shapes ingest sees (up- and down-scaling both ways).
_CHECK_SIZES = ((40, 64), (64, 40), (100, 33), (33, 100), (141, 188), (255, 128), (128, 255))


def matches_pillow() -> bool:
    """Whether this module's resize gives the installed Pillow's pixels and imagehash's bits."""
    rng = np.random.default_rng(20261207)
    for height, width in _CHECK_SIZES:
        gray = rng.integers(0, 256, (height, width), dtype=np.uint8)
        img = Image.fromarray(gray)
        try:
            ours = resize_lanczos(gray)
            bits = hash_bits(ours)
        except Exception:  # noqa: BLE001 - whatever went wrong, imagehash is the answer
            return False
        if not np.array_equal(ours, np.asarray(img.resize((SIDE, SIDE), Image.Resampling.LANCZOS))):
            return False
        if not np.array_equal(bits, imagehash.phash(img).hash.flatten()):
            return False
    return True


_checked: bool | None = None
_check_lock = threading.Lock()


def _exact() -> bool:
    global _checked
    if _checked is None:
        with _check_lock:
            if _checked is None:
                _checked = matches_pillow()
    return _checked
