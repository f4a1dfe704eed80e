from __future__ import annotations

import asyncio
import json

import pytest

from app import cli
from dataset.manager import DatasetManager
from tests.images import jpeg


@pytest.fixture
def env(monkeypatch, tmp_path, database_url):
    """The CLI reads the environment: point every path into tmp_path and run from there."""
    monkeypatch.chdir(tmp_path)  # no developer .env is picked up
    if database_url:
        monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DATASET_DIR", str(tmp_path / "datasets"))
    monkeypatch.setenv("MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(cli, "configure_logging", lambda settings: None)
    return monkeypatch


def test_bad_setting_exits_2_naming_the_variable(env, capsys):
    env.setenv("SCRAPE_EVERY_HOURS", "-3")
    assert cli.main(["status"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "SCRAPE_EVERY_HOURS" in err and "Traceback" not in err


def test_bad_sources_file_stops_serve_with_file_and_field(env, tmp_path, capsys):
    bad = tmp_path / "sources.yaml"
    bad.write_text("sources:\n  - name: folder\n    label: fake\n")
    env.setenv("SOURCES_CONFIG", str(bad))
    assert cli.main(["serve", "--port", "1"]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "sources.yaml" in err and "label" in err and "Traceback" not in err


def test_bad_sources_file_stops_uvicorn_app_main_app_too(env, tmp_path):
    from app import main
    from config.settings import ConfigError, get_settings

    bad = tmp_path / "sources.yaml"
    bad.write_text("sources:\n  - name: folder\n    label: fake\n")
    env.setenv("SOURCES_CONFIG", str(bad))
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="label"):
            main._app_from_environment()  # what `uvicorn app.main:app` builds
    finally:
        get_settings.cache_clear()


def test_status_command_prints_counts(env, capsys):
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "Dataset" in out and "total=0" in out


def test_check_command_reports(env, capsys):
    assert cli.main(["check"]) == 0
    assert "Dataset check" in capsys.readouterr().out


async def _ingest_one(settings) -> str:
    async with DatasetManager(settings) as dm:
        return (await dm.ingest(jpeg(1), {"source": "upload", "label": "real"})).id


def test_check_exits_1_on_drift_and_0_once_repaired(env, make_settings, capsys):
    settings = make_settings()
    asyncio.run(_ingest_one(settings))
    orphan = settings.dataset_dir / "meta/2025/01/01/00000000-0000-4000-8000-000000000000.json"
    orphan.parent.mkdir(parents=True)
    orphan.write_text("{}")
    assert cli.main(["check", "--force"]) == 1  # --force: a file just written counts as an orphan
    assert "exposr-trainer check --repair" in capsys.readouterr().err
    assert cli.main(["check", "--repair", "--force"]) == 0
    assert not orphan.exists()
    assert cli.main(["check"]) == 0


def test_check_exits_1_when_the_repair_cannot_fix_everything(env, make_settings, capsys):

    settings = make_settings()
    image_id = asyncio.run(_ingest_one(settings))
    meta = next(settings.dataset_dir.glob(f"meta/**/{image_id}.json"))
    doc = json.loads(meta.read_text())
    meta.write_text(json.dumps({**doc, "hash": "0" * 64}))  # not its image's record: reported only
    assert cli.main(["check", "--repair"]) == 1
    captured = capsys.readouterr()
    assert "after the repair" in captured.out and "drift left after the repair" in captured.err


def test_check_repair_writes_unparsable_metadata_again_from_its_row(env, make_settings, capsys):
    settings = make_settings()
    image_id = asyncio.run(_ingest_one(settings))
    meta = next(settings.dataset_dir.glob(f"meta/**/{image_id}.json"))
    meta.write_text("{not json")  # set apart beside the index, written again from the row
    assert cli.main(["check", "--repair"]) == 0
    assert f'"id": "{image_id}"' in meta.read_text()
    assert list((settings.dataset_dir / "quarantine" / image_id).glob("*.json"))


def test_predict_without_a_model_says_what_to_do(env, tmp_path, capsys):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"not used")
    assert cli.main(["predict", str(image)]) == 1
    assert "exposr-trainer train" in capsys.readouterr().err


def test_every_command_is_registered_with_help():
    parser = cli.build_parser()
    for name in ("serve", "scrape", "train", "status", "predict", "check"):
        assert name in cli.COMMANDS
        assert parser.parse_args([name] + (["x.jpg"] if name == "predict" else [])).command == name


def test_train_command_shows_per_batch_progress_in_80_columns(env, capsys):
    from config.settings import load_settings
    from tests.images import encode
    from tests.trainer.builders import textured

    for name, value in {
        "TRAIN_ARCH": "test_resnet",
        "TRAIN_IMAGE_SIZE": "32",
        "TRAIN_EPOCHS": "2",
        "TRAIN_BATCH_SIZE": "8",
        "TRAIN_PRETRAINED": "false",
        "MIN_TRAIN_SAMPLES": "20",
        "VAL_FRACTION": "0.25",
        "COLUMNS": "80",
    }.items():
        env.setenv(name, value)

    async def ingest() -> None:
        async with DatasetManager(load_settings()) as dm:
            for i in range(40):
                drawn = "ai" if i % 2 else "real"
                await dm.ingest(
                    encode(textured(9100 + i, drawn, size=(64, 48)), "JPEG"),
                    {"source": "folder", "label": drawn, "attribution": {}},
                )

    asyncio.run(ingest())
    assert cli.main(["train"]) == 0
    out = capsys.readouterr().out
    bar = next(line for line in out.splitlines() if line.startswith("train "))
    assert "img/s" in bar and "ETA 0:00" in bar and "epoch 2/2" in bar, bar
    assert all(len(line) <= 80 for line in out.splitlines()), out
