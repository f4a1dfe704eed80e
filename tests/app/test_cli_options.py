"""The CLI's options: each command's own --help, --version, options that override the settings for
one run, usage errors as exit 2, and a scrape that stored nothing exiting 1."""

from __future__ import annotations

import pytest
import yaml

from app import cli
from tests.images import jpeg


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no developer .env is picked up
    for name, value in {
        "DATASET_DIR": tmp_path / "datasets",
        "MODELS_DIR": tmp_path / "models",
        "LOG_DIR": tmp_path / "logs",
    }.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(cli, "configure_logging", lambda settings: None)
    return monkeypatch


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("train", ["--arch", "--epochs", "--image-size", "--device", "--batch-size", "--mode"]),
        ("scrape", ["--source"]),
        ("serve", ["--host", "--port"]),
        ("check", ["--repair", "--force", "--rebuild-index"]),
        ("review", ["--kind", "--limit", "--offset"]),
        ("predict", ["IMAGE..."]),
        ("status", []),
        ("label", []),
        ("worker", []),
    ],
)
def test_each_command_has_its_own_help_with_its_options(command, options, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: exposr-trainer {command}")
    assert all(option in out for option in options), out
    assert ".env" in out  # where the settings come from


def test_top_level_help_names_env_and_exit_codes_without_markup(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert ".env" in out and "Exit codes" in out and "130" in out
    assert "``" not in out and ":class:" not in out
    assert all(name in out for name in cli.COMMANDS)


def test_version(capsys):
    from importlib import metadata

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"exposr-trainer {metadata.version('exposr-trainer')}"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "0"],
        ["train", "--device", "tpu"],
        ["scrape", "--bogus"],
        ["nosuchcommand"],
        ["serve", "--port", "70000"],
    ],
)
def test_a_usage_error_exits_2_naming_the_problem(argv, capsys):
    assert cli.main(argv) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "Error:" in err and "Traceback" not in err


def test_train_options_override_the_settings_for_that_run(env, monkeypatch):
    env.setenv("TRAIN_ARCH", "vit_small_patch16_224")
    env.setenv("TRAIN_EPOCHS", "9")
    seen = {}

    def fake_train(settings, args):
        seen.update(
            arch=settings.train_arch,
            epochs=settings.train_epochs,
            size=settings.train_image_size,
            device=settings.train_device,
            batch=settings.train_batch_size,
        )
        return 0

    monkeypatch.setattr(cli, "run_train_command", fake_train)
    argv = ["train", "--arch", "resnet10t", "--image-size", "64", "--device", "cpu"]
    assert cli.main(argv) == 0
    assert seen == {"arch": "resnet10t", "epochs": 9, "size": 64, "device": "cpu", "batch": 32}


def write_sources(tmp_path, *entries) -> str:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": list(entries)}))
    return str(path)


def test_a_scrape_where_every_source_was_skipped_exits_1(env, tmp_path, capsys):
    env.delenv("PEXELS_API_KEY", raising=False)
    missing = {"name": "folder", "label": "ai", "path": str(tmp_path / "no")}
    env.setenv("SOURCES_CONFIG", write_sources(tmp_path, {"name": "pexels", "label": "real"}, missing))
    assert cli.main(["scrape"]) == 1
    err = capsys.readouterr().err
    assert "every source was skipped or failed" in err


def test_scrape_source_runs_only_the_named_sources(env, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(jpeg(5))
    env.delenv("PEXELS_API_KEY", raising=False)
    env.setenv(
        "SOURCES_CONFIG",
        write_sources(
            tmp_path,
            {"name": "pexels", "label": "real"},
            {"name": "folder", "label": "real", "path": str(photos)},
        ),
    )
    assert cli.main(["scrape", "--source", "folder"]) == 0
    out = capsys.readouterr().out
    assert "folder" in out and "pexels" not in out
    assert cli.main(["scrape", "--source", "flickr"]) == cli.EXIT_CONFIG
    assert "--source flickr: no enabled source of that name" in capsys.readouterr().err
