"""What the console's pages call: live job progress, labels, uploads, thumbnails and downloads.

Every state change checks the session's CSRF token (form field ``csrf_token`` or header
``X-CSRF-Token``) before it reads or changes anything. Labels and uploads go through the same
functions as the JSON API (labeler.review.record_person_label, DatasetManager.ingest).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.errors import BodyTooLarge
from app.routes.models import artifact_response, registered_artifact, weights_download
from app.routes.status import running_jobs
from app.routes.upload import ENVELOPE_SLACK, _counting_request, store_uploads
from app.ui import views
from app.ui.pages import render
from app.ui.routes import models_page, webhooks_page
from app.ui.session import check_csrf, current_session
from app.ui.thumbnails import thumbnail
from config.names import clean_generator
from dataset.contracts import LABELS
from dataset.errors import ImageRejected, InvalidImageId, StorageError, StorageKeyError, UnknownImage
from labeler.review import parse_image_id

log = logging.getLogger(__name__)
router = APIRouter(prefix="/ui", include_in_schema=False)
Session = Annotated[dict, Depends(current_session)]
MAX_FILES = 20


@router.get("/api/jobs")
async def live_jobs(request: Request, session: Session) -> dict:
    state = request.app.state
    status = await state.overview.get()
    return {
        "jobs": [views.progress_view(job) for job in running_jobs(state.runner, status)],
        "counts": status["dataset_counts"],
    }


@router.post("/models/{name}/serve")
async def serve_version(
    name: str,
    request: Request,
    session: Session,
    version: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    confirm: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
):
    """ "Serve this version": the champion alias moves (as POST /models/{name}/aliases/champion does),
    only with the session's CSRF token and the confirmation box ticked; actor ``console``."""
    from trainer.errors import AliasError, RegistryConflict
    from trainer.model_store import ModelRegistry

    check_csrf(session, csrf_token)
    if confirm != "yes":
        message = f"tick the confirmation to serve {version or 'a version'}: nothing was changed"
        return await models_page(request, session, message=message, status_code=422)
    registry = ModelRegistry(request.app.state.settings)
    try:
        row = await run_in_threadpool(
            lambda: registry.move_alias(name, "champion", version, reason=reason, actor="console")
        )
    except AliasError as exc:
        return await models_page(request, session, message=str(exc), status_code=exc.status)
    except (RegistryConflict, StorageError, ValueError) as exc:
        return await models_page(request, session, message=f"not changed: {exc}", status_code=503)
    request.app.state.overview.invalidate()
    await request.app.state.webhooks.alias_moved(row)
    message = f"{name} {row['to']} is served now ({row['cause']}; was {row['from'] or 'none'})"
    return await models_page(request, session, message=message)


@router.post("/webhooks/{delivery_id}/resend")
async def resend_delivery(
    delivery_id: str, request: Request, session: Session, csrf_token: Annotated[str, Form()] = ""
):
    """A delivery sent again now (as POST /webhooks/deliveries/{id}/resend)."""
    check_csrf(session, csrf_token)
    webhooks = request.app.state.webhooks
    row = await webhooks.outbox.resend(delivery_id)
    if row is None:
        return await webhooks_page(request, session, message="no such delivery", status_code=404)
    webhooks.sender.poke()
    return await webhooks_page(
        request, session, message=f"{row['event']} to {row['subscriber']}: sending again"
    )


@router.get("/thumbs/{image_id}")
async def thumb(image_id: str, request: Request, session: Session) -> Response:
    try:
        image_id = parse_image_id(image_id)
        data = await thumbnail(request.app.state.dataset, request.app.state.settings, image_id)
    except (InvalidImageId, UnknownImage, StorageKeyError):
        raise HTTPException(404, detail="no such image") from None
    except ImageRejected as exc:
        raise HTTPException(422, detail=f"the stored image cannot be decoded: {exc}") from None
    except StorageError as exc:
        raise HTTPException(503, detail=f"storage unavailable: {exc}") from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


