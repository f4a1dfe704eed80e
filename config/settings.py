"""Typed settings: every environment variable (.env.example, docs/configuration.md), read once.

Entry points call :func:`get_settings` (cached); tests build ``Settings(...)`` directly with
``tmp_path`` values instead of patching the environment.  Invalid values raise
:class:`ConfigError`, whose message names the variable and the problem.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError

WORKER_KIND_NAMES = ("train", "label", "scrape")
MIN_API_KEY_LENGTH = 16
LINEAR_PROBE_ARCH = "vit_large_patch14_clip_224.openai"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # Auth and source keys (secrets never appear in repr, logs or responses).
    trainer_api_key: SecretStr | None = None
    unsplash_access_key: SecretStr | None = None
    pexels_api_key: SecretStr | None = None
    civitai_api_key: SecretStr | None = None

    unsplash_api_url: str = "https://api.unsplash.com"
    pexels_api_url: str = "https://api.pexels.com/v1"
    civitai_api_url: str = "https://civitai.com/api/v1"
    exposr_core_endpoint: str = "http://localhost:8000/api/v1/analyze"
    exposr_core_score_field: str = "ai_probability"
    exposr_core_timeout: float = Field(30, gt=0)
    exposr_core_concurrency: int = Field(4, ge=1, le=64)
    review_real_max_score: float = Field(0.8, ge=0, le=1)
    review_ai_min_score: float = Field(0.2, ge=0, le=1)
    ui_session_hours: float = Field(8, gt=0, le=24 * 30)  # the console's login lasts this long

    storage_driver: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_timeout: float = Field(15, gt=0, le=600)  # connect and read timeout of every S3 call (seconds)

    dataset_dir: Path = Path("datasets")
    models_dir: Path = Path("models")
    log_dir: Path = Path("logs")
    database_url: str | None = None
    sources_config: Path = Path("config/sources.yaml")

    scrape_every_hours: float = Field(12, gt=0)
    train_every_days: float = Field(7, gt=0)
    scheduler_enabled: bool = True
    # Several hosts (docs/scaling-out.md): how often each process looks for jobs whose holder died.
    job_sweep_seconds: float = Field(15, ge=0)
    # Job kinds the service queues for `exposr-trainer worker` instead of running them itself
    # (comma list of train, label, scrape; empty: the service runs every kind).
    worker_kinds: str = ""
    worker_poll_seconds: float = Field(2, gt=0)

    min_train_samples: int = Field(50, ge=2)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    model_name: str = Field("vit", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    train_arch: str = "vit_small_patch16_224"
    train_pretrained: bool = True
    train_pretrained_file: Path | None = None
    train_image_size: int = Field(224, ge=16, le=1024)
    train_epochs: int = Field(5, ge=1)
    train_batch_size: int = Field(32, ge=1)
    train_lr: float = Field(3e-4, gt=0)
    train_seed: int = 0
    train_device: Literal["auto", "cpu", "cuda"] = "auto"
    train_workers: int = Field(2, ge=0)
    # > 1: train with torchrun + DistributedDataParallel on this many processes (one per GPU).
    train_nproc_per_node: int = Field(1, ge=1, le=64)
    # Decode and shrink each image once per preprocessing, kept in storage (trainer/cache.py).
    train_cache: bool = True
    # finetune: the whole network; linear_probe: a frozen backbone, features cached, a linear head.
    train_mode: Literal["finetune", "linear_probe"] = "finetune"
    train_ema_decay: float = Field(0.0, ge=0, lt=1)  # EMA of the weights (timm ModelEmaV3); 0 = off
    train_balance: Literal["loss", "none"] = "loss"  # class-weighted loss for imbalanced datasets
    # Probability that a training image goes through one of the laundering chains (trainer/launder.py).
    train_launder_aug: float = Field(0.0, ge=0, le=1)

    # Honest evaluation (docs/evaluation.md): who is held out, how big the evaluation set must be,
    # how the champion is challenged.
    eval_holdout_generators: str = ""  # comma list of generator names never trained on
    eval_holdout_sources: str = ""  # comma list of source names never trained on
    eval_min_per_class: int = Field(10, ge=2)
    split_near_dup_distance: int = Field(12, ge=0, le=32)  # measured: docs/evaluation.md
    promotion_margin: float = Field(0.02, ge=0, le=0.5)
    # A frozen benchmark (issue 22 point 5): a folder with real/ and ai/ every version is scored on
    # (trainer/benchmark.py); unset: none.
    eval_benchmark_dir: Path | None = None
    # Promotion also requires beating the content-only baseline (trainer/baseline.py), paired
    # (issue 22 point 3): on by default; false only reports it.
    promotion_content_baseline: bool = True
    shortcut_warn_auc: float = Field(0.8, gt=0.5, le=1)
    # The k AI generators first seen most recently never train (trainer/future.py); unset: 1 when at
    # least 3 AI generators have EVAL_MIN_PER_CLASS images each, else 0 (the report says why).
    eval_future_generators: int | None = Field(None, ge=0, le=20)
    # The false-positive rate the served threshold is chosen for (trainer/operating.py).
    serve_target_fpr: float = Field(0.01, gt=0, lt=0.5)
    # A model.degraded event (app/monitoring.py) queues a training (one at a time, as always).
    retrain_on_degradation: bool = False

    upload_max_bytes: int = Field(20_000_000, gt=0)
    max_image_pixels: int = Field(50_000_000, gt=0)
    min_image_side: int = Field(32, ge=1)
    near_dup_max_distance: int = Field(6, ge=0, le=32)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # Exposr-Core integration (docs/exposr-core.md): webhook subscribers and their deliveries.
    webhooks: SecretStr | None = None  # JSON array of {name, url, secret, events}; secrets inside
    webhooks_file: Path | None = None  # the same as YAML (`subscribers:` list)
    public_url: str = ""  # base of the URLs in webhook payloads, e.g. https://trainer.example:8001
    webhook_timeout_seconds: float = Field(10, gt=0, le=120)
    webhook_retry_base_seconds: float = Field(5, gt=0)  # first retry after about this long, then doubling
    webhook_retry_max_seconds: float = Field(3600, gt=0)  # the longest wait between two attempts
    webhook_retry_hours: float = Field(24, gt=0, le=24 * 14)  # a delivery is given up after this long
    webhook_poll_seconds: float = Field(2, gt=0)  # how often each process looks for due deliveries

    # Hardening (docs/hardening.md): slow clients, decode memory.
    http_read_timeout: float = Field(30, gt=0, le=3600)
    http_keepalive_timeout: int = Field(5, ge=1, le=300)
    # Per client address (behind a proxy every client has the proxy's: raise these there).
    http_max_connections_per_client: int = Field(64, ge=1, le=100_000)
    http_max_half_open_per_client: int = Field(16, ge=1, le=100_000)
    decode_memory_budget_mb: int = Field(1024, ge=64)

    @field_validator("trainer_api_key")
    @classmethod
    def _key_long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        # A short key can be guessed; `make run` writes a 43-character one.
        if v is not None and len(v.get_secret_value()) < MIN_API_KEY_LENGTH:
            raise ValueError(
                f"must be at least {MIN_API_KEY_LENGTH} characters (got "
                f"{len(v.get_secret_value())}); generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator(
        "trainer_api_key",
        "unsplash_access_key",
        "pexels_api_key",
        "civitai_api_key",
        "s3_bucket",
        "s3_endpoint_url",
        "database_url",
        "train_pretrained_file",
        "webhooks",
        "webhooks_file",
        "eval_future_generators",
        "eval_benchmark_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        # `FOO=` in a .env file means "not set", not "set to the empty string".
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("worker_kinds", mode="after")
    @classmethod
    def _known_worker_kinds(cls, v: str) -> str:
        kinds = [k.strip() for k in v.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in WORKER_KIND_NAMES]
        if unknown:
            raise ValueError(
                f"unknown job kind(s) {', '.join(unknown)}: use a comma list of "
                f"{', '.join(WORKER_KIND_NAMES)}"
            )
        return ",".join(kinds)

    @property
    def worker_kind_set(self) -> frozenset[str]:
        return frozenset(k for k in self.worker_kinds.split(",") if k)

    @model_validator(mode="after")
    def _probe_backbone(self) -> Settings:
        # linear_probe's documented default backbone (UnivFD): a CLIP ViT-L/14, unless TRAIN_ARCH is set.
        if self.train_mode == "linear_probe" and "train_arch" not in self.model_fields_set:
            self.train_arch = LINEAR_PROBE_ARCH
        return self

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> Settings:
        if self.storage_driver == "s3" and not self.s3_bucket:
            raise ValueError("STORAGE_DRIVER=s3 needs S3_BUCKET to be set")
        return self

    @field_validator("eval_holdout_generators", "eval_holdout_sources")
    @classmethod
    def _names_list(cls, v: str) -> str:
        from config.names import clean_generator  # the same rule as sources.yaml and uploads

        for name in (n.strip() for n in v.split(",")):
            if name:
                clean_generator(name)
        return v

    @property
    def holdout_generators(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.eval_holdout_generators.split(",") if n.strip())

    @property
    def holdout_sources(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.eval_holdout_sources.split(",") if n.strip())

    @field_validator("public_url")
    @classmethod
    def _public_base(cls, v: str) -> str:
        from urllib.parse import urlsplit

        v = v.strip().rstrip("/")
        if v and (urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname):
            raise ValueError("must be an http:// or https:// URL, e.g. https://trainer.example:8001")
        return v

    @property
    def db_url(self) -> str:
        """The SQLAlchemy async URL of the dedupe index and job history."""
        return self.database_url or f"sqlite+aiosqlite:///{self.dataset_dir}/dedupe.db"


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment and `.env`, turning validation errors into ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source="environment/.env")) from exc


def describe_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(settings)"
        name = where.upper() if source.startswith("environment") else where
        lines.append(
            f"  {name}: {err['msg']} (got {err.get('input')!r})"
            if "input" in err and not _is_secret(where)
            else f"  {name}: {err['msg']}"
        )
    return "\n".join(lines)


def _is_secret(field: str) -> bool:
    return field.endswith(("_key", "api_key")) or "secret" in field


@lru_cache
def get_settings() -> Settings:
    return load_settings()
