"""Response models of the HTTP API (they are also the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

# A route's extra OpenAPI answers (FastAPI's ``responses=``): code -> {"model": ..., "description": ...}
Responses: TypeAlias = dict[int | str, dict[str, Any]]


class DatasetCounts(BaseModel):
    total: int = Field(description="images in the dataset index")
    real: int
    ai_generated: int
    unlabeled: int


JobState = Literal["queued", "running", "succeeded", "failed", "interrupted", "skipped"]


class PublicJob(BaseModel):
    """What the public /status shows of a job: its state and times, never its progress, result or
    error (those can name hosts, paths and endpoints; GET /jobs/{id} with the token has them)."""

    id: str
    kind: str = Field(description="scrape, train, ...")
    trigger: Literal["manual", "scheduled", "console", "cli"]  # cli: the CLI's own jobs (issue 20)
    state: JobState
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None


class JobOut(PublicJob):
    progress: dict[str, Any] | None = Field(None, description="latest progress report of the job")
    result: dict[str, Any] | None = Field(None, description="the job's report when it succeeded")
    error: str | None = Field(None, description="why it failed, was interrupted or skipped")


class JobAccepted(BaseModel):
    job_id: str
    kind: str
    state: str
    status_url: str = Field(description="GET this to follow the job")


class JobList(BaseModel):
    jobs: list[JobOut]


class SchedulerInfo(BaseModel):
    state: Literal["disabled", "running", "refused", "stopped"]
    next_runs: dict[str, str | None] = Field(default_factory=dict, description="kind -> next run (UTC)")


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    version: str
    timestamp: str | None = None
    val_acc: float | None = None
    val_auc: float | None = None
    val_auc_ci95: list[float] | None = Field(None, description="95% interval of val_auc (DeLong)")
    eval_n: dict[str, int] | None = Field(None, description="evaluation images per class")


class StalePart(BaseModel):
    age_s: float | None = Field(description="seconds since this part was read (null: never read)")
    reason: str


STALE_DESCRIPTION = (
    "null when every figure is fresh (at most twice the 1 s refresh old); else the parts answered "
    "from memory because their source did not answer within 1 s or failed: 'database' (counts, jobs), "
    "'models' (the registry)"
)


class StatusOut(BaseModel):
    uptime: float = Field(description="seconds since the service started")
    started_at: str
    last_scrape: str | None = Field(description="when the last successful scrape finished")
    last_train: str | None = Field(description="when the latest model was trained")
    dataset_counts: DatasetCounts
    scheduler: SchedulerInfo
    last_jobs: dict[str, PublicJob] = Field(description="the newest job of each kind (state and times)")
    running_jobs: list[PublicJob] = Field(description="jobs queued or running (state and times)")
    latest_model: ModelInfo | None = Field(description="the promoted (served) model")
    shortcut_warning: str | None = Field(
        None,
        description="the newest training's metadata-only probe separated the classes (docs/evaluation.md)",
    )
    stale: dict[str, StalePart] | None = Field(None, description=STALE_DESCRIPTION)


class MetricsOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    total_images: int
    models_trained: int = Field(description="registry entries (all versions, promoted or not)")
    last_training: str | None
    validation_accuracy: float | None = Field(description="of the promoted model")
    validation_auc: float | None = None
    validation_auc_ci95: list[float] | None = Field(None, description="95% interval of validation_auc")
    evaluation_n: dict[str, int] | None = Field(None, description="evaluation images per class")
    model_version: str | None = None
    shortcut_warning: str | None = None
    live_auc: float | None = Field(None, description="the served model's AUC in the latest ended week")
    live_auc_ci95: list[float] | None = None
    live_week: str | None = None
    score_psi: float | None = Field(None, description="PSI of that week's scores vs the evaluation set's")
    model_degraded: str | None = Field(None, description="why the served model is degraded, else null")
    dataset_counts: DatasetCounts
    by_source: dict[str, dict[str, int]] = Field(default_factory=dict)
    jobs_running: list[str] = Field(default_factory=list, description="kinds running now")
    stale: dict[str, StalePart] | None = Field(None, description=STALE_DESCRIPTION)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class UploadOut(BaseModel):
    id: str = Field(description="the stored image's id, or the existing one for a duplicate")
    status: Literal["stored", "duplicate", "near_duplicate"]
    label: str = Field(
        description="the image's label; for a duplicate, the existing image's label, "
        "which an upload never changes"
    )
    message: str | None = None
    distance: int | None = Field(None, description="Hamming distance of a near-duplicate's perceptual hash")


class LatestModel(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_version: str
    timestamp: str | None
    metrics: dict[str, Any]
    download_url: str


class MonitoringRow(BaseModel):
    """One ended week of a served version on images stored after its training (design.md §13)."""

    model_config = ConfigDict(extra="allow")

    week: str = Field(description="ISO week of the images' created_at, e.g. 2026-W49")
    n: dict[str, int] = Field(description="labelled, scored images of the week per class")
    auc: float | None
    auc_ci95: list[float] | None
    psi: float | None = Field(description="population stability index against the evaluation set's scores")
    ks_p: float | None = Field(description="two-sample Kolmogorov-Smirnov p-value, same comparison")
    degraded: str | None = Field(None, description="why this week says the model degraded, else null")


class MonitoringOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    version: str
    trained_at: str | None
    promotion_auc_ci95: list[float] | None
    rows: list[MonitoringRow]
    degraded: str | None = Field(None, description="the latest row's degradation, if any")


class ErrorOut(BaseModel):
    detail: str


class ModelCard(BaseModel):
    """model.json: enough for Exposr-Core to rebuild the model with timm.create_model and load it."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    architecture: str = Field(description="timm architecture name")
    image_size: int
    mean: list[float]
    std: list[float]
    class_index: dict[str, int] = Field(description="label -> output index")
    model: str | None = None
    num_classes: int | None = None
    positive_class: str | None = Field(None, description="the class whose probability is P(ai)")
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    weights_file: str | None = None
    sha256: str | None = Field(None, description="sha256 of the weights file (also its ETag)")
    metrics: dict[str, Any] = Field(default_factory=dict)
    temperature: float | None = Field(None, description="calibration: P(ai) = softmax(logits / T)[ai]")
    threshold: float | None = Field(
        None, description="calibrated P(ai) at or above this is ai, at SERVE_TARGET_FPR"
    )
    threshold_target_fpr: float | None = None


