"""``exposr-trainer``: serve, scrape, train, status, predict, check, label, review.

Commands are a registry (``COMMANDS``: name -> (add_arguments, run)); adding one is one entry.
Bad configuration (settings or sources.yaml) prints the message naming the file or variable and
exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from app.cli_views import console, print_mapping, progress_bar
from app.logging_setup import configure_logging
from config.settings import ConfigError, Settings, load_settings

EXIT_CONFIG = 2


def validate_sources(settings: Settings) -> None:
    """sources.yaml must parse and name only registered fetchers (ConfigError otherwise)."""
    from config.sources import load_sources
    from scraper.fetcher_manager import FETCHERS

    load_sources(settings.sources_config, FETCHERS.keys())


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
    import uvicorn

    from app.main import create_app
    from app.server import server_options
    from dataset.manager import verify_dataset

    validate_sources(settings)
    asyncio.run(prepare_database(settings))  # unreachable, or another schema: a message, not a traceback
    asyncio.run(verify_dataset(settings))  # a lost or unreadable index stops start-up, clearly
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=30, **server_options(settings))
    return 0


def run_scrape_command(settings: Settings, args: argparse.Namespace) -> int:
    from scraper.fetcher_manager import format_report_table, run_scrape

    validate_sources(settings)
    with progress_bar("scrape") as report_progress:
        report = asyncio.run(run_scrape(settings, report_progress))
    console.print(format_report_table(report))
    return 0


def run_train_command(settings: Settings, args: argparse.Namespace) -> int:
    from dataset.storage import StorageError
    from trainer.errors import TrainingError
    from trainer.model_store import RegistryConflict, train_with_shared_store
    from trainer.summary import summary_table

    try:
        with progress_bar("train") as report_progress:
            result = train_with_shared_store(settings, report_progress)
    except (TrainingError, RegistryConflict, StorageError) as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return 1
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
    print_mapping("Last job of each kind",
                  {kind: f"{job['state']} {job.get('finished_at') or job['created_at']} ({job['id']})"
                   for kind, job in last_jobs.items()})
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
    what = "drift left after the repair (see above)" if changing else \
        "drift between files and index (see above); files listed under deletion_candidates would be " \
        "deleted by `exposr-trainer check --repair`, which also rebuilds missing index rows"
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


def run_review_command(settings: Settings, args: argparse.Namespace) -> int:
    from dataset.manager import DatasetManager
    from labeler.review import review_queue, review_table

    async def collect() -> dict:
        async with DatasetManager(settings) as dataset:
            return await review_queue(dataset, settings, kind=args.kind, limit=args.limit, offset=args.offset)

    console.print(review_table(asyncio.run(collect())))
    return 0


def _review_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=("all", "disagreement", "unlabeled"), default="all")
    parser.add_argument("--limit", type=int, default=50, choices=range(1, 501), metavar="1..500",
                        help="rows to show (default %(default)s)")
    parser.add_argument("--offset", type=int, default=0, help="rows to skip (default %(default)s)")


def _serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (0.0.0.0 for all; default %(default)s)")
    parser.add_argument("--port", type=int, default=8001, help="default %(default)s")


def _predict_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files to score")


def _check_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rebuild-index", action="store_true",
                        help="insert the index rows missing for images with valid metadata files "
                             "(a lost or damaged index); deletes nothing")
    parser.add_argument("--repair", action="store_true",
                        help="rebuild missing rows, then fix the rest of the drift; deletes only files "
                             "with neither metadata nor row (listed first), and refuses to delete more "
                             "than 5%% of the images without --force")
    parser.add_argument("--force", action="store_true",
                        help="also treat files without a row written in the last 5 minutes as orphans, "
                             "and let --repair delete more than 5%% (only when no ingest can be running)")


def _no_args(parser: argparse.ArgumentParser) -> None:
    pass


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[Settings, argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {
    "serve": ("run the HTTP API and the scheduler", _serve_args, run_serve),
    "scrape": ("scrape every enabled source now (foreground)", _no_args, run_scrape_command),
    "train": ("train a model now (foreground)", _no_args, run_train_command),
    "status": ("dataset counts, models and last jobs", _no_args, run_status_command),
    "predict": ("print P(ai) per image with the promoted model", _predict_args, run_predict_command),
    "check": ("report (and with --repair fix) drift between files and index", _check_args, run_check_command),
    "label": ("score images with Exposr-Core or the local model (foreground)", _no_args, run_label_command),
    "review": ("print the review queue: unlabeled and disputed images", _review_args, run_review_command),
    "worker": ("run queued train/label jobs from the database on this host (WORKER_KINDS)", _no_args,
               run_worker_command),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exposr-trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings)
        return COMMANDS[args.command][2](settings, args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
