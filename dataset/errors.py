"""The storage and dataset branches of the exception tree (drawn in config/errors.py).

``StorageError``: storage or the file system failed under us (a full disk, a bucket down); not the
caller's fault, usually passing (the API answers 503). ``DatasetError``: an image, its id or its
records are not what the caller asked for (rejected bytes, unknown ids, damaged metadata).
"""

from __future__ import annotations

from config.errors import ExposrError


class StorageError(ExposrError):
    """The storage backend failed; the message says where and why (never a secret)."""


class StorageKeyError(StorageError, KeyError):
    """The key does not exist."""

    def __str__(self) -> str:  # KeyError's str() would add quotes around the message
        return str(self.args[0]) if self.args else "missing key"


class DatasetError(ExposrError):
    """An image, its id or its records: the message says which and why."""


class ImageRejected(DatasetError):
    """The bytes cannot enter the dataset: `reason` is a code from REASONS, `message` for a person."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class DuplicateHash(DatasetError):
    """An image with the same SHA-256 is already indexed."""

    def __init__(self, existing_id: str) -> None:
        super().__init__(f"duplicate of {existing_id}")
        self.existing_id = existing_id


class UnknownImage(DatasetError, KeyError):
    """No image with this id in the index."""


class UnknownImageId(DatasetError, KeyError):
    """No image has this (well-formed) id (the review queue's lookups)."""


class InvalidImageId(DatasetError, ValueError):
    """Not a UUID: no image can have this id (raised before any lookup)."""


class NothingToUndo(DatasetError, ValueError):
    """The image's label does not record the one it replaced."""


class MetadataInvalid(DatasetError, ValueError):
    """A metadata file that cannot be the record of its image; the message says why."""


class MetadataUnparsable(MetadataInvalid):
    """A metadata file that is not a bounded JSON object, or whose values are out of range: the
    rebuild sets it apart (quarantine) and goes on with the others."""


class NearFileInvalid(DatasetError):
    """The file cannot be used (missing, of another format, damaged): ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
