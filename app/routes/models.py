"""GET /models/latest, GET /models/{name}/{version}/weights.pt (streamed, with ETag), model.json and report.

Every artifact read goes through :func:`registered_artifact`: the name and version are looked up
in the registry and the file comes from that validated entry and a fixed file name
(trainer.model_store.ARTIFACTS), never from the request. The store is MODELS_DIR, or the bucket
with STORAGE_DRIVER=s3, so every replica serves the same bytes, Content-Length and ETag.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.deps import Authorized, SettingsDep
from app.schemas import ErrorOut, LatestModel, ModelCard
from dataset.storage import StorageError
from trainer.model_store import ARTIFACTS, Artifact, ArtifactMissing, model_store, registered
from trainer.model_sync import push_latest_model

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
    responses={404: {"model": ErrorOut}},
    summary="The promoted model: version, metrics and download_url",
)
async def latest_model(settings: SettingsDep) -> dict:
    with registry_errors():
        latest = await run_in_threadpool(push_latest_model, settings)
    if latest is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail="no model trained yet: POST /train once the dataset is large enough",
        )
    return latest


def registered_artifact(
    settings, name: str, version: str, filename: str, missing: str | None = None
) -> Artifact:
    """One file of a registered version (weights.pt, model.json, report.json): 404 unless the version
    is registered and the file is in the store (``missing``: the detail for a registered version
    without the file); 503 when the registry or the store cannot be read."""
    if filename not in ARTIFACTS:
        raise ValueError(f"{filename!r} is not a model artifact")
    store = model_store(settings)
    with registry_errors():
        entry = registered(store.load_registry(), name, version)
    if entry is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"no model {name!r} version {version!r} in the registry; see /models/latest",
        )
    try:
        return store.artifact(entry, filename)
    except ArtifactMissing as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=missing or str(exc)) from exc
    except StorageError as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"the model store cannot be read: {exc}"
        ) from exc


def artifact_response(
    artifact: Artifact, media_type: str, etag: str | None, request: Request, filename: str | None = None
) -> Response:
    """Stream an artifact with Content-Length (and ETag when known), from a file or the bucket."""
    headers = {"ETag": f'"{etag}"'} if etag else {}
    if etag and etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if artifact.path is not None:
        return FileResponse(artifact.path, media_type=media_type, filename=filename, headers=headers)
    headers["Content-Length"] = str(artifact.size)
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    if request.method == "HEAD":  # size and ETag only: the bucket is not read
        return Response(media_type=media_type, headers=headers)
    return StreamingResponse(artifact.chunks(), media_type=media_type, headers=headers)


@router.get(
    "/models/{name}/{version}/model.json",
    response_model=ModelCard,
    response_model_exclude_unset=True,
    responses={404: {"model": ErrorOut}},
    summary="A registered model's card: architecture, preprocessing, class map, metrics",
)
async def model_card(name: str, version: str, settings: SettingsDep) -> dict:
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
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError, StorageError) as exc:
        # Registered but unreadable: the server's fault, not the client's; the reason, no path.
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"model {name} {version}: model.json cannot be decoded "
            f"({type(exc).__name__}: {exc}); restore it from a backup or "
            "retrain",
        ) from exc


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


_WEIGHTS_RESPONSES = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the weights; ETag is their sha256",
        "headers": {"ETag": {"schema": {"type": "string"}}},
    },
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
