"""GET /models/latest (the champion alias; ``?at=`` for an instant), the aliases and their history,
POST /models/{name}/aliases/{alias} (rollback, manual promotion), GET /models/{name}/{version}/weights.pt
(streamed, with ETag), model.json and report.

Every artifact read goes through :func:`registered_artifact`: the name and version are looked up
in the registry and the file comes from that validated entry and a fixed file name
(trainer.model_store.ARTIFACTS), never from the request. The store is MODELS_DIR, or the bucket
with STORAGE_DRIVER=s3, so every replica serves the same bytes, Content-Length and ETag.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.deps import Authorized, SettingsDep
from app.schemas import (
    AliasesOut,
    AliasMove,
    AliasMoved,
    ErrorOut,
    HistoryPage,
    LatestModel,
    ModelCard,
    MonitoringOut,
    Responses,
)
from dataset.errors import StorageError
from trainer.aliases import check_alias_name, parse_instant
from trainer.errors import AliasError, ArtifactMissing, RegistryConflict
from trainer.model_store import ARTIFACTS, Artifact, ModelRegistry
from trainer.model_sync import latest_payload, push_latest_model, why_none_served

router = APIRouter(tags=["models"], dependencies=[Authorized])


def weights_sha256(entry: dict) -> str | None:
    return entry.get("weights_sha256") or entry.get("sha256")


@contextmanager
def registry_errors() -> Iterator[None]:
    """A registry.json that cannot be read (hand-edited, disk trouble) is a 503 with its reason."""
    try:
        yield
    except (ValueError, StorageError) as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the model registry cannot be read: {exc}"
        ) from exc


def etag_matches(if_none_match: str | None, sha: str) -> bool:
    """RFC 9110 13.1.2: ``*`` matches any current representation; otherwise a comma list of entity
    tags, compared weakly (``W/"x"`` matches ``"x"``)."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        tag = tag[2:] if tag.startswith("W/") else tag
        if tag == f'"{sha}"':
            return True
    return False


@router.get(
    "/models/latest",
    response_model=LatestModel,
    responses={
        304: {"description": "If-None-Match named the current ETag: nothing changed"},
        404: {"model": ErrorOut},
        422: {"model": ErrorOut},
    },
    summary="The served model (the champion alias): version, metrics and download_url",
)
async def latest_model(
    settings: SettingsDep,
    request: Request,
    at: Annotated[
        str | None,
        Query(description="an RFC 3339 instant, e.g. 2026-12-01T00:00:00Z: the version served then"),
    ] = None,
) -> Response:
    """The champion's entry, with an ETag (a hash of the answer): send it back in If-None-Match and
    an unchanged answer is a 304 without a body."""
    instant = _instant(at)
    with registry_errors():
        latest = await run_in_threadpool(push_latest_model, settings, instant)
        if latest is None and at is not None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no model was served at {at}")
        if latest is None:  # how many were trained, that none passed the gate, and where to read why
            entries = await run_in_threadpool(ModelRegistry(settings).entries)
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=why_none_served([dict(e) for e in entries], settings.model_name),
            )
    return json_with_etag(latest, request)


def _instant(at: str | None) -> datetime | None:
    if at is None:
        return None
    instant = parse_instant(at)
    if instant is None:
        raise HTTPException(
            422, detail=f"at={at!r} is not an RFC 3339 instant with a timezone; use e.g. 2026-12-01T00:00:00Z"
        )
    return instant


