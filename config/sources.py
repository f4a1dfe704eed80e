"""`config/sources.yaml`: the list of sources, parsed into typed models.

Errors name the file, the entry and the field, e.g.
``config/sources.yaml: sources[2] (name 'pexels'): label: Input should be 'real' or 'ai'``.
The set of known source names comes from the caller (the scraper's registry), so this module
stays below `scraper` in the layering.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config.names import clean_generator
from config.settings import ConfigError

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


class RedditConfig(BaseModel):
    enabled: Literal[False] = False


class SourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reddit: RedditConfig = Field(default_factory=RedditConfig)
    sources: list[SourceConfig] = Field(default_factory=list)

    def enabled(self) -> list[SourceConfig]:
        return [s for s in self.sources if s.enabled]


def load_sources(path: Path, known_names: Iterable[str] | None = None) -> SourcesFile:
    """Read and validate a sources file; raise ConfigError naming file, entry and field."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found (set SOURCES_CONFIG to the sources file)") from exc
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, not text
        raise ConfigError(f"{path}: cannot be read as a YAML file ({getattr(exc, 'strerror', None) or exc}); "
                          "set SOURCES_CONFIG to the sources file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from exc
    return parse_sources(raw, path, known_names)


def parse_sources(raw: Any, path: Path | str, known_names: Iterable[str] | None = None) -> SourcesFile:
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
    return parsed


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
