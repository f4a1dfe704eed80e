"""Tests run what users run: every place under tests/ where a test of a user-facing flow (the
service, the worker, the fleet, the CLI, the docs' examples) sets a setting away from its shipped
default is listed here with its reason, and an override that is not listed fails this test.

A green suite that trained with TRAIN_WORKERS=0 while users trained with 2 hid a broken product;
that override is gone, and a new one cannot slip in unexplained. Allowed everywhere without a
line: the speed settings (architecture, image size, epochs, pretrained weights, batch size) and
where things live (folders, database, bucket, key, sources file) -- a test must set those.
A flow test is a file that starts the app, the CLI or a worker (``FLOW_MARKERS``), plus the
conftest files that build their settings.
"""

from __future__ import annotations

import ast
from pathlib import Path

from config.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
FIELDS = set(Settings.model_fields)
ENV_NAMES = {name.upper(): name for name in FIELDS}
FLOW_MARKERS = ("make_client", "create_app", "app.cli", "from app import cli", "run_worker", "JobRunner")
FLOW_CONFTESTS = ("tests/conftest.py", "tests/app/conftest.py")

SPEED = {"train_arch", "train_image_size", "train_epochs", "train_pretrained", "train_batch_size"}
PLACEMENT = {  # where the test's data, models, logs, database, bucket and sources are; its API key
    "dataset_dir", "models_dir", "log_dir", "database_url", "sources_config", "trainer_api_key",
    "storage_driver", "s3_bucket", "s3_prefix", "s3_endpoint_url",
}  # fmt: skip

SMALL_DATA = "the test's dataset is a few dozen images: the shipped 50 would refuse it"
QUARTER = "a quarter of a few dozen images gives the gate its 10 + 10 evaluation images"
NO_CORE = "no Exposr-Core in tests: a closed port on 127.0.0.1 (the default is localhost:8000)"
NO_SCHEDULE = "the test starts each job itself: a schedule firing meanwhile would race it"
TINY_PICTURES = "the generated pictures are 64-96 px; the shipped minimum side is 32 but some are 16-24"
FAST_LR = "a tiny model from scratch in 4-5 epochs needs a larger step than the fine-tuning default"
SEED = "a seed at which the tiny from-scratch model separates the two classes within its epochs"
CPU = "scores are compared with CPU computations; auto would pick a GPU where there is one"
SWEEP = "a dead holder or a queued job is noticed within a second instead of 15 s / 2 s"
SUBJECT = "the setting is what the test is about"
WEBHOOK_RETRIES = "several retries observed in seconds (the shipped schedule waits 5 s, 10 s, 20 s ...)"