class HistoryRowOut(BaseModel):
    """One change of an alias (design.md §12): appended, never rewritten."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())

    seq: int = Field(description="position in the history, 1 for the oldest row")
    alias: str
    from_: str | None = Field(alias="from", description="the version the alias named before")
    to: str = Field(description="the version the alias names from then on")
    at: str = Field(description="when (RFC 3339, UTC)")
    cause: Literal["promotion", "rollback", "manual"]
    actor: Literal["scheduler", "api", "console", "cli"]
    reason: str
    report: dict[str, Any] | None = Field(
        None, description="promotion: the decision's report URL and figures"
    )


class HistoryPage(BaseModel):
    model: str
    total: int
    limit: int
    offset: int
    rows: list[HistoryRowOut] = Field(description="newest first")


class AliasOut(BaseModel):
    alias: str
    version: str
    since: str = Field(description="when the alias was last moved")
    cause: str
    actor: str
    reason: str


class AliasesOut(BaseModel):
    model: str
    aliases: dict[str, AliasOut]


class AliasMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="a registered version, e.g. v3", max_length=32)
    reason: str = Field(description="why (kept in the history); must not be empty", max_length=2000)


class AliasMoved(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    alias: str
    version: str
    row: HistoryRowOut


class DeliveryAttempt(BaseModel):
    at: str
    status: int | None = Field(None, description="the subscriber's HTTP status, None when it did not answer")
    error: str | None = Field(None, description="why the attempt failed (HTTP 500, timed out, refused ...)")
    ms: float
    by: str | None = Field(None, description="the sending process (host:pid:id)")


class DeliveryOut(BaseModel):
    """One webhook delivery: an event for one subscriber (never its secret)."""

    id: str = Field(description="the webhook-id header, the same on every attempt")
    event_id: str
    event: str
    subscriber: str
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    attempt_log: list[DeliveryAttempt]
    created_at: str
    next_try: str | None = Field(description="when the next attempt is due (pending only)")
    give_up_at: str
    delivered_at: str | None
    last_status: int | None
    last_error: str | None
    payload: dict[str, Any] = Field(description="the body sent: {type, timestamp, event_id, data}")


class DeliveryPage(BaseModel):
    total: int
    limit: int
    offset: int
    deliveries: list[DeliveryOut] = Field(description="newest first")
