"""The source-options contract, run over every fetcher in FETCHERS: each declares its options as a
SourceOptions model, and `load_sources` checks them at start-up with the file, the entry and the
field, a "did you mean" for a misspelt key, and the rule for a bad value."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
import yaml

from config.settings import ConfigError
from config.sources import SourceOptions, load_sources
from scraper.base_fetcher import BaseFetcher, SourceUnavailable
from scraper.fetcher_manager import FETCHERS

NAMES = sorted(FETCHERS)


def model(name: str) -> type[SourceOptions]:
    return FETCHERS[name].options_model


PAIRS = [(n, k) for n in NAMES for k in model(n).model_fields]


def plain(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        return next(a for a in get_args(annotation) if a is not type(None))
    return annotation


def good_value(model: type[SourceOptions], key: str) -> Any:
    field = model.model_fields[key]
    annotation = plain(field.annotation)
    if get_origin(annotation) is Literal:
        return get_args(annotation)[0]
    if annotation is int:
        return next((m.ge for m in field.metadata if hasattr(m, "ge")), 1)
    return "/data/images"


def bad_value(model: type[SourceOptions], key: str) -> tuple[Any, str] | None:
    """A value the option refuses and the words its message must hold, or None (any string goes)."""
    field = model.model_fields[key]
    annotation = plain(field.annotation)
    if get_origin(annotation) is Literal:
        return "no-such-choice", "must be one of " + ", ".join(map(str, get_args(annotation)))
    high = next((m.le for m in field.metadata if hasattr(m, "le")), None)
    if annotation is int and high is not None:
        return high + 1, "must be a whole number from"
    return None


def entry(name: str, **options: Any) -> dict:
    model = FETCHERS[name].options_model
    required = {k: good_value(model, k) for k, f in model.model_fields.items() if f.is_required()}
    return {"name": name, "label": "real", **required, **options}


def write(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": list(entries)}), encoding="utf-8")
    return path


def misspell(key: str) -> str:
    return key[:-2] + key[-1] + key[-2]  # the last two letters swapped


@pytest.mark.parametrize("name", NAMES)
def test_every_fetcher_declares_its_options_as_a_model(name):
    cls = FETCHERS[name]
    assert issubclass(cls, BaseFetcher)
    assert issubclass(cls.options_model, SourceOptions)
    assert cls.options_model.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("name", NAMES)
def test_an_entry_with_its_required_options_loads_and_the_fetcher_reads_them_typed(name, tmp_path, settings):
    every = {k: good_value(model(name), k) for k in model(name).model_fields}
    parsed = load_sources(write(tmp_path, entry(name, **every)), FETCHERS)
    fetcher = FETCHERS[name](config=parsed.sources[0], settings=settings, http=None)
    fetcher.check_options()
    assert fetcher.options.model_dump() == every


@pytest.mark.parametrize(("name", "key"), PAIRS)
def test_a_misspelt_option_stops_start_up_with_did_you_mean(name, key, tmp_path):
    path = write(tmp_path, entry("folder"), entry(name, **{misspell(key): good_value(model(name), key)}))
    with pytest.raises(ConfigError) as err:
        load_sources(path, FETCHERS)
    msg = str(err.value)
    assert msg.startswith(f"{path}: sources[1] (name {name!r}): {misspell(key)}: unknown option")
    assert f"did you mean {key!r}?" in msg


@pytest.mark.parametrize(("name", "key"), [(n, k) for n, k in PAIRS if bad_value(model(n), k)])
def test_a_bad_option_value_stops_start_up_with_the_rule(name, key, tmp_path, settings):
    value, words = bad_value(model(name), key)
    path = write(tmp_path, entry(name, **{key: value}))
    with pytest.raises(ConfigError) as err:
        load_sources(path, FETCHERS)
    assert str(err.value).startswith(f"{path}: sources[0] (name {name!r}): {key}: {words}")
    assert f"(got {value!r})" in str(err.value)
    # An entry built in code (not through load_sources) is skipped at scrape time with the same rule.
    parsed = load_sources(write(tmp_path, entry(name)), FETCHERS).sources[0]
    built = parsed.model_copy(update={})
    built.__pydantic_extra__ = {**(parsed.model_extra or {}), key: value}
    with pytest.raises(SourceUnavailable, match=f"option '{key}' of source '{name}' in sources.yaml {words}"):
        FETCHERS[name](config=built, settings=settings, http=None).check_options()


@pytest.mark.parametrize("name", [n for n, k in PAIRS if model(n).model_fields[k].is_required()])
def test_a_missing_required_option_stops_start_up(name, tmp_path):
    path = write(tmp_path, {"name": name, "label": "ai"})
    with pytest.raises(ConfigError, match=rf"sources\[0\] \(name '{name}'\): \w+: missing"):
        load_sources(path, FETCHERS)


def test_every_problem_of_a_file_is_listed_at_once(tmp_path):
    path = write(
        tmp_path,
        {"name": "folder", "label": "real", "paht": "/data"},
        {"name": "civitai", "label": "ai", "browsing_level": 99, "limit_per_qeury": 3},
    )
    with pytest.raises(ConfigError) as err:
        load_sources(path, FETCHERS)
    msg = str(err.value)
    assert "sources[0] (name 'folder'): paht: unknown option; did you mean 'path'?" in msg
    assert "sources[1] (name 'civitai'): browsing_level: must be a whole number from 1 to 31 (got 99)" in msg
    assert "(name 'civitai'): limit_per_qeury: unknown option; did you mean 'limit_per_query'?" in msg
    assert "(name 'folder'): path: missing" in msg and len(msg.splitlines()) == 4


def test_the_shipped_sources_file_passes_every_fetchers_check():
    shipped = Path(__file__).resolve().parents[2] / "config" / "sources.yaml"
    parsed = load_sources(shipped, FETCHERS)
    assert {s.name for s in parsed.sources} <= set(FETCHERS)
