"""Webhook subscribers: who is told of which events (``WEBHOOKS`` in .env, or ``WEBHOOKS_FILE``).

``WEBHOOKS`` is a JSON array, ``WEBHOOKS_FILE`` a YAML file with a ``subscribers:`` list (or a
bare list); each subscriber::

    {"name": "core", "url": "https://core.example/hooks/trainer",
     "secret": "whsec_<base64 of 24-64 random bytes>", "events": ["model.promoted", "model.rolled_back"]}

``events`` may be ``["*"]`` (every event). Secrets follow the Standard Webhooks convention
(``whsec_`` + base64), so a receiver verifies with the same string in an existing library.
Everything is checked at start-up: a bad entry stops it with a message naming the field (and
never the secret). Secrets are ``SecretStr``: they never appear in a repr, a log or an answer.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from config.errors import ConfigError

if TYPE_CHECKING:
    from config.settings import Settings

EVENTS = (
    "model.promoted",
    "model.rolled_back",
    "alias.changed",
    "training.failed",
    "training.not_promoted",
    "shortcut.warning",
    "model.degraded",
)
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Subscriber(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    url: str
    secret: SecretStr
    events: tuple[str, ...] = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _http_url_without_credentials(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        if not parts.hostname:
            raise ValueError("has no host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials (user:password@); the secret signs each delivery")
        if parts.fragment:
            raise ValueError("must not have a #fragment")
        return v.strip()

    @field_validator("secret")
    @classmethod
    def _standard_webhooks_secret(cls, v: SecretStr) -> SecretStr:
        signing_key(v)  # raises ValueError with the reason (never the secret)
        return v

    @field_validator("events")
    @classmethod
    def _known_events(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [e for e in v if e != "*" and e not in EVENTS]
        if unknown:
            raise ValueError(f"unknown event(s) {', '.join(unknown)}: use '*' or some of {', '.join(EVENTS)}")
        return v

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if v and not _NAME_RE.match(v):
            raise ValueError("use letters, digits, '.', '-' or '_' (at most 64)")
        return v

    @property
    def label(self) -> str:
        """How the deliveries list names this subscriber: its name, else its URL (no credentials)."""
        return self.name or self.url

    def wants(self, event: str) -> bool:
        return "*" in self.events or event in self.events


def signing_key(secret: SecretStr) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret (what Standard Webhooks libraries derive)."""
    text = secret.get_secret_value().strip()
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(
            f"must start with {SECRET_PREFIX} followed by base64 (Standard Webhooks); generate one with "
            "`python -c 'import base64,secrets; "
            'print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())\'`'
        )
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the part after {SECRET_PREFIX} is not valid base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"must decode to {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes (got {len(key)})")
    return key


def load_subscribers(settings: Settings) -> tuple[Subscriber, ...]:
    """Every subscriber of ``WEBHOOKS`` and ``WEBHOOKS_FILE``; ConfigError naming the field if one is bad."""
    subscribers: list[Subscriber] = []
    text = settings.webhooks.get_secret_value() if settings.webhooks is not None else ""
    if text.strip():
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"WEBHOOKS is not valid JSON ({exc.msg} at character {exc.pos})") from None
        subscribers += _parse(raw, "WEBHOOKS")
    if settings.webhooks_file is not None:
        path = Path(settings.webhooks_file)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"WEBHOOKS_FILE={path} cannot be read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"WEBHOOKS_FILE={path} is not valid YAML: {exc}") from None
        if isinstance(data, dict):
            data = data.get("subscribers")
        subscribers += _parse(data, f"{path}: subscribers")
    names = [s.name for s in subscribers if s.name]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"webhook subscriber name(s) {', '.join(twice)} used twice; names must be unique")
    return tuple(subscribers)


def _parse(raw: object, where: str) -> list[Subscriber]:
    if not isinstance(raw, list):
        raise ConfigError(
            f"{where} must be a list of subscribers ({{url, secret, events}}), got {type(raw).__name__}"
        )
    subscribers = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}[{i}] must be an object with url, secret and events")
        try:
            subscribers.append(Subscriber(**item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{where}[{i}].{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"invalid webhook subscriber: {problems}") from None
    return subscribers
