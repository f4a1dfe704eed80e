"""Scores versions on the frozen benchmark (trainer/benchmark.py) in a background thread.

Never on the request path: start-up and every read of the benchmark (``GET /models/{name}/benchmark``,
the console's models page) only *kick* the scorer, which scores every version not yet scored on the
benchmark's current manifest -- older versions the first time ``EVAL_BENCHMARK_DIR`` is set, new
versions after a training, all of them when the folder's content changes -- and stops. torch is
loaded in that thread only.
"""

from __future__ import annotations

import logging
import threading

from config.settings import Settings

log = logging.getLogger(__name__)


class BenchmarkScorer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False
        self.last_error: str | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.eval_benchmark_dir is not None

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def kick(self) -> bool:
        """Starts a scoring pass unless one runs (then it runs once more after); False when off."""
        if not self.enabled:
            return False
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return True
            self._thread = threading.Thread(target=self._run, name="benchmark-scorer", daemon=True)
            self._thread.start()
        return True

    async def job_finished(self, job: dict) -> None:
        """After a training: the new version is scored on the benchmark."""
        if job.get("kind") == "train" and job.get("state") == "succeeded":
            self.kick()

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        from trainer.benchmark import BenchmarkError, score_pending

        while True:
            try:
                scored = score_pending(self.settings)
                self.last_error = None
                if scored:
                    log.info("benchmark: scored %s", ", ".join(scored))
            except (BenchmarkError, OSError, ValueError, RuntimeError) as exc:
                self.last_error = str(exc)
                log.warning("benchmark scoring failed: %s", exc)
            with self._lock:
                if not self._again:
                    self._thread = None
                    return
                self._again = False
