"""The console's review: the queue page (filters, sort and page kept in the URL), labels one at a
time or in bulk, undo, the viewer's details and the stored image.

The queue is ``GET /review``'s own (labeler.review.review_queue, same order and filters); a label is
``record_person_label`` as ``PATCH /images/{id}`` records it, keeping the label it replaced so that
undo can put it back. Every state change checks the session's CSRF token first.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from app.routes.review import image_file
from app.ui import views
from app.ui.pages import render
from app.ui.session import check_csrf, current_session
from dataset.contracts import LABELS
from dataset.errors import (
    InvalidImageId,
    NothingToUndo,
    StorageError,
    StorageKeyError,
    UnknownImage,
    UnknownImageId,
)
from labeler.review import (
    KINDS,
    SORTS,
    ReviewFilter,
    parse_image_id,
    record_person_label,
    review_queue,
    undo_person_label,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/ui", include_in_schema=False)
Session = Annotated[dict, Depends(current_session)]
PAGE_SIZES = (24, 48, 96, 200)
MAX_BULK = 200  # one page at the largest size
NEAR_SHOWN = 4
THUMB_SIDE = 256


class ReviewQuery(BaseModel):
    """The page's URL: what is shown, in which order, which page."""

    kind: str = "all"
    label: str = ""
    source: str = ""
    generator: str = ""
    min_score: str = ""
    max_score: str = ""
    sort: str = "disagreement"
    page: str = "1"
    per: str = "48"


def parse_query(q: ReviewQuery) -> tuple[dict, list[str]]:
    """(arguments for review_queue, problems): a bad value is named and dropped, never a crash."""
    problems: list[str] = []
    kind = q.kind if q.kind in KINDS else "all"
    if q.kind not in KINDS:
        problems.append(f"kind {q.kind[:20]!r} is not one of {', '.join(KINDS)}")
    sort = q.sort if q.sort in SORTS else "disagreement"
    if q.sort not in SORTS:
        problems.append(f"sort {q.sort[:20]!r} is not one of {', '.join(SORTS)}")
    label = q.label if q.label in LABELS else None
    if q.label and q.label not in LABELS:
        problems.append(f"label {q.label[:20]!r} is not one of {', '.join(LABELS)}")
    scores: dict[str, float | None] = {}
    for name in ("min_score", "max_score"):
        raw = getattr(q, name).strip()
        try:
            value = float(raw) if raw else None
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError
        except ValueError:
            problems.append(f"{name} {raw[:20]!r} is not a number between 0 and 1")
            value = None
        scores[name] = value
    low, high = scores["min_score"], scores["max_score"]
    if low is not None and high is not None and low > high:
        problems.append(f"min_score {scores['min_score']} is above max_score {scores['max_score']}")
        scores = {"min_score": None, "max_score": None}
    per = int(q.per) if q.per.isdigit() and int(q.per) in PAGE_SIZES else 48
    page = int(q.page) if q.page.isdigit() and int(q.page) >= 1 else 1
    if q.page and not (q.page.isdigit() and int(q.page) >= 1):
        problems.append(f"page {q.page[:20]!r} is not a page number")
    filters = ReviewFilter(label, q.source[:64] or None, q.generator[:64] or None, **scores)
    return {"kind": kind, "sort": sort, "filters": filters, "per": per, "page": page}, problems


def page_link(args: dict, page: int) -> str:
    f: ReviewFilter = args["filters"]
    query = {
        "kind": args["kind"] if args["kind"] != "all" else "",
        "label": f.label or "",
        "source": f.source or "",
        "generator": f.generator or "",
        "min_score": "" if f.min_score is None else f"{f.min_score:g}",
        "max_score": "" if f.max_score is None else f"{f.max_score:g}",
        "sort": args["sort"] if args["sort"] != "disagreement" else "",
        "per": args["per"] if args["per"] != 48 else "",
        "page": page if page != 1 else "",
    }
    return "/ui/review?" + urlencode({k: v for k, v in query.items() if v != ""})


