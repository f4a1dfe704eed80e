"""The one progress callback type: what a long job (scrape, training, labelling) calls as it goes.

Each event is a plain dict (JSON, for the job row and the console): a scrape reports
``{"source", "done", "total", "stored"}`` per source, a training ``{"stage", "epoch", "epochs",
"batch", "batches", "percent", "images_per_s", "eta_s", ...}``, the labeler ``{"done", "total", ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ProgressEvent = dict[str, Any]
Progress = Callable[[ProgressEvent], None]
