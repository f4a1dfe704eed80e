"""Configuration: bad values stop start-up with the file or variable, the entry and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import ConfigError, Settings, load_settings
from config.sources import load_sources

KNOWN = ["unsplash", "pexels", "civitai", "folder"]
REPO_SOURCES = Path(__file__).resolve().parents[1] / "config" / "sources.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_sources_file_parses_into_typed_models():
    parsed = load_sources(REPO_SOURCES, KNOWN)
    assert [s.name for s in parsed.sources] == ["unsplash", "pexels", "civitai"]
    assert parsed.reddit.enabled is False
    civitai = parsed.sources[2]
    assert civitai.label == "ai" and civitai.option("browsing_level") == 1
    assert all(s.label == "real" for s in parsed.sources[:2])
    assert all(s.limit_per_query >= 0 and s.rate_limit_per_hour > 0 for s in parsed.sources)


def test_unknown_source_name_names_file_entry_and_known_names(tmp_path):
    path = write(tmp_path, "sources:\n  - {name: flickr, label: real}\n")
    with pytest.raises(ConfigError) as err:
        load_sources(path, KNOWN)
    msg = str(err.value)
    assert str(path) in msg and "sources[0]" in msg and "'flickr'" in msg
    assert "unsplash" in msg and "folder" in msg  # the valid names are listed


def test_bad_label_is_rejected_with_field(tmp_path):
    path = write(tmp_path, "sources:\n  - {name: pexels, label: real}\n  - {name: civitai, label: fake}\n")
    with pytest.raises(ConfigError) as err:
        load_sources(path, KNOWN)
    msg = str(err.value)
    assert "sources[1] (name 'civitai'): label" in msg and "'fake'" in msg


@pytest.mark.parametrize("field", ["limit_per_query", "rate_limit_per_hour"])
def test_negative_numbers_are_rejected(tmp_path, field):
    path = write(tmp_path, f"sources:\n  - {{name: pexels, label: real, {field}: -5}}\n")
    with pytest.raises(ConfigError) as err:
        load_sources(path, KNOWN)
    assert f"sources[0] (name 'pexels'): {field}" in str(err.value)
    assert "greater than or equal to 0" in str(err.value)


def test_malformed_yaml_names_the_file(tmp_path):
    path = write(tmp_path, "sources:\n  - name: pexels\n    label: [real\n")
    with pytest.raises(ConfigError) as err:
        load_sources(path, KNOWN)
    assert str(path) in str(err.value) and "malformed YAML" in str(err.value)


def test_wrong_type_is_rejected(tmp_path):
    path = write(tmp_path, "sources:\n  - {name: pexels, label: real, queries: 7, limit_per_query: many}\n")
    with pytest.raises(ConfigError) as err:
        load_sources(path, KNOWN)
    msg = str(err.value)
    assert "sources[0] (name 'pexels'): queries" in msg
    assert "sources[0] (name 'pexels'): limit_per_query" in msg


def test_reddit_cannot_be_enabled(tmp_path):
    path = write(tmp_path, "reddit: {enabled: true}\nsources: []\n")
    with pytest.raises(ConfigError) as err:
        load_sources(path, KNOWN)
    assert "reddit.enabled" in str(err.value)


def test_missing_file_says_which_setting_to_change(tmp_path):
    with pytest.raises(ConfigError, match="SOURCES_CONFIG"):
        load_sources(tmp_path / "nope.yaml", KNOWN)


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: p.write_bytes(b"\xff\xfe\x00binary")])
def test_a_folder_or_binary_file_says_which_setting_to_change(tmp_path, make):
    make(tmp_path / "sources.yaml")
    with pytest.raises(ConfigError, match="sources.yaml: cannot be read.*SOURCES_CONFIG"):
        load_sources(tmp_path / "sources.yaml", KNOWN)


def test_per_source_options_are_kept(tmp_path):
    path = write(tmp_path, "sources:\n  - {name: folder, label: ai, path: /data/ai}\n")
    assert load_sources(path, KNOWN).sources[0].option("path") == "/data/ai"


def test_defaults_match_design():
    s = Settings(_env_file=None)
    assert (s.storage_driver, s.scrape_every_hours, s.train_every_days) == ("local", 12, 7)
    assert (s.min_train_samples, s.val_fraction, s.model_name) == (50, 0.1, "vit")
    assert (s.train_arch, s.train_image_size, s.train_epochs, s.train_batch_size) == (
        "vit_small_patch16_224",
        224,
        5,
        32,
    )
    assert s.upload_max_bytes == 20_000_000 and s.trainer_api_key is None
    assert s.db_url == "sqlite+aiosqlite:///datasets/dedupe.db"


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("SCRAPE_EVERY_HOURS", "-1", "SCRAPE_EVERY_HOURS"),
        ("TRAIN_DEVICE", "tpu", "TRAIN_DEVICE"),
        ("STORAGE_DRIVER", "ftp", "STORAGE_DRIVER"),
        ("MIN_TRAIN_SAMPLES", "lots", "MIN_TRAIN_SAMPLES"),
        ("VAL_FRACTION", "1.5", "VAL_FRACTION"),
    ],
)
def test_bad_environment_values_name_the_variable(monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None)
    assert needle in str(err.value) and repr(value) in str(err.value)


def test_s3_driver_without_bucket_is_refused(monkeypatch):
    monkeypatch.setenv("STORAGE_DRIVER", "s3")
    with pytest.raises(ConfigError, match="S3_BUCKET"):
        load_settings(_env_file=None)


def test_secret_values_never_appear_in_errors(monkeypatch):
    monkeypatch.setenv("TRAINER_API_KEY", "super-secret-token-123")
    monkeypatch.setenv("TRAIN_EPOCHS", "0")
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None)
    assert "super-secret-token-123" not in str(err.value)
    assert "TRAIN_EPOCHS" in str(err.value)


def test_dotenv_file_is_read_and_empty_means_unset(tmp_path):
    env = tmp_path / ".env"
    env.write_text("TRAINER_API_KEY=abcdefghijklmnop\nS3_ENDPOINT_URL=\nTRAIN_EPOCHS=3\n", encoding="utf-8")
    s = load_settings(_env_file=env)
    assert s.trainer_api_key.get_secret_value() == "abcdefghijklmnop"
    assert s.s3_endpoint_url is None and s.train_epochs == 3
    assert "abcdefghijklmnop" not in repr(s)


def test_worker_kinds_must_be_known_job_kinds(monkeypatch):
    from config.settings import ConfigError, load_settings

    monkeypatch.setenv("WORKER_KINDS", "train, bake")
    with pytest.raises(ConfigError) as raised:
        load_settings(_env_file=None)
    assert "WORKER_KINDS" in str(raised.value).upper() and "bake" in str(raised.value)
    monkeypatch.setenv("WORKER_KINDS", " train ,label")
    assert load_settings(_env_file=None).worker_kind_set == {"train", "label"}
