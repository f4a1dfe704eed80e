"""``exposr-trainer``: serve, scrape, train, status, predict, check, label, review, worker.

A Click group: each command has its own ``--help`` with the options that matter; the ``run_*``
functions below do the work with the settings (environment and ``.env``, with the command's
options on top) and an ``argparse.Namespace`` of the options. Exit codes (``EXIT_*``): 0 done,
1 the command ran and failed, 2 bad configuration or usage (without a traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from app.cli_views import console, print_mapping, progress_bar
from app.logging_setup import configure_logging
from config.settings import ConfigError, Settings, load_settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def validate_sources(settings: Settings) -> None:
    """sources.yaml must parse and name only registered fetchers (ConfigError otherwise)."""
    from scraper.fetcher_manager import validate_sources_file

    validate_sources_file(settings)


async def prepare_database(settings: Settings) -> None:
    """Migrate the schema before serving (DatabaseUnavailable / SchemaMismatch are ConfigErrors)."""
    from dataset.index import make_engine
    from dataset.schema import migrate

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


def run_scrape_command(settings: Settings, args: argparse.Namespace) -> int:
    from dataset.manager import load_ingest_libraries
    from scraper.fetcher_manager import format_report_table, run_scrape

    validate_sources(settings)
    # Everything start-up made (modules, settings) lives until the command ends: frozen, the cyclic
    # garbage collector no longer walks it again and again while thousands of images go through.
    load_ingest_libraries()
    gc.collect()  # start-up's garbage first: what is frozen is never collected
    gc.freeze()
    try:
        with progress_bar("scrape") as report_progress:
            report = asyncio.run(run_scrape(settings, report_progress, only=args.source or None))
    finally:
        gc.unfreeze()  # the command may run inside a longer process (tests call main())
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
    from app.webhooks import record_training
    from config.webhooks import load_subscribers
    from dataset.storage import StorageError
    from trainer.errors import TrainingError
    from trainer.model_store import RegistryConflict, train_with_shared_store
    from trainer.summary import summary_table

    load_subscribers(settings)  # bad webhook configuration: refused before the training (exit 2)
    job = {"id": f"cli-{uuid.uuid4().hex[:12]}", "kind": "train", "trigger": "cli"}
    try:
        with progress_bar("train") as report_progress:
            result = train_with_shared_store(settings, report_progress)
    except (TrainingError, RegistryConflict, StorageError) as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        asyncio.run(record_training(settings, {**job, "state": "failed", "error": str(exc)}))
        return 1
    asyncio.run(record_training(settings, {**job, "state": "succeeded", "result": dict(result)}))
    console.print(summary_table(result))
    return 0


def run_status_command(settings: Settings, args: argparse.Namespace) -> int:
    from app.jobstore import JobStore, make_engine
    from app.overview import collect_status
    from dataset.manager import DatasetManager

    async def collect() -> dict:
        engine = make_engine(settings)
        try:
            store = JobStore(engine)
            await store.create_tables()
            async with DatasetManager(settings) as dataset:
                return await collect_status(settings, dataset, store)
        finally:
            await engine.dispose()

    status = asyncio.run(collect())
    last_jobs = status.pop("last_jobs")
    print_mapping("Status", status)
    print_mapping(
        "Last job of each kind",
        {
            kind: f"{job['state']} {job.get('finished_at') or job['created_at']} ({job['id']})"
            for kind, job in last_jobs.items()
        },
    )
    return 0


def run_predict_command(settings: Settings, args: argparse.Namespace) -> int:
    from trainer.errors import ModelNotFound
    from trainer.predict import load_promoted

    try:
        predictor = load_promoted(settings)
    except ModelNotFound as exc:
        print(f"no model to predict with: {exc}", file=sys.stderr)
        return 1
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
    from labeler.scoring import run_labeler

    with progress_bar("label") as report_progress:
        report = asyncio.run(run_labeler(settings, report_progress))
    print_mapping("Labeler report", report)
    if report["scorer"] is None and report["total"]:
        print(f"nothing scored: {report['reason']}", file=sys.stderr)
        return 1
    return 0


def run_worker_command(settings: Settings, args: argparse.Namespace) -> int:
    from app.worker import run_worker

    asyncio.run(prepare_database(settings))
    asyncio.run(run_worker(settings))
    return 0


def run_alias_command(settings: Settings, args: argparse.Namespace) -> int:
    """promote / rollback: move an alias through the model registry, as POST /models/{name}/aliases does."""
    from app.webhooks import record_alias_change
    from config.webhooks import load_subscribers
    from dataset.storage import StorageError
    from trainer.aliases import AliasError
    from trainer.model_store import ModelRegistry, RegistryConflict

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
    from labeler.review import review_queue, review_table

    async def collect() -> dict:
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
def cli() -> None:
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
def predict(images: tuple[str, ...]) -> int:
    """Print P(ai) per image with the promoted model.

    A file that cannot be scored is named on stderr with the reason and the others are still
    scored; exits 1 when any image could not be scored, or when there is no model yet.
    """
    return _dispatch(run_predict_command, images=list(images))


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
COMMANDS: dict[str, click.Command] = cli.commands


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
