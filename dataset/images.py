"""Image validation and hashes with Pillow: what may enter the dataset, and its fingerprints.

:func:`inspect_image` decodes the bytes once and either returns an :class:`ImageInfo` (real
format, extension, size, SHA-256, 64-bit perceptual hash) or raises :class:`ImageRejected`
with one of :data:`REASONS`. :func:`decode_rgb` is the one way to turn stored bytes into RGB
pixels (EXIF orientation applied, alpha composited on white), shared with the trainer.

Decode memory is bounded (DECODE_MEMORY_BUDGET_MB): before any pixel is decoded, the header's
size and pixel mode give the bytes the decode and its conversions will hold (:func:`decode_cost`;
a 7000x7000 32-bit float TIFF of a few hundred KB needs ~300 MB). An image that alone needs more
than the budget is rejected as ``decompression_bomb``; the others share the budget in this
process (:class:`DecodeBudget`), so concurrent decodes wait for memory rather than add up.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, cast

import imagecodecs
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from dataset.errors import ImageRejected
from dataset.phash import phash_bits

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_DECODE_BUDGET = 1024 * 2**20  # bytes; DECODE_MEMORY_BUDGET_MB
EXIF_ORIENTATION = 0x0112

REASONS = {
    "not_an_image": "the bytes are not an image Pillow recognises",
    "truncated": "the file is truncated or corrupt and cannot be decoded completely",
    "decompression_bomb": "the declared pixel count exceeds the limit",
    "too_small": "the shorter side is below the minimum",
    "too_large": "the file exceeds the byte limit",
    "animated": "animated images (several frames) are not accepted",
    "unsupported_format": "a recognised format this service does not accept",
}

# Formats Pillow decodes itself (no external programs such as Ghostscript) -> stored extension.
# MPO is a JPEG with extra frames (camera stereo/preview pictures): the bytes are a valid JPEG.
FORMAT_EXT = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "AVIF": "avif",
}
_OPEN_FORMATS = [f for f in FORMAT_EXT if f != "MPO"]  # the JPEG plugin itself returns MPO images
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


@dataclass(frozen=True)
class ImageInfo:
    format: str  # Pillow's name for the real format, e.g. "JPEG"
    ext: str  # extension derived from the real format, never from a file name
    width: int
    height: int
    sha256: str
    phash: int  # unsigned 64-bit perceptual hash (imagehash.phash)


# Bytes per pixel as Pillow holds each mode, and what the conversion to 8-bit (to_rgb, the pHash
# input) adds on top: high-depth grey goes through one 8-bit copy and its image; alpha modes
# through RGBA, a white canvas and the composite; RGB may be transposed once.
HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def decode_cost(mode: str, width: int, height: int, transparency: bool = False) -> int:
    """Peak bytes of decoding an image of this mode and size and converting it for hashing."""
    pixels = width * height
    held = _MODE_BYTES.get(mode, 4)
    if mode in HIGH_DEPTH:
        extra = 2
    elif mode in _ALPHA or transparency:
        extra = 16
    else:
        extra = 4 if mode == "RGB" else 8
    return pixels * (held + extra)


class DecodeBudget:
    """Memory for decodes in this process: each decode takes its cost and waits while the others'
    costs would push the total over the budget (one decode alone always proceeds)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.in_use = 0
        self.peak = 0  # the largest total held at once, for tests and the bench

    @contextlib.contextmanager
    def hold(self, cost: int, budget: int):
        with self._cond:
            self._cond.wait_for(lambda: self.in_use == 0 or self.in_use + cost <= budget)
            self.in_use += cost
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            if cost >= TRIM_AFTER_BYTES:
                _give_back_freed_memory()
            with self._cond:
                self.in_use -= cost
                self._cond.notify_all()


DECODES = DecodeBudget()
TRIM_AFTER_BYTES = 32 * 2**20


