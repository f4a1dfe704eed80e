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
    """An EXIF block in the file: JPEG APP1 ``Exif``, PNG ``eXIf``, WebP/HEIF ``EXIF`` chunks.

    A look at the container bytes, not a decode: the header region holds the block in every
    format we store (JPEG puts APP segments first; the others are chunk names).
    """
    head = data[: 1 << 16]
    # One pass over a lower-cased copy finds every place where one of the three may start, instead
    # of a pass per name (half the time, on the ingest's critical path); each is then checked.
    lowered = head.lower()
    at = lowered.find(b"exif")
    while at >= 0:
        if head.startswith(_EXIF_NAMES, at):
            return True
        at = lowered.find(b"exif", at + 1)
    return False


_EXIF_NAMES = (b"Exif\x00\x00", b"eXIf", b"EXIF")
