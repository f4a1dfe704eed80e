"""Storage drivers: one interface, a local folder or an S3-compatible bucket, same keys on both.

Keys are relative, '/'-separated paths: ``images/YYYY/MM/DD/{uuid}.{ext}`` and
``meta/YYYY/MM/DD/{uuid}.json`` (see :func:`image_key`, :func:`meta_key`).

Exceptions::

    StorageError          the backend failed (disk full, permission, S3 error): not the data's fault
    └── StorageKeyError   get() of a key that does not exist (also a KeyError)

Drivers are synchronous (boto3 is) and picklable: DataLoader workers and other processes get a
copy and open their own connections.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataset.errors import StorageError, StorageKeyError

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
S3_TIMEOUT_S = 15.0  # S3_TIMEOUT: connect and read timeout of each S3 call
S3_ATTEMPTS = 2  # one retry (botocore's standard mode: throttling, 5xx, connection errors)


def image_key(image_id: str, ext: str, when: datetime) -> str:
    return f"images/{when:%Y/%m/%d}/{image_id}.{ext}"


def meta_key(image_id: str, when: datetime) -> str:
    return f"meta/{when:%Y/%m/%d}/{image_id}.json"


def check_key(key: str) -> str:
    """Refuse keys that could escape the root or that no driver stores the same way."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}: use a relative path like 'images/2025/01/01/x.jpg'")
    return key


class StorageDriver(ABC):
    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store data under key; atomic: readers see the complete object or nothing."""

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store several objects, each atomically, all durable when this returns (a group commit:
        the ingest of a batch pays for durability once, not per file). On failure some may be
        stored: the caller deletes the batch's keys."""
        for key, data in items:
            self.put(key, data)

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes under key; StorageKeyError if there are none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove key; a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Keys under prefix (e.g. 'images/'), relative to the root."""

    @abstractmethod
    def modified(self, key: str) -> datetime:
        """When the object under key was last written (UTC); StorageKeyError if there is none."""

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives, for logs and /status: never a secret."""

    def temp_files(self, prefix: str) -> Iterator[str]:
        """Temp files of writes under prefix, in flight or left by a killed process (``check``
        removes old ones). None by default: a driver whose put is atomic by itself (S3) has none."""
        return iter(())


class LocalStorage(StorageDriver):
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_atomic(path, data)
        except OSError as exc:
            raise self._write_error(key, exc) from exc

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        write_file_atomic(path, data)

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """One group commit (:func:`write_files_atomic`): one ``fsync`` per file and one per folder
        for the whole batch, instead of two per file."""
        paths = [(self._path(key), data) for key, data in items]
        folders: dict[Path, str] = {}  # each folder, with the first key that goes into it
        for (path, _data), (key, _d) in zip(paths, items, strict=True):
            folders.setdefault(path.parent, key)
        for folder, key in folders.items():
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._write_error(key, exc) from exc
        try:
            write_files_atomic(paths)
        except OSError as exc:
            failed = Path(exc.filename).relative_to(self.root).as_posix() if exc.filename else "a batch"
            raise self._write_error(failed, exc) from exc

    def _write_error(self, key: str, exc: OSError) -> StorageError:
        return StorageError(f"cannot write {key} under {self.root}: {exc.strerror or exc}")

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise StorageKeyError(f"no object {key} in {self.describe()}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {key} under {self.root}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {key} under {self.root}: {exc.strerror or exc}") from exc

    def list(self, prefix: str) -> Iterator[str]:
        return self._walk(prefix, temp=False)  # a temp file is a put in flight (or killed mid-write)

    def temp_files(self, prefix: str) -> Iterator[str]:
        return self._walk(prefix, temp=True)

    def _walk(self, prefix: str, temp: bool) -> Iterator[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in sorted(files):
                if name.startswith(TMP_PREFIX) == temp:
                    yield Path(dirpath, name).relative_to(self.root).as_posix()

    def modified(self, key: str) -> datetime:
        try:
            return datetime.fromtimestamp(self._path(key).stat().st_mtime, UTC)
        except FileNotFoundError as exc:
            raise StorageKeyError(f"no object {key} in {self.describe()}") from exc
        except OSError as exc:
            raise StorageError(f"cannot stat {key} under {self.root}: {exc.strerror or exc}") from exc

    def describe(self) -> str:
        return f"local:{self.root}"


class S3Storage(StorageDriver):
    """An S3 bucket (AWS, MinIO, any S3-compatible endpoint). Credentials: boto3's usual chain."""

    def __init__(
        self, bucket: str, prefix: str = "", endpoint_url: str | None = None, timeout: float = S3_TIMEOUT_S
    ) -> None:
        self.bucket = bucket
        self.timeout = timeout
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self._client: Any = None
        self._client_pid: int | None = None

    def __getstate__(self) -> dict:
        # boto3 clients are neither picklable nor safe across fork: each process makes its own.
        state = self.__dict__.copy()
        state["_client"] = None
        state["_client_pid"] = None
        return state

    @property
    def client(self) -> Any:
        if self._client is None or self._client_pid != os.getpid():
            import boto3
            from botocore.config import Config

            # verify=True: TLS certificates are always checked (an http:// endpoint has no TLS).
            # Every call is bounded: a bucket that accepts connections and never answers costs at
            # most S3_ATTEMPTS * (connect + read timeout), never the botocore default of minutes.
            config = Config(
                connect_timeout=self.timeout,
                read_timeout=self.timeout,
                retries={"mode": "standard", "total_max_attempts": S3_ATTEMPTS},
            )
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, verify=True, config=config)
            self._client_pid = os.getpid()
        return self._client

    def _full(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, data: bytes) -> None:
        # A single PutObject is atomic in S3: the object appears complete or not at all.
        self._put_with(self.client, key, data)

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Each PutObject is durable when S3 answers: the batch's puts go out side by side, so a
        batch costs about one round trip's latency instead of one per object."""
        if len(items) <= 1:
            return super().put_many(items)
        from concurrent.futures import ThreadPoolExecutor

        client = self.client  # made once here: boto3 clients are thread-safe, their creation is not
        with ThreadPoolExecutor(min(S3_PUT_THREADS, len(items))) as pool:
            for done in [pool.submit(self._put_with, client, key, data) for key, data in items]:
                done.result()  # the first failure is raised, after every put has finished

    def _put_with(self, client: Any, key: str, data: bytes) -> None:
        with self._errors("write", key):
            client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)

    def get(self, key: str) -> bytes:
        with self._errors("read", key):
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
            return True
        except StorageKeyError:
            return False

    def modified(self, key: str) -> datetime:
        return self._head(key)["LastModified"]

    def _head(self, key: str) -> dict:
        with self._errors("check", key):
            return self.client.head_object(Bucket=self.bucket, Key=self._full(key))

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors("list", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.prefix) :]

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn boto errors into StorageError with a message a person can act on."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        what = f"cannot {action} {key} in {self.describe()}"
        try:
            yield
        except ClientError as exc:
            if error_code(exc) in MISSING_KEY_CODES:  # GetObject says NoSuchKey, HeadObject a bare 404
                raise StorageKeyError(f"no object {key} in {self.describe()}") from exc
            error = exc.response.get("Error") if isinstance(exc.response, dict) else None
            detail = str(error.get("Message") or "") if isinstance(error, dict) else ""
            raise StorageError(f"{what}: {error_code(exc)} {detail}".strip()) from exc
        except NoCredentialsError as exc:
            raise StorageError(
                f"{what}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE, or give the host an IAM role), or use STORAGE_DRIVER=local"
            ) from exc
        except EndpointConnectionError as exc:
            where = f"S3_ENDPOINT_URL={self.endpoint_url}" if self.endpoint_url else "the S3 endpoint"
            raise StorageError(f"{what}: {exc}; check that {where} is reachable") from exc
        except BotoCoreError as exc:
            raise StorageError(f"{what}: {exc}") from exc