def _load_malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; absent elsewhere (musl, macOS)
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _give_back_freed_memory() -> None:
    """glibc keeps freed blocks in per-thread arenas: without this, each of six decode threads keeps
    its own peak and the process grows to six decodes' worth although only one ran at a time."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _budgeted(img: Image.Image, budget: int):
    cost = decode_cost(img.mode, *img.size, transparency="transparency" in img.info)
    if cost > budget:
        width, height = img.size
        raise ImageRejected(
            "decompression_bomb",
            f"decoding this {width}x{height} {img.mode} image needs about {cost // 2**20} MB, over the "
            f"decode budget of {budget // 2**20} MB (DECODE_MEMORY_BUDGET_MB): send an 8-bit image or a "
            "smaller one",
        )
    return DECODES.hold(cost, budget)


# warnings.catch_warnings swaps process-wide state; ingest runs in several threads, so the window
# where DecompressionBombWarning is an error is serialised. Image.open only parses the header.
_open_lock = threading.Lock()


DECODE_READ_MAX = 4 << 20  # bytes a JPEG decoder call is given at once (_load_fully)
PHASH_DECODE_SIDE = 128  # JPEGs are validated and hashed at the DCT scale that keeps this many pixels


def inspect_image(
    data: bytes, *, max_bytes: int, min_side: int, max_pixels: int, memory_budget: int = DEFAULT_DECODE_BUDGET
) -> ImageInfo:
    """Validate `data` completely (every byte of the image data is decoded) and compute its hashes."""
    if not data:
        raise ImageRejected("not_an_image", "the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes is over the limit of {max_bytes} bytes")
    img = _open_checked(data, max_pixels)
    fmt = img.format or ""
    frames = getattr(img, "n_frames", 1)
    if fmt != "MPO" and frames > 1:
        raise ImageRejected("animated", f"animated {fmt} with {frames} frames: upload a still image")
    width, height = img.size
    if min(width, height) < min_side:
        raise ImageRejected("too_small", f"{width}x{height} is under the minimum side of {min_side} px")
    # pHash looks at a 32x32 resample of a box-reduced copy at most ~2x PHASH_DECODE_SIDE on its shorter side
    # (phash_int): a JPEG is decoded straight at that scale (DCT scaling), several times less work
    # than every pixel at full size. The decoder still reads every entropy-coded byte, so a
    # truncated or corrupt file is still rejected (tests/dataset/test_images.py, the acceptance
    # tricky/ files: bench/ingest_bench.py --check-tricky).
    img.draft(None, (PHASH_DECODE_SIDE, PHASH_DECODE_SIDE))
    with _budgeted(img, memory_budget):
        img = _load_fully(img, data)
        # High-depth grey is hashed as 8-bit grey: the same pHash as its RGB copy, a quarter the memory.
        visible = _high_depth_to_l(_exif_transposed(img)) if img.mode in HIGH_DEPTH else to_rgb(img)
        del img
        phash = phash_int(visible)
    return ImageInfo(fmt, FORMAT_EXT[fmt], width, height, hashlib.sha256(data).hexdigest(), phash)


def decode_rgb(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reduce_to: int | None = None,
    memory_budget: int = DEFAULT_DECODE_BUDGET,
) -> Image.Image:
    """Decode to an RGB image as a person sees it: EXIF orientation applied, alpha on white.

    ``reduce_to`` (the trainer's): the caller needs only this many pixels on the shorter side, so a
    larger image is reduced by a power of two (2, 4, 8) that keeps it at least that big -- inside
    the JPEG decoder (DCT scaling: several times faster) or, for other formats, by a box reduce of
    the same factor, so every format goes through the same kind of reduction.
    """
    img = _open_checked(data, max_pixels)
    if reduce_to:
        img.draft(None, (reduce_to, reduce_to))  # JPEG only; a no-op for other formats
    with _budgeted(img, memory_budget):
        img = _load_fully(img, data)
        rgb = to_rgb(img)
        del img
    if reduce_to:
        factor = next((f for f in (8, 4, 2) if min(rgb.size) // f >= reduce_to), 1)
        rgb = rgb.reduce(factor) if factor > 1 else rgb
    return rgb


def phash_int(rgb: Image.Image) -> int:
    """64-bit pHash as an unsigned int. Large images are box-reduced first (to at least
    PHASH_DECODE_SIDE on the shorter side, 4x the 32x32 resample pHash looks at): resizing a 12 MP
    image with Lanczos would dominate the ingest time."""
    factor = min(rgb.size) // PHASH_DECODE_SIDE
    small = rgb.reduce(factor) if factor > 1 else rgb
    bits = phash_bits(small)  # imagehash.phash's bits, row by row, the first the most significant
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) with the size checked BEFORE any pixel is decoded."""
    try:
        with _open_lock, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("decompression_bomb", f"too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(data) from exc
    except ValueError as exc:
        if "too large" in str(exc):  # PNG text/ICC chunks that inflate beyond Pillow's safety limit
            raise ImageRejected("decompression_bomb", f"a compressed chunk inflates too far: {exc}") from exc
        raise ImageRejected("truncated", f"the header cannot be read: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - hostile bytes make Pillow raise almost anything
        raise ImageRejected("truncated", f"the header cannot be read: {exc!r}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected(
            "decompression_bomb",
            f"{width}x{height} declares {width * height} pixels, over the {max_pixels} limit",
        )
    return img


def _unidentified(data: bytes) -> ImageRejected:
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return ImageRejected("unsupported_format", "HEIC/HEIF is not supported: convert it to JPEG or PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            other = Image.open(io.BytesIO(data)).format
        except Exception:  # noqa: BLE001 - any failure here just means "not an image we know"
            other = None
    if other:
        return ImageRejected("unsupported_format", f"{other} is not accepted: use one of JPEG, PNG, WebP")
    return ImageRejected("not_an_image", "the bytes are not a recognised image format")


def _load_fully(img: Image.Image, data: bytes) -> Image.Image:
    """Decode every pixel of the opened `img` (the header of `data`); the decoded image is returned."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated files would pass as valid")
    if _plain_png(img, data) and (decoded := _spng_decoded(img, data)) is not None:
        return decoded
    opened = cast(ImageFile.ImageFile, img)
    if opened.format in ("JPEG", "MPO"):
        # One decoder call for the whole file (up to 4 MB) rather than one per 64 KB: each call gives
        # up the GIL and must win it back from the event loop and the other decode thread; fewer
        # calls made a folder import 6-11 % faster (paired runs of `exposr-trainer scrape`). JPEG
        # only: a TIFF reads a block per strip, and thousands of strips would each copy 4 MB.
        opened.decodermaxblock = max(opened.decodermaxblock, min(len(data), DECODE_READ_MAX))
    try:
        img.load()
    except Image.DecompressionBombError as exc:  # some plugins check again while decoding
        raise ImageRejected("decompression_bomb", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - hostile bytes make Pillow raise almost anything
        raise ImageRejected("truncated", f"decoding failed: {exc}") from exc
    return img


# PNG: Pillow unfilters rows one byte at a time, half the time of decoding a PNG; libspng
# (imagecodecs) gives the same pixels in about 0.65 x the time. It takes only the plain case, a
# well-formed file Pillow reads the same way: 8-bit RGB or RGBA, not interlaced, no transparency
# key, no APNG chunks, complete chunks with nothing but IEND after the image data. Pillow stays the
# only judge of a broken file: anything else, and anything libspng refuses, is decoded by Pillow,
# so the verdicts are Pillow's (tests/dataset/test_images.py compares them on mutated files).
_CHUNK_HEAD = struct.Struct(">I4s")
_ANIMATION_CHUNKS = (b"acTL", b"fcTL", b"fdAT")


def _plain_png(img: Image.Image, data: bytes) -> bool:
    if img.format != "PNG" or img.mode not in ("RGB", "RGBA") or img.info.get("interlace"):
        return False
    tile = cast(ImageFile.ImageFile, img).tile
    if "transparency" in img.info or "bbox" in img.info or len(tile) != 1:
        return False
    if tile[0].args != img.mode or tuple(tile[0].extents or ()) != (0, 0, *img.size):  # "RGB;16B": 16-bit
        return False
    pos, size, image_data = 8, len(data), False
    while pos < size:
        if pos + 12 > size:
            return False  # a chunk header or CRC cut short
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        if pos + 12 + length > size or kind in _ANIMATION_CHUNKS or (kind == b"IHDR") != (pos == 8):
            return False
        if kind == b"IEND":
            return image_data and length == 0
        if kind == b"IDAT":
            image_data = True
        elif image_data or (kind[:1].isupper() and kind not in (b"IHDR", b"PLTE")):
            return False  # a chunk after the image data, or an unknown critical chunk
        pos += 12 + length
    return image_data  # no IEND, the file ending where a chunk does: Pillow accepts that too


def _spng_decoded(img: Image.Image, data: bytes) -> Image.Image | None:
    """The pixels by libspng, or None when it refuses them (then Pillow decodes, and judges)."""
    try:
        pixels = imagecodecs.spng_decode(_inflated_png(img, data) or data)
    except Exception:  # noqa: BLE001 - SpngError and anything else: Pillow's verdict decides
        return None
    width, height = img.size
    if pixels.dtype != np.uint8 or pixels.shape != (height, width, len(img.mode)):
        return None
    out = Image.fromarray(pixels)
    out.info.update(img.info)  # EXIF and XMP (orientation) as read with the header
    return out


# Inflating the image data is ~2/3 of libspng's time on a PNG, with the system's zlib; libdeflate
# (imagecodecs) inflates the same stream in about half the time. So the stream is inflated first,
# with every IDAT chunk's CRC and the stream's Adler-32 checked, and libspng gets the same header
# with that data *stored* (deflate's uncompressed blocks): it then only unfilters the rows. 0.9 ms
# less per PNG of the acceptance set (3.1 against 4.0 ms, one core). Anything unexpected -- a CRC,
# a stream that ends early or runs long -- and libspng reads the file itself, then Pillow: the
# verdict is still Pillow's. Up to INFLATE_FIRST_MAX bytes of rows (the copies cost memory).
INFLATE_FIRST_MAX = 16 << 20
_IDAT_CRC = imagecodecs.deflate_crc32(b"IDAT")
_STORED_BLOCK = 65535


def _inflated_png(img: Image.Image, data: bytes) -> bytes | None:
    """The plain PNG ``data`` with its image data inflated and stored, or None (then as it is)."""
    width, height = img.size
    expected = height * (1 + width * len(img.mode))  # a filter byte, then the row's 8-bit samples
    if expected > INFLATE_FIRST_MAX:
        return None
    view, pos = memoryview(data), 8
    parts: list[Any] = []  # memoryviews of the IDAT bodies (imagecodecs takes any buffer)
    while pos + 12 <= len(data):
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        if kind == b"IEND":
            break
        if kind == b"IDAT":
            body = view[pos + 8 : pos + 8 + length]
            if imagecodecs.deflate_crc32(cast(bytes, body), _IDAT_CRC) != int.from_bytes(
                data[pos + 8 + length : pos + 12 + length]
            ):
                return None
            parts.append(body)
        pos += 12 + length
    try:
        rows = imagecodecs.deflate_decode(b"".join(parts), out=expected)  # zlib: Adler-32 checked
    except Exception:  # noqa: BLE001 - DeflateError: damaged or longer than the header says
        return None
    if len(rows) != expected:
        return None
    raw = memoryview(rows)
    blocks = -(-expected // _STORED_BLOCK)
    size = 2 + 5 * blocks + expected + 4  # zlib header, block headers, rows, Adler-32
    out = [data[:33], struct.pack(">I", size), b"IDAT"]  # signature and IHDR: a plain PNG's start
    stored: list[Any] = [b"\x78\x01"]  # bytes and memoryviews of the rows
    for start in range(0, expected, _STORED_BLOCK):
        end = min(expected, start + _STORED_BLOCK)
        stored += (struct.pack("<BHH", end == expected, end - start, (end - start) ^ 0xFFFF), raw[start:end])
    stored.append(struct.pack(">I", imagecodecs.deflate_adler32(rows)))
    crc = _IDAT_CRC
    for piece in stored:
        crc = imagecodecs.deflate_crc32(piece, crc)
    return b"".join([*out, *stored, struct.pack(">I", crc), _IEND])  # one copy of the rows


_IEND = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any decoded mode to 8-bit RGB: orientation, alpha on white, CMYK, 16-bit, palette."""
    img = _exif_transposed(img)
    if img.mode in HIGH_DEPTH:
        img = _high_depth_to_l(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _exif_transposed(img: Image.Image) -> Image.Image:
    try:
        if img.getexif().get(EXIF_ORIENTATION, 1) == 1:
            return img  # upright already: exif_transpose would still copy every pixel
        return ImageOps.exif_transpose(img) or img
    except Exception:  # noqa: BLE001 - includes Pillow's "Corrupt EXIF" warning when warnings are errors
        return img  # broken EXIF: keep the pixels as stored rather than reject a good picture


_BAND_PIXELS = 1 << 20  # rows converted at a time: the float copy stays a few MB


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16-bit values at 255 (almost everything turns white): scale instead,
    # band by band, so the float working copy of a 49-megapixel image is 4 MB, not 400.
    width, height = img.size
    top_value = cast(float, img.getextrema()[1])  # a one-band image: (min, max)
    top = 65535.0 if float(top_value) > 255 else 255.0
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // max(1, width))
    for y in range(0, height, rows):
        band = np.asarray(img.crop((0, y, width, min(height, y + rows))), dtype=np.float32)
        band = np.nan_to_num(band, nan=0.0, posinf=top, neginf=0.0)
        np.clip(band * np.float32(255.0 / top), 0, 255, out=band)
        out[y : y + band.shape[0]] = band
    return Image.fromarray(out)
