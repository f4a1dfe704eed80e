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

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast

from botocore.exceptions import BotoCoreError, ClientError

from config.settings import Settings
from dataset.errors import StorageError, StorageKeyError
from dataset.storage import MISSING_KEY_CODES, S3Storage, error_code, make_storage, write_file_atomic
from trainer.aliases import (
    CHAMPION,
    HISTORY_FILE,
    HistoryRow,
    alias_rows,
    append_row,
    check_alias_name,
    current,
    effective_history,
    served_at,
    version_number,
)
from trainer.errors import AliasError, ArtifactMissing, RegistryConflict
from trainer.registry import (
    REGISTRY_FILE,
    load_history,
    load_registry,
    make_staging_dir,
    parse_registry,
    registry_lock,
    write_json_atomic,
)
from trainer.results import RegistryEntry, TrainResult

log = logging.getLogger(__name__)

MODELS_PREFIX = "models"
REGISTRY_KEY = f"{MODELS_PREFIX}/{REGISTRY_FILE}"
HISTORY_KEY = f"{MODELS_PREFIX}/{HISTORY_FILE}"
CONDITIONAL_ATTEMPTS = 8  # a history write that lost a race re-reads and tries again
# HistoryChange(entries, rows) appends its row to ``rows`` and returns it, or returns None (no change).
HistoryChange = Callable[[list[dict], list[dict]], "dict | None"]
# The files an API may serve from a version folder (never a name taken from a request).
ARTIFACTS = ("weights.pt", "model.json", "report.json")
CHUNK = 1 << 20


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

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes from ``start`` to ``end`` (exclusive; None: to the end), in blocks."""
        if self.path is not None:
            with open(self.path, "rb") as fh:
                fh.seek(start)
                left = (self.size if end is None else end) - start
                while left > 0 and (block := fh.read(min(CHUNK, left))):
                    left -= len(block)
                    yield block
            return
        assert self._store is not None and self._key is not None  # a bucket artifact has both
        ranged = (
            {"Range": f"bytes={start}-{'' if end is None else end - 1}"} if start or end is not None else {}
        )
        body = self._store.storage.client.get_object(
            Bucket=self._store.storage.bucket, Key=self._store.storage.prefix + self._key, **ranged
        )["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()


class LocalModelStore:
    shared = False

    def __init__(self, settings: Settings) -> None:
        self.models_dir = Path(settings.models_dir)

    def describe(self) -> str:
        return str(self.models_dir / REGISTRY_FILE)

    def load_registry(self) -> list[dict]:
        return load_registry(self.models_dir)

    def load_history(self) -> list[dict] | None:
        return load_history(self.models_dir)

    def change_history(self, change: HistoryChange) -> dict | None:
        """Read, change and write history.json as one step under the registry's lock."""
        with registry_lock(self.models_dir):
            entries = load_registry(self.models_dir)
            rows = effective_history(load_history(self.models_dir), entries)
            row = change(entries, rows)
            if row is not None:
                write_json_atomic(self.models_dir / HISTORY_FILE, rows)
        return row

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

    def _history_and_etag(self) -> tuple[list[dict] | None, str | None]:
        try:
            response = self.storage.client.get_object(
                Bucket=self.storage.bucket, Key=self.storage.prefix + HISTORY_KEY
            )
        except Exception as exc:  # boto errors: a missing history is a registry that predates aliases
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return None, None
            raise StorageError(f"cannot read {self.storage.describe()}{HISTORY_KEY}: {exc}") from exc
        try:
            data = json.loads(response["Body"].read())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{self.storage.describe()}{HISTORY_KEY} is not valid JSON ({exc}); restore it from a backup"
            ) from exc
        if not isinstance(data, list):
            raise ValueError(f"{self.storage.describe()}{HISTORY_KEY} must hold a JSON array of rows")
        return data, response.get("ETag")

    def load_history(self) -> list[dict] | None:
        return self._history_and_etag()[0]

    def change_history(self, change: HistoryChange) -> dict | None:
        """Read, change and write the bucket's history.json with a conditional write (If-Match on
        the ETag read), again from a fresh read when another host wrote first."""
        for _ in range(CONDITIONAL_ATTEMPTS):
            stored, etag = self._history_and_etag()
            entries = self.load_registry()
            rows = effective_history(stored, entries)
            row = change(entries, rows)
            if row is None:
                return None
            body = (json.dumps(rows, indent=2) + "\n").encode("utf-8")
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self.storage.client.put_object(
                    Bucket=self.storage.bucket, Key=self.storage.prefix + HISTORY_KEY, Body=body, **condition
                )
            except Exception as exc:
                code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    continue
                raise StorageError(f"cannot write {self.storage.describe()}{HISTORY_KEY}: {exc}") from exc
            return row
        raise RegistryConflict(
            f"{self.storage.describe()}{HISTORY_KEY} kept changing under {CONDITIONAL_ATTEMPTS} "
            "attempts; try again"
        )

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
        """Bucket -> MODELS_DIR: the registry, the aliases' history, and the folders of the versions
        an alias names (the champion first of all) that are missing here.

        Returns the registry's ETag (None when the bucket has none yet), for :meth:`publish`."""
        entries, etag = self._registry_and_etag()
        stored = self.load_history()
        rows = effective_history(stored, entries)
        named = {
            (model, version)
            for model in {e.get("model") for e in entries}
            for version in current(rows, str(model)).values()
        }
        with registry_lock(self.models_dir):
            for entry in entries:
                folder = self.models_dir / entry["model"] / entry["version"]
                if (entry["model"], entry["version"]) in named and not (folder / "weights.pt").is_file():
                    self._download_folder(entry, folder)
            if entries or (self.models_dir / REGISTRY_FILE).exists():
                write_json_atomic(self.models_dir / REGISTRY_FILE, entries)
            if stored is not None:
                write_json_atomic(self.models_dir / HISTORY_FILE, stored)
            else:  # the bucket's registry predates aliases: reconstruct here exactly as there
                (self.models_dir / HISTORY_FILE).unlink(missing_ok=True)
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
        entry = _registered(load_registry(self.models_dir), model, version)
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
        if entry.get("promoted"):
            self._publish_promotion(model, version)
        return entry

    def _publish_promotion(self, model: str, version: str) -> None:
        """The champion's move this host committed locally, appended to the bucket's history if the
        bucket's champion is still the one the decision was made against."""
        local = [
            row
            for row in effective_history(load_history(self.models_dir), load_registry(self.models_dir))
            if row.get("model") == model and row.get("to") == version and row.get("cause") == "promotion"
        ]
        if not local:
            return
        mine = local[-1]

        def promote(entries: list[dict], rows: list[dict]) -> dict | None:
            if current(rows, model).get(mine["alias"]) != mine["from"]:
                log.warning(
                    "%s %s was not made %s: the bucket's %s moved while it trained",
                    model,
                    version,
                    mine["alias"],
                    mine["alias"],
                )
                return None
            row = {**mine, "seq": (rows[-1].get("seq", len(rows)) if rows else 0) + 1}
            rows.append(row)
            return row

        self.change_history(promote)