def json_with_etag(data: object, request: Request) -> Response:
    """A JSON answer whose ETag is the SHA-256 of its bytes; 304 when If-None-Match names it."""
    body = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
    etag = hashlib.sha256(body).hexdigest()
    headers = {"ETag": f'"{etag}"', "Cache-Control": "no-cache"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


@contextmanager
def alias_errors() -> Iterator[None]:
    """AliasError's status and reason as the answer (404, 409, 422); an unreadable registry a 503."""
    try:
        with registry_errors():
            yield
    except AliasError as exc:
        raise HTTPException(exc.status, detail=str(exc)) from exc
    except RegistryConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc


def alias_view(row: Mapping[str, Any]) -> dict:
    return {
        "alias": row["alias"],
        "version": row["to"],
        "since": row.get("at"),
        "cause": row.get("cause"),
        "actor": row.get("actor"),
        "reason": row.get("reason"),
    }


@router.get(
    "/models/{name}/aliases",
    response_model=AliasesOut,
    summary="The aliases of a model (champion = served) and the version each names",
)
async def model_aliases(name: str, settings: SettingsDep) -> dict:
    with registry_errors():
        rows = await run_in_threadpool(ModelRegistry(settings).aliases, name)
    return {"model": name, "aliases": {alias: alias_view(row) for alias, row in rows.items()}}


@router.get(
    "/models/{name}/aliases/{alias}",
    response_model=LatestModel,
    responses={304: {"description": "If-None-Match named the current ETag"}, 404: {"model": ErrorOut}},
    summary="The version an alias names, in /models/latest's shape (ETag, 304, ?at=)",
)
async def aliased_model(
    name: str,
    alias: str,
    settings: SettingsDep,
    request: Request,
    at: Annotated[
        str | None, Query(description="an RFC 3339 instant: the version the alias named then")
    ] = None,
) -> Response:
    """/models/latest for any alias: ``/models/vit/aliases/champion`` is /models/latest,
    ``/models/vit/aliases/canary`` the canary, polled the same way."""
    with alias_errors():
        check_alias_name(alias)
    instant = _instant(at)
    registry = ModelRegistry(settings)
    with registry_errors():
        entry = await run_in_threadpool(
            lambda: (
                registry.aliased(name, alias) if instant is None else registry.served_at(name, instant, alias)
            )
        )
    if entry is None:
        when = f" at {at}" if at is not None else ""
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"alias {alias!r} of {name!r} named no version{when}"
        )
    return json_with_etag({**latest_payload(dict(entry)), "alias": alias}, request)


@router.get(
    "/models/{name}/history",
    response_model=HistoryPage,
    summary="Every change of the model's aliases, newest first, paged",
)
async def model_history(
    name: str,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    alias: Annotated[str | None, Query(description="only this alias's rows")] = None,
) -> dict:
    with registry_errors():
        rows = await run_in_threadpool(ModelRegistry(settings).model_history, name)
    if alias is not None:
        rows = [row for row in rows if row.get("alias") == alias]
    newest_first = rows[::-1]
    return {
        "model": name,
        "total": len(rows),
        "limit": limit,
        "offset": offset,
        "rows": newest_first[offset : offset + limit],
    }


@router.get(
    "/models/{name}/benchmark",
    responses={404: {"model": ErrorOut}},
    summary="Every version's AUC on the frozen benchmark (EVAL_BENCHMARK_DIR), oldest first",
)
async def model_benchmark(name: str, request: Request, settings: SettingsDep) -> dict:
    """Each version's benchmark AUC with its 95 % interval, images scored and images excluded as
    trained on (trainer/benchmark.py). A version not yet scored on the benchmark's current content
    is ``pending``: this request starts the background scoring and answers at once."""
    from app.benchmark import BenchmarkScorer
    from trainer.benchmark import BenchmarkError, benchmark_view

    try:
        view = await run_in_threadpool(benchmark_view, settings, name)
    except BenchmarkError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    scorer = getattr(request.app.state, "benchmark", None)
    if view["pending"] and isinstance(scorer, BenchmarkScorer):
        scorer.kick()
    view["scoring"] = isinstance(scorer, BenchmarkScorer) and scorer.running
    view["error"] = scorer.last_error if isinstance(scorer, BenchmarkScorer) else None
    return view


@router.post(
    "/models/{name}/aliases/{alias}",
    response_model=AliasMoved,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
    summary="Move an alias (champion: what /models/latest serves) to a registered version",
)
async def move_alias(name: str, alias: str, move: AliasMove, request: Request, settings: SettingsDep) -> dict:
    """Rollback or manual promotion: the version must be registered (404) with its weights present
    and matching their SHA-256 (409); the reason must not be empty (422). The change is appended to
    the history (cause ``rollback`` when the champion moves to an older version, else ``manual``)."""
    registry = ModelRegistry(settings)
    with alias_errors():
        row = await run_in_threadpool(
            lambda: registry.move_alias(name, alias, move.version, reason=move.reason, actor="api")
        )
    await alias_moved(request, row)
    return {"alias": alias, "version": row["to"], "row": row}


