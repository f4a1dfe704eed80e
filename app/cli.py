"""``exposr-trainer``: serve, scrape, train, status, predict, check, label, review, worker.

A Click group: each command has its own ``--help`` with the options that matter; the ``run_*``
functions below do the work with the settings (environment and ``.env``, with the command's
options on top) and an ``argparse.Namespace`` of the options. Exit codes (``EXIT_*``): 0 done,
1 the command ran and failed, 2 bad configuration or usage (without a traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import click

from app.cli_views import console, print_mapping, progress_bar
from app.logging_setup import configure_logging
from config.errors import ConfigError
from config.settings import Settings, load_settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def validate_sources(settings: Settings) -> None:
    """sources.yaml must parse and name only registered fetchers (ConfigError otherwise)."""
    from scraper.fetcher_manager import validate_sources_file

    validate_sources_file(settings)


def validate_training_settings(settings: Settings) -> None:
    """TRAIN_ARCH must name a timm architecture: a service or worker with a typo would otherwise
    start and fail every scheduled training (ConfigError naming the variable; no torch import)."""
    from trainer.architectures import check_architecture
    from trainer.errors import TrainingError

    try:
        check_architecture(settings.train_arch)
    except TrainingError as exc:
        raise ConfigError(str(exc)) from exc


async def prepare_database(settings: Settings) -> None:
    """Migrate the schema before serving (DatabaseUnavailable / SchemaMismatch are ConfigErrors)."""
    from dataset.db import make_engine, migrate

    if settings.db_url.startswith("sqlite"):
        settings.dataset_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def run_serve(settings: Settings, args: argparse.Namespace) -> int:
    from app.ports import ensure_port_free
    from config.webhooks import load_subscribers

    validate_sources(settings)
    load_subscribers(settings)  # bad WEBHOOKS / WEBHOOKS_FILE stops start-up naming the field
    validate_training_settings(settings)
    ensure_port_free(args.host, args.port)  # before the heavy imports and checks: fails in a second

    import uvicorn

    from app.main import create_app
    from app.server import server_options
    from dataset.manager import verify_dataset

    asyncio.run(prepare_database(settings))  # unreachable, or another schema: a message, not a traceback
    asyncio.run(verify_dataset(settings))  # a lost or unreadable index stops start-up, clearly
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        **server_options(settings),
    )
    return 0


async def run_as_job(settings: Settings, kind: str, work, report: Callable[[dict], None]) -> dict:
    """Run ``work(settings, progress)`` as a ``kind`` job with trigger ``cli``, as the service runs its
    jobs: a row in the jobs table (so /jobs, /status and the console see it), the kind's lock held
    across processes and hosts (a service or worker running the same kind refuses this one, and
    the other way round: :class:`app.jobs.JobBusy` names the running job), progress saved as it
    goes, and Ctrl-C recorded as ``interrupted``. Returns the job's final row."""
    from app.jobs import JobRunner
    from app.jobstore import JobStore, make_engine
    from app.webhooks import Webhooks
    from config.webhooks import load_subscribers

    async def with_bar(settings: Settings, progress: Callable[[dict], None]) -> Any:
        def both(data: dict) -> None:
            progress(data)
            report(data)

        return await work(settings, both)

    subscribers = load_subscribers(settings)  # bad webhook configuration: refused before the job (exit 2)
    engine = make_engine(settings)
    # worker=True: run the kind here even when WORKER_KINDS hands it to workers (the user asked).
    runner = JobRunner(settings, JobStore(engine), kinds={kind: with_bar}, worker=True)
    # A training's outcome is queued for the webhook subscribers (the service's senders send it).
    runner.on_finished.append(Webhooks(settings, engine, subscribers).job_finished)
    try:
        await runner.start()
        job = await runner.submit(kind, trigger="cli")
        row = await runner.wait(job["id"])
        return row or await runner.get(job["id"]) or job
    finally:
        await runner.shutdown()
        await engine.dispose()


def _busy(exc: Exception) -> int:
    job = getattr(exc, "job", {})
    print(
        f"refused: {exc} (trigger {job.get('trigger', '?')}, on {job.get('holder') or 'another process'}); "
        "wait for it to end (`exposr-trainer status`, GET /jobs) and run this again",
        file=sys.stderr,
    )
    return EXIT_FAILED