def thumb_size(width: int | None, height: int | None) -> tuple[int, int]:
    """The thumbnail's own size (the image fitted into THUMB_SIDE), so its place is held before it
    arrives and the grid never jumps."""
    if not width or not height:
        return THUMB_SIDE, THUMB_SIDE * 3 // 4
    scale = min(1.0, THUMB_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


async def review_page(
    request: Request, session: dict, q: ReviewQuery, message: str | None = None, code: int = 200
):
    state = request.app.state
    args, problems = parse_query(q)
    per, page_no = args["per"], args["page"]
    try:
        page = await review_queue(
            state.dataset,
            state.settings,
            kind=args["kind"],
            limit=per,
            offset=(page_no - 1) * per,
            filters=args["filters"],
            sort=args["sort"],
        )
    except StorageError as exc:
        raise HTTPException(503, detail=f"storage unavailable: {exc}; retry later") from exc
    pages = max(1, -(-page["total"] // per))
    if page_no > pages and page["total"]:
        past = f"page {page_no} is past the last page ({pages}): showing the last page"
        return await review_page(request, session, q.model_copy(update={"page": str(pages)}), past, 400)
    items: list[dict[str, Any]] = []  # the queue's entries and their thumbnails' size on the page
    for item in page["items"]:
        thumb_w, thumb_h = thumb_size(item.get("width"), item.get("height"))
        items.append({**item, "thumb_w": thumb_w, "thumb_h": thumb_h})
    if problems:
        message = "; ".join(problems) + (f" — {message}" if message else "")
        code = 400
    counts = (await state.overview.get())["dataset_counts"]
    state.thumbnails.warm([item["id"] for item in page["items"]])  # usually made already
    context = {
        "active": "review",
        "page": {**page, "items": items},
        "args": args,
        "counts": counts,
        "message": message,
        "pages": pages,
        "page_no": page_no,
        "first": page["offset"] + 1 if page["items"] else 0,
        "last": page["offset"] + len(page["items"]),
        "prev_url": page_link(args, page_no - 1) if page_no > 1 else None,
        "next_url": page_link(args, page_no + 1) if page_no < pages else None,
        "first_url": page_link(args, 1),
        "last_url": page_link(args, pages),
        "page_sizes": PAGE_SIZES,
        "kinds": KINDS,
        "labels": LABELS,
        "sorts": SORTS,
    }
    return render(request, "review.html", context, session=session, status_code=code)


@router.get("/review")
async def review(request: Request, session: Session, q: Annotated[ReviewQuery, Depends()]):
    return await review_page(request, session, q)


# ---- labels, bulk labels and undo ---------------------------------------------------------------


async def label_one(request: Request, raw_id: str, label: str) -> dict:
    """One image's outcome: ``{id, ok, label}`` or ``{id, ok: false, detail}``; nothing raised."""
    if label not in ("real", "ai"):
        return {"id": raw_id[:60], "ok": False, "detail": f"label must be real or ai (got {label[:20]!r})"}
    try:
        image_id = parse_image_id(raw_id)
        if not await request.app.state.dataset.has_image_file(image_id):
            raise UnknownImage(image_id)
        doc = await record_person_label(
            request.app.state.dataset, image_id, label, "console", keep_previous=True
        )
    except (InvalidImageId, UnknownImage, StorageKeyError):
        return {
            "id": raw_id[:60],
            "ok": False,
            "detail": f"no image with id {raw_id[:60]!r}; nothing was changed",
        }
    except StorageError as exc:
        return {"id": raw_id[:60], "ok": False, "detail": f"storage unavailable, label not recorded: {exc}"}
    log.info("image %s labelled %s in the console", image_id, label)
    return {"id": image_id, "ok": True, "label": doc["label"]}


async def undo_one(request: Request, raw_id: str) -> dict:
    try:
        image_id = parse_image_id(raw_id)
        doc = await undo_person_label(request.app.state.dataset, image_id, "console")
    except (InvalidImageId, UnknownImageId, UnknownImage, StorageKeyError):
        return {
            "id": raw_id[:60],
            "ok": False,
            "detail": f"no image with id {raw_id[:60]!r}; nothing was changed",
        }
    except NothingToUndo as exc:
        return {"id": raw_id[:60], "ok": False, "detail": str(exc)}
    except StorageError as exc:
        return {"id": raw_id[:60], "ok": False, "detail": f"storage unavailable, nothing undone: {exc}"}
    log.info("label of image %s undone in the console (back to %s)", image_id, doc["label"])
    return {"id": image_id, "ok": True, "label": doc["label"]}


async def counts_after(request: Request, results: list[dict]) -> dict:
    state = request.app.state
    if any(r["ok"] for r in results):
        state.overview.invalidate()  # /status counts move at once
    return (await state.overview.get())["dataset_counts"]


async def answer(request: Request, results: list[dict]) -> JSONResponse:
    counts = await counts_after(request, results)
    failed = [r for r in results if not r["ok"]]
    code = 200 if not failed else (404 if len(failed) == len(results) else 207)
    body = {"results": results, "counts": counts, "detail": "; ".join(r["detail"] for r in failed) or None}
    return JSONResponse(body, status_code=code)


class LabelIn(BaseModel):
    id: str
    label: str


class BulkIn(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=MAX_BULK)
    label: str = Field("", max_length=20)


@router.post("/api/label")
async def label_json(body: LabelIn, request: Request, session: Session):
    check_csrf(session, request.headers.get("x-csrf-token"))
    result = await label_one(request, body.id, body.label)
    counts = await counts_after(request, [result])
    if result["ok"]:
        return {**result, "counts": counts}
    return JSONResponse(
        {"detail": result["detail"]}, status_code=400 if "label must" in result["detail"] else 404
    )


@router.post("/api/labels")
async def label_many(body: BulkIn, request: Request, session: Session):
    """Several images, one label, one request (the page's bulk selection)."""
    check_csrf(session, request.headers.get("x-csrf-token"))
    if body.label not in ("real", "ai"):
        return JSONResponse(
            {"detail": f"label must be real or ai (got {body.label[:20]!r}); nothing was changed"}, 400
        )
    return await answer(
        request, [await label_one(request, raw, body.label) for raw in dict.fromkeys(body.ids)]
    )


@router.post("/api/undo")
async def undo(body: BulkIn, request: Request, session: Session):
    """Put back the labels these images had before the console labelled them."""
    check_csrf(session, request.headers.get("x-csrf-token"))
    return await answer(request, [await undo_one(request, raw) for raw in dict.fromkeys(body.ids)])


@router.post("/review/label")
async def label_form(
    request: Request,
    session: Session,
    q: Annotated[ReviewQuery, Depends()],
    id: Annotated[str, Form()] = "",
    label: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
):
    """The same label from a plain form (no script): the page again, with what happened."""
    check_csrf(session, csrf_token)
    result = await label_one(request, id, label)
    if result["ok"]:
        await counts_after(request, [result])
        return await review_page(request, session, q, f"{result['id']} labelled {result['label']}")
    code = 400 if "label must" in result["detail"] else 404
    return await review_page(request, session, q, result["detail"], code)


# ---- the viewer ----------------------------------------------------------------------------------


async def image_details(request: Request, image_id: str) -> dict:
    """What the viewer shows: metadata, score, scorer, attribution, near duplicates beside it."""
    dataset, settings = request.app.state.dataset, request.app.state.settings
    row = await dataset.index.get(image_id)
    meta = await dataset.get_metadata(image_id) if row else None
    if row is None or meta is None:
        raise UnknownImage(image_id)
    near = await dataset.index.near_all(row["phash"], settings.split_near_dup_distance, NEAR_SHOWN + 1)
    neighbours = []
    for match in near:
        if match.id == image_id:
            continue
        other = await dataset.index.get(match.id)
        if other is not None:
            neighbours.append({"id": match.id, "distance": match.distance, "label": other["label"]})
    attribution = {
        k: v for k, v in (meta.get("attribution") or {}).items() if isinstance(v, str | int | float)
    }
    url = views.safe_url(attribution.pop("url", None))
    label_source = {k: v for k, v in (meta.get("label_source") or {}).items() if k != "previous"}
    return {
        "id": image_id,
        "label": meta.get("label"),
        "label_source": label_source or None,
        "can_undo": isinstance((meta.get("label_source") or {}).get("previous"), dict),
        "score": meta.get("confidence"),
        "scored_by": meta.get("scored_by"),
        "source": meta.get("source"),
        "generator": meta.get("generator"),
        "timestamp": meta.get("timestamp"),
        "format": row.get("format"),
        "width": row.get("width"),
        "height": row.get("height"),
        "attribution": attribution,
        "attribution_url": url,
        "split": row.get("split"),
        "near_duplicates": neighbours[:NEAR_SHOWN],
        "near_radius": settings.split_near_dup_distance,
        "file_url": f"/ui/images/{image_id}/file",
        "thumb_url": f"/ui/thumbs/{image_id}",
    }


@router.get("/api/images/{image_id}")
async def image_json(image_id: str, request: Request, session: Session):
    try:
        return await image_details(request, parse_image_id(image_id))
    except (InvalidImageId, UnknownImage, StorageKeyError):
        return JSONResponse({"detail": f"no image with id {image_id[:60]!r}"}, status_code=404)


@router.get("/images/{image_id}/file")
async def image_bytes(image_id: str, request: Request, session: Session) -> Response:
    """The stored bytes, as ``GET /images/{id}`` serves them (same function)."""
    return await image_file(request.app.state.dataset, image_id)
