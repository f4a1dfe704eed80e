"""Per-batch training progress: the numbers, the pacing, and a real (tiny) training that reports
from its first batch on."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from app.cli_views import progress_bar
from dataset.storage import LocalStorage
from tests.trainer.builders import make_samples
from trainer.progress import REPORT_EVERY_SECONDS, batch_event, batch_reporter, cumulative
from trainer.train import train_on_samples


def test_batch_event_counts_the_whole_run():
    event = batch_event(epoch=2, epochs=4, batch=5, batches=10, images=80, seconds=4.0)
    assert (event["done"], event["total"], event["percent"]) == (15, 40, 37.5)
    assert event["images_per_s"] == 20.0
    assert event["eta_s"] == pytest.approx((40 - 15) * 0.8)  # 0.8 s per batch in this epoch


def test_reporter_sends_first_and_last_batch_and_paces_the_rest():
    now = [100.0]
    sent = []
    on_batch = batch_reporter(sent.append, epoch=1, epochs=1, clock=lambda: now[0])
    for batch in range(1, 11):
        now[0] += REPORT_EVERY_SECONDS / 4  # four batches per reporting interval
        on_batch(batch, 10, batch * 8)
    assert [e["batch"] for e in sent] == [1, 5, 9, 10]
    assert sent[0]["images_per_s"] == pytest.approx(8 / (REPORT_EVERY_SECONDS / 4))
    assert batch_reporter(None, 1, 1) is None


def test_training_reports_rate_and_eta_from_the_first_batch(make_settings, tmp_path):
    settings = make_settings(
        train_arch="test_resnet",
        train_image_size=32,
        train_epochs=2,
        train_batch_size=8,
        train_workers=0,
        val_fraction=0.25,
        min_train_samples=20,
    )
    storage = LocalStorage(tmp_path / "datasets")
    events = []
    train_on_samples(settings, make_samples(storage, 40), storage, progress=events.append)
    batches = [e for e in events if "batch" in e]
    first_batch = events.index(batches[0])
    first_epoch_end = next(i for i, e in enumerate(events) if "train_loss" in e)
    assert batches[0]["batch"] == 1 and batches[0]["epoch"] == 1 and first_batch < first_epoch_end
    assert all(e["images_per_s"] > 0 and e["eta_s"] >= 0 for e in batches)
    assert batches[-1]["percent"] == 100.0 and batches[-1]["eta_s"] == 0
    assert {e["epoch"] for e in batches} == {1, 2}
    assert [e["batch"] for e in batches if e["epoch"] == 1][-1] == batches[0]["batches"]


def test_cli_bar_fits_80_columns_and_keeps_the_batch_count_after_an_epoch():
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    with progress_bar("train", console=console) as report:
        report(batch_event(2, 5, 17, 40, 17 * 32, 9.5))
        report(
            {
                "stage": "train",
                "epoch": 2,
                "epochs": 5,
                "train_loss": 0.5,
                "val_loss": 0.4,
                "val_auc": 0.9123,
                "val_acc": 0.8,
                "lr": 1e-4,
            }
        )
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert all(len(line) <= 80 for line in lines), lines
    # 143 batches left at 9.5/17 s each: ETA 1:19.
    assert "57/200" in lines[-1] and "57.3 img/s" in lines[-1] and "ETA 1:19" in lines[-1]
    assert "auc 0.912" in lines[-1]


def test_cumulative_reports_keep_the_last_batch_numbers():
    sent = []
    report = cumulative(sent.append)
    report(batch_event(1, 2, 4, 4, 32, 2.0))
    report({"stage": "train", "epoch": 1, "epochs": 2, "train_loss": 0.4, "val_auc": 0.8})
    assert sent[-1]["images_per_s"] == 16.0 and sent[-1]["percent"] == 50.0 and sent[-1]["val_auc"] == 0.8
    assert "val_auc" not in sent[0]  # earlier reports are not changed afterwards