MISSING_KEY_CODES = ("NoSuchKey", "404", "NotFound")
S3_PUT_THREADS = 8  # puts of one batch in flight at once


def error_code(exc: Any) -> str:
    """The S3 error code of a botocore exception, "" for every shape that has none (a timeout, a
    refused connection, an unparsable answer: their ``response`` is absent or None)."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    return str(error.get("Code") or "") if isinstance(error, dict) else ""


def write_file_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one (see :func:`write_files_atomic`)."""
    write_files_atomic([(path, data)])


def write_files_atomic(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write each file atomically, all of them durable when this returns: every temp file (in the
    same folder, so ``os.replace`` is a rename on one filesystem), then an ``fsync`` of each, then
    the renames in the order given, then one ``fsync`` per folder for the renames themselves. A
    crash leaves complete files or ``.tmp-*`` files, never a partial file under a real name.
    On failure no temp file is left; the OSError's ``filename`` is the final path that failed."""
    pending: list[tuple[int, str, Path]] = []  # (fd, temp path, final path)
    current: Path | None = None
    try:
        for current, data in files:
            fd, tmp = _create_temp(current)
            pending.append((fd, tmp, current))
            _write_all(fd, data)
        for fd, _tmp, path in pending:
            current = path  # named in the error if this flush fails
            os.fsync(fd)
        for _fd, tmp, current in pending:
            os.replace(tmp, current)
    except OSError as exc:
        for _fd, tmp, _path in pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # already renamed: nothing to do here, the caller deletes the file
        if exc.filename is None and current is not None:
            exc.filename = str(current)
        raise
    finally:
        for fd, _tmp, _path in pending:
            with contextlib.suppress(OSError):
                os.close(fd)
    for folder in dict.fromkeys(path.parent for _fd, _tmp, path in pending):
        _fsync_dir(folder)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temp file beside ``path`` (created, never opened if it exists), with the permissions an
    ordinary file gets (0666 less the umask, where mkstemp's would be 0600), so another user
    (Exposr-Core, a backup job) can read the final file."""
    while True:  # a fixed-length name: the final one may be near the filesystem's limit
        tmp = str(path.parent / f"{TMP_PREFIX}{secrets.token_hex(8)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:  # another writer drew the same name
            continue


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows opening a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _local_storage(settings: Settings) -> StorageDriver:
    return LocalStorage(settings.dataset_dir)


def _s3_storage(settings: Settings) -> StorageDriver:
    if not settings.s3_bucket:
        raise ValueError("STORAGE_DRIVER=s3 needs S3_BUCKET to be set")
    return S3Storage(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_timeout)


STORAGE_DRIVERS: dict[str, Callable[[Settings], StorageDriver]] = {"local": _local_storage, "s3": _s3_storage}


def make_storage(settings: Settings) -> StorageDriver:
    """The driver STORAGE_DRIVER names, configured from settings."""
    try:
        build = STORAGE_DRIVERS[settings.storage_driver]
    except KeyError:
        raise ValueError(
            f"unknown STORAGE_DRIVER {settings.storage_driver!r}: use one of {', '.join(STORAGE_DRIVERS)}"
        ) from None
    return build(settings)
