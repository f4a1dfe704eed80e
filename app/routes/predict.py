"""POST /models/{name}/{version}/predict: P(ai) per image with any registered version, served or not.

For comparing a version that did not pass the promotion gate (or an older one) with the served
one before deciding anything. The answer says whether the version is the served one. The model is
loaded in a worker thread (torch is imported there, never at module level) and the last few
loaded versions are kept; images are size-limited like uploads and decoded with the same
bounded decoder, one bad file an outcome with its reason, never the end of the request.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.deps import Authorized, SettingsDep
from app.errors import BodyTooLarge
from app.routes.upload import ENVELOPE_SLACK, _counting_request, _too_large
from app.schemas import ErrorOut
from config.settings import Settings

router = APIRouter(tags=["models"], dependencies=[Authorized])

MAX_FILES = 16  # images per request; their bytes together stay within UPLOAD_MAX_BYTES
KEPT_MODELS = 2  # loaded versions kept in memory (a comparison is usually two)

_loaded: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_loading = threading.Lock()


class PredictionOut(BaseModel):
    filename: str | None
    p_ai: float | None
    reason: str | None = None
    message: str | None = None


class PredictOut(BaseModel):
    model: str
    version: str
    served: bool
    served_version: str | None
    note: str | None
    predictions: list[PredictionOut]


_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": f"1 to {MAX_FILES} images (repeat the 'file' part)",
                        }
                    },
                }
            }
        },
    }
}


def _predictor(settings: Settings, version: str):
    """The loaded version (kept for the next request); ModelNotFound when it is not registered."""
    from trainer.predict import load_version

    with _loading:
        predictor = load_version(settings, version)
        key = (str(settings.models_dir), settings.model_name, f"{version}:{predictor.card.get('sha256')}")
        kept = _loaded.pop(key, None)
        if kept is not None:
            kept.served_version = predictor.served_version  # the alias may have moved since
            predictor = kept
        _loaded[key] = predictor
        while len(_loaded) > KEPT_MODELS:
            _loaded.popitem(last=False)
        return predictor


async def _read_images(request: Request, limit: int) -> list[tuple[str | None, bytes]]:
    max_body = limit + ENVELOPE_SLACK
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body:
        raise _too_large(limit)
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise HTTPException(400, detail="send multipart/form-data with one or more 'file' parts")
    images = []
    try:
        async with _counting_request(request, max_body).form(max_files=MAX_FILES, max_fields=2) as form:
            for part in form.getlist("file"):
                if isinstance(part, UploadFile):
                    images.append(
                        ((part.filename or None) and part.filename[-200:], await part.read(limit + 1))
                    )
    except BodyTooLarge:
        raise _too_large(limit) from None
    if not images:
        raise HTTPException(400, detail="missing 'file' part: attach one or more images as field 'file'")
    if sum(len(data) for _, data in images) > limit:
        raise _too_large(limit)
    return images


@router.post(
    "/models/{name}/{version}/predict",
    response_model=PredictOut,
    openapi_extra=_BODY_SCHEMA,
    responses={code: {"model": ErrorOut} for code in (400, 404, 413, 503)},
    summary="P(ai) per image with any registered version (says whether it is the served one)",
)
async def predict_with_version(name: str, version: str, request: Request, settings: SettingsDep) -> dict:
    from trainer.errors import ModelNotFound

    if name != settings.model_name:
        raise HTTPException(404, detail=f"no model {name!r}: this service trains {settings.model_name!r}")
    images = await _read_images(request, settings.upload_max_bytes)
    try:
        predictor = await run_in_threadpool(_predictor, settings, version)
    except ModelNotFound as exc:
        raise HTTPException(404, detail=str(exc)) from exc
    outcomes = await asyncio.to_thread(predictor.predict_each, [data for _, data in images])
    served = predictor.served_version
    note = None
    if not predictor.served:
        note = (
            f"{version} is not the served version ({served + ' is' if served else 'none is served yet'}, "
            "see /models/latest): these scores are for comparison"
        )
    return {
        "model": name,
        "version": version,
        "served": predictor.served,
        "served_version": served,
        "note": note,
        "predictions": [
            {
                "filename": filename,
                "p_ai": None if o.probability is None else round(o.probability, 6),
                "reason": o.reason,
                "message": o.message,
            }
            for (filename, _), o in zip(images, outcomes, strict=True)
        ],
    }
