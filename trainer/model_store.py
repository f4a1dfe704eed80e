"""Where the served models live: MODELS_DIR on one host, the bucket when STORAGE_DRIVER=s3.

No torch here (the API reads through this module).

* ``local`` (one host, the default): ``MODELS_DIR/registry.json`` and ``MODELS_DIR/{model}/{version}/``,
  exactly as trainer/registry.py writes them.
* ``s3`` (several hosts): the same layout under ``{S3_PREFIX}models/`` in the bucket:
  ``models/registry.json`` (the same JSON array) and ``models/{model}/{version}/{file}`` for every
  file of a version folder (weights.pt, model.json, report.json, ...). Every replica serves from
  there, with the same bytes, Content-Length and ETag.

A training still writes into its host's MODELS_DIR (trainer/registry.py, atomic, under its lock);
around it, :func:`pull` copies the bucket's registry (and promoted versions' folders) down first,
so the new version number continues the fleet's sequence, and :func:`publish` copies the new
version folder up, then the registry with a conditional write (``If-Match`` on the ETag read at
``pull``): a version is visible only once all its files are in the bucket, and two hosts can never
both publish the same number (the loser's job fails with the reason; jobs of one kind already run
once across the fleet, app/jobs.py, so this is the last guard, not the usual path).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from config.settings import Settings
from dataset.storage import (
    MISSING_KEY_CODES,
    S3Storage,
    StorageError,
    StorageKeyError,
    error_code,
    make_storage,
    write_file_atomic,
)
from trainer.registry import (
    REGISTRY_FILE,
    find_entry,
    load_registry,
    make_staging_dir,
    parse_registry,
    registry_lock,
    write_json_atomic,
)
from trainer.results import TrainResult

log = logging.getLogger(__name__)

MODELS_PREFIX = "models"
REGISTRY_KEY = f"{MODELS_PREFIX}/{REGISTRY_FILE}"
# The files an API may serve from a version folder (never a name taken from a request).
ARTIFACTS = ("weights.pt", "model.json", "report.json")
CHUNK = 1 << 20


class RegistryConflict(Exception):
    """Another host published to the shared registry since this host read it."""


@dataclass
class Artifact:
    """One file of a registered version, wherever it lives."""

    entry: dict
    filename: str
    size: int
    path: Path | None = None  # local store: the file itself
    _store: SharedModelStore | None = None
    _key: str | None = None

    def read(self) -> bytes:
        if self.path is not None:
            return self.path.read_bytes()
        assert self._store is not None and self._key is not None  # a bucket artifact has both
        return self._store.storage.get(self._key)

    def chunks(self) -> Iterator[bytes]:
        if self.path is not None:
            with open(self.path, "rb") as fh:
                while block := fh.read(CHUNK):
                    yield block
            return
        assert self._store is not None and self._key is not None  # a bucket artifact has both
        body = self._store.storage.client.get_object(
            Bucket=self._store.storage.bucket, Key=self._store.storage.prefix + self._key
        )["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()


class ArtifactMissing(LookupError):
    """Registered, but the file is not where it should be (message names where)."""


class LocalModelStore:
    shared = False

    def __init__(self, settings: Settings) -> None:
        self.models_dir = Path(settings.models_dir)

    def describe(self) -> str:
        return str(self.models_dir / REGISTRY_FILE)

    def load_registry(self) -> list[dict]:
        return load_registry(self.models_dir)

    def artifact(self, entry: dict, filename: str) -> Artifact:
        path = self.models_dir / entry["model"] / entry["version"] / filename
        if not path.is_file():
            raise ArtifactMissing(f"{path} is registered but missing on disk; retrain or restore it")
        return Artifact(entry, filename, path.stat().st_size, path=path)


class SharedModelStore:
    """The registry and version folders in the bucket (STORAGE_DRIVER=s3)."""

    shared = True

    def __init__(self, settings: Settings) -> None:
        storage = make_storage(settings)
        assert isinstance(storage, S3Storage)
        self.storage = storage
        self.models_dir = Path(settings.models_dir)

    def describe(self) -> str:
        return f"{self.storage.describe()}{REGISTRY_KEY}"

    def _registry_and_etag(self) -> tuple[list[dict], str | None]:
        try:
            response = self.storage.client.get_object(
                Bucket=self.storage.bucket, Key=self.storage.prefix + REGISTRY_KEY
            )
            raw = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:  # every botocore shape: a missing registry is empty
            if error_code(exc) in MISSING_KEY_CODES:
                return [], None
            raise StorageError(f"cannot read {self.describe()}: {exc}") from exc
        return parse_registry(raw, self.describe()), response.get("ETag")

    def load_registry(self) -> list[dict]:
        return self._registry_and_etag()[0]

    def key(self, entry: dict, filename: str) -> str:
        return f"{MODELS_PREFIX}/{entry['model']}/{entry['version']}/{filename}"

    def artifact(self, entry: dict, filename: str) -> Artifact:
        key = self.key(entry, filename)
        try:
            head = self.storage._head(key)
        except StorageKeyError as exc:
            raise ArtifactMissing(
                f"{self.storage.describe()}{key} is registered but missing from the "
                "bucket; retrain or restore it"
            ) from exc
        return Artifact(entry, filename, int(head["ContentLength"]), _store=self, _key=key)

    # ---- the training host's side -------------------------------------------------------------

    def pull(self) -> str | None:
        """Bucket -> MODELS_DIR: the registry, and the folders of promoted versions missing here.

        Returns the registry's ETag (None when the bucket has none yet), for :meth:`publish`."""
        entries, etag = self._registry_and_etag()
        with registry_lock(self.models_dir):
            for entry in entries:
                folder = self.models_dir / entry["model"] / entry["version"]
                if entry.get("promoted") and not (folder / "weights.pt").is_file():
                    self._download_folder(entry, folder)
            if entries or (self.models_dir / REGISTRY_FILE).exists():
                write_json_atomic(self.models_dir / REGISTRY_FILE, entries)
        return etag

    def _download_folder(self, entry: dict, folder: Path) -> None:
        """Into a staging folder first, then one rename: a cut-off download leaves no version folder."""
        prefix = f"{MODELS_PREFIX}/{entry['model']}/{entry['version']}/"
        staging = make_staging_dir(self.models_dir)
        try:
            for key in list(self.storage.list(prefix)):
                name = key[len(prefix) :]
                if "/" in name or not name or name.startswith("."):
                    continue
                write_file_atomic(staging / name, self.storage.get(key))
            folder.parent.mkdir(parents=True, exist_ok=True)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def publish(self, version: str, model: str, etag: str | None) -> dict:
        """MODELS_DIR's ``model/version`` folder and registry entry -> the bucket (entry returned)."""
        entry = find_entry(self.models_dir, model, version)
        if entry is None:
            raise LookupError(f"{model} {version} is not in {self.models_dir / REGISTRY_FILE}")
        folder = self.models_dir / model / version
        for path in sorted(folder.iterdir()):  # files first: the registry entry makes them visible
            if path.is_file() and not path.name.startswith("."):
                self.storage.put(self.key(entry, path.name), path.read_bytes())
        local = load_registry(self.models_dir)
        body = (json.dumps(local, indent=2) + "\n").encode("utf-8")
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self.storage.client.put_object(
                Bucket=self.storage.bucket, Key=self.storage.prefix + REGISTRY_KEY, Body=body, **condition
            )
        except (BotoCoreError, ClientError) as exc:
            if error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise RegistryConflict(
                    f"{model} {version} was trained, but another host published to {self.describe()} "
                    "meanwhile, so it was not registered there; run the training again"
                ) from exc
            raise StorageError(f"cannot write {self.describe()}: {exc}") from exc
        log.info("published %s %s to %s", model, version, self.describe())
        return entry


