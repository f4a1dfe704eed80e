"""models/registry.json: the list of trained versions and which one is served.

No torch here: the API reads the registry on every /models request and must start fast.

Layout under ``models_dir``::

    registry.json                    JSON array of entries, oldest first
    history.json                     the aliases' history (trainer/aliases.py), appended, never rewritten
    .registry.lock                   fcntl lock: training runs in another process than the API
    .staging-{pid}-{hex}/            a training in progress writes here, never into a version folder
    {model}/{version}/weights.pt     committed artifacts (plus model.json)

A version folder appears only in :func:`commit_version`, under the lock and together with its
registry entry, so a training that fails or is killed leaves the registry and the version folders
as they were.  :func:`clean_stale` removes what a killed process left behind.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from config.filelock import FileLock
from dataset.storage import write_file_atomic
from trainer.aliases import (
    CHAMPION,
    HISTORY_FILE,
    append_row,
    current,
    effective_history,
    promotion_report,
)
from trainer.results import RegistryEntry

log = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
LOCK_FILE = ".registry.lock"
STAGING_PREFIX = ".staging-"
_VERSION_RE = re.compile(r"^v(\d+)$")


def load_registry(models_dir: Path) -> list[dict]:
    """All entries, oldest first; an absent registry is an empty one."""
    path = Path(models_dir) / REGISTRY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    return parse_registry(raw, str(path))


MAX_REGISTRY_BYTES = 64 << 20  # a registry of a million versions is far smaller


def parse_registry(raw: bytes, where: str) -> list[dict]:
    """registry.json's bytes as its entries, or ValueError naming ``where`` and what is wrong: not
    JSON, nested too deep, not an array, or an entry that is not an object with a ``model`` and a
    ``version`` string (a hand-edited ``[1, 2, 3]`` or ``[null]`` must not reach the routes)."""
    fix = "restore it from a backup or remove it"
    if len(raw) > MAX_REGISTRY_BYTES:
        raise ValueError(f"{where} is {len(raw)} bytes, over {MAX_REGISTRY_BYTES}; {fix}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where} is not valid JSON ({exc}); {fix}") from exc
    except RecursionError as exc:
        raise ValueError(f"{where} is nested too deep to be a registry; {fix}") from exc
    if not isinstance(data, list):
        raise ValueError(f"{where} must hold a JSON array of entries, found {type(data).__name__}; {fix}")
    for i, entry in enumerate(data):
        if not (
            isinstance(entry, dict)
            and all(isinstance(entry.get(k), str) and entry.get(k) for k in ("model", "version"))
        ):
            raise ValueError(
                f"{where}: entry {i} is not an object with 'model' and 'version' strings "
                f"(found {type(entry).__name__}); {fix}"
            )
    return data


def load_history(models_dir: Path) -> list[dict] | None:
    """The stored alias rows, oldest first; None when the registry predates aliases (no file)."""
    path = Path(models_dir) / HISTORY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); restore it from a backup") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON array of rows, found {type(data).__name__}")
    return data


def history(models_dir: Path) -> list[dict]:
    """The alias rows, reconstructed from ``promoted`` flags for a registry that predates them."""
    return effective_history(load_history(models_dir), load_registry(models_dir))


def promoted_entry(models_dir: Path, model_name: str) -> RegistryEntry | None:
    """The entry served as "latest": the version the ``champion`` alias names, in ``models_dir``.

    Callers outside the trainer's commit read through ``trainer.model_store.ModelRegistry``
    (``.champion()``); this is the same lookup on this host's files, for the promotion rule."""
    entries = load_registry(models_dir)
    version = current(effective_history(load_history(models_dir), entries), model_name).get(CHAMPION)
    # the registry file's rows are its entries (as ModelRegistry.entry reads them)
    return cast(RegistryEntry | None, _find(entries, model_name, version)) if version else None


def _find(entries: list[dict], model_name: str, version: str) -> dict | None:
    for entry in entries:
        if entry.get("model") == model_name and entry.get("version") == version:
            return entry
    return None


