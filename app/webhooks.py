"""Signed webhooks from a database outbox: every delivery a row, retried until it lands or 24 h pass.

An event (``model.promoted``, ``model.rolled_back``, ``alias.changed``, ``training.failed``,
``training.not_promoted``, ``shortcut.warning``, ``model.degraded``) becomes one row per subscriber
that wants it (config/webhooks.py) in ``webhook_deliveries`` — in the same database as the jobs,
so it survives restarts and every replica sees it. A sender in each API process claims due rows and
POSTs them, signed per the Standard Webhooks convention::

    webhook-id: msg_...            (the row's id: the same on every retry, receivers deduplicate on it)
    webhook-timestamp: 1764590400  (seconds since the epoch, at this attempt)
    webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>

with ``key`` the bytes of the subscriber's ``whsec_<base64>`` secret. A 2xx answer delivers the
row; anything else (a 5xx, a timeout, a refused connection, a redirect) schedules the next attempt
with exponential backoff and jitter (WEBHOOK_RETRY_BASE_SECONDS doubling up to
WEBHOOK_RETRY_MAX_SECONDS, half of each wait random) until WEBHOOK_RETRY_HOURS after the event,
when the row is ``failed``; ``POST /webhooks/deliveries/{id}/resend`` starts it again.

Once per event across a fleet: a sender claims a row by a conditional update that sets a lease
(``claimed_until``) only where none is live, after selecting the due rows ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL (replicas skip each other's rows instead of waiting); only the holder of the
lease sends, and records the outcome in the same row. A sender killed mid-attempt leaves a lease
that expires, and the row is tried again (at least once; receivers deduplicate on ``webhook-id``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.concurrency import run_in_threadpool

from config.clock import iso_micro
from config.settings import Settings
from config.webhooks import Subscriber, load_subscribers, signing_key
from dataset.db import deliveries

log = logging.getLogger(__name__)

CLAIM_BATCH = 16  # rows one sender claims at a time
LEASE_GRACE_SECONDS = 30  # a claim outlives the request's timeout by this much
MAX_ERROR_CHARS = 300
STATES = ("pending", "delivered", "failed")


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` (Standard Webhooks)."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def backoff(attempt: int, base: float, longest: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before attempt ``attempt + 1``: ``base * 2**(attempt-1)`` capped at ``longest``, of
    which the second half is random (so a fleet's retries after an outage spread out)."""
    wait = min(longest, base * 2 ** max(attempt - 1, 0))
    return wait / 2 + rand() * wait / 2


