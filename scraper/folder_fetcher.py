"""Folder: import an existing labelled folder of images, recursively (no API key needed).

``sources.yaml``: ``{name: folder, label: real, path: /data/photos}``. Every file with an image
extension under ``path`` is read (hidden files and folders are skipped); the dataset validates
the bytes, so a misnamed file is rejected with its reason rather than crashing the import, and
other files are counted as ``other_file_type``. The whole folder is imported unless
``limit_per_query`` is set explicitly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from pydantic import Field

from config.errors import SourceUnavailable
from config.sources import SourceOptions
from scraper.base_fetcher import BaseFetcher

# Every image type a camera or tool writes, including those the dataset refuses (HEIC) or may refuse
# (animated APNG/AVIF sequences): those are read and rejected with the dataset's reason, not skipped
# unseen. Other files (sidecars, notes) are counted as ``other_file_type`` without being read.
IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".mpo",
    ".png",
    ".apng",
    ".webp",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".avif",
    ".avifs",
    ".heic",
    ".heif",
}


READ_CHUNK = 8  # files read per trip to a worker thread


class FolderOptions(SourceOptions):
    path: str = Field(min_length=1)  # the folder imported, recursively; ~ is expanded


class FolderFetcher(BaseFetcher[FolderOptions]):
    options_model = FolderOptions
    # No quota to spend: two whole ingest batches in flight and the next one read and validated
    # (dataset.manager.INGEST_BATCH, INGEST_PIPELINE). At most read_ahead + READ_CHUNK files are held
    # at once: ~30 MB of 0.3 MB photos, 104 x UPLOAD_MAX_BYTES at worst.
    read_ahead = 96
    _listing: list[Path] | None = None

    def get_source_name(self) -> str:
        return "folder"

    @property
    def root(self) -> Path:
        return Path(self.options.path).expanduser()

    def check_available(self) -> None:
        self.check_options()  # SourceUnavailable naming 'path' when it is missing
        if not self.root.is_dir():
            raise SourceUnavailable(f"folder source: {self.root} is not a folder (check 'path')")

    def planned_limit(self) -> int:
        """Called in a worker thread (FetcherManager): the walk it may need is not cheap."""
        if "limit_per_query" in self.config.model_fields_set:
            return self.config.limit_per_query
        return sum(1 for path in self.listing() if is_image_name(path))

    def listing(self) -> list[Path]:
        """``files()``, walked once per run: a big folder takes seconds to list (a stat per file)."""
        if self._listing is None:
            self._listing = list(self.files())
        return self._listing

    def files(self) -> Iterator[Path]:
        """Every file under the folder, in a stable order, hidden files and folders left out."""
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root)
            if not any(part.startswith(".") for part in relative.parts) and path.is_file():
                yield path

    async def iter_images(self, limit: int) -> AsyncIterator[tuple[bytes, dict]]:
        wanted: list[Path] = []  # the image files read, up to the limit, in order
        for path in await asyncio.to_thread(self.listing):  # scrapes run in the service's event loop
            if len(wanted) >= limit:
                break
            if not is_image_name(path):
                self.count_rejected("other_file_type", f"{path}: not an image file name; not read")
                continue
            wanted.append(path)
        # READ_CHUNK files per trip to a worker thread: a trip costs the event loop about as much
        # as reading a file from the page cache, so one per file would make reading the bottleneck
        for start in range(0, len(wanted), READ_CHUNK):
            for read in await asyncio.to_thread(self._read_chunk, wanted[start : start + READ_CHUNK]):
                if read is not None:
                    yield read

    def _read_chunk(self, paths: list[Path]) -> list[tuple[bytes, dict] | None]:
        read = [(path, self._read(path)) for path in paths]
        return [None if data is None else (data, self._metadata(path)) for path, data in read]

    def _read(self, path: Path) -> bytes | None:
        """The file's bytes; a file over the size limit is counted and never read into memory."""
        try:
            size = path.stat().st_size
            if size > self.settings.upload_max_bytes:
                self.count_rejected("too_large", f"{path}: {size} bytes > UPLOAD_MAX_BYTES")
                return None
            return path.read_bytes()
        except OSError as exc:
            self.count_error("read_error", f"{path}: {exc.strerror or exc}")
            return None

    def _metadata(self, path: Path) -> dict:
        relative = path.relative_to(self.root).as_posix()
        return {
            **self.base_metadata(),
            "attribution": {
                "platform": "folder",
                "photographer": None,
                "license": None,
                "url": path.resolve().as_uri(),
            },
            "api_data": {"photo_id": relative, "path": relative, "width": None, "height": None},
        }


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
