from __future__ import annotations

import pytest

from app import cli


@pytest.fixture
def env(monkeypatch, tmp_path):
    """The CLI reads the environment: point every path into tmp_path and run from there."""
    monkeypatch.chdir(tmp_path)  # no developer .env is picked up
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


def test_status_command_prints_counts(env, capsys):
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "dataset_counts" in out and "total=0" in out


def test_check_command_reports(env, capsys):
    assert cli.main(["check"]) == 0
    assert "Dataset check" in capsys.readouterr().out


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