REASONS: dict[tuple[str, str], str] = {
    ("tests/conftest.py", "scheduler_enabled"): NO_SCHEDULE,
    ("tests/conftest.py", "train_device"): CPU,
    ("tests/conftest.py", "min_image_side"): TINY_PICTURES,
    ("tests/app/test_benchmark_api.py", "eval_benchmark_dir"): SUBJECT,
    ("tests/app/test_benchmark_api.py", "min_train_samples"): SMALL_DATA,
    ("tests/app/test_benchmark_api.py", "val_fraction"): QUARTER,
    ("tests/app/test_benchmark_api.py", "train_lr"): FAST_LR,
    ("tests/app/test_cli.py", "min_train_samples"): SMALL_DATA,
    ("tests/app/test_cli.py", "val_fraction"): QUARTER,
    ("tests/app/test_cli.py", "scrape_every_hours"): SUBJECT,
    ("tests/app/test_cli_jobs.py", "min_image_side"): TINY_PICTURES,
    ("tests/app/test_end_to_end.py", "min_train_samples"): SMALL_DATA,
    ("tests/app/test_end_to_end.py", "val_fraction"): QUARTER,
    ("tests/app/test_end_to_end.py", "train_lr"): FAST_LR,
    ("tests/app/test_end_to_end.py", "train_seed"): SEED,
    ("tests/app/test_fleet.py", "min_train_samples"): SMALL_DATA,
    ("tests/app/test_fleet.py", "val_fraction"): QUARTER,
    ("tests/app/test_fleet.py", "train_lr"): FAST_LR,
    ("tests/app/test_fleet.py", "train_seed"): SEED,
    ("tests/app/test_fleet.py", "min_image_side"): TINY_PICTURES,
    ("tests/app/test_fleet.py", "exposr_core_endpoint"): NO_CORE,
    ("tests/app/test_fleet.py", "job_sweep_seconds"): SWEEP,
    ("tests/app/test_fleet.py", "worker_poll_seconds"): SWEEP,
    ("tests/app/test_fleet.py", "scheduler_enabled"): "the fleet's schedule is what the test checks (on)",
    (
        "tests/app/test_fleet.py",
        "scrape_every_hours",
    ): "the schedule fires within the test: every few seconds",
    (
        "tests/app/test_fleet.py",
        "train_every_days",
    ): "only the scrape schedule is exercised; training is asked for",
    (
        "tests/app/test_fleet.py",
        "worker_kinds",
    ): "the fleet's topology: the API replicas hand training to the worker",
    ("tests/app/test_fleet.py", "log_level"): "the test reads the INFO lines of each host's log",
    ("tests/app/test_monitoring.py", "retrain_on_degradation"): SUBJECT,
    ("tests/app/test_monitoring.py", "webhooks"): "the subscriber is the receiver under test",
    ("tests/app/test_predict_version.py", "min_train_samples"): SMALL_DATA,
    ("tests/app/test_predict_version.py", "val_fraction"): QUARTER,
    ("tests/app/test_replicas.py", "job_sweep_seconds"): SWEEP,
    ("tests/app/test_replicas.py", "scheduler_enabled"): SUBJECT,
    ("tests/app/test_report_api.py", "eval_holdout_generators"): SUBJECT,
    ("tests/app/test_scheduled_training.py", "scheduler_enabled"): SUBJECT,
    ("tests/app/test_scheduled_training.py", "scrape_every_hours"): "only the training schedule is exercised",
    ("tests/app/test_scheduled_training.py", "train_every_days"): "fires within the test: every 8 s",
    ("tests/app/test_scheduled_training.py", "min_train_samples"): SMALL_DATA,
    ("tests/app/test_scheduled_training.py", "val_fraction"): QUARTER,
    ("tests/app/test_scheduler.py", "scheduler_enabled"): SUBJECT,
    ("tests/app/test_scheduler.py", "scrape_every_hours"): SUBJECT,
    ("tests/app/test_scheduler.py", "train_every_days"): SUBJECT,
    ("tests/app/test_server.py", "min_train_samples"): SMALL_DATA,
    ("tests/app/test_server.py", "val_fraction"): QUARTER,
    ("tests/app/test_server.py", "min_image_side"): TINY_PICTURES,
    ("tests/app/test_server.py", "exposr_core_endpoint"): NO_CORE,
    ("tests/app/test_server.py", "scheduler_enabled"): NO_SCHEDULE,
    ("tests/app/test_upload.py", "upload_max_bytes"): SUBJECT,
    ("tests/app/test_worker.py", "job_sweep_seconds"): SWEEP,
    ("tests/app/test_worker.py", "worker_poll_seconds"): SWEEP,
    ("tests/app/test_worker.py", "worker_kinds"): SUBJECT,
    ("tests/attack/conftest.py", "http_read_timeout"): "slow-client attacks end in seconds, not 30",
    ("tests/attack/test_decode_budget.py", "decode_memory_budget_mb"): SUBJECT,
    (
        "tests/attack/test_faults.py",
        "unsplash_access_key",
    ): "a source with a key, so it is fetched (and fails)",
    ("tests/attack/test_index_loss.py", "log_level"): "the test reads the WARNING lines only",
    ("tests/dataset/test_ingest_batch.py", "min_image_side"): TINY_PICTURES,
    (
        "tests/labeler/test_integration.py",
        "exposr_core_endpoint",
    ): "Exposr-Core is a respx or loopback fake here",
    ("tests/labeler/test_integration.py", "min_image_side"): TINY_PICTURES,
    ("tests/labeler/test_integration.py", "scheduler_enabled"): NO_SCHEDULE,
    ("tests/labeler/test_review_api.py", "review_ai_min_score"): SUBJECT,
    ("tests/labeler/test_review_api.py", "review_real_max_score"): SUBJECT,
    ("tests/test_docs.py", "min_train_samples"): SMALL_DATA,
    ("tests/test_docs.py", "val_fraction"): QUARTER,
    ("tests/test_docs.py", "train_lr"): FAST_LR,
    ("tests/test_docs.py", "train_seed"): SEED,
    ("tests/test_docs.py", "exposr_core_endpoint"): NO_CORE,
    ("tests/test_docs.py", "scheduler_enabled"): NO_SCHEDULE,
    ("tests/trainer/test_predict.py", "min_train_samples"): SMALL_DATA,
    ("tests/trainer/test_predict.py", "val_fraction"): QUARTER,
    ("tests/trainer/test_predict.py", "train_lr"): FAST_LR,
    ("tests/trainer/test_predict.py", "train_device"): CPU,
    (
        "tests/trainer/test_predict.py",
        "train_workers",
    ): "scores in-process predictions, not the training path",
    ("tests/trainer/test_progress.py", "min_train_samples"): SMALL_DATA,
    ("tests/trainer/test_progress.py", "val_fraction"): QUARTER,
    (
        "tests/trainer/test_progress.py",
        "train_workers",
    ): "checks the per-batch progress events, not the loader",
    ("tests/trainer/test_shared_models.py", "min_train_samples"): SMALL_DATA,
    ("tests/trainer/test_shared_models.py", "val_fraction"): QUARTER,
    ("tests/trainer/test_shared_models.py", "train_lr"): FAST_LR,
    ("tests/trainer/test_shared_models.py", "train_seed"): SEED,
    ("tests/app/test_webhooks.py", "webhooks"): "the subscriber under test: a receiver on 127.0.0.1",
    ("tests/app/test_webhooks.py", "webhooks_file"): SUBJECT,
    ("tests/app/test_webhooks.py", "public_url"): SUBJECT,
    ("tests/app/test_webhooks.py", "webhook_retry_base_seconds"): WEBHOOK_RETRIES,
    ("tests/app/test_webhooks.py", "webhook_retry_max_seconds"): WEBHOOK_RETRIES,
    ("tests/app/test_webhooks.py", "webhook_poll_seconds"): WEBHOOK_RETRIES,
    (
        "tests/app/test_webhooks.py",
        "webhook_retry_hours",
    ): "a delivery given up within the test, not after 24 h",
}


