"""Prediction with the promoted model: a bad image is a per-image outcome, the others are scored."""

from __future__ import annotations

import pytest

from app import cli
from config.settings import Settings
from dataset.images import ImageRejected
from dataset.storage import LocalStorage
from tests.images import encode, scene
from tests.trainer.builders import make_samples
from trainer.predict import load_promoted
from trainer.train import train_on_samples

# One test process runs this module: its module-scoped fixture is costly (make test: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("trainer.test_predict")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("predict")
    settings = Settings(
        _env_file=None,
        dataset_dir=root / "datasets",
        models_dir=root / "models",
        log_dir=root / "logs",
        train_arch="test_resnet",
        train_image_size=32,
        train_epochs=4,
        train_lr=3e-3,
        train_batch_size=16,
        train_workers=0,
        val_fraction=0.25,
        min_train_samples=20,
        train_pretrained=False,
        train_device="cpu",
    )
    storage = LocalStorage(settings.dataset_dir)
    result = train_on_samples(settings, make_samples(storage, 80), storage)
    assert result["promoted"], result["promotion_reason"]
    return settings


GOOD = [encode(scene(1, (64, 48)), "JPEG"), encode(scene(2, (80, 60)), "PNG")]


def test_bad_images_get_a_reason_and_the_others_their_score(trained):
    predictor = load_promoted(trained, batch_size=2)  # the bad ones fall in different batches
    truncated = GOOD[0][: len(GOOD[0]) // 2]
    outcomes = predictor.predict_each([GOOD[0], b"plain text, not a picture", GOOD[1], truncated])

    assert [o.ok for o in outcomes] == [True, False, True, False]
    assert (outcomes[1].reason, outcomes[3].reason) == ("not_an_image", "truncated")
    assert outcomes[1].message and outcomes[3].message
    good_alone = predictor.predict_bytes(GOOD)
    assert [outcomes[0].probability, outcomes[2].probability] == pytest.approx(good_alone, abs=1e-6)
    with pytest.raises(ImageRejected, match="not_an_image"):  # the contract of predict_bytes
        predictor.predict_bytes([GOOD[0], b"plain text, not a picture"])


def test_predict_files_reports_unreadable_files(trained, tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(GOOD[1])
    paths = [tmp_path / "missing.jpg", tmp_path, image]
    outcomes = load_promoted(trained, batch_size=2).predict_files(paths)  # over two batches
    assert [o.reason for o in outcomes] == ["unreadable", "unreadable", None]
    assert "cannot read the file" in outcomes[0].message and 0.0 <= outcomes[2].probability <= 1.0


def test_cli_predict_prints_a_reason_for_a_bad_file_and_goes_on(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no developer .env is picked up
    for name, value in (
        ("DATASET_DIR", trained.dataset_dir),
        ("MODELS_DIR", trained.models_dir),
        ("LOG_DIR", tmp_path / "logs"),
        ("TRAIN_DEVICE", "cpu"),
    ):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(cli, "configure_logging", lambda settings: None)
    files = [tmp_path / "a.jpg", tmp_path / "broken.jpg", tmp_path / "b.png"]
    for path, data in zip(files, [GOOD[0], b"\xff\xd8\xff garbage", GOOD[1]], strict=True):
        path.write_bytes(data)

    assert cli.main(["predict", *map(str, files)]) == 1  # not every file could be scored
    out, err = capsys.readouterr()
    scored = dict(reversed(line.split("  ", 1)) for line in out.splitlines())
    assert set(scored) == {str(files[0]), str(files[2])}
    assert all(0.0 <= float(p) <= 1.0 for p in scored.values())
    assert f"{files[1]}: not scored" in err and "Traceback" not in err
