"""The review workflow: GET /review (the queue), GET /images/{id} (bytes), PATCH /images/{id} (a label).

Ids are parsed as UUIDs before any lookup, so no path is ever built from what a client sent; an
id that is not a UUID, or that no image has, is a 404 with the reason. The queue's order is
documented in :mod:`labeler.review`.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.deps import Authorized, DatasetDep, SettingsDep
from app.schemas import ErrorOut, Responses
from dataset.errors import InvalidImageId, MetadataInvalid, StorageError, StorageKeyError, UnknownImage
from labeler.review import (
    QueuePage,
    ReviewFilter,
    image_media_type,
    parse_image_id,
    record_person_label,
    review_queue,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["review"], dependencies=[Authorized])


class ReviewItem(BaseModel):
    id: str
    reason: Literal["unlabeled", "disagreement"]
    why: str = Field(description="why a person should look, in words")
    label: str
    score: float | None = Field(description="P(ai-generated) from the labeler, null if not scored yet")
    scored_by: dict[str, Any] | None = None
    source: str | None
    generator: str | None = None
    width: int | None = None
    height: int | None = None
    attribution: dict[str, Any]
    timestamp: str | None
    image_url: str = Field(description="GET it with the same bearer token")


class ReviewPage(BaseModel):
    total: int = Field(description="images in the queue (all pages)")
    limit: int
    offset: int
    kind: str
    sort: str = "disagreement"
    items: list[ReviewItem]
    facets: dict[str, list[str]] = Field(
        default_factory=dict, description="the sources and generators in the queue, before the filter"
    )


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Literal["real", "ai"]
    reviewer: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[\w .@-]+$",
        description="who labelled it (kept in label_source); default 'api'",
    )


class LabelOut(BaseModel):
    id: str
    label: str
    label_source: dict[str, Any]
    score: float | None


def _image_id(raw: str) -> str:
    try:
        return parse_image_id(raw)
    except InvalidImageId as exc:
        raise HTTPException(404, detail=str(exc)) from None


def _not_found(image_id: str) -> HTTPException:
    return HTTPException(404, detail=f"no image with id {image_id}; GET /review lists the images to review")


@router.get("/review", response_model=ReviewPage, summary="Images that need a person, most useful first")
async def get_review(
    settings: SettingsDep,
    dataset: DatasetDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    kind: Literal["all", "disagreement", "unlabeled"] = "all",
    label: Annotated[Literal["real", "ai", "unlabeled"] | None, Query(description="only this label")] = None,
    source: Annotated[str | None, Query(max_length=64, description="only this source")] = None,
    generator: Annotated[str | None, Query(max_length=64, description="only this generator")] = None,
    min_score: Annotated[
        float | None, Query(ge=0, le=1, description="P(ai) at least (unscored left out)")
    ] = None,
    max_score: Annotated[
        float | None, Query(ge=0, le=1, description="P(ai) at most (unscored left out)")
    ] = None,
    sort: Literal["disagreement", "uncertainty", "newest"] = "disagreement",
) -> QueuePage:
    filters = ReviewFilter(label, source or None, generator or None, min_score, max_score)
    try:
        return await review_queue(
            dataset, settings, kind=kind, limit=limit, offset=offset, filters=filters, sort=sort
        )
    except ValueError as exc:  # min_score above max_score
        raise HTTPException(422, detail=f"{exc}; nothing to show") from None
    except StorageError as exc:
        raise HTTPException(503, detail=f"storage unavailable: {exc}; retry later") from exc


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_IMAGE_RESPONSES: Responses = {
    200: {
        "description": "the stored bytes, typed by their real format",
        "content": {
            media: _BINARY
            for media in (
                "image/jpeg",
                "image/png",
                "image/webp",
                "image/gif",
                "image/avif",
                "image/tiff",
                "image/bmp",
            )
        },
    },
    404: {"model": ErrorOut, "description": "not an image id, or no image has it"},
    503: {"model": ErrorOut, "description": "storage unavailable (or TRAINER_API_KEY not set)"},
}


@router.get(
    "/images/{image_id}",
    summary="The stored image bytes",
    response_class=Response,
    responses=_IMAGE_RESPONSES,
)
async def get_image(image_id: str, dataset: DatasetDep) -> Response:
    return await image_file(dataset, image_id)


async def image_file(dataset, raw_id: str) -> Response:
    """The stored bytes of an image, typed by their real format (the API's route and the console's
    viewer both answer with this); 404 for an unknown id, 503 when storage is away."""
    image_id = _image_id(raw_id)
    try:
        data = await dataset.read_image(image_id)
    except (UnknownImage, StorageKeyError):
        raise _not_found(image_id) from None
    except StorageError as exc:
        raise HTTPException(503, detail=f"storage unavailable: {exc}; retry later") from exc
    # An id's bytes never change; only the holder of the token may keep a copy.
    headers = {"Cache-Control": "private, max-age=86400"}
    return Response(data, media_type=image_media_type(data), headers=headers)


async def _label_body(request: Request) -> LabelIn:
    """The JSON body, read here (after the bearer check) rather than by FastAPI before it: an
    unauthenticated client never gets its body read or parsed. Its size is capped by RequestGuard."""
    try:
        return LabelIn.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        for error in errors:  # a body that is not UTF-8 comes back as text, not bytes JSON cannot hold
            if isinstance(error.get("input"), bytes):
                error["input"] = error["input"][:100].decode("utf-8", "replace")
        raise RequestValidationError(errors) from None


_LABEL_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": LabelIn.model_json_schema()}},
    }
}


@router.patch(
    "/images/{image_id}",
    response_model=LabelOut,
    summary="Record a person's label",
    openapi_extra=_LABEL_BODY,
    responses={
        404: {"description": "unknown id, or its file is gone"},
        422: {"description": "the body is not a label"},
    },
)
async def patch_image(image_id: str, dataset: DatasetDep, request: Request) -> dict:
    image_id = _image_id(image_id)
    body = await _label_body(request)
    try:
        if not await dataset.has_image_file(image_id):  # a label for a lost image helps nobody
            raise _not_found(image_id)
        doc = await record_person_label(dataset, image_id, body.label, body.reviewer)
    except (UnknownImage, StorageKeyError):
        raise _not_found(image_id) from None
    except StorageError as exc:
        raise HTTPException(503, detail=f"storage unavailable, label not recorded: {exc}; retry") from exc
    except MetadataInvalid as exc:  # a damaged metadata file: the repair sets it apart and rewrites it
        raise HTTPException(
            409,
            detail=f"label not recorded: {exc}; run `exposr-trainer check --repair`, which sets the "
            "file apart and writes it again from the index",
        ) from exc
    request.app.state.overview.invalidate()  # /status counts move at once
    log.info("image %s labelled %s by a person", image_id, body.label)
    return {
        "id": image_id,
        "label": doc["label"],
        "label_source": doc["label_source"],
        "score": doc.get("confidence"),
    }