def write_json_atomic(path: Path, data: object) -> None:
    """Readers see the old file or the new one, never half of one."""
    write_file_atomic(Path(path), (json.dumps(data, indent=2) + "\n").encode("utf-8"))


@contextmanager
def registry_lock(models_dir: Path) -> Iterator[None]:
    """Exclusive lock over registry.json and the version folders, across processes."""
    with FileLock(Path(models_dir) / LOCK_FILE):
        yield


def make_staging_dir(models_dir: Path) -> Path:
    """A private folder inside models_dir (same filesystem, so the final rename is atomic)."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def next_version(entries: list[dict], model_dir: Path) -> str:
    """v1, v2, ...: one past the highest number in the registry or on disk, never reused."""
    numbers = [_version_number(e.get("version", "")) for e in entries]
    if model_dir.is_dir():
        numbers += [_version_number(p.name) for p in model_dir.iterdir()]
    return f"v{max([n for n in numbers if n is not None], default=0) + 1}"


def _version_number(name: str) -> int | None:
    match = _VERSION_RE.match(name)
    return int(match.group(1)) if match else None


def commit_version(
    models_dir: Path, staging: Path, entry: dict, *, compared_with: str | None, actor: str = "scheduler"
) -> dict:
    """Move ``staging`` into ``{model}/{vN}`` and append its entry, as one step under the lock.

    ``entry["promoted"]`` is the caller's decision against the version ``compared_with`` (the
    champion when the caller scored it: the served version, which may be a rollback's); if the
    champion moved in the meantime (another training, a rollback), the decision no longer holds and
    the new version is kept unpromoted. A promotion is committed as the champion alias's move: a
    ``promotion`` row in history.json carrying the decision's report.
    """
    models_dir = Path(models_dir)
    with registry_lock(models_dir):
        entries = load_registry(models_dir)
        rows = effective_history(load_history(models_dir), entries)
        model_dir = models_dir / entry["model"]
        version = next_version(entries, model_dir)
        entry = {**entry, "version": version, "weights": f"{entry['model']}/{version}/weights.pt"}
        if entry.get("promoted") and current(rows, entry["model"]).get(CHAMPION) != compared_with:
            entry["promoted"] = False
            entry["promotion_reason"] = "the served version changed while this one trained"
        for card in ("model.json", "report.json"):
            _stamp_model_json(staging / card, version)
        model_dir.mkdir(parents=True, exist_ok=True)
        os.replace(staging, model_dir / version)
        write_json_atomic(models_dir / REGISTRY_FILE, [*entries, entry])
        if entry.get("promoted"):
            append_row(
                rows,
                model=entry["model"],
                alias=CHAMPION,
                to=version,
                cause="promotion",
                actor=actor,
                reason=str(entry.get("promotion_reason") or "promoted by its training"),
                report=promotion_report(entry),
            )
            write_json_atomic(models_dir / HISTORY_FILE, rows)
    log.info("registered %s %s (promoted=%s)", entry["model"], version, entry["promoted"])
    return entry


def _stamp_model_json(path: Path, version: str) -> None:
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        write_json_atomic(path, {**data, "version": version})


def clean_stale(models_dir: Path) -> list[Path]:
    """Remove staging folders of dead processes and version folders no registry entry names.

    Safe under the lock: only :func:`commit_version` creates version folders, and it writes the
    entry before releasing the lock, so an unregistered folder is the remains of a killed commit.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    removed: list[Path] = []
    with registry_lock(models_dir):
        known = {(e.get("model"), e.get("version")) for e in load_registry(models_dir)}
        for path in models_dir.iterdir():
            if path.name.startswith(STAGING_PREFIX) and not _owner_alive(path.name):
                removed.append(path)
            elif path.is_dir() and not path.name.startswith("."):
                removed += [
                    v
                    for v in path.iterdir()
                    if v.is_dir() and _version_number(v.name) and (path.name, v.name) not in known
                ]
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
    if removed:
        log.warning("removed %d stale training folder(s): %s", len(removed), [p.name for p in removed])
    return removed


def _owner_alive(staging_name: str) -> bool:
    try:
        pid = int(staging_name[len(STAGING_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