def model_store(settings: Settings) -> LocalModelStore | SharedModelStore:
    """The store the API serves from and trainings publish to (see the module docstring)."""
    return SharedModelStore(settings) if settings.storage_driver == "s3" else LocalModelStore(settings)


class ModelRegistry:
    """The one way to read the registry and move its aliases, wherever it lives (the store chosen by
    ``STORAGE_DRIVER``): entries typed as :class:`RegistryEntry`, the aliases, their history, which
    version was served when, and the files of each version."""

    def __init__(self, settings: Settings, store: LocalModelStore | SharedModelStore | None = None) -> None:
        self.settings = settings
        self.store = store or model_store(settings)

    @classmethod
    def local(cls, settings: Settings) -> ModelRegistry:
        """This host's copy in MODELS_DIR (what a label job or ``predict`` loads weights from; with
        STORAGE_DRIVER=s3 it is the bucket's, pulled by :func:`sync_models_down`)."""
        return cls(settings, LocalModelStore(settings))

    def path(self, entry: RegistryEntry | dict, filename: str = "weights.pt") -> Path:
        """The file of a version in this host's MODELS_DIR (ArtifactMissing when it is not there)."""
        artifact = LocalModelStore(self.settings).artifact(dict(entry), filename)
        assert artifact.path is not None  # a local artifact is a file
        return artifact.path

    def describe(self) -> str:
        return self.store.describe()

    def entries(self) -> list[RegistryEntry]:
        return cast(list[RegistryEntry], self.store.load_registry())

    def entry(self, name: str, version: str) -> RegistryEntry | None:
        return cast(RegistryEntry | None, _registered(self.store.load_registry(), name, version))

    def history(self) -> list[HistoryRow]:
        """Every alias row, oldest first (reconstructed for a registry that predates aliases)."""
        return cast(list[HistoryRow], self._rows())  # the history file's rows, as entries() reads entries

    def _rows(self) -> list[dict]:
        return effective_history(self.store.load_history(), self.store.load_registry())

    def model_history(self, name: str) -> list[HistoryRow]:
        return [row for row in self.history() if row.get("model") == name]

    def aliases(self, name: str) -> dict[str, HistoryRow]:
        """alias -> the row that set it (its ``to`` is the version)."""
        return cast(dict[str, HistoryRow], alias_rows(self._rows(), name))

    def champion(self, name: str | None = None) -> RegistryEntry | None:
        """The served version's entry: the one the ``champion`` alias names."""
        return self.aliased(name or self.settings.model_name, CHAMPION)

    def aliased(self, name: str, alias: str) -> RegistryEntry | None:
        entries = self.store.load_registry()
        version = current(effective_history(self.store.load_history(), entries), name).get(alias)
        return cast(RegistryEntry | None, _registered(entries, name, version))

    def served_at(self, name: str, at: datetime, alias: str = CHAMPION) -> RegistryEntry | None:
        """The entry ``alias`` (the champion: the served one) named at instant ``at``; None before
        its first row."""
        entries = self.store.load_registry()
        version = served_at(effective_history(self.store.load_history(), entries), name, at, alias)
        return cast(RegistryEntry | None, _registered(entries, name, version))

    def artifact(self, entry: RegistryEntry | dict, filename: str) -> Artifact:
        return self.store.artifact(dict(entry), filename)

    def check_weights(self, entry: RegistryEntry) -> None:
        """AliasError(409) unless the weights are in the store and their SHA-256 is the registered one."""
        where = f"{entry['model']} {entry['version']}"
        try:
            artifact = self.artifact(entry, "weights.pt")
        except ArtifactMissing as exc:
            raise AliasError(409, f"{where} cannot be served: {exc}") from exc
        expected = dict(entry).get("weights_sha256") or entry.get("sha256")
        if not expected:
            raise AliasError(409, f"{where} cannot be served: its registry entry has no sha256 to check")
        digest = hashlib.sha256()
        for block in artifact.chunks():
            digest.update(block)
        if digest.hexdigest() != expected:
            raise AliasError(
                409,
                f"{where} cannot be served: its weights' SHA-256 is {digest.hexdigest()}, the registry "
                f"says {expected}; the file changed after training, restore it or retrain",
            )

    def move_alias(
        self,
        name: str,
        alias: str,
        version: str,
        *,
        reason: str,
        actor: str,
        cause: str | None = None,
    ) -> HistoryRow:
        """Point ``alias`` of model ``name`` at ``version`` and append the history row (returned).

        AliasError: 422 an empty reason or a bad alias name, 404 an unknown version, 409 weights
        missing or not matching their SHA-256. ``cause`` defaults to ``rollback`` when the champion
        moves to an older version, ``manual`` otherwise."""
        check_alias_name(alias)
        reason = (reason or "").strip()
        if not reason:
            raise AliasError(422, "a reason is required: say why the alias moves (it is kept in the history)")
        entry = self.entry(name, version)
        if entry is None:
            known = [e.get("version") for e in self.entries() if e.get("model") == name]
            raise AliasError(
                404,
                f"model {name!r} has no version {version!r}; "
                f"registered: {', '.join(map(str, known)) or 'none'}",
            )
        self.check_weights(entry)

        def move(entries: list[dict], rows: list[dict]) -> dict | None:
            if _registered(entries, name, version) is None:  # removed meanwhile: say so, change nothing
                raise AliasError(404, f"model {name!r} version {version!r} left the registry")
            served = current(rows, name).get(alias)
            why = cause or (
                "rollback"
                if alias == CHAMPION and (version_number(version) or 0) < (version_number(served) or 0)
                else "manual"
            )
            return append_row(
                rows, model=name, alias=alias, to=version, cause=why, actor=actor, reason=reason
            )

        row = self.store.change_history(move)
        assert row is not None  # move() always appends
        log.info("%s of %s: %s -> %s (%s by %s)", alias, name, row["from"], version, row["cause"], actor)
        return cast(HistoryRow, row)  # append_row's row

    def rollback_target(self, name: str) -> str:
        """The version served before the current champion (the newest earlier champion that is older)."""
        rows = [r for r in self.model_history(name) if r.get("alias") == CHAMPION]
        if not rows:
            raise AliasError(404, f"model {name!r} has never been served: nothing to roll back")
        served = rows[-1]["to"]
        for row in reversed(rows[:-1]):
            candidate = row.get("to")
            if (
                candidate
                and candidate != served
                and (version_number(candidate) or 0) < (version_number(served) or 0)
            ):
                return candidate
        if (before := rows[-1].get("from")) and before != served:
            return before
        raise AliasError(409, f"model {name!r}: no version was served before {served}; name one with promote")


def _registered(entries: list[dict], model_name: str, version: str | None) -> dict | None:
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