class Outbox:
    """The ``webhook_deliveries`` table: enqueue events, claim due rows, record attempts, list, resend."""

    def __init__(self, engine: AsyncEngine, settings: Settings, subscribers: tuple[Subscriber, ...]) -> None:
        self.engine = engine
        self.settings = settings
        self.subscribers = subscribers

    async def enqueue(self, event: str, data: dict) -> list[str]:
        """One pending row per subscriber that wants ``event``; returns their ids (webhook-id)."""
        wanted = [s for s in self.subscribers if s.wants(event)]
        if not wanted:
            return []
        event_id = f"evt_{uuid.uuid4().hex}"
        body = json.dumps(
            {"type": event, "timestamp": iso_micro(), "event_id": event_id, "data": data},
            separators=(",", ":"),
            sort_keys=True,
            default=str,
        )
        now = time.time()
        rows: list[dict[str, Any]] = [
            {
                "id": f"msg_{uuid.uuid4().hex}",
                "event_id": event_id,
                "event": event,
                "subscriber": subscriber.label,
                "url": subscriber.url,
                "body": body,
                "state": "pending",
                "attempts": 0,
                "attempt_log": [],
                "created_at": iso_micro(),
                "next_at": now,
                "give_up_at": now + self.settings.webhook_retry_hours * 3600,
            }
            for subscriber in wanted
        ]
        async with self.engine.begin() as conn:
            await conn.execute(deliveries.insert(), rows)
        log.info("webhook %s queued for %d subscriber(s) (%s)", event, len(rows), event_id)
        return [row["id"] for row in rows]

    async def claim(self, holder: str, limit: int = CLAIM_BATCH) -> list[dict]:
        """Due rows this process now holds a lease on (no other process holds one on them)."""
        now = time.time()
        free = or_(deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until < now)
        due = (deliveries.c.state == "pending") & (deliveries.c.next_at <= now) & free
        lease = now + self.settings.webhook_timeout_seconds + LEASE_GRACE_SECONDS
        async with self.engine.begin() as conn:
            query = select(deliveries.c.id).where(due).order_by(deliveries.c.next_at).limit(limit)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list((await conn.execute(query)).scalars().all())
            claimed = []
            for row_id in ids:  # conditional: on SQLite two processes may have read the same ids
                result = await conn.execute(
                    update(deliveries)
                    .where((deliveries.c.id == row_id) & due)
                    .values(claimed_until=lease, claimed_by=holder)
                )
                if result.rowcount == 1:
                    claimed.append(row_id)
            if not claimed:
                return []
            rows = await conn.execute(select(deliveries).where(deliveries.c.id.in_(claimed)))
            return [dict(r._mapping) for r in rows.all()]

    async def record(self, row: dict, status: int | None, error: str | None, ms: float, holder: str) -> dict:
        """One attempt's outcome: delivered, the next try scheduled, or given up."""
        now = time.time()
        attempts = row["attempts"] + 1
        entry = {"at": iso_micro(), "status": status, "error": error, "ms": round(ms, 1), "by": holder}
        values: dict[str, Any] = {
            "attempts": attempts,
            "attempt_log": [*row["attempt_log"], entry],
            "last_status": status,
            "last_error": error,
            "claimed_until": None,
            "claimed_by": None,
        }
        if error is None:
            values.update(state="delivered", delivered_at=entry["at"])
        else:
            wait = backoff(
                attempts, self.settings.webhook_retry_base_seconds, self.settings.webhook_retry_max_seconds
            )
            if now + wait > row["give_up_at"]:
                values["state"] = "failed"
            else:
                values["next_at"] = now + wait
        async with self.engine.begin() as conn:
            await conn.execute(
                update(deliveries)
                .where((deliveries.c.id == row["id"]) & (deliveries.c.claimed_by == holder))
                .values(**values)
            )
        return {**row, **values}

    async def list(
        self, limit: int = 50, offset: int = 0, state: str | None = None, event: str | None = None
    ) -> tuple[int, list[dict]]:
        where = []
        if state:
            where.append(deliveries.c.state == state)
        if event:
            where.append(deliveries.c.event == event)
        query = select(deliveries).where(*where).order_by(deliveries.c.created_at.desc(), deliveries.c.id)
        async with self.engine.connect() as conn:
            total = (
                await conn.execute(select(func.count()).select_from(deliveries).where(*where))
            ).scalar_one()
            rows = (await conn.execute(query.limit(limit).offset(offset))).all()
        return int(total), [public(dict(r._mapping)) for r in rows]

    async def get(self, delivery_id: str) -> dict | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(deliveries).where(deliveries.c.id == delivery_id))).first()
        return public(dict(row._mapping)) if row else None

    async def resend(self, delivery_id: str) -> dict | None:
        """Pending again, due now, with a fresh retry window; its attempts so far are kept."""
        now = time.time()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id)
                .values(
                    state="pending",
                    next_at=now,
                    give_up_at=now + self.settings.webhook_retry_hours * 3600,
                    claimed_until=None,
                    claimed_by=None,
                )
            )
        return await self.get(delivery_id) if result.rowcount else None


def public(row: dict) -> dict:
    """A delivery as the API shows it: times readable, the payload parsed, no lease internals."""
    from datetime import UTC, datetime

    pending = row["state"] == "pending"
    return {
        "id": row["id"],
        "event_id": row["event_id"],
        "event": row["event"],
        "subscriber": row["subscriber"],
        "url": row["url"],
        "state": row["state"],
        "attempts": row["attempts"],
        "attempt_log": row["attempt_log"],
        "created_at": row["created_at"],
        "next_try": iso_micro(datetime.fromtimestamp(row["next_at"], UTC)) if pending else None,
        "give_up_at": iso_micro(datetime.fromtimestamp(row["give_up_at"], UTC)),
        "delivered_at": row["delivered_at"],
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "payload": json.loads(row["body"]),
    }


