"""Run a synchronous, CPU-heavy function in a separate (spawned) process and await it.

The event loop only polls a multiprocessing queue, so the API keeps answering while the child
saturates the CPU. The child sends ``progress`` messages and finally one ``result`` or ``error``.
Cancelling the awaiting task (service shutdown) terminates the child; the trainer writes its
artifacts atomically, so a terminated child leaves the registry as it was.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from config.settings import Settings

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
TERMINATE_GRACE_SECONDS = 10
EXIT_GRACE_SECONDS = 30
CHILD_NICENESS = 10


class ChildFailed(Exception):
    """The child's function raised (message for a person) or the child died without a result."""


JobTarget = Callable[[Settings, Callable[[dict], None]], Any]


async def run_in_process(
    target: JobTarget | str, settings: Settings, progress: Callable[[dict], None], name: str = "job"
) -> dict:
    """Call ``target`` (a module-level function, called as fn(settings, progress); or its
    "module:function" name) in a spawned process. A function travels by its qualified name, as
    pickle sends functions: the child imports its module."""
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    # Not a daemon: the trainer's DataLoader may start worker processes of its own.
    proc = ctx.Process(target=child_main, args=(target, settings, messages, os.getpid()), name=name)
    proc.start()
    log.info("started %s in process %s (%s)", name, proc.pid, target)
    finished = False
    try:
        result = await _follow(proc, messages, progress)
        finished = True
        return result
    finally:
        await _stop(proc, name, finished)
        messages.close()


async def _follow(proc: Any, messages: Any, progress: Callable[[dict], None]) -> dict:
    while True:
        alive = proc.is_alive()
        for message in _drain(messages):
            if message["type"] == "progress":
                progress(message["data"])
            elif message["type"] == "result":
                return message["data"]
            else:
                raise ChildFailed(message["message"])
        if not alive:
            raise ChildFailed(
                f"the worker process exited (code {proc.exitcode}) without a result; see logs/trainer.log"
            )
        await asyncio.sleep(POLL_SECONDS)


def _drain(messages: Any) -> list[dict]:
    drained = []
    while True:
        try:
            drained.append(messages.get_nowait())
        except queue_mod.Empty:
            return drained


async def _stop(proc: Any, name: str, finished: bool) -> None:
    if finished:  # the child sent its result and is exiting: let it (torch teardown takes a moment)
        await asyncio.to_thread(proc.join, EXIT_GRACE_SECONDS)
    if proc.is_alive():
        log.warning("terminating %s process %s", name, proc.pid)
        proc.terminate()
        await asyncio.to_thread(proc.join, TERMINATE_GRACE_SECONDS)
        if proc.is_alive():
            proc.kill()
    await asyncio.to_thread(proc.join)


def child_main(target: JobTarget | str, settings: Settings, messages: Any, parent_pid: int) -> None:
    """Entry point of the spawned process: run the function, report progress and the outcome."""
    from app.logging_setup import configure_logging

    configure_logging(settings)
    _exit_with_parent(parent_pid)
    _yield_cpu_to_the_service()
    # SIGTERM from the service raises SystemExit, so `finally` blocks and DataLoader workers unwind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if isinstance(target, str):
        module_name, _, func_name = target.partition(":")
        func = getattr(importlib.import_module(module_name), func_name)
    else:
        func = target
    where = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"

    def report(data: dict) -> None:
        messages.put({"type": "progress", "data": _plain(data)})

    try:
        result = func(settings, report)
    except Exception as exc:  # the child's boundary: every failure becomes a message for the job row
        logging.getLogger(where).exception("%s failed", where)
        messages.put({"type": "error", "message": str(exc) or type(exc).__name__})
    else:
        messages.put({"type": "result", "data": _plain(result or {})})
    messages.close()
    messages.join_thread()


def _yield_cpu_to_the_service() -> None:
    """Lowest CPU priority for this process and the DataLoader workers it forks (both inherited).

    nice alone still lets a busy training thread finish its time slice before a waking request
    handler runs (milliseconds of tail latency on a small machine). SCHED_IDLE runs the training
    only on CPU time nothing else wants, so the API is scheduled at once; training loses nothing
    while the API is idle. Where SCHED_IDLE is unavailable (not Linux), nice is what we have.
    """
    os.nice(CHILD_NICENESS)
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:  # a container's seccomp profile may refuse it: nice still applies
            logging.getLogger(__name__).info(
                "SCHED_IDLE unavailable (%s); running at nice %d", exc, CHILD_NICENESS
            )


def _plain(data: Any) -> Any:
    """JSON-safe copy (paths, numpy numbers -> str/float), so the job row can store it."""
    return json.loads(json.dumps(data, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _exit_with_parent(parent_pid: int) -> None:
    """If the service dies without cleaning up (kill -9), the orphaned child stops too."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(2)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