def overridden(path: Path) -> set[str]:
    """Settings a file sets: keyword arguments named like a setting, dict keys named like a setting
    or its environment variable, and ``setenv("NAME", ...)``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            found.update(kw.arg for kw in node.keywords if kw.arg in FIELDS)
            func, args = node.func, node.args
            is_setenv = isinstance(func, ast.Attribute) and func.attr == "setenv" and args
            if is_setenv and isinstance(args[0], ast.Constant) and args[0].value in ENV_NAMES:
                found.add(ENV_NAMES[args[0].value])
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    name = ENV_NAMES.get(key.value) or (key.value if key.value in FIELDS else None)
                    if name:
                        found.add(name)
    return found


def flow_files() -> list[Path]:
    files = [ROOT / name for name in FLOW_CONFTESTS]
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path.name != "test_overrides.py" and any(
            m in path.read_text(encoding="utf-8") for m in FLOW_MARKERS
        ):
            files.append(path)
    return files


def test_every_override_in_a_flow_test_is_listed_with_its_reason():
    seen = set()
    unexplained = []
    for path in flow_files():
        rel = str(path.relative_to(ROOT))
        for name in sorted(overridden(path) - SPEED - PLACEMENT):
            seen.add((rel, name))
            if not REASONS.get((rel, name)):
                unexplained.append(f"{rel}: {name.upper()}")
    assert not unexplained, (
        "a test of a user-facing flow overrides a shipped default without a listed reason; run the "
        "shipped default, or add the reason to tests/test_overrides.py REASONS: " + ", ".join(unexplained)
    )
    stale = sorted(f"{rel}: {name}" for rel, name in set(REASONS) - seen)
    assert not stale, f"listed overrides that no longer exist (remove them): {stale}"


def test_no_flow_test_runs_training_without_dataloader_workers():
    """TRAIN_WORKERS=0 hid the broken default path (issue: training through the service failed)."""
    allowed = {rel for rel, name in REASONS if name == "train_workers"}
    for path in flow_files():
        rel = str(path.relative_to(ROOT))
        if "train_workers" in overridden(path):
            assert rel in allowed and not rel.startswith(("tests/app/", "tests/test_docs")), rel


def test_the_scan_finds_each_kind_of_override(tmp_path):
    sample = tmp_path / "t.py"
    sample.write_text(
        "s = make_settings(train_workers=0)\nenv = {'VAL_FRACTION': '0.5', 'min_train_samples': 3}\n"
        "monkeypatch.setenv('TRAIN_CACHE', 'false')\n"
    )
    assert overridden(sample) == {"train_workers", "val_fraction", "min_train_samples", "train_cache"}