async def alias_moved(request: Request, row: Mapping[str, Any]) -> None:
    """After an alias moved: subscribers are told (webhooks), the status cache is stale."""
    overview = getattr(request.app.state, "overview", None)
    if overview is not None:
        overview.invalidate()
    await request.app.state.webhooks.alias_moved(row)


def registered_artifact(
    settings, name: str, version: str, filename: str, missing: str | None = None
) -> Artifact:
    """One file of a registered version (weights.pt, model.json, report.json): 404 unless the version
    is registered and the file is in the store (``missing``: the detail for a registered version
    without the file); 503 when the registry or the store cannot be read."""
    if filename not in ARTIFACTS:
        raise ValueError(f"{filename!r} is not a model artifact")
    registry = ModelRegistry(settings)
    with registry_errors():
        entry = registry.entry(name, version)
    if entry is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"no model {name!r} version {version!r} in the registry; see /models/latest",
        )
    try:
        return registry.artifact(entry, filename)
    except ArtifactMissing as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=missing or str(exc)) from exc
    except StorageError as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the model store cannot be read: {exc}"
        ) from exc


def artifact_response(
    artifact: Artifact, media_type: str, etag: str | None, request: Request, filename: str | None = None
) -> Response:
    """Stream an artifact with Content-Length, ETag and its SHA-256 (``Repr-Digest``, RFC 9530)
    when known, from a file or the bucket; ``Range`` (one range) answers 206 with that part, so a
    cut download resumes; ``If-Range`` with another ETag gets the whole file."""
    headers = {"ETag": f'"{etag}"', "Repr-Digest": repr_digest(etag)} if etag else {}
    if etag and etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if artifact.path is not None:  # Starlette's FileResponse serves Range and If-Range itself
        return FileResponse(artifact.path, media_type=media_type, filename=filename, headers=headers)
    headers["Accept-Ranges"] = "bytes"
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    wanted = requested_range(request, etag, artifact.size)
    if wanted == "unsatisfiable":
        return Response(status_code=416, headers={"Content-Range": f"bytes */{artifact.size}"})
    start, end, code = (0, artifact.size, 200) if wanted is None else (*wanted, 206)
    headers["Content-Length"] = str(end - start)
    if code == 206:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{artifact.size}"
    if request.method == "HEAD":  # size and ETag only: the bucket is not read
        return Response(media_type=media_type, headers=headers, status_code=code)
    body = artifact.chunks(start, end) if code == 206 else artifact.chunks()
    return StreamingResponse(body, status_code=code, media_type=media_type, headers=headers)


def repr_digest(sha256_hex: str) -> str:
    """RFC 9530 ``Repr-Digest``: the SHA-256 as base64 between colons."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode()}:"


def requested_range(request: Request, etag: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end exclusive) of a single ``Range: bytes=...``; None for the whole file (no Range, a
    stale If-Range, several ranges or a malformed header, which RFC 9110 lets a server ignore);
    ``"unsatisfiable"`` for a range past the end."""
    header = request.headers.get("range")
    if not header or size == 0:
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and not (etag and if_range.strip() == f'"{etag}"'):
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # the last N bytes
        return (max(size - int(last), 0), size) if int(last) > 0 else "unsatisfiable"
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = min(int(last) + 1, size) if last else size
    return (start, end) if end > start else None