class WebhookSender:
    """Claims due deliveries and POSTs them, until stopped; :meth:`poke` sends at once."""

    def __init__(self, outbox: Outbox, client: httpx.AsyncClient | None = None) -> None:
        self.outbox = outbox
        self.settings = outbox.settings
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"[:200]
        self._client = client
        self._own_client = client is None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self._client is None:
            # TLS certificates are verified; a redirect is an answer, not followed (a failure).
            self._client = httpx.AsyncClient(
                timeout=self.settings.webhook_timeout_seconds, follow_redirects=False, verify=True
            )
        self._task = asyncio.create_task(self._loop(), name="webhook-sender")

    def poke(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                sent = await self.send_due()
            except Exception as exc:  # the database is away for a moment: the next round tries again
                log.warning("webhook sender: %s", exc)
                sent = 0
            if sent == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.webhook_poll_seconds)

    async def send_due(self) -> int:
        """Claim the due rows and attempt each once; returns how many were attempted."""
        rows = await self.outbox.claim(self.holder)
        await asyncio.gather(*(self._attempt(row) for row in rows))
        return len(rows)

    async def _attempt(self, row: dict) -> None:
        subscriber = next((s for s in self.outbox.subscribers if s.label == row["subscriber"]), None)
        started = time.perf_counter()
        status: int | None = None
        error: str | None = "the subscriber is no longer configured (WEBHOOKS / WEBHOOKS_FILE)"
        if subscriber is not None:
            outcome = await self._post(subscriber, row)
            if isinstance(outcome, int):
                status = outcome
                error = None if 200 <= status < 300 else f"HTTP {status}"
            else:
                error = outcome
        ms = (time.perf_counter() - started) * 1000
        done = await self.outbox.record(row, status, error, ms, self.holder)
        if error is None:
            log.info(
                "webhook %s %s delivered to %s (attempt %d)",
                row["event"],
                row["id"],
                row["subscriber"],
                done["attempts"],
            )
        else:
            log.warning(
                "webhook %s %s to %s: attempt %d failed (%s); %s",
                row["event"],
                row["id"],
                row["subscriber"],
                done["attempts"],
                error,
                "gave up" if done["state"] == "failed" else "will retry",
            )

    async def _post(self, subscriber: Subscriber, row: dict) -> int | str:
        """The answer's status code, or the reason there was none."""
        assert self._client is not None  # started
        body = row["body"].encode("utf-8")
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "exposr-trainer-webhooks",
            "webhook-id": row["id"],
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(signing_key(subscriber.secret), row["id"], timestamp, body),
        }
        try:
            response = await self._client.post(subscriber.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return f"timed out after {self.settings.webhook_timeout_seconds:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {str(exc)[:MAX_ERROR_CHARS] or 'no answer'}"
        return response.status_code


# ---- events -------------------------------------------------------------------------------------


def version_data(settings: Settings, entry: dict) -> dict:
    """What every model event carries of a version: URLs, SHA-256, metrics and the AUC interval."""
    base = settings.public_url
    path = f"/models/{entry['model']}/{entry['version']}"
    return {
        "model": entry["model"],
        "version": entry["version"],
        "model_json_url": f"{base}{path}/model.json",
        "weights_url": f"{base}{path}/weights.pt",
        "report_url": f"{base}{path}/report" if entry.get("report") else None,
        "sha256": entry.get("weights_sha256") or entry.get("sha256"),
        "metrics": {k: entry.get(k) for k in ("val_acc", "val_auc", "val_loss", "precision", "recall", "f1")},
        "auc": entry.get("val_auc"),
        "auc_ci95": entry.get("val_auc_ci95"),
        "trained_at": entry.get("timestamp"),
    }


def alias_events(settings: Settings, row: Mapping[str, Any], entry: dict | None) -> list[tuple[str, dict]]:
    """The events of one alias move: ``alias.changed`` always; for the champion, ``model.rolled_back``
    (cause rollback) or ``model.promoted`` (promotion, manual)."""
    data = {
        **(version_data(settings, entry) if entry else {"model": row["model"], "version": row["to"]}),
        "alias": row["alias"],
        "from": row.get("from"),
        "cause": row.get("cause"),
        "actor": row.get("actor"),
        "reason": row.get("reason"),
        "at": row.get("at"),
        "report": row.get("report"),
    }
    events = [("alias.changed", data)]
    if row["alias"] == "champion":
        events.insert(0, ("model.rolled_back" if row.get("cause") == "rollback" else "model.promoted", data))
    return events


def training_events(settings: Settings, job: dict, champion: dict | None) -> list[tuple[str, dict]]:
    """The events of a finished train job (``champion``: the served entry now)."""
    base = {"job_id": job["id"], "trigger": job.get("trigger")}
    if job["state"] == "failed":
        return [("training.failed", {**base, "error": job.get("error")})]
    result = job.get("result") or {}
    if job["state"] != "succeeded" or not result.get("version"):
        return []
    entry = {**result, "model": result.get("model") or settings.model_name}
    data = {**base, **version_data(settings, entry), "promotion_reason": result.get("promotion_reason")}
    events: list[tuple[str, dict]] = []
    served = champion is not None and champion.get("version") == result["version"]
    if result.get("promoted") and served:
        promoted_row = {
            "model": entry["model"],
            "alias": "champion",
            "to": result["version"],
            "from": result.get("compared_with"),
            "cause": "promotion",
            "actor": "scheduler",
            "reason": result.get("promotion_reason"),
        }
        events += alias_events(settings, promoted_row, entry)
    else:
        events.append(("training.not_promoted", data))
    if result.get("shortcut_warning"):
        events.append(("shortcut.warning", {**data, "warning": result["shortcut_warning"]}))
    return events


class Webhooks:
    """The service's side: the outbox, its sender, and the events of alias moves and trainings."""

    def __init__(self, settings: Settings, engine: AsyncEngine, subscribers: tuple[Subscriber, ...]) -> None:
        self.settings = settings
        self.outbox = Outbox(engine, settings, subscribers)
        self.sender = WebhookSender(self.outbox)

    async def start(self) -> None:
        await self.sender.start()

    async def stop(self) -> None:
        await self.sender.stop()

    async def emit(self, events: list[tuple[str, dict]]) -> list[str]:
        ids: list[str] = []
        for event, data in events:
            ids += await self.outbox.enqueue(event, data)
        if ids:
            self.sender.poke()
        return ids

    async def alias_moved(self, row: Mapping[str, Any]) -> list[str]:
        """Queue the events of an alias move; the move itself stands even if the database refuses
        them (logged as an error: the subscribers must then be told by hand or by the next move)."""
        try:
            return await self.emit(alias_events(self.settings, row, await _entry(self.settings, row)))
        except SQLAlchemyError as exc:
            log.error(
                "%s of %s moved to %s, but its webhook events could not be queued: %s",
                row["alias"],
                row["model"],
                row["to"],
                str(getattr(exc, "orig", None) or exc).splitlines()[0],
            )
            return []

    async def job_finished(self, job: dict) -> None:
        if job.get("kind") != "train" or not self.outbox.subscribers:
            return
        champion = await run_in_threadpool(_champion, self.settings)
        await self.emit(training_events(self.settings, job, champion))


def _champion(settings: Settings) -> dict | None:
    from trainer.model_store import ModelRegistry

    entry = ModelRegistry(settings).champion()
    return dict(entry) if entry else None


async def _entry(settings: Settings, row: Mapping[str, Any]) -> dict | None:
    from trainer.model_store import ModelRegistry

    found = await run_in_threadpool(ModelRegistry(settings).entry, row["model"], row["to"])
    return dict(found) if found else None


async def record_alias_change(settings: Settings, row: Mapping[str, Any]) -> list[str]:
    """For the CLI: the events of an alias move, queued in the outbox (the service's senders send them)."""
    return await _record(settings, alias_events(settings, row, await _entry(settings, row)))


async def _record(settings: Settings, events: list[tuple[str, dict]]) -> list[str]:
    subscribers = load_subscribers(settings)
    if not subscribers or not events:
        return []
    from app.jobstore import make_engine
    from dataset.db import migrate

    if settings.db_url.startswith("sqlite"):
        settings.dataset_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings)
    try:
        await migrate(engine)
        outbox = Outbox(engine, settings, subscribers)
        ids: list[str] = []
        for event, data in events:
            ids += await outbox.enqueue(event, data)
        return ids
    finally:
        await engine.dispose()
