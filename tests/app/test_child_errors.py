"""A job process's failure in the log: a foreseen one (an ExposrError, whose message says what to
do: offline pretrained weights, a bad setting) is one line; anything else keeps its traceback."""

from __future__ import annotations

import pytest

from app.errors import ChildFailed
from app.processes import run_in_process
from trainer.errors import TrainingError


def fail_foreseen(settings, progress):
    raise TrainingError("pretrained weights are not in the local cache. Set TRAIN_PRETRAINED_FILE")


def fail_by_surprise(settings, progress):
    return {}["missing"]


@pytest.mark.parametrize(
    ("target", "message", "traceback"),
    [(fail_foreseen, "Set TRAIN_PRETRAINED_FILE", False), (fail_by_surprise, "'missing'", True)],
)
async def test_a_foreseen_failure_is_one_line_a_surprise_keeps_its_traceback(
    make_settings, target, message, traceback
):
    settings = make_settings()
    with pytest.raises(ChildFailed, match=message):
        await run_in_process(target, settings, lambda data: None, "train", background=False)
    logged = (settings.log_dir / "trainer.log").read_text()
    assert f"{target.__name__} failed" in logged and message in logged
    assert ("Traceback" in logged) is traceback, logged
