"""The job runner: one place that starts scrape and training jobs, for the API and the scheduler.

Single flight per kind, across processes and hosts: a job holds the kind's lock (app/locks.py: the
file ``DATASET_DIR/job-{kind}.lock`` on SQLite, a PostgreSQL advisory lock tied to the holder's
connection otherwise) while it is queued or running, so with several workers, services or replicas
on one database, a manual request for a busy kind raises :class:`JobBusy` (the API answers 409
naming the running job) and a scheduled one is recorded as a ``skipped`` row. The same lock tells
a live job from a dead process's leftover: a queued/running row whose kind lock is free belongs to
a process that is gone, and is marked ``interrupted`` (at start-up, at the next submit, and by a
sweep every JOB_SWEEP_SECONDS, so within that time of the holder's death).

Job kinds are a registry (``JOB_KINDS``: kind -> async callable ``fn(settings, progress) -> report
dict``); adding a kind is one entry.

Exceptions: :class:`JobBusy` (caller's request conflicts), :class:`UnknownJobKind` (no such kind).
A job's own failure is never raised to the caller: it is the job row's ``failed`` state and error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from sqlalchemy.exc import SQLAlchemyError

from app.errors import JobBusy, UnknownJobKind, public_text
from app.jobstore import JobStore
from app.locks import HolderLock, holder_lock
from app.processes import run_in_process
from config.clock import iso_micro
from config.errors import ExposrError
from config.progress import Progress
from config.settings import Settings
from dataset.errors import StorageError

if TYPE_CHECKING:  # the result types only: no scraper, labeler or trainer import at start-up
    from labeler.scoring import LabelReport
    from scraper.report import ScrapeReport
    from trainer.results import TrainResult


log = logging.getLogger(__name__)

# What a job's row holds as ``result``: the report of its kind (typed where it is made).
JobResult: TypeAlias = "ScrapeReport | TrainResult | LabelReport | dict[str, Any]"
JobFunction = Callable[[Settings, Progress], Awaitable[JobResult]]
PROGRESS_FLUSH_SECONDS = 2.0
# A job's final state that the database refused (disk full, locked) is written again this often.
FINAL_WRITE_RETRY_SECONDS = (1.0, 30.0)
FINAL_FIELDS = ("state", "started_at", "finished_at", "progress", "result", "error")
# How long a submit that finds the kind locked but no job of it active waits: for the holder's row
# (it takes the lock, then inserts) or for a holder whose job has just finished to let the lock go.
BUSY_ROW_WAIT_SECONDS = 5.0


async def scrape_job(settings: Settings, progress: Progress, only: list[str] | None = None) -> ScrapeReport:
    """Scraping is network-bound: it runs in the service's event loop (or a thread if synchronous).
    ``only``: just these enabled sources (a scrape of one source from the console or the API)."""
    from scraper.fetcher_manager import run_scrape

    extra: dict[str, Any] = {"only": only} if only else {}
    if inspect.iscoroutinefunction(run_scrape):
        result = await run_scrape(settings, progress, **extra)
    else:  # a synchronous stand-in for run_scrape (the type checker knows only the async one)
        result = await asyncio.to_thread(
            cast("Callable[..., ScrapeReport]", run_scrape), settings, progress, **extra
        )
    errors = result.get("totals", {}).get("errors", {})
    lost = sum(n for kind, n in errors.items() if kind.startswith("ingest_"))
    if result.get("status") == "failed" and lost:  # nothing could be kept: the job failed, and says why
        raise RuntimeError(
            f"no image could be stored: {lost} storage/index errors "
            f"({result['totals']['errors']}); free disk space or fix the storage and retry"
        )
    return result


async def train_job(settings: Settings, progress: Progress, *, background: bool = True) -> TrainResult:
    """Training is CPU-bound: a separate process, so the API keeps answering (``background``: at a
    lower priority than the API; the CLI's foreground training runs at the user's priority)."""
    # With STORAGE_DRIVER=s3 the registry and artifacts are the bucket's (trainer/model_store.py).
    from trainer.model_store import train_with_shared_store
    from trainer.progress import cumulative  # per-epoch reports keep the last batch's rate and ETA

    return await run_in_process(
        train_with_shared_store, settings, cumulative(progress), name="train", background=background
    )


async def label_job(settings: Settings, progress: Progress, *, background: bool = True) -> LabelReport:
    """Labeling may run the local model (torch, CPU-bound): a separate process, like training."""
    from labeler.scoring import run_labeler_sync
    from trainer.model_store import sync_models_down

    await asyncio.to_thread(sync_models_down, settings)  # the promoted model, from the bucket if shared
    return await run_in_process(run_labeler_sync, settings, progress, name="label", background=background)


JOB_KINDS: dict[str, JobFunction] = {"scrape": scrape_job, "train": train_job, "label": label_job}

# Jobs that start after another succeeds: kind -> [(follow-up kind, wanted(result))]. New images
# and a newly promoted model both leave images without a score from the current scorer.
FOLLOW_UPS: dict[str, list[tuple[str, Callable[[dict], bool]]]] = {
    "scrape": [("label", lambda result: True)],
    "train": [("label", lambda result: bool(result.get("promoted")))],
}


def kind_lock(settings: Settings, store: JobStore, kind: str) -> HolderLock:
    return holder_lock(settings, store.engine, f"job-{kind}")


class JobRunner:
    """Runs jobs in this process; kinds in WORKER_KINDS are queued for a worker instead, unless this
    runner *is* a worker (``worker=True``: exposr-trainer worker, see :meth:`work`)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        kinds: dict[str, JobFunction] | None = None,
        worker: bool = False,
    ):
        self.settings = settings
        self.store = store
        self.kinds = dict(JOB_KINDS if kinds is None else kinds)
        self.worker = worker
        self.holder = f"{socket.gethostname()}:{os.getpid()}"[:200]
        self._active: dict[str, dict] = {}  # kind -> live row (with in-memory progress)
        self._tasks: dict[str, asyncio.Task] = {}
        self._locks: dict[str, HolderLock] = {}  # kind -> held lock, while its job is active
        self._owed: set[str] = set()  # follow-ups whose kind was busy here: run once more when it ends
        self._options: dict[str, dict[str, Any]] = {}  # job id -> keyword arguments of its kind's function
        self.on_change: list[Callable[[], None]] = []  # called when a job changes state (cache resets)
        # awaited with the final row when a job succeeded or failed (webhooks); errors are logged
        self.on_finished: list[Callable[[dict], Awaitable[None]]] = []
        self._sweeper: asyncio.Task | None = None
        self._unwritten: dict[str, dict] = {}  # finished jobs whose final row the database refused
        self._uninserted: set[str] = set()  # of those, jobs that never started: no row at all yet
        self._stop_reasons: dict[str, str] = {}  # job id -> why it is being stopped (lock lost)
        self._writer: asyncio.Task | None = None

    async def start(self) -> None:
        await self.store.create_tables()
        await self.sweep()
        if self.settings.job_sweep_seconds > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="job-sweeper")

    async def sweep(self) -> int:
        """Mark the active rows of kinds no live process holds as interrupted; returns how many."""
        marked = 0
        for kind in sorted(await self.store.active_kinds() - set(self._active)):
            lock = kind_lock(self.settings, self.store, kind)
            if not await lock.acquire():  # a live process (another worker or replica) runs it
                log.debug("a %s job is running in another process (%s held)", kind, lock.description)
                continue
            try:
                marked += await self._interrupt_leftovers(kind, lock)
            except JobBusy:  # the server restarted a moment ago: the holder may be re-taking it
                continue
            finally:
                await lock.release()
        return marked

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.job_sweep_seconds)
            try:
                await self.sweep()
            except Exception as exc:  # the database is away for a moment: the next sweep tries again
                log.warning("job sweep failed: %s", exc)

    def running(self, kind: str) -> dict | None:
        return self._active.get(kind)

    def active_jobs(self) -> list[dict]:
        return list(self._active.values())

    def unwritten_jobs(self) -> list[dict]:
        """Finished jobs whose final row the database has not taken yet (their truth is here)."""
        return [dict(job) for job in self._unwritten.values()]

    async def submit(self, kind: str, trigger: str = "manual", options: dict[str, Any] | None = None) -> dict:
        """Start a job of ``kind`` now; raise JobBusy if one of that kind is active. ``options``: keyword
        arguments for the kind's function (``only`` for a scrape of some sources), run in this process
        only: a job queued for a worker carries none (ValueError)."""
        if kind not in self.kinds:
            raise UnknownJobKind(f"unknown job kind {kind!r}; known kinds: {', '.join(sorted(self.kinds))}")
        if kind in self._active:
            raise JobBusy(self._active[kind])
        if kind in self.settings.worker_kind_set and not self.worker:
            if options:
                raise ValueError(
                    f"WORKER_KINDS includes {kind}: a {kind} job with options ({', '.join(options)}) "
                    "cannot be queued for a worker; start it without them, or on the worker's host"
                )
            return await self._queue_for_worker(kind, trigger)
        # Claim the kind before the first await so two concurrent submits cannot both pass the check.
        # The claim is already a complete job: /status lists it while its row is still being written.
        job: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "kind": kind,
            "trigger": trigger,
            "state": "queued",
            "progress": None,
            "created_at": iso_micro(),
            "holder": self.holder,
        }
        self._active[kind] = job
        lock = kind_lock(self.settings, self.store, kind)
        try:
            await self._take(kind, lock)
        except BaseException:  # busy, or the lock cannot be taken (full disk, database away): no claim stays
            self._active.pop(kind, None)
            raise
        self._locks[kind] = lock
        try:
            await self._interrupt_leftovers(kind, lock)  # lock held: an active row is a dead one's
            job.update(await self.store.insert(**job))
        except BaseException:
            await self._release(kind)
            raise
        self._options[job["id"]] = dict(options or {})
        self._changed()
        self._tasks[job["id"]] = asyncio.create_task(self._run(job), name=f"job-{kind}-{job['id']}")
        lock.watch(lambda reason: self._lost_lock(job, reason))  # a database restart drops the lock
        log.info("job %s (%s, %s) queued", job["id"], kind, trigger)
        return dict(job)

    async def _queue_for_worker(self, kind: str, trigger: str) -> dict:
        """A queued row for ``exposr-trainer worker``; the kind's lock makes the check-and-insert
        atomic across replicas, and a row already waiting makes the kind busy (409 naming it)."""
        lock = kind_lock(self.settings, self.store, kind)
        await self._take(kind, lock)
        try:
            waiting = await self.store.waiting_for_worker(kind)
            if waiting is not None:
                raise JobBusy(waiting)
            await self._interrupt_leftovers(kind, lock)
            row = await self.store.insert(
                id=str(uuid.uuid4()), kind=kind, trigger=trigger, state="queued", runner="worker"
            )
        finally:
            await lock.release()
        self._changed()
        log.info("job %s (%s, %s) queued for a worker", row["id"], kind, trigger)
        return row

    async def work_once(self) -> dict | None:
        """Worker: claim and run (to its end) the oldest job queued for a worker, of a kind this
        process runs and no one else holds; returns its final row, None when there was nothing."""
        for kind in sorted(self.settings.worker_kind_set & set(self.kinds)):
            if kind in self._active:
                continue
            lock = kind_lock(self.settings, self.store, kind)
            if not await lock.acquire():
                continue  # another worker runs this kind
            try:
                await self._interrupt_leftovers(kind, lock)
                row = await self.store.waiting_for_worker(kind)
                claimed = row is not None and await self.store.claim(
                    row["id"], started_at=iso_micro(), holder=self.holder
                )
            except BaseException:
                await lock.release()
                raise
            if row is None or not claimed:
                await lock.release()
                continue
            job = {**row, "state": "running", "holder": self.holder}
            self._active[kind], self._locks[kind] = job, lock
            self._changed()
            log.info("worker claimed job %s (%s)", job["id"], kind)
            task = asyncio.create_task(self._run(job), name=f"job-{kind}-{job['id']}")
            self._tasks[job["id"]] = task
            lock.watch(functools.partial(self._lost_lock, job))
            await self.wait(job["id"])
            return await self.store.get(job["id"])
        return None

    async def work(self, stop: asyncio.Event) -> None:
        """Worker: claim queued jobs until ``stop`` is set (polling every WORKER_POLL_SECONDS)."""
        while not stop.is_set():
            try:
                ran = await self.work_once()
            except Exception as exc:  # the database is away for a moment: try again at the next poll
                log.warning("worker could not claim a job: %s", exc)
                ran = None
            if ran is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.worker_poll_seconds)

    async def _take(self, kind: str, lock: HolderLock) -> None:
        """Take ``kind``'s lock, or raise JobBusy naming the job that holds it.

        A lock held while no row of the kind is active belongs to a process between its row and
        its lock: one starting (its row appears in a moment) or one that has just finished (its row
        is final and the lock goes in a moment; a client that saw "succeeded" and asks again must not
        be refused). Both are waited for, up to BUSY_ROW_WAIT_SECONDS."""
        deadline = time.monotonic() + BUSY_ROW_WAIT_SECONDS
        while not await lock.acquire():
            row = await self.store.active(kind)
            if row is not None:
                raise JobBusy(row)
            if time.monotonic() >= deadline:
                raise JobBusy({"id": "in-another-process", "kind": kind, "state": "running"})
            await asyncio.sleep(0.05)

    async def _interrupt_leftovers(self, kind: str, lock: HolderLock) -> int:
        """With ``lock`` held, active rows of ``kind`` are a dead process's: marked interrupted. Not
        while the database server has only just started (app/locks.py): their holder may be taking
        its lock again, so the kind is busy (JobBusy naming the row) instead."""
        active = await self.store.active(kind)
        held_elsewhere = active is not None and active.get("holder") and active["id"] not in self._tasks
        if active is not None and held_elsewhere and not await lock.settled(_epoch(active.get("created_at"))):
            raise JobBusy(active)
        leftovers = await self.store.interrupt_leftovers(kind)
        if leftovers:
            log.warning(
                "marked %d %s job(s) left running by a stopped process as interrupted", leftovers, kind
            )
        return leftovers

    def _lost_lock(self, job: dict, reason: str) -> None:
        """The job's kind lock is gone for good (app/locks.py): stop the job before another
        process may start the kind; its row says why."""
        task = self._tasks.get(job["id"])
        if task is None or task.done():
            return
        log.error("job %s (%s): %s", job["id"], job["kind"], reason)
        self._stop_reasons[job["id"]] = reason
        task.cancel()

    async def _release(self, kind: str) -> None:
        self._active.pop(kind, None)
        lock = self._locks.pop(kind, None)
        if lock is not None:
            await lock.release()

    async def submit_scheduled(self, kind: str) -> dict:
        """The scheduler's entry: like submit, but a busy kind is recorded as a skipped run."""
        try:
            return await self.submit(kind, trigger="scheduled")
        except JobBusy as busy:
            reason = f"skipped: {busy}"
            log.warning("scheduled %s run %s", kind, reason)
            row = await self.store.record_skipped(kind, reason)
            self._changed()
            return row

    async def get(self, job_id: str) -> dict | None:
        for job in [*self._active.values(), *self._unwritten.values()]:
            if job["id"] == job_id:
                return dict(job)
        return await self.store.get(job_id)

    async def list(self, limit: int = 50, kind: str | None = None, state: str | None = None) -> list[dict]:
        rows = await self.store.list(limit=limit, kind=kind, state=state)
        live = {job["id"]: job for job in [*self._unwritten.values(), *self._active.values()]}
        return [dict(live.get(row["id"], row)) for row in rows]

    async def wait(self, job_id: str) -> dict | None:
        """Await a job's end (tests, CLI); returns its final row."""
        task = self._tasks.get(job_id)
        if task:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        return await self.store.get(job_id)

    async def shutdown(self) -> None:
        """Cancel running jobs (children are terminated); each is recorded as interrupted."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._writer is not None:
            self._writer.cancel()
        await self._write_unwritten_once()  # a last try; what still fails is logged with its state
        for job in self._unwritten.values():
            log.error(
                "job %s (%s) ended %s, but the database never took that record: after a "
                "restart it shows as interrupted",
                job["id"],
                job["kind"],
                job["state"],
            )

    async def _run(self, job: dict) -> None:
        kind, job_id = job["kind"], job["id"]
        flusher = None
        try:
            await self._set(job, state="running", started_at=iso_micro())
            log.info("job %s (%s) running", job_id, kind)
            flusher = asyncio.create_task(self._flush_progress(job))
            options = self._options.pop(job_id, {})
            result = await self.kinds[kind](
                self.settings, lambda data: job.__setitem__("progress", data), **options
            )
            await self._finish(job, "succeeded", result=result)
        except asyncio.CancelledError:
            reason = self._stop_reasons.pop(job_id, "interrupted by service shutdown")
            await self._finish(job, "interrupted", error=reason)
        except Exception as exc:  # the job's boundary: its failure is the row's state, not a crash
            if isinstance(exc, ExposrError):  # foreseen (a setting, the data, the child's own message)
                log.error("job %s (%s) failed: %s", job_id, kind, exc)
            else:
                log.exception("job %s (%s) failed", job_id, kind)
            # The log has the full text; the job row (shown by /jobs) names settings, not server paths.
            error = public_text(str(exc), self.settings) or type(exc).__name__
            await self._finish(job, "failed", error=error)
        finally:
            if flusher:
                flusher.cancel()
            await self._release(kind)
            self._tasks.pop(job_id, None)
        if job["state"] in ("succeeded", "failed"):
            await self._announce(job)
        if job["state"] == "succeeded":
            await self._start_follow_ups(kind, job.get("result") or {})
        if kind in self._owed and job["state"] != "interrupted":
            self._owed.discard(kind)
            await self.submit_scheduled(kind)

    async def _announce(self, job: dict) -> None:
        for callback in self.on_finished:
            try:
                await callback(dict(job))
            except Exception:  # telling others must not change the job's outcome
                log.exception("job %s (%s): a finished-job callback failed", job["id"], job["kind"])

    async def _start_follow_ups(self, kind: str, result: dict) -> None:
        for follow_up, wanted in FOLLOW_UPS.get(kind, []):
            if not (follow_up in self.kinds and wanted(result)):
                continue
            if follow_up in self._active:
                # The running one may have listed its work before this job's (a label run started
                # before the scrape stored its images): run it once more when it ends.
                self._owed.add(follow_up)
                log.info(
                    "%s follow-up of a %s job deferred until the running %s job ends",
                    follow_up,
                    kind,
                    follow_up,
                )
            else:
                try:
                    await self.submit_scheduled(follow_up)  # busy in another process: recorded as skipped
                except (OSError, StorageError, SQLAlchemyError) as exc:  # a full disk, a database away
                    await self._record_failed_start(follow_up, f"the follow-up of a {kind} job", exc)

    async def _record_failed_start(self, kind: str, what: str, exc: Exception) -> None:
        """A job that could not even start is a ``failed`` row saying why (kept in memory and
        written once the database takes it, like any final state), never a lost task exception."""
        now = iso_micro()
        reason = public_text(str(getattr(exc, "orig", None) or exc).splitlines()[0], self.settings)
        job: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "kind": kind,
            "trigger": "scheduled",
            "state": "failed",
            "progress": None,
            "created_at": now,
            "started_at": now,
            "finished_at": now,
            "holder": self.holder,
            "error": f"{what} could not start: {reason or type(exc).__name__}",
        }
        log.error("%s job (%s) %s", kind, what, job["error"])
        try:
            await self.store.insert(**job)
        except SQLAlchemyError:
            self._unwritten[job["id"]] = job
            self._uninserted.add(job["id"])
            if self._writer is None or self._writer.done():
                self._writer = asyncio.create_task(self._write_unwritten(), name="job-final-writes")
        self._changed()

    async def _finish(self, job: dict, state: str, **values) -> None:
        """Record the final state; a database that refuses it (disk full, locked) gets it again
        every few seconds until it takes it, and meanwhile the API answers from memory."""
        values = dict(state=state, finished_at=iso_micro(), progress=job.get("progress"), **values)
        try:
            await self._set(job, **values)
        except SQLAlchemyError as exc:
            job.update(values)
            self._unwritten[job["id"]] = job
            log.error(
                "job %s (%s) %s, but the database refused its record (%s); writing it again "
                "until it takes it",
                job["id"],
                job["kind"],
                state,
                _reason(exc),
            )
            if self._writer is None or self._writer.done():
                self._writer = asyncio.create_task(self._write_unwritten(), name="job-final-writes")
            self._changed()
        log.info(
            "job %s (%s) %s%s",
            job["id"],
            job["kind"],
            state,
            f": {values['error']}" if values.get("error") else "",
        )

    async def _write_unwritten(self) -> None:
        delay, longest = FINAL_WRITE_RETRY_SECONDS
        while self._unwritten:
            await asyncio.sleep(delay)
            await self._write_unwritten_once()
            delay = min(longest, delay * 2)

    async def _write_unwritten_once(self) -> None:
        for job_id, job in list(self._unwritten.items()):
            fields = {k: job.get(k) for k in FINAL_FIELDS}
            try:
                if job_id in self._uninserted:  # a job that failed to start has no row yet
                    await self.store.insert(**job)
                    self._uninserted.discard(job_id)
                else:
                    await self.store.update(job_id, **fields)
            except SQLAlchemyError as exc:
                log.warning("job %s: its final record still cannot be written (%s)", job_id, _reason(exc))
                return
            self._unwritten.pop(job_id, None)
            log.info(
                "job %s (%s): final state %s written after the database recovered",
                job_id,
                job["kind"],
                job["state"],
            )
            self._changed()

    async def _set(self, job: dict, **values) -> None:
        # Database first: whoever sees the new state in memory can also read it from the database.
        await self.store.update(job["id"], **values)
        job.update(values)
        self._changed()

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    async def _flush_progress(self, job: dict) -> None:
        """Persist in-memory progress every few seconds (progress may arrive per batch)."""
        written = None
        while True:
            await asyncio.sleep(PROGRESS_FLUSH_SECONDS)
            if job.get("progress") != written:
                try:
                    await self.store.update(job["id"], progress=job.get("progress"))
                except SQLAlchemyError as exc:  # progress is a convenience: try again next time
                    log.warning("job %s: progress not saved (%s)", job["id"], _reason(exc))
                    continue
                written = job.get("progress")


def _epoch(iso: str | None) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _reason(exc: SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]
