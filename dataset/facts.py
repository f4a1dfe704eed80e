"""Facts about an image that evaluation needs: what made it, what it belongs with, file traits.

* ``generator``: CivitAI's ``baseModel``, a folder source's or an upload's ``generator``; camera
  photos from the photo APIs are ``camera``; anything else ``unknown``.  Held-out generators and
  per-generator figures (docs/evaluation.md) are computed from it.
* ``group_hint``: images the source says belong together (one CivitAI post: seed re-runs and
  variations; a person's edit of an uploaded image) share it, so the train/evaluation split keeps
  them on one side even when their perceptual hashes are far apart.
* ``has_exif``: whether the file carries an EXIF block -- one of the file traits the shortcut
  probe looks at (a detector must not learn "has camera EXIF" instead of pixels).
"""

from __future__ import annotations

import struct
from typing import Any

from config.names import clean_generator, sanitize_generator

CAMERA_SOURCES = ("unsplash", "pexels")  # photo APIs: every image is a camera photograph
EDIT_PREFIX = "image:"  # group_hint "image:<id>": an edit of that stored image


def generator_for(metadata: dict) -> str:
    """The generator of an image about to be stored (see the module doc); never raises."""
    given = metadata.get("generator")
    if given:
        try:
            return clean_generator(given)
        except ValueError:
            return sanitize_generator(given) or "unknown"
    raw = metadata.get("api_data")
    api: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if metadata.get("source") == "civitai" and (base := sanitize_generator(api.get("baseModel"))):
        return base
    if metadata.get("label") == "real" and metadata.get("source") in CAMERA_SOURCES:
        return "camera"
    return "unknown"


def group_hint_for(metadata: dict) -> str | None:
    """The source-given group of an image (see the module doc), or None."""
    given = metadata.get("group_hint")
    if isinstance(given, str) and given.strip():
        return given.strip()[:100]
    raw = metadata.get("api_data")
    api: dict[str, Any] = raw if isinstance(raw, dict) else {}
    if metadata.get("source") == "civitai" and api.get("postId") is not None:
        return f"civitai:post:{api['postId']}"[:100]
    return None


def has_exif(data: bytes) -> bool:
    """An EXIF block in the file: a JPEG's APP1 ``Exif`` segment, a PNG's ``eXIf`` chunk, a WebP's
    ``EXIF`` chunk -- found by walking the container's segments or chunks (a few dozen header reads,
    microseconds), so text that merely spells "EXIF" (an XMP packet, a comment, compressed bytes)
    does not count. A file that cannot be walked that way (another container, a JPEG whose segments
    run into garbage before the image data) is judged by the three names in its first 64 KB.
    """
    if data[:2] == b"\xff\xd8":
        found = _jpeg_exif(data)
    elif data[:8] == _PNG_SIGNATURE:
        found = _png_chunk_named(data, b"eXIf")
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        found = _riff_chunk_named(data, b"EXIF")
    else:
        found = None
    return _named_in_head(data) if found is None else found


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHUNK = struct.Struct(">I4s")  # length, then the type; 4 bytes of CRC after the body
_RIFF_CHUNK = struct.Struct("<4sI")  # the type, then the length; bodies padded to an even size
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field
_JPEG_SCAN_OR_END = frozenset({0xDA, 0xD9})  # SOS (entropy-coded data follows), EOI


def _jpeg_exif(data: bytes) -> bool | None:
    """APP1 "Exif\\0\\0" among the segments before the first scan; None where they cannot be walked."""
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
        elif marker in _JPEG_STANDALONE:
            pos += 2
        elif marker in _JPEG_SCAN_OR_END:
            return False
        else:
            if marker == 0xE1 and data.startswith(b"Exif\x00\x00", pos + 4):
                return True
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False  # the file ends among its headers


def _png_chunk_named(data: bytes, name: bytes) -> bool:
    """Whether a chunk called ``name`` comes before IEND (or the end) of a PNG."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = _PNG_CHUNK.unpack_from(data, pos)
        if kind == name:
            return True
        if kind == b"IEND":
            return False
        pos += 12 + length  # length, type, body, CRC
    return False


def _riff_chunk_named(data: bytes, name: bytes) -> bool:
    """Whether a RIFF file (WebP) has a chunk called ``name``."""
    pos = 12
    while pos + 8 <= len(data):
        kind, length = _RIFF_CHUNK.unpack_from(data, pos)
        if kind == name:
            return True
        pos += 8 + length + (length & 1)  # type, length, body padded to an even size
    return False


def _named_in_head(data: bytes) -> bool:
    head = data[: 1 << 16]
    # One pass over a lower-cased copy finds every place where one of the three may start, instead
    # of a pass per name; each is then checked.
    lowered = head.lower()
    at = lowered.find(b"exif")
    while at >= 0:
        if head.startswith(_EXIF_NAMES, at):
            return True
        at = lowered.find(b"exif", at + 1)
    return False


_EXIF_NAMES = (b"Exif\x00\x00", b"eXIf", b"EXIF")