def run_scrape_command(settings: Settings, args: argparse.Namespace) -> int:
    from app.errors import JobBusy
    from app.jobs import scrape_job
    from config.sources import load_sources
    from dataset.manager import load_ingest_libraries
    from scraper.fetcher_manager import FETCHERS, format_report_table, only_sources, run_scrape

    validate_sources(settings)
    if args.source:  # an unknown --source is a usage error (exit 2), before any job is recorded
        only_sources(load_sources(settings.sources_config, FETCHERS), set(args.source), settings)
    # Everything start-up made (modules, settings) lives until the command ends: frozen, the cyclic
    # garbage collector no longer walks it again and again while thousands of images go through.
    load_ingest_libraries()
    gc.collect()  # start-up's garbage first: what is frozen is never collected
    gc.freeze()

    async def scrape(settings: Settings, progress: Callable[[dict], None]) -> Any:
        if args.source:
            return await run_scrape(settings, progress, only=args.source)
        return await scrape_job(settings, progress)  # the service's job: the same failure rule

    try:
        with progress_bar("scrape") as report_progress:
            row = asyncio.run(run_as_job(settings, "scrape", scrape, report_progress))
    except JobBusy as exc:
        return _busy(exc)
    finally:
        gc.unfreeze()  # the command may run inside a longer process (tests call main())
    if row["state"] != "succeeded":
        print(f"scrape {row['state']}: {row.get('error')} (job {row['id']})", file=sys.stderr)
        return EXIT_FAILED
    report = row["result"]
    console.print(format_report_table(report))
    statuses = [r["status"] for r in report["sources"].values()]
    if not statuses:
        print(f"nothing scraped: no source is enabled in {settings.sources_config}", file=sys.stderr)
        return EXIT_FAILED
    if all(s in ("skipped", "failed") for s in statuses):
        print(
            "nothing scraped: every source was skipped or failed (the reasons are in the table above)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def run_train_command(settings: Settings, args: argparse.Namespace) -> int:
    from app.errors import JobBusy
    from app.jobs import train_job
    from trainer.architectures import check_architecture
    from trainer.errors import TrainingError
    from trainer.summary import summary_table

    try:  # a typo in --arch is caught here, in milliseconds, before any data work
        check_architecture(settings.train_arch, "--arch / TRAIN_ARCH")
    except TrainingError as exc:
        print(f"training refused: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with progress_bar("train") as report_progress:
            report_progress({"stage": "starting the training process"})
            # The service's train job: the same spawned process, DataLoader workers and cache.
            foreground = functools.partial(train_job, background=False)  # the user's own priority
            row = asyncio.run(run_as_job(settings, "train", foreground, report_progress))
    except JobBusy as exc:
        return _busy(exc)
    if row["state"] != "succeeded":
        print(f"training {row['state']}: {row.get('error')} (job {row['id']})", file=sys.stderr)
        return EXIT_FAILED
    console.print(summary_table(row["result"]))
    return 0


def run_status_command(settings: Settings, args: argparse.Namespace) -> int:
    from app.jobstore import JobStore, make_engine
    from app.overview import collect_status
    from dataset.manager import DatasetManager
    from trainer.model_store import model_store
    from trainer.model_sync import why_none_served

    async def collect() -> tuple[dict, list[dict], dict]:
        engine = make_engine(settings)
        try:
            store = JobStore(engine)
            await store.create_tables()
            async with DatasetManager(settings) as dataset:
                status = await collect_status(settings, dataset, store)
            running = await store.list(limit=20, state="running") + await store.list(limit=20, state="queued")
            scheduler = await scheduler_facts(settings, store)
            return status, running, scheduler
        finally:
            await engine.dispose()

    status, running, scheduler = asyncio.run(collect())
    entries = [e for e in model_store(settings).load_registry() if e.get("model") == settings.model_name]
    last_jobs = status.pop("last_jobs")
    print_mapping("Dataset", {"counts": status["dataset_counts"], "by source": status["by_source"]})
    latest = status["latest_model"]
    print_mapping(
        "Served model",
        {"served": f"{latest['version']} (AUC {_auc_text(latest)})"}
        if latest
        else {"served": why_none_served(entries, settings.model_name)},
    )
    print_mapping(
        "Versions",
        {
            e["version"]: f"{e.get('timestamp')}  AUC {_auc_text(e)}  "
            + ("promoted" if e.get("promoted") else "not promoted")
            for e in entries[-10:]
        }
        or {"none": "no version trained yet"},
    )
    last_scrape = last_jobs.get("scrape")
    print_mapping(
        "Last scrape",
        {
            "finished": status["last_scrape"] or "no scrape has finished yet",
            "last job": _job_text(last_scrape) if last_scrape else "none",
        },
    )
    print_mapping("Scheduler", scheduler)
    print_mapping(
        "Running jobs", {job["kind"]: _job_text(job) for job in running} or {"jobs": "none running"}
    )
    print_mapping("Last job of each kind", {kind: _job_text(job) for kind, job in last_jobs.items()})
    return 0


def _auc_text(entry: dict) -> str:
    auc, ci = entry.get("val_auc"), entry.get("val_auc_ci95")
    if not isinstance(auc, int | float):
        return "n/a"
    return f"{auc:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2 else "")


def _job_text(job: dict) -> str:
    when = job.get("finished_at") or job.get("started_at") or job.get("created_at") or ""
    return f"{job['state']} {str(when)[:19]} (trigger {job.get('trigger')}, {job['id']})"


async def scheduler_facts(settings: Settings, store) -> dict:
    """Whether a scheduler runs on this deployment (its lock is held), its intervals, and the last
    scheduled run of each kind with the next one it implies."""
    from datetime import datetime

    from app.locks import holder_lock
    from app.scheduler import LOCK_NAME, job_intervals

    if not settings.scheduler_enabled:
        state = "disabled (SCHEDULER_ENABLED=false)"
    else:
        lock = holder_lock(settings, store.engine, LOCK_NAME[:-5])
        free = await lock.acquire()
        if free:
            await lock.release()
        state = "not running (no service holds the schedule)" if free else "running in a service"
    intervals = job_intervals(settings)
    facts = {
        "state": state,
        "intervals": (
            f"scrape every {settings.scrape_every_hours:g} h, train every {settings.train_every_days:g} d"
        ),
    }
    for kind, interval in intervals.items():
        rows = [r for r in await store.list(limit=50, kind=kind) if r.get("trigger") == "scheduled"]
        if rows:
            last = rows[0]["created_at"]
            nxt = datetime.fromisoformat(str(last).replace("Z", "+00:00")) + interval
            facts[f"last scheduled {kind}"] = f"{str(last)[:19]} (next about {nxt.isoformat()[:19]})"
    return facts


def run_predict_command(settings: Settings, args: argparse.Namespace) -> int:
    from trainer.errors import ModelNotFound
    from trainer.predict import load_promoted, load_version

    try:
        predictor = load_version(settings, args.version) if args.version else load_promoted(settings)
    except ModelNotFound as exc:
        print(f"no model to predict with: {exc}", file=sys.stderr)
        return 1
    if not predictor.served:
        served = predictor.served_version
        print(
            f"scoring with {settings.model_name} {predictor.version}, which is not the served version "
            f"({served + ' is' if served else 'none is served yet'}; /models/latest)",
            file=sys.stderr,
        )
    images = [Path(p) for p in args.images]
    predictions = predictor.predict_files(images)
    for path, prediction in zip(images, predictions, strict=True):
        if prediction.ok:
            print(f"{prediction.probability:.4f}  {path}")
        else:  # one bad file is reported and the others still get their score
            print(f"{path}: not scored, {prediction.reason}: {prediction.message}", file=sys.stderr)
    return 0 if all(p.ok for p in predictions) else 1


def run_check_command(settings: Settings, args: argparse.Namespace) -> int:
    from dataset.manager import run_check

    changing = args.repair or args.rebuild_index
    report = asyncio.run(run_check(settings, args.repair, args.force, args.rebuild_index))
    title = " (repaired)" if args.repair else " (index rebuilt)" if args.rebuild_index else ""
    print_mapping("Dataset check" + title, report)
    if refused := report["repaired"].get("refused"):
        print(f"dataset repair refused: {refused}", file=sys.stderr)
        return 1
    if changing and not report["ok"]:
        # The report lists what was found; whether the repair fixed all of it, only a new check says.
        report = asyncio.run(run_check(settings, False, args.force))
        print_mapping("Dataset check after the repair", report)
    from trainer.cache import run_check_cache  # no torch: the cache is pictures in storage

    cache = asyncio.run(run_check_cache(settings, args.repair))
    print_mapping("Training cache" + (" (orphans removed)" if args.repair else ""), cache)
    if report["ok"]:
        return 0
    what = (
        "drift left after the repair (see above)"
        if changing
        else "drift between files and index (see above); files listed under deletion_candidates would be "
        "deleted by `exposr-trainer check --repair`, which also rebuilds missing index rows"
    )
    print(f"dataset check failed: {what}", file=sys.stderr)
    return 1


def run_label_command(settings: Settings, args: argparse.Namespace) -> int:
    from app.errors import JobBusy
    from labeler.scoring import run_labeler
    from trainer.model_store import sync_models_down

    async def label_here(settings: Settings, progress: Callable[[dict], None]) -> Any:
        # In this process: a foreground command has no API to keep answering (the service's label
        # job runs in a child for that), and the labeler's Core client is this process's.
        await asyncio.to_thread(sync_models_down, settings)  # the promoted model, from the bucket if shared
        return await run_labeler(settings, progress)

    try:
        with progress_bar("label") as report_progress:
            row = asyncio.run(run_as_job(settings, "label", label_here, report_progress))
    except JobBusy as exc:
        return _busy(exc)
    if row["state"] != "succeeded":
        print(f"labelling {row['state']}: {row.get('error')} (job {row['id']})", file=sys.stderr)
        return EXIT_FAILED
    report = row["result"]
    print_mapping("Labeler report", report)
    if report["scorer"] is None and report["total"]:
        print(f"nothing scored: {report['reason']}", file=sys.stderr)
        return 1
    return 0


def run_worker_command(settings: Settings, args: argparse.Namespace) -> int:
    from app.worker import run_worker

    validate_training_settings(settings)
    asyncio.run(prepare_database(settings))
    asyncio.run(run_worker(settings))
    return 0


def run_alias_command(settings: Settings, args: argparse.Namespace) -> int:
    """promote / rollback: move an alias through the model registry, as POST /models/{name}/aliases does."""
    from app.webhooks import record_alias_change
    from config.webhooks import load_subscribers
    from dataset.errors import StorageError
    from trainer.errors import AliasError, RegistryConflict
    from trainer.model_store import ModelRegistry

    load_subscribers(settings)  # bad webhook configuration: refused before anything moves (exit 2)
    registry = ModelRegistry(settings)
    try:
        version = args.version or registry.rollback_target(settings.model_name)
        row = registry.move_alias(
            settings.model_name,
            args.alias,
            version,
            reason=args.reason,
            actor="cli",
            cause="rollback" if args.rollback else None,
        )
    except (AliasError, RegistryConflict, StorageError, ValueError) as exc:
        print(f"{'rollback' if args.rollback else 'promote'} refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    asyncio.run(record_alias_change(settings, row))  # the service's senders deliver them
    print_mapping(
        f"{row['alias']} of {settings.model_name}",
        {k: row.get(k) for k in ("from", "to", "cause", "actor", "reason", "at")},
    )
    return EXIT_OK


def run_review_command(settings: Settings, args: argparse.Namespace) -> int:
    from dataset.manager import DatasetManager
    from labeler.review import QueuePage, review_queue, review_table

    async def collect() -> QueuePage:
        async with DatasetManager(settings) as dataset:
            return await review_queue(dataset, settings, kind=args.kind, limit=args.limit, offset=args.offset)

    console.print(review_table(asyncio.run(collect())))
    return 0


SETTINGS_NOTE = (
    "Every setting is an environment variable or a line in .env (read from the current folder; "
    ".env.example lists them all, docs/configuration.md explains them)."
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Documentation: README.md and docs/ (docs/cli.md for every command).",
)
@click.version_option(
    None,
    "-V",
    "--version",
    package_name="exposr-trainer",
    prog_name="exposr-trainer",
    message="%(prog)s %(version)s",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also show the libraries' own INFO lines (alembic's migrations, faiss's loader).",
)
def cli(verbose: bool) -> None:
    """Exposr Trainer: collects labelled images, trains a real-vs-AI image detector, serves it.

    Every setting is an environment variable or a line in .env, read from the current folder
    (.env.example lists them all; docs/configuration.md explains them). A command's options
    override those settings for that run only. `exposr-trainer COMMAND --help` shows a command's
    options.

    \b
    Exit codes:
      0    done
      1    the command ran and failed (training failed, drift found, an image not scored,
           every source skipped or failed)
      2    bad configuration or usage (a setting, sources.yaml, an option, a busy port);
           the message names what to change
      130  interrupted (Ctrl-C)
    """
    from app.logging_setup import VERBOSE_ENV

    if verbose:  # an environment variable, so that the spawned training or labelling process has it too
        os.environ[VERBOSE_ENV] = "1"


def _dispatch(
    run: Callable[[Settings, argparse.Namespace], int],
    overrides: dict[str, Any] | None = None,
    **options: Any,
) -> int:
    """Settings from the environment and .env with ``overrides`` (options given) on top, then ``run``."""
    settings = load_settings(**{k: v for k, v in (overrides or {}).items() if v is not None})
    configure_logging(settings)
    return run(settings, argparse.Namespace(**options))


@cli.command(epilog=SETTINGS_NOTE, short_help="Run the HTTP API and the scheduler.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind: 127.0.0.1 for this machine only, 0.0.0.0 for every interface.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8001,
    show_default=True,
    help="TCP port; a busy one is refused at once (exit 2) with a hint.",
)
def serve(host: str, port: int) -> int:
    """Run the HTTP API, the console (/ui/) and the scheduler."""
    return _dispatch(run_serve, host=host, port=port)


@cli.command(epilog=SETTINGS_NOTE, short_help="Scrape the enabled sources now (foreground).")
@click.option(
    "--source",
    "source",
    multiple=True,
    metavar="NAME",
    help="Only this source of sources.yaml (by name, e.g. folder); repeat for several. "
    "Default: every enabled source.",
)
def scrape(source: tuple[str, ...]) -> int:
    """Scrape the enabled sources now, in the foreground: a progress bar per source, then a table.

    Exits 1 when every source was skipped (no key, a missing folder) or failed.
    """
    return _dispatch(run_scrape_command, source=list(source))


@cli.command(epilog=SETTINGS_NOTE, short_help="Train a model now (foreground).")
@click.option("--arch", help="timm architecture (TRAIN_ARCH), e.g. resnet10t, vit_small_patch16_224.")
@click.option("--epochs", type=click.IntRange(min=1), help="Passes over the training side (TRAIN_EPOCHS).")
@click.option("--image-size", type=click.IntRange(16, 1024), help="Input size in pixels (TRAIN_IMAGE_SIZE).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per batch (TRAIN_BATCH_SIZE).")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="auto takes CUDA when present (TRAIN_DEVICE).",
)
@click.option(
    "--mode",
    type=click.Choice(["finetune", "linear_probe"]),
    help="Train the whole network, or a linear head on a frozen backbone (TRAIN_MODE).",
)
@click.option(
    "--pretrained/--no-pretrained",
    default=None,
    help="Start from the hub's pretrained weights or from random ones (TRAIN_PRETRAINED).",
)
def train(
    arch: str | None,
    epochs: int | None,
    image_size: int | None,
    batch_size: int | None,
    device: str | None,
    mode: str | None,
    pretrained: bool | None,
) -> int:
    """Train a model now, in the foreground: per-batch progress, then the metrics and the promotion.

    Options left out come from the settings (the variable in brackets). Exits 1 when the training
    could not run or failed (too few images, pretrained weights unavailable ...), with the reason.
    """
    overrides = {
        "train_arch": arch,
        "train_epochs": epochs,
        "train_image_size": image_size,
        "train_batch_size": batch_size,
        "train_device": device,
        "train_mode": mode,
        "train_pretrained": pretrained,
    }
    return _dispatch(run_train_command, overrides)


@cli.command(epilog=SETTINGS_NOTE, short_help="Dataset counts, models, scheduler, last jobs.")
def status() -> int:
    """Dataset counts, models, the scheduler and the last job of each kind."""
    return _dispatch(run_status_command)


@cli.command(epilog=SETTINGS_NOTE, short_help="Print P(ai) per image.")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option(
    "--version",
    "version",
    metavar="vN",
    help="Score with this registered version (served or not; stderr says when it is not the "
    "served one). Default: the served (promoted) version.",
)
def predict(images: tuple[str, ...], version: str | None) -> int:
    """Print P(ai) per image with the promoted model (or --version vN).

    A file that cannot be scored is named on stderr with the reason and the others are still
    scored; exits 1 when any image could not be scored, or when there is no model yet.
    """
    return _dispatch(run_predict_command, images=list(images), version=version)


@cli.command(epilog=SETTINGS_NOTE, short_help="Report (and --repair) dataset drift.")
@click.option(
    "--rebuild-index",
    is_flag=True,
    help="Insert the index rows missing for images with valid metadata files (a lost or "
    "damaged index); deletes nothing.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Rebuild missing rows, then fix the rest of the drift; deletes only files with neither "
    "metadata nor row (listed first), and refuses to delete more than 5% of the images "
    "without --force.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Also treat files without a row written in the last 5 minutes as orphans, and let "
    "--repair delete more than 5% (only when no ingest can be running).",
)
def check(rebuild_index: bool, repair: bool, force: bool) -> int:
    """Report (and with --repair fix) drift between the files and the index.

    Exits 1 when drift is found, or, after --repair, when a second check still finds some.
    """
    return _dispatch(run_check_command, rebuild_index=rebuild_index, repair=repair, force=force)


@cli.command(epilog=SETTINGS_NOTE, short_help="Score images now (foreground).")
def label() -> int:
    """Score images with Exposr-Core (EXPOSR_CORE_ENDPOINT) or the local model, in the foreground.

    Exits 1 when images needed a score and nothing could score them.
    """
    return _dispatch(run_label_command)


@cli.command(epilog=SETTINGS_NOTE, short_help="Print the review queue.")
@click.option(
    "--kind",
    type=click.Choice(["all", "disagreement", "unlabeled"]),
    default="all",
    show_default=True,
    help="Which images: disputed labels, unlabeled images, or both.",
)
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True, help="Rows to show.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Rows to skip.")
def review(kind: str, limit: int, offset: int) -> int:
    """Print the review queue: unlabeled images and labels the scores dispute."""
    return _dispatch(run_review_command, kind=kind, limit=limit, offset=offset)


@cli.command(epilog=SETTINGS_NOTE, short_help="Serve a registered version (move the champion alias).")
@click.argument("version", metavar="VERSION")
@click.option("--reason", required=True, help="Why (kept in the alias history); must not be empty.")
@click.option(
    "--alias",
    default="champion",
    show_default=True,
    help="The alias to move; champion is what /models/latest serves (e.g. canary for another).",
)
def promote(version: str, reason: str, alias: str) -> int:
    """Point an alias (the champion: the served version) at VERSION, e.g. `promote v3 --reason ...`.

    Refused (exit 1, with the reason) for an unknown version, weights that are missing or whose
    SHA-256 no longer matches, or an empty reason. The change is appended to the history.
    """
    return _dispatch(run_alias_command, version=version, reason=reason, alias=alias, rollback=False)


@cli.command(epilog=SETTINGS_NOTE, short_help="Serve the previous version again.")
@click.option("--reason", required=True, help="Why (kept in the alias history); must not be empty.")
@click.option(
    "--to",
    "version",
    default=None,
    metavar="VERSION",
    help="The version to serve; default: the newest older version served before the current one.",
)
def rollback(reason: str, version: str | None) -> int:
    """Move the champion back to the version served before it (or --to VERSION), cause `rollback`.

    The rollback holds across restarts; the next training replaces it only if it beats the version
    now served under the promotion rule.
    """
    return _dispatch(run_alias_command, version=version, reason=reason, alias="champion", rollback=True)


@cli.command(epilog=SETTINGS_NOTE, short_help="Run queued jobs on this host (WORKER_KINDS).")
def worker() -> int:
    """Run queued train/label jobs from the database on this host (WORKER_KINDS), until stopped.

    For several hosts on one PostgreSQL database (docs/scaling-out.md): the API replicas queue the
    jobs, this command runs them (TRAIN_NPROC_PER_NODE GPUs for training).
    """
    return _dispatch(run_worker_command)


#: Every command by name (``exposr-trainer COMMAND``).
COMMANDS: MutableMapping[str, click.Command] = cli.commands


class _Parser:
    """``parse_args(argv)`` -> Namespace(command=..., **options), as the argparse parser gave."""

    def parse_args(self, argv: list[str]) -> argparse.Namespace:
        name, *rest = argv
        command = COMMANDS[name]
        with command.make_context(name, list(rest), parent=click.Context(cli)) as ctx:
            return argparse.Namespace(command=name, **ctx.params)


def build_parser() -> _Parser:
    return _Parser()


def main(argv: list[str] | None = None) -> int:
    try:
        code = cli.main(args=argv, prog_name="exposr-trainer", standalone_mode=False)
    except click.ClickException as exc:  # a usage error: unknown option, bad value
        exc.show()
        return EXIT_CONFIG
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (KeyboardInterrupt, click.Abort):
        print("interrupted", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
