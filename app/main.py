"""The FastAPI application: lifespan (database, dataset, job runner, scheduler), routers, request log.

``create_app(settings)`` builds an app (tests pass their own Settings); ``app`` is what
``uvicorn app.main:app`` serves, with settings read from the environment and ``.env``.
Routers are a list (``ROUTERS``): adding one is a one-line change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from app import api_docs, prometheus
from app.benchmark import BenchmarkScorer
from app.errors import install_error_handlers
from app.jobs import JobRunner
from app.jobstore import JobStore, make_engine
from app.monitoring import Monitor
from app.routes import jobs, models, predict, review, status, upload, webhooks
from app.scheduler import JobScheduler
from app.server import RequestGuard
from app.ui import install_console
from app.ui.thumbnails import ThumbnailMaker
from app.webhooks import Webhooks
from config.clock import iso_micro
from config.settings import Settings, get_settings
from config.webhooks import load_subscribers
from dataset.errors import StorageError
from dataset.manager import DatasetManager

log = logging.getLogger(__name__)
request_log = logging.getLogger("app.requests")

ROUTERS = [
    status.router,
    jobs.router,
    upload.router,
    models.router,
    predict.router,
    review.router,
    webhooks.router,
    prometheus.router,
]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    subscribers = load_subscribers(settings)  # a bad subscriber stops start-up, naming the field
    async with AsyncExitStack() as stack:
        engine = make_engine(settings)
        stack.push_async_callback(engine.dispose)
        app.state.dataset = await stack.enter_async_context(DatasetManager(settings))
        await app.state.dataset.verify()  # a lost index must not be served as an empty dataset
        runner = JobRunner(settings, JobStore(engine), kinds=app.state.job_kinds)
        await runner.start()  # migrates the schema (the webhook outbox too)
        stack.push_async_callback(runner.shutdown)
        app.state.webhooks = Webhooks(settings, engine, subscribers)
        await app.state.webhooks.start()
        stack.push_async_callback(app.state.webhooks.stop)
        runner.on_finished.append(app.state.webhooks.job_finished)
        app.state.monitor = Monitor(
            settings,
            engine,
            app.state.dataset,
            emit=app.state.webhooks.emit,
            retrain=lambda: runner.submit_scheduled("train"),
        )
        runner.on_finished.append(app.state.monitor.job_finished)  # after a label job: new scores
        await _quietly(app.state.monitor.load_latest(), "the served model's monitoring rows")
        scheduler = JobScheduler(settings, runner)
        await scheduler.start()
        stack.push_async_callback(scheduler.shutdown)
        app.state.runner, app.state.scheduler = runner, scheduler
        app.state.overview = await status.overview_cache(app.state)
        # Review thumbnails made ahead, so a page of them shows at once (app/ui/thumbnails.py).
        maker = ThumbnailMaker(app.state.dataset, settings)
        app.state.thumbnails = await stack.enter_async_context(maker)
        # Versions not yet scored on the frozen benchmark are scored in the background (app/benchmark.py).
        app.state.benchmark = BenchmarkScorer(settings)
        runner.on_finished.append(app.state.benchmark.job_finished)
        app.state.benchmark.kick()
        app.state.started_at, app.state.started_monotonic = iso_micro(), time.monotonic()
        log.info("service started (storage %s)", app.state.dataset.storage.describe())
        yield
        log.info("service stopping: scheduler, running jobs, database")


async def _quietly(work, what: str) -> None:
    """Start-up reads that only warm a cache: a failure is logged, the service starts anyway."""
    try:
        await work
    except (OSError, ValueError, StorageError, SQLAlchemyError) as exc:
        log.warning("could not read %s at start-up: %s", what, exc)


async def time_requests(request: Request, call_next) -> Response:
    """One clock per request, read by both its users: the log line (method, path, status,
    milliseconds; never headers or query strings) and Prometheus's latency by route template."""
    start = time.perf_counter()
    status_code = 500
    try:
        response = await call_next(request)
        status_code = response.status_code
        return response
    finally:
        seconds = time.perf_counter() - start
        request_log.info("%s %s %d %.1fms", request.method, request.url.path, status_code, seconds * 1000)
        request.app.state.metrics.observe_request(request, status_code, seconds)


def create_app(settings: Settings | None = None, job_kinds: dict | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Exposr Trainer",
        version="0.1.0",
        description="Collects labelled images, trains a real-vs-AI detector, serves its weights. "
        "Every endpoint except /status, /healthz and the docs needs "
        "'Authorization: Bearer <TRAINER_API_KEY>'.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are served from files in the package (app.api_docs)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.job_kinds = job_kinds
    install_error_handlers(app)
    app.add_middleware(RequestGuard)  # header count and body size, before auth reads anything
    app.state.metrics = prometheus.ConsoleMetrics()
    app.middleware("http")(time_requests)
    for router in ROUTERS:
        app.include_router(router)
    api_docs.install_docs(app)  # /docs, /redoc and their files (no CDN)
    install_console(app)
    return app


def _app_from_environment() -> FastAPI:
    """For ``uvicorn app.main:app``: configure logging once; bad configuration stops start-up."""
    from app.logging_setup import configure_logging
    from scraper.fetcher_manager import validate_sources_file

    settings = get_settings()
    validate_sources_file(settings)  # as `exposr-trainer serve` does: a bad sources.yaml stops start-up
    load_subscribers(settings)  # and bad webhook subscribers
    configure_logging(settings)
    return create_app(settings)


def __getattr__(name: str) -> FastAPI:
    # `app` is built on first access, so importing this module (tests, the CLI) reads no environment.
    if name == "app":
        globals()["app"] = application = _app_from_environment()
        return application
    raise AttributeError(name)
