"""POST /upload: one image (multipart ``file``) with a ``label``, through DatasetManager.ingest.

The size limit is enforced before and while the body arrives: a Content-Length over the limit is
refused at once, and the body is counted chunk by chunk as Starlette's multipart parser reads it
(it spools file parts to disk past 1 MB), so an oversized or lying upload is cut off early.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.datastructures import UploadFile
from starlette.types import Message

from app.deps import Authorized, DatasetDep, SettingsDep
from app.errors import BodyTooLarge, UnknownOriginal
from app.schemas import ErrorOut, Responses, UploadOut
from config.names import clean_generator
from dataset.contracts import LABELS
from dataset.errors import StorageError
from dataset.facts import EDIT_PREFIX
from dataset.manager import IngestOutcome

log = logging.getLogger(__name__)
router = APIRouter(tags=["dataset"], dependencies=[Authorized])

ENVELOPE_SLACK = 64 * 1024  # multipart boundaries, headers and the label field
REJECTED_STATUS = {
    "not_an_image": 415,
    "unsupported_format": 415,
    "too_large": 413,
    "decompression_bomb": 413,
}

_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "label"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the image file"},
                        "label": {"type": "string", "enum": list(LABELS)},
                        "generator": {
                            "type": "string",
                            "maxLength": 64,
                            "description": "what made the image (e.g. 'Midjourney v6'); optional",
                        },
                        "edit_of": {
                            "type": "string",
                            "description": "id of the stored image this one is an edit "
                            "of: both stay on one side of the train/evaluation split; optional",
                        },
                    },
                }
            }
        },
    }
}
_ERRORS: Responses = {code: {"model": ErrorOut} for code in (400, 413, 415, 503)}


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        413,
        detail=f"upload larger than UPLOAD_MAX_BYTES ({limit} bytes); send a smaller image",
    )


def _unavailable(reason: str | None) -> HTTPException:
    log.error("upload not stored: %s", reason)
    return HTTPException(503, detail=f"storage unavailable, nothing was stored ({reason}); retry later")


def _counting_request(request: Request, max_body: int) -> Request:
    """The same request, whose body stream raises BodyTooLarge once more than max_body bytes came in."""
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > max_body:
            raise BodyTooLarge
        return message

    return Request(request.scope, receive)


async def read_upload(request: Request, limit: int) -> tuple[bytes, str, str | None, dict[str, str]]:
    """Parse the multipart body within the limit; return (image bytes, label, file name, optional
    fields ``generator`` and ``edit_of`` as given)."""
    max_body = limit + ENVELOPE_SLACK
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_body:
        raise _too_large(limit)
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise HTTPException(400, detail="send multipart/form-data with a 'file' part and a 'label' field")
    try:
        async with _counting_request(request, max_body).form(max_files=1, max_fields=4) as form:
            file, label = form.get("file"), form.get("label")
            extras = {
                k: v for k in ("generator", "edit_of") if isinstance(v := form.get(k), str) and v.strip()
            }
            if not isinstance(file, UploadFile):
                raise HTTPException(400, detail="missing 'file' part: attach the image as field 'file'")
            data, filename = await file.read(limit + 1), file.filename
    except BodyTooLarge:
        raise _too_large(limit) from None
    if len(data) > limit:
        raise _too_large(limit)
    if not isinstance(label, str) or label not in LABELS:
        raise HTTPException(400, detail=f"label must be one of {', '.join(LABELS)} (got {label!r})")
    if "generator" in extras:
        try:
            extras["generator"] = clean_generator(extras["generator"])
        except ValueError as exc:
            raise HTTPException(400, detail=f"generator: {exc}") from None
    return data, label, (filename or None) and filename[-200:], extras


async def store_upload(
    state,
    data: bytes,
    label: str,
    filename: str | None,
    generator: str | None = None,
    edit_of: str | None = None,
) -> IngestOutcome:
    """One uploaded file into the dataset (POST /upload): the metadata an upload gets, the ingest,
    the Prometheus count, and /status moving at once when it was stored. Several files at once (the
    console) go through :func:`store_uploads`.

    ``generator`` is already cleaned (config.names.clean_generator). A storage or index failure is
    an outcome ``error`` (reason ``storage_error``), never an exception; an ``edit_of`` that names
    no stored image raises :class:`UnknownOriginal` before anything is stored.
    """
    metadata = upload_metadata(label, filename, generator)
    if edit_of:
        original = await state.dataset.get_metadata(edit_of[:64])
        if original is None:
            raise UnknownOriginal(
                f"edit_of: no stored image has the id {edit_of[:64]!r}; "
                "give the id an earlier upload answered with, or leave edit_of out"
            )
        metadata["group_hint"] = original.get("group_hint") or f"{EDIT_PREFIX}{original['id']}"
    try:
        outcome = await state.dataset.ingest(data, metadata)
    except (StorageError, OperationalError) as exc:
        outcome = IngestOutcome(status="error", reason="storage_error", message=str(exc))
    return counted_upload(state, outcome)


async def store_uploads(
    state, files: AsyncIterable[tuple[bytes, str | None]], label: str, generator: str | None = None
) -> AsyncIterator[IngestOutcome]:
    """Several uploaded ``(bytes, filename)`` with one label through the dataset's one door
    (DatasetManager.ingest_stream: validated side by side, stored in batches): one outcome per
    file, in the order given, each counted as :func:`store_upload` counts it."""

    async def fed() -> AsyncIterator[tuple[bytes, dict]]:
        async for data, filename in files:
            yield data, upload_metadata(label, filename, generator)

    async with contextlib.aclosing(state.dataset.ingest_stream(fed())) as outcomes:
        async for outcome in outcomes:
            yield counted_upload(state, outcome)


def upload_metadata(label: str, filename: str | None, generator: str | None) -> dict:
    metadata = {
        "source": "upload",
        "label": label,
        "attribution": {"platform": "upload"},
        "api_data": {"filename": filename},
    }
    if generator:
        metadata["generator"] = generator
    return metadata


def counted_upload(state, outcome: IngestOutcome) -> IngestOutcome:
    """The Prometheus count of an upload's outcome, and /status moving at once when it was stored."""
    state.metrics.count_ingest(outcome.status, outcome.reason)
    if outcome.status == "stored":
        state.overview.invalidate()
    return outcome


