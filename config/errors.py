"""The project's exception tree, written down once; the root and the config branch live here.

Every exception the project raises derives from :class:`ExposrError` through one branch. A branch
lives in the ``errors`` module of the lowest package that raises it, with its leaves; each class
keeps the built-in base that callers already catch it by (``KeyError``, ``ValueError`` ...)::

    ExposrError                        config/errors.py
    ├── ConfigError                    config/errors.py: the deployment cannot be used as configured;
    │   │                              the CLI prints the message and exits 2, start-up stops
    │   ├── OptionsInvalid             (ValueError) a source entry's options break their rules
    │   ├── SourceUnavailable          a source cannot run (key unset, folder missing): skipped
    │   ├── DatabaseUnavailable        DATABASE_URL cannot be reached
    │   ├── SchemaMismatch             the database's schema revision is newer than this release
    │   ├── IndexUnusable              the index database is corrupt or lost its rows
    │   └── StorageUnavailable         the dataset's storage is unreadable at start-up
    ├── StorageError                   dataset/errors.py: storage or the file system failed (API: 503)
    │   └── StorageKeyError            (KeyError) no object under that key
    ├── DatasetError                   dataset/errors.py: an image, its id or its records
    │   ├── ImageRejected              not an image we keep (``reason`` code)
    │   ├── DuplicateHash              the same SHA-256 is already indexed
    │   ├── UnknownImage               (KeyError) no image with that id
    │   ├── UnknownImageId             (KeyError) no stored image with that id (review queue)
    │   ├── InvalidImageId             (ValueError) not an image id at all
    │   ├── NothingToUndo              (ValueError) the label has no earlier value to restore
    │   ├── MetadataInvalid            (ValueError) a metadata file cannot be its image's record
    │   │   └── MetadataUnparsable     not a bounded JSON object: set apart by the rebuild
    │   └── NearFileInvalid            the near-duplicate file is damaged or of another database
    ├── FetchError                     scraper/errors.py: a request that failed for good (``kind``)
    │   ├── RateLimited                429 (or the source's own rate-limit answer) after the retries
    │   ├── TryAgain                   one try of ``retrying()`` failed; its ``error`` may go away
    │   └── CoreError                  labeler/errors.py: a request to Exposr-Core failed (same
    │       │                          ``kind`` and ``message``, same retry loop as a source's)
    │       ├── CoreUnavailable        no usable answer after the retries
    │       └── CoreBadAnswer          an answer that is not a probability we may store
    ├── TrainingError                  trainer/errors.py: a training that cannot run or finish
    │   ├── EntryMismatch              (ValueError) a training-cache entry is not its picture's
    │   └── BenchmarkError             the frozen benchmark (EVAL_BENCHMARK_DIR) is not set or usable
    ├── RegistryError                  trainer/errors.py: the model registry and its files
    │   ├── ModelNotFound              (LookupError) no such (promoted) model on this host
    │   ├── ArtifactMissing            (LookupError) a registered version lacks a file
    │   ├── RegistryConflict           the shared registry changed under a write (409)
    │   └── AliasError                 an alias move refused (``status`` 404/409/422)
    └── ServiceError                   app/errors.py: the service's own refusals
        ├── JobBusy                    a job of that kind is already queued or running (409)
        ├── UnknownJobKind             (KeyError) no such job kind
        ├── ChildFailed                a job's child process raised or died
        ├── BodyTooLarge               a request body over its limit (413)
        ├── UnknownOriginal            (ValueError) ``edit_of`` names no stored image
        ├── ConsoleDisabled            the console without TRAINER_API_KEY
        ├── LoginRequired              a console page without a session
        └── CsrfRejected               a console form without its CSRF token

Catch the narrowest class that says what you handle. The API's error mapping (``app/errors.py``,
``ANSWERS``) keys on the branches.
"""

from __future__ import annotations

from typing import Any


class ExposrError(Exception):
    """The root of every exception the project raises itself."""


class ConfigError(ExposrError):
    """Configuration that cannot be used: the message names the file or variable and the problem."""


class OptionsInvalid(ConfigError, ValueError):
    """A source entry's options against their model: one problem per option (config/sources.py)."""

    def __init__(self, problems: list[Any]) -> None:
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


class DatabaseUnavailable(ConfigError):
    """The database in DATABASE_URL cannot be reached (or refused us)."""


class SchemaMismatch(ConfigError):
    """The database's schema revision is one this release does not know."""


class IndexUnusable(ConfigError):
    """The index database cannot be read (not a database, corrupt): the message names the file and
    what to do. A ConfigError, so the CLI prints it without a traceback and exits with code 2."""


class StorageUnavailable(ConfigError):
    """Start-up found the dataset's storage unreadable (the message says what to fix)."""


class SourceUnavailable(ConfigError):
    """The source cannot run at all (no key, no folder, bad options): it is skipped with this message."""
