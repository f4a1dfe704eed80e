"""GET /models/latest, GET /models/{name}/{version}/weights.pt (streamed, with ETag), model.json and report.

The weights path is never built from the request: the name and version are looked up in the
registry, and the path comes from that validated entry (trainer.model_sync.get_model_path).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import FileResponse

from app.deps import Authorized, SettingsDep
from app.schemas import ErrorOut, LatestModel, ModelCard
from trainer.errors import ModelNotFound
from trainer.model_sync import get_model_path, push_latest_model
from trainer.registry import find_entry

router = APIRouter(tags=["models"], dependencies=[Authorized])


def weights_sha256(entry: dict) -> str | None:
    return entry.get("weights_sha256") or entry.get("sha256")


@contextmanager
def registry_errors() -> Iterator[None]:
    """A registry.json that cannot be read (hand-edited, disk trouble) is a 503 with its reason."""
    try:
        yield
    except ValueError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail=f"the model registry cannot be read: {exc}") from exc


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


@router.get("/models/latest", response_model=LatestModel, responses={404: {"model": ErrorOut}},
            summary="The promoted model: version, metrics and download_url")
async def latest_model(settings: SettingsDep) -> dict:
    with registry_errors():
        latest = push_latest_model(settings)
    if latest is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail="no model trained yet: POST /train once the dataset is large enough")
    return latest


def registered_weights(settings, name: str, version: str) -> tuple[dict, Path]:
    """The registry entry and weights path of name/version; 404 unless both are registered and on disk."""
    with registry_errors():
        entry = find_entry(settings.models_dir, name, version)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"no model {name!r} version {version!r} in the registry; "
                            "see /models/latest")
    try:
        return entry, get_model_path(settings, entry["model"], entry["version"])
    except ModelNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc


@router.get("/models/{name}/{version}/model.json", response_model=ModelCard,
            response_model_exclude_unset=True, responses={404: {"model": ErrorOut}},
            summary="A registered model's card: architecture, preprocessing, class map, metrics")
async def model_card(name: str, version: str, settings: SettingsDep) -> dict:
    _, weights = registered_weights(settings, name, version)
    try:
        return json.loads((weights.parent / "model.json").read_bytes().decode("utf-8"))
    except FileNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"model {name} {version} has no model.json; retrain it") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        # Registered but unreadable: the server's fault, not the client's; the reason, no path.
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail=f"model {name} {version}: model.json cannot be decoded "
                                   f"({type(exc).__name__}: {exc}); restore it from a backup or "
                                   "retrain") from exc


@router.get("/models/{name}/{version}/report", responses={404: {"model": ErrorOut}, 500: {"model": ErrorOut}},
            summary="A registered model's evaluation report (docs/evaluation.md)")
async def model_report(name: str, version: str, settings: SettingsDep) -> dict:
    """report.json of a version: evaluation ids, AUC with intervals, held-out generators, robustness,
    calibration, shortcut audit and the promotion decision."""
    _, weights = registered_weights(settings, name, version)
    try:
        raw = (weights.parent / "report.json").read_bytes()
    except FileNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"model {name} {version} has no evaluation report: it was trained before "
                            "reports existed; train a new version to get one") from exc
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR,
                            detail=f"the report.json of model {name} {version} is not valid JSON ({exc}); "
                            "train a new version or restore the file") from exc


_WEIGHTS_RESPONSES = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
          "description": "the weights; ETag is their sha256",
          "headers": {"ETag": {"schema": {"type": "string"}}}},
    304: {"description": "If-None-Match named the current ETag: the copy the client has is current"},
    404: {"model": ErrorOut},
}


@router.get("/models/{name}/{version}/weights.pt", response_class=FileResponse, responses=_WEIGHTS_RESPONSES,
            summary="Download a registered model's weights")
@router.head("/models/{name}/{version}/weights.pt", response_class=FileResponse, responses=_WEIGHTS_RESPONSES,
             summary="The weights' size and ETag, without the body")
async def download_weights(name: str, version: str, settings: SettingsDep, request: Request) -> Response:
    entry, path = registered_weights(settings, name, version)
    sha = weights_sha256(entry)
    headers = {"ETag": f'"{sha}"'} if sha else {}
    if sha and etag_matches(request.headers.get("if-none-match"), sha):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{name}-{version}-weights.pt",
                        headers=headers)