@router.get(
    "/models/{name}/{version}/model.json",
    response_model=ModelCard,
    response_model_exclude_unset=True,
    responses={304: {"description": "If-None-Match named the current ETag"}, 404: {"model": ErrorOut}},
    summary="A registered model's card: architecture, preprocessing, class map, metrics",
)
async def model_card(name: str, version: str, settings: SettingsDep, request: Request) -> Response:
    artifact = await run_in_threadpool(
        registered_artifact,
        settings,
        name,
        version,
        "model.json",
        f"model {name} {version} has no model.json; retrain it",
    )
    try:
        raw = await run_in_threadpool(artifact.read)
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError, StorageError) as exc:
        # Registered but unreadable: the server's fault, not the client's; the reason, no path.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"model {name} {version}: model.json cannot be decoded "
            f"({type(exc).__name__}: {exc}); restore it from a backup or "
            "retrain",
        ) from exc
    etag = hashlib.sha256(raw).hexdigest()  # the file's bytes: the same on every replica
    headers = {"ETag": f'"{etag}"', "Cache-Control": "no-cache"}
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(raw, media_type="application/json", headers=headers)


@router.get(
    "/models/{name}/{version}/report",
    responses={404: {"model": ErrorOut}, 500: {"model": ErrorOut}},
    summary="A registered model's evaluation report (docs/evaluation.md)",
)
async def model_report(name: str, version: str, settings: SettingsDep) -> dict:
    """report.json of a version: evaluation ids, AUC with intervals, held-out generators, robustness,
    calibration, shortcut audit and the promotion decision."""
    artifact = await run_in_threadpool(
        registered_artifact,
        settings,
        name,
        version,
        "report.json",
        f"model {name} {version} has no evaluation report: it was trained before reports existed; "
        "train a new version to get one",
    )
    try:
        raw = await run_in_threadpool(artifact.read)
    except (OSError, StorageError) as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"the report of model {name} {version} cannot be read: {exc}",
        ) from exc
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(
            status.HTTP_500_INTERNAL_SERVER_ERROR,
            detail=f"the report.json of model {name} {version} is not valid JSON ({exc}); "
            "train a new version or restore the file",
        ) from exc


@router.get(
    "/models/{name}/{version}/monitoring",
    response_model=MonitoringOut,
    responses={404: {"model": ErrorOut}},
    summary="The version's weekly figures on images stored after its training (docs/evaluation.md)",
)
async def model_monitoring(name: str, version: str, request: Request, settings: SettingsDep) -> dict:
    """Rows ``{week, n, auc, auc_ci95, psi, ks_p, by_generator, scorers, degraded}``, oldest first,
    each written once its week ended (while the version was served) and never recomputed."""
    with registry_errors():
        entry = await run_in_threadpool(ModelRegistry(settings).entry, name, version)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"model {name} has no version {version!r}")
    rows = await request.app.state.monitor.rows(name, version)
    return {
        "model": name,
        "version": version,
        "trained_at": entry.get("timestamp"),
        "promotion_auc_ci95": entry.get("val_auc_ci95"),
        "rows": rows,
        "degraded": rows[-1]["degraded"] if rows else None,
    }


_WEIGHTS_RESPONSES: Responses = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the weights; ETag is their sha256, Repr-Digest the same as RFC 9530 base64",
        "headers": {"ETag": {"schema": {"type": "string"}}, "Repr-Digest": {"schema": {"type": "string"}}},
    },
    206: {"description": "Range asked for one part: that part, with Content-Range (resume a cut download)"},
    416: {"description": "Range starts past the end of the file"},
    304: {"description": "If-None-Match named the current ETag: the copy the client has is current"},
    404: {"model": ErrorOut},
}


@router.get(
    "/models/{name}/{version}/weights.pt",
    response_class=FileResponse,
    responses=_WEIGHTS_RESPONSES,
    summary="Download a registered model's weights",
)
@router.head(
    "/models/{name}/{version}/weights.pt",
    response_class=FileResponse,
    responses=_WEIGHTS_RESPONSES,
    summary="The weights' size and ETag, without the body",
)
async def download_weights(name: str, version: str, settings: SettingsDep, request: Request) -> Response:
    return await weights_download(settings, name, version, request)


async def weights_download(settings, name: str, version: str, request: Request) -> Response:
    """A registered version's weights, streamed with Content-Length and ETag (304 on a match):
    the API's route and the console's download link both answer with this."""
    artifact = await run_in_threadpool(registered_artifact, settings, name, version, "weights.pt")
    return artifact_response(
        artifact,
        "application/octet-stream",
        weights_sha256(artifact.entry),
        request,
        filename=f"{name}-{version}-weights.pt",
    )
