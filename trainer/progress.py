"""Per-batch training progress: images per second and ETA from the first batch on.

``batch_reporter(progress, epoch, epochs)`` is what ``train_one_epoch`` calls after each batch
(``on_batch(batch, batches, images)``). It sends the same numbers to the CLI's progress bar and,
through the job's progress callback, to the service (GET /jobs/{id}, the console's overview):

``{"stage": "train", "epoch", "epochs", "batch", "batches", "done", "total", "percent",
"images_per_s", "eta_s"}`` -- ``done``/``total`` count batches over the whole run. The ETA counts
training batches at this epoch's pace (the validation pass after each epoch adds to it).
A report goes out for the first and last batch of each epoch and at most every
``REPORT_EVERY_SECONDS`` in between, so a fast loop does not flood the job's message queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from config.progress import Progress

REPORT_EVERY_SECONDS = 0.5

OnBatch = Callable[[int, int, int], None]


def batch_reporter(
    progress: Progress | None, epoch: int, epochs: int, clock: Callable[[], float] = time.monotonic
) -> OnBatch | None:
    """A per-batch callback for epoch ``epoch`` of ``epochs`` (None when nobody listens)."""
    if progress is None:
        return None
    started = clock()
    last_sent = None

    def on_batch(batch: int, batches: int, images: int) -> None:
        nonlocal last_sent
        now = clock()
        if last_sent is not None and batch < batches and now - last_sent < REPORT_EVERY_SECONDS:
            return
        last_sent = now
        progress(batch_event(epoch, epochs, batch, batches, images, now - started))

    return on_batch


def batch_event(epoch: int, epochs: int, batch: int, batches: int, images: int, seconds: float) -> dict:
    """The progress dict after ``batch`` of ``batches`` in ``epoch``, ``images`` seen in ``seconds``."""
    batches = max(batches, 1)
    done, total = (epoch - 1) * batches + batch, epochs * batches
    per_batch = seconds / batch if batch else 0.0
    return {
        "stage": "train",
        "epoch": epoch,
        "epochs": epochs,
        "batch": batch,
        "batches": batches,
        "done": done,
        "total": total,
        "percent": round(100.0 * done / total, 1),
        "images_per_s": round(images / seconds, 2) if seconds > 0 else None,
        "eta_s": round((total - done) * per_batch, 1),
    }


def cumulative(progress: Progress) -> Progress:
    """A progress callback whose every report carries the fields of the reports before it.

    The service keeps only a job's latest report: without this, the per-epoch metrics report would
    hide the rate, ETA and batch counts until the next batch (the CLI bar merges the same way).
    """
    seen: dict = {}

    def report(data: dict) -> None:
        seen.update(data)
        progress(dict(seen))

    return report


def stage(progress: Progress | None, name: str, **fields) -> None:
    """Which step the training is in ("split", "audit", "cache" 37/117 ...), for the bar and /jobs."""
    if progress is not None:
        progress({"stage": name, **fields})


def throttled(report: Callable[[int, int], None], every_s: float = 0.5) -> Callable[[int, int], None]:
    """``report(done, total)`` at most every ``every_s`` seconds, and always for the last one."""
    last = [0.0]

    def call(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= every_s:
            last[0] = now
            report(done, total)

    return call