@router.post(
    "/upload",
    status_code=201,
    response_model=UploadOut,
    openapi_extra=_BODY_SCHEMA,
    responses={200: {"model": UploadOut, "description": "duplicate or near-duplicate"}, **_ERRORS},
    summary="Add one labelled image to the dataset",
)
async def upload(request: Request, settings: SettingsDep, dataset: DatasetDep):
    data, label, filename, extras = await read_upload(request, settings.upload_max_bytes)
    try:
        outcome = await store_upload(request.app.state, data, label, filename, **extras)
    except UnknownOriginal as exc:
        raise HTTPException(400, detail=str(exc)) from None
    if outcome.status == "error":
        raise _unavailable(outcome.message)
    if outcome.status == "rejected":
        code = REJECTED_STATUS.get(outcome.reason or "", 400)
        raise HTTPException(code, detail=f"{outcome.reason}: {outcome.message}")
    assert outcome.id is not None  # a stored image and a duplicate always name an image
    if outcome.status != "stored":
        # An upload never relabels what is stored: answer with the label the image keeps.
        existing = await dataset.get_metadata(outcome.id)
        label = existing["label"] if existing else label
    body = UploadOut(
        id=outcome.id, status=outcome.status, label=label, message=outcome.message, distance=outcome.distance
    )
    return JSONResponse(body.model_dump(), status_code=201 if outcome.status == "stored" else 200)
