"""`config/sources.yaml`: the list of sources, parsed into typed models.

Errors name the file, the entry and the field, e.g.
``config/sources.yaml: sources[2] (name 'pexels'): label: Input should be 'real' or 'ai'``.
The set of known source names, and each source's options model (a ``SourceOptions`` subclass that
its fetcher declares), come from the caller (the scraper's registry), so this module stays below
`scraper` in the layering. Options are checked at start-up: a misspelt key is named with the
closest known one ("did you mean 'path'?"), a value out of range with the range.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.errors import ConfigError, OptionsInvalid
from config.names import clean_generator

Label = Literal["real", "ai"]


class SourceConfig(BaseModel):
    """One entry of `sources:`. Per-source options (a folder's `path`, CivitAI's filters) are kept."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    enabled: bool = True
    label: Label
    queries: list[str] = Field(default_factory=list)
    limit_per_query: int = Field(10, ge=0)
    rate_limit_per_hour: int = Field(100, ge=0)
    # What made this source's images (e.g. "Midjourney v6" for a folder of them); CivitAI images
    # carry their own baseModel. Held-out generators and per-generator AUC use it.
    generator: str | None = None

    @field_validator("generator")
    @classmethod
    def _generator_name(cls, v: str | None) -> str | None:
        return None if v is None else clean_generator(v)

    def option(self, key: str, default: Any = None) -> Any:
        """A per-source option not covered by the common fields (``path``, ``browsing_level`` ...)."""
        return (self.model_extra or {}).get(key, default)


class SourceOptions(BaseModel):
    """The options every source accepts beyond the common fields; a fetcher declares its own as a
    subclass (its ``options_model``). Unknown keys are refused, values are taken as written."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # How many downloads of this source run at once (default: the scrape's own, 4).
    download_concurrency: int | None = Field(None, ge=1, le=64)


@dataclass(frozen=True)
class OptionProblem:
    """One bad per-source option: which key, what is wrong, and the value written."""

    key: str
    message: str
    value: Any = None
    missing: bool = False

    def __str__(self) -> str:
        return f"{self.key}: {self.detail}"

    @property
    def detail(self) -> str:
        return self.message + ("" if self.missing else f" (got {self.value!r})")


def read_options(model: type[SourceOptions], config: SourceConfig) -> SourceOptions:
    """The entry's options (keys beyond the common fields) as ``model``; OptionsInvalid otherwise."""
    try:
        return model.model_validate(config.model_extra or {})
    except ValidationError as exc:
        raise OptionsInvalid([_problem(err, model) for err in exc.errors()]) from exc


def _problem(err: Any, model: type[SourceOptions]) -> OptionProblem:
    key = ".".join(str(p) for p in err["loc"]) or "(options)"
    if err["type"] == "extra_forbidden":
        known = sorted(set(model.model_fields) | set(SourceConfig.model_fields))
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return OptionProblem(
            key, f"unknown option; {hint}(this source takes: {', '.join(known)})", err.get("input")
        )
    if err["type"] == "missing":
        return OptionProblem(key, "missing; this source needs it in its entry", missing=True)
    rule = _rule(model, key)
    return OptionProblem(key, f"must be {rule}" if rule else err["msg"], err.get("input"))


def _rule(model: type[BaseModel], key: str) -> str | None:
    """What a field accepts, for a person: "one of a, b" or "a whole number from 1 to 31"."""
    field = model.model_fields.get(key)
    if field is None:
        return None
    annotation: Any = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(choice) for choice in get_args(annotation))
    low = next((m.ge for m in field.metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in field.metadata if hasattr(m, "le")), None)
    if annotation is int and low is not None and high is not None:
        return f"a whole number from {low} to {high}"
    return None


class RedditConfig(BaseModel):
    enabled: Literal[False] = False


class SourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reddit: RedditConfig = Field(default_factory=RedditConfig)
    sources: list[SourceConfig] = Field(default_factory=list)

    def enabled(self) -> list[SourceConfig]:
        return [s for s in self.sources if s.enabled]


Known = Iterable[str] | Mapping[str, Any]


def load_sources(path: Path, known_names: Known | None = None) -> SourcesFile:
    """Read and validate a sources file; raise ConfigError naming file, entry and field.

    ``known_names``: the registered source names, or a mapping of them to each source's options
    model (or to anything with an ``options_model`` attribute, such as a fetcher class): then every
    entry's options are validated too.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found (set SOURCES_CONFIG to the sources file)") from exc
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, not text
        raise ConfigError(
            f"{path}: cannot be read as a YAML file ({getattr(exc, 'strerror', None) or exc}); "
            "set SOURCES_CONFIG to the sources file"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from exc
    return parse_sources(raw, path, known_names)


def parse_sources(raw: Any, path: Path | str, known_names: Known | None = None) -> SourcesFile:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'sources:' list, got {type(raw).__name__}")
    try:
        parsed = SourcesFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, raw, path)) from exc
    if known_names is not None:
        known = sorted(known_names)
        for i, src in enumerate(parsed.sources):
            if src.name not in known:
                raise ConfigError(
                    f"{path}: sources[{i}] (name {src.name!r}): name: unknown source; "
                    f"known sources: {', '.join(known)}"
                )
    if isinstance(known_names, Mapping):
        _check_options(parsed, known_names, path)
    return parsed


def options_model_of(registered: Any) -> type[SourceOptions]:
    """The options model registered for a source: the model itself or a fetcher's ``options_model``."""
    if isinstance(registered, type) and issubclass(registered, SourceOptions):
        return registered
    return getattr(registered, "options_model", SourceOptions)


def _check_options(parsed: SourcesFile, registry: Mapping[str, Any], path: Path | str) -> None:
    lines = []
    for i, src in enumerate(parsed.sources):
        try:
            read_options(options_model_of(registry[src.name]), src)
        except OptionsInvalid as exc:
            lines += [f"{path}: sources[{i}] (name {src.name!r}): {problem}" for problem in exc.problems]
    if lines:
        raise ConfigError("\n".join(lines))


def _describe(exc: ValidationError, raw: dict, path: Path | str) -> str:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "sources" and isinstance(loc[1], int):
            entry = (raw.get("sources") or [None] * (loc[1] + 1))[loc[1]]
            name = entry.get("name") if isinstance(entry, dict) else None
            where = f"sources[{loc[1]}]" + (f" (name {name!r})" if name else "") + ": "
            loc = loc[2:]
        field = ".".join(str(p) for p in loc) or "(entry)"
        lines.append(f"{path}: {where}{field}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)
