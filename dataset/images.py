"""Image validation and hashes with Pillow: what may enter the dataset, and its fingerprints.

:func:`inspect_image` decodes the bytes once and either returns an :class:`ImageInfo` (real
format, extension, size, SHA-256, 64-bit perceptual hash) or raises :class:`ImageRejected`
with one of :data:`REASONS`. :func:`decode_rgb` is the one way to turn stored bytes into RGB
pixels (EXIF orientation applied, alpha composited on white), shared with the trainer.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
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
    "JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
    "TIFF": "tiff", "AVIF": "avif",
}
_OPEN_FORMATS = [f for f in FORMAT_EXT if f != "MPO"]  # the JPEG plugin itself returns MPO images
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


class ImageRejected(Exception):
    """The bytes cannot enter the dataset: `reason` is a code from REASONS, `message` for a person."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    format: str  # Pillow's name for the real format, e.g. "JPEG"
    ext: str  # extension derived from the real format, never from a file name
    width: int
    height: int
    sha256: str
    phash: int  # unsigned 64-bit perceptual hash (imagehash.phash)


# warnings.catch_warnings swaps process-wide state; ingest runs in several threads, so the window
# where DecompressionBombWarning is an error is serialised. Image.open only parses the header.
_open_lock = threading.Lock()


def inspect_image(data: bytes, *, max_bytes: int, min_side: int, max_pixels: int) -> ImageInfo:
    """Validate `data` completely (decodes every pixel) and compute its hashes."""
    if not data:
        raise ImageRejected("not_an_image", "the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes is over the limit of {max_bytes} bytes")
    img = _open_checked(data, max_pixels)
    fmt = img.format or ""
    if fmt != "MPO" and getattr(img, "n_frames", 1) > 1:
        raise ImageRejected("animated", f"animated {fmt} with {img.n_frames} frames: upload a still image")
    width, height = img.size
    if min(width, height) < min_side:
        raise ImageRejected("too_small", f"{width}x{height} is under the minimum side of {min_side} px")
    _load_fully(img)
    rgb = to_rgb(img)
    return ImageInfo(fmt, FORMAT_EXT[fmt], width, height, hashlib.sha256(data).hexdigest(), phash_int(rgb))


def decode_rgb(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, reduce_to: int | None = None,
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
    _load_fully(img)
    rgb = to_rgb(img)
    if reduce_to:
        factor = next((f for f in (8, 4, 2) if min(rgb.size) // f >= reduce_to), 1)
        rgb = rgb.reduce(factor) if factor > 1 else rgb
    return rgb


def phash_int(rgb: Image.Image) -> int:
    """64-bit pHash as an unsigned int. Large images are box-reduced first: pHash only looks at a
    32x32 resample, and resizing a 12 MP image with Lanczos would dominate the ingest time."""
    factor = min(rgb.size) // 256
    small = rgb.reduce(factor) if factor > 1 else rgb
    bits = imagehash.phash(small).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


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


def _load_fully(img: Image.Image) -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated files would pass as valid")
    try:
        img.load()
    except Image.DecompressionBombError as exc:  # some plugins check again while decoding
        raise ImageRejected("decompression_bomb", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - hostile bytes make Pillow raise almost anything
        raise ImageRejected("truncated", f"decoding failed: {exc}") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Normalise any decoded mode to 8-bit RGB: orientation, alpha on white, CMYK, 16-bit, palette."""
    img = _exif_transposed(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
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


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    # Pillow's convert("L") clips 16-bit values at 255 (almost everything turns white): scale instead.
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8))
