"""dataset/phash.py gives imagehash.phash's bits, and Pillow's 32 x 32 Lanczos pixels, exactly."""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
import scipy.fftpack
from PIL import Image

from dataset import phash
from tests.images import scene


def _content(rng: np.random.Generator, kind: int, height: int, width: int) -> np.ndarray:
    if kind == 0:  # noise: every weight matters
        return rng.integers(0, 256, (height, width), dtype=np.uint8)
    if kind == 1:  # hard black/white edges: the clipping at 0 and 255
        return (rng.random((height, width)) > 0.5).astype(np.uint8) * 255
    if kind == 2:  # smooth waves: values that round near half a level
        yy, xx = np.mgrid[0:height, 0:width]
        return ((np.sin(xx / 7.0 + height) + np.cos(yy / 5.0)) * 60 + 128).astype(np.uint8)
    return np.full((height, width), rng.integers(0, 256), dtype=np.uint8)  # flat


def test_the_resize_is_pillows_lanczos_pixel_for_pixel_on_many_sizes():
    """Down- and upscaling, both pass orders of Pillow 13 (vertical first when the height shrinks
    more than twice as much as the width), sizes of 1 to 700 px, four kinds of content."""
    rng = np.random.default_rng(5)
    sizes = [(int(rng.integers(1, 700)), int(rng.integers(1, 700))) for _ in range(300)]
    sizes += [(32, 200), (200, 32), (32, 32), (33, 32), (97, 32), (128, 32), (32, 128), (1, 1)]
    orders = set()
    for i, (height, width) in enumerate(sizes):
        gray = _content(rng, i % 4, height, width)
        expected = np.asarray(Image.fromarray(gray).resize((32, 32), Image.Resampling.LANCZOS))
        np.testing.assert_array_equal(phash.resize_lanczos(gray), expected, err_msg=f"{height}x{width}")
        orders.add(height - 32 > 0 and height - 32 > (width - 32) * 2)
    assert orders == {True, False}  # both orders were exercised


def test_the_bits_are_imagehashs_for_every_mode_the_product_hashes():
    rng = np.random.default_rng(6)
    for seed in range(40):
        img = scene(seed, (int(rng.integers(40, 300)), int(rng.integers(40, 300))))
        for candidate in (img, img.convert("L")):
            expected = imagehash.phash(candidate).hash.flatten()
            np.testing.assert_array_equal(phash.phash_bits(candidate), expected)


def test_the_median_is_numpys_also_with_ties():
    rng = np.random.default_rng(7)
    for _ in range(200):
        pixels = rng.integers(0, 4, (32, 32), dtype=np.uint8) * 85  # few levels: many equal values
        low = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)[:8, :8]
        np.testing.assert_array_equal(phash.hash_bits(pixels), (low > np.median(low)).ravel())


def test_large_products_are_cut_into_one_core_pieces_with_the_same_result():
    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, (900, 700)).astype(np.float64)
    weights = phash.lanczos_weights(700)
    assert a.shape[0] * a.shape[1] * weights.shape[1] > phash._PRODUCT_MAX  # this one is cut
    np.testing.assert_array_equal(phash._rows_times(a, weights), a @ weights)


def test_the_check_against_pillow_catches_a_different_resampling(monkeypatch):
    assert phash.matches_pillow()

    real = phash.resize_lanczos

    def one_level_off(gray: np.ndarray) -> np.ndarray:
        out = real(gray)
        out[0, 0] = out[0, 0] ^ 1
        return out

    monkeypatch.setattr(phash, "resize_lanczos", one_level_off)
    assert not phash.matches_pillow()


def test_without_a_match_every_hash_comes_from_imagehash_itself(monkeypatch):
    def broken(gray: np.ndarray) -> np.ndarray:
        raise AssertionError("the replica must not be used once the check failed")

    monkeypatch.setattr(phash, "resize_lanczos", broken)
    monkeypatch.setattr(phash, "_checked", None)  # the first call of a process checks
    img = scene(11, (120, 90))
    np.testing.assert_array_equal(phash.phash_bits(img), imagehash.phash(img).hash.flatten())
    assert phash._checked is False


@pytest.mark.parametrize("size", [(2000, 3000), (5, 400)])
def test_phash_int_of_large_and_thin_images_is_imagehashs(size):
    from dataset.images import PHASH_DECODE_SIDE, phash_int

    img = scene(4, size)
    factor = min(img.size) // PHASH_DECODE_SIDE
    small = img.reduce(factor) if factor > 1 else img
    bits = imagehash.phash(small).hash.flatten()
    assert phash_int(img) == int("".join("1" if b else "0" for b in bits), 2)
