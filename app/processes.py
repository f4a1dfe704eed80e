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
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from app.errors import ChildFailed
from config.errors import ExposrError
from config.settings import Settings

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
TERMINATE_GRACE_SECONDS = 10
EXIT_GRACE_SECONDS = 30
CHILD_NICENESS = 10


JobTarget = Callable[[Settings, Callable[[dict], None]], Any]
# A job's result: a mapping (the TypedDict results), which comes back as the same plain JSON data.
Result = TypeVar("Result", bound=Mapping[str, object])


@overload
async def run_in_process(
    target: Callable[[Settings, Callable[[dict], None]], Result],
    settings: Settings,
    progress: Callable[[dict], None],
    name: str = "job",
    *,
    background: bool = True,
) -> Result: ...


@overload
async def run_in_process(
    target: str,
    settings: Settings,
    progress: Callable[[dict], None],
    name: str = "job",
    *,
    background: bool = True,
) -> dict: ...


async def run_in_process(
    target: JobTarget | str,
    settings: Settings,
    progress: Callable[[dict], None],
    name: str = "job",
    *,
    background: bool = True,
) -> Any:  # the overloads say what
    """Call ``target`` (a module-level function, called as fn(settings, progress); or its
    "module:function" name) in a spawned process. A function travels by its qualified name, as
    pickle sends functions: the child imports its module.

    ``background``: the service's jobs run at a lower priority than the API
    (:func:`_yield_cpu_to_the_service`); a command in the foreground (``exposr-trainer train``)
    runs at the user's own priority."""
    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    # Not a daemon: the trainer's DataLoader may start worker processes of its own.
    proc = ctx.Process(
        target=child_main, args=(target, settings, messages, os.getpid(), background), name=name
    )
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


def child_main(
    target: JobTarget | str, settings: Settings, messages: Any, parent_pid: int, background: bool = True
) -> None:
    """Entry point of the spawned process: run the function, report progress and the outcome."""
    from app.logging_setup import configure_logging

    configure_logging(settings)
    _exit_with_parent(parent_pid)
    if background:
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
        if isinstance(exc, ExposrError):  # a failure we foresaw: its message says what to do
            logging.getLogger(where).error("%s failed: %s", where, exc)
        else:  # a bug or a library's surprise: the traceback is what finds it
            logging.getLogger(where).exception("%s failed", where)
        messages.put({"type": "error", "message": str(exc) or type(exc).__name__})
    else:
        messages.put({"type": "result", "data": _plain(result or {})})
    messages.close()
    messages.join_thread()


def _yield_cpu_to_the_service() -> None:
    """A lower CPU priority (nice 10) for this process and the DataLoader workers it forks (both
    inherited), so that a request handler waking up is scheduled before the training's threads.

    Not SCHED_IDLE, which this used to take: it runs a process only on CPU time nothing else
    wants, so on a machine busy with anything else (other services, a CI box running two suites)
    the training made no progress at all -- a 10-epoch training at load 13 sat for minutes without
    finishing an epoch. nice 10 weighs ~1/10 of the API under contention and still moves.
    """
    os.nice(CHILD_NICENESS)


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
