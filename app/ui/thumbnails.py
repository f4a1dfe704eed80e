"""Review thumbnails: made on the server from the stored image, cached on local disk.

The cache lives in ``DATASET_DIR/.thumbnails/{id[:2]}/{id}.jpg`` (local even with S3 storage: it
is only a cache). The id is parsed as a UUID before anything else, so the path is never built
from what a client sent. Decoding goes through the dataset's checked decoder (pixel budget,
EXIF orientation). Files are written atomically: a reader never sees half a thumbnail.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
from pathlib import Path

from dataset.images import ImageRejected, decode_rgb

SIDE = 256
QUALITY = 82


def cache_path(dataset_dir: Path, image_id: str) -> Path:
    return Path(dataset_dir) / ".thumbnails" / image_id[:2] / f"{image_id}.jpg"


def make_thumbnail(data: bytes, max_pixels: int) -> bytes:
    img = decode_rgb(data, max_pixels=max_pixels, reduce_to=SIDE)
    img.thumbnail((SIDE, SIDE))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=QUALITY)
    return out.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def thumbnail(dataset, settings, image_id: str) -> bytes:
    """The cached thumbnail of a (parsed) image id; made and cached on first use.

    Raises what ``dataset.read_image`` raises for an unknown id or storage trouble, and
    ImageRejected when the stored bytes cannot be decoded.
    """
    path = cache_path(settings.dataset_dir, image_id)
    try:
        return await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        pass
    data = await dataset.read_image(image_id)
    thumb = await asyncio.to_thread(make_thumbnail, data, settings.max_image_pixels)
    await asyncio.to_thread(_write_atomic, path, thumb)
    return thumb


__all__ = ["ImageRejected", "cache_path", "make_thumbnail", "thumbnail"]