async def ingest_files(
    request: Request, files: list[UploadFile], label: str, generator: str | None = None
) -> list[dict]:
    """Each file's outcome, in order: stored / duplicate / near_duplicate / rejected (with reason) /
    error. The files go through the dataset's one door together (app.routes.upload.store_uploads),
    read as it asks for them; one over UPLOAD_MAX_BYTES is rejected here, without being fed."""
    state = request.app.state
    settings, metrics = state.settings, state.metrics
    results: list[dict] = []
    fed: deque[dict] = deque()  # the results of the files fed and not yet answered, in order

    async def read() -> AsyncIterator[tuple[bytes, str]]:
        for file in files:
            name = (file.filename or "file")[-200:]
            data = await file.read(settings.upload_max_bytes + 1)
            if len(data) > settings.upload_max_bytes:
                metrics.count_ingest("rejected", "too_large")
                results.append(
                    {
                        "file": name,
                        "status": "rejected",
                        "reason": "too_large",
                        "message": f"larger than UPLOAD_MAX_BYTES ({settings.upload_max_bytes} bytes)",
                    }
                )
                continue
            results.append({"file": name})
            fed.append(results[-1])
            yield data, name

    async for outcome in store_uploads(state, read(), label, generator):
        fed.popleft().update(outcome.as_dict())
    return results


@router.post("/upload")
async def upload(request: Request, session: Session):
    """Several files with one label; JSON answers for the page's script, HTML for a plain form."""
    header_token = request.headers.get("x-csrf-token")
    if header_token is not None:
        check_csrf(session, header_token)
    limit = request.app.state.settings.upload_max_bytes
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        return _upload_answer(request, session, None, "send multipart/form-data with files and a label", 400)
    try:
        async with _counting_request(request, MAX_FILES * (limit + ENVELOPE_SLACK)).form(
            max_files=MAX_FILES, max_fields=4
        ) as form:
            if header_token is None:
                token = form.get("csrf_token")
                check_csrf(session, token if isinstance(token, str) else None)
            label = form.get("label")
            files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
            if not isinstance(label, str) or label not in LABELS:
                return _upload_answer(
                    request,
                    session,
                    None,
                    f"label must be one of {', '.join(LABELS)}; nothing was stored",
                    400,
                )
            if not files:
                return _upload_answer(request, session, None, "choose at least one file", 400)
            generator = form.get("generator")
            try:  # optional, as on POST /upload: which model made the images (docs/evaluation.md)
                generator = (
                    clean_generator(generator) if isinstance(generator, str) and generator.strip() else None
                )
            except ValueError as exc:
                return _upload_answer(request, session, None, f"generator: {exc}; nothing was stored", 400)
            results = await ingest_files(request, files, label, generator)
    except BodyTooLarge:
        return _upload_answer(
            request,
            session,
            None,
            f"too much at once: at most {MAX_FILES} files of UPLOAD_MAX_BYTES ({limit} bytes) each",
            413,
        )
    return _upload_answer(request, session, results, None, 200)


def _upload_answer(
    request: Request, session: dict, results: list[dict] | None, message: str | None, code: int
):
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(
            {"results": results} if results is not None else {"detail": message}, status_code=code
        )
    context = {
        "active": "upload",
        "results": results,
        "message": message,
        "max_bytes": request.app.state.settings.upload_max_bytes,
    }
    return render(request, "upload.html", context, session=session, status_code=code)


@router.get("/models/{name}/{version}/weights.pt")
async def download_weights(name: str, version: str, request: Request, session: Session):
    return await weights_download(request.app.state.settings, name, version, request)


@router.get("/models/{name}/{version}/{document}.json")
async def download_json(name: str, version: str, document: str, request: Request, session: Session):
    if document not in ("model", "report"):
        raise HTTPException(404, detail="only model.json and report.json are served here")
    filename = "model.json" if document == "model" else "report.json"
    artifact = await run_in_threadpool(
        registered_artifact,
        request.app.state.settings,
        name,
        version,
        filename,
        f"model {name} {version} has no {document}.json",
    )
    return artifact_response(
        artifact, "application/json", None, request, filename=f"{name}-{version}-{document}.json"
    )