def model_store(settings: Settings) -> LocalModelStore | SharedModelStore:
    """The store the API serves from and trainings publish to (see the module docstring)."""
    return SharedModelStore(settings) if settings.storage_driver == "s3" else LocalModelStore(settings)


def promoted(entries: list[dict], model_name: str) -> dict | None:
    for entry in reversed(entries):
        if entry.get("model") == model_name and entry.get("promoted"):
            return entry
    return None


def registered(entries: list[dict], model_name: str, version: str) -> dict | None:
    for entry in entries:
        if entry.get("model") == model_name and entry.get("version") == version:
            return entry
    return None


def train_with_shared_store(settings: Settings, progress) -> TrainResult:
    """What a train job runs: pull, train (trainer.distributed.train: one process or torchrun), publish.
    Local store: just the training."""
    from trainer.distributed import train as train_model

    store = model_store(settings)
    if not isinstance(store, SharedModelStore):
        return train_model(settings, progress)
    etag = store.pull()
    result = train_model(settings, progress)
    version = result.get("version")
    if version:
        store.publish(version, result.get("model") or settings.model_name, etag)
    return result


def version_folder(settings: Settings, entry: dict) -> Path:
    """A registered version's folder on this host (copied down from the bucket when it is shared and
    not here yet), for scoring with it; ArtifactMissing when its weights are not in the store."""
    folder = Path(settings.models_dir) / entry["model"] / entry["version"]
    if (folder / "weights.pt").is_file():
        return folder
    store = model_store(settings)
    if isinstance(store, SharedModelStore):
        store.artifact(entry, "weights.pt")  # ArtifactMissing when the bucket lacks it
        with registry_lock(store.models_dir):
            store._download_folder(entry, folder)
        return folder
    raise ArtifactMissing(f"{folder / 'weights.pt'} is registered but missing on disk; retrain or restore it")


def sync_models_down(settings: Settings) -> None:
    """Before a label job on a host of a fleet: the promoted model's files from the bucket."""
    store = model_store(settings)
    if isinstance(store, SharedModelStore):
        store.pull()
