"""Real (tiny) trainings: a timm test architecture on 32 px images, seconds each."""

from __future__ import annotations

import dataclasses
import io
import json
import socket

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.metrics import log_loss, roc_auc_score
from torchvision.transforms import v2

from dataset.images import decode_rgb
from tests.images import encode
from tests.trainer.builders import make_samples
from trainer.errors import TrainingError
from trainer.modeling import build_model, hub_reachable
from trainer.predict import load_promoted
from trainer.registry import load_registry, promoted_entry
from trainer.split import assign_splits
from trainer.train import train_on_samples

ARCH = "test_resnet"


def test_learns_a_learnable_difference_and_saves_a_rebuildable_model(tiny, storage):
    settings = tiny()
    # seed 2: a set at which 4 epochs also move the argmax (seeds 0-1 rank perfectly, AUC 1.00, but
    # call every picture real at 0.5, which leaves precision undefined)
    samples = make_samples(storage, 120, seed=2)
    events = []
    result = train_on_samples(settings, samples, storage, progress=events.append)

    epochs = [e for e in events if "train_loss" in e]  # the others: per-batch progress, audit, evaluate
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4] and all(e["epochs"] == 4 for e in epochs)
    assert {"train_loss", "val_loss", "val_auc"} <= set(epochs[-1])
    steps = [e["stage"] for e in events if e["stage"] != "train"]
    steps = [stage for i, stage in enumerate(steps) if i == 0 or steps[i - 1] != stage]
    assert steps == ["split", "audit", "model", "cache", "evaluate"]  # the bar names each step
    cache = [e for e in events if e["stage"] == "cache"]
    assert (cache[0]["done"], cache[-1]["done"]) == (0, 120) and cache[-1]["total"] == 120
    assert result["val_auc"] > 0.9 and result["version"] == "v1" and result["promoted"] is True
    assert (result["dataset_size"], result["train_size"] + result["val_size"]) == (120, 120)

    entry = load_registry(settings.models_dir)[0]
    for field in (
        "model",
        "version",
        "timestamp",
        "dataset_size",
        "train_size",
        "val_size",
        "val_acc",
        "val_auc",
        "val_loss",
        "precision",
        "recall",
        "architecture",
        "weights",
        "sha256",
    ):
        assert entry[field] is not None, field
    # Rebuild from model.json alone, as Exposr-Core would, and reproduce the trainer's scores.
    folder = settings.models_dir / "vit" / "v1"
    card = json.loads((folder / "model.json").read_text())
    assert card["class_index"] == {"real": 0, "ai": 1} and card["architecture"] == ARCH
    model = timm.create_model(card["architecture"], pretrained=False, num_classes=card["num_classes"])
    model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    model.eval()
    report = json.loads((folder / "report.json").read_text())
    by_id = {s.id: s for s in samples}
    val = [by_id[i] for i in report["evaluation"]["image_ids"]]
    assert len(val) == entry["val_size"] and report["version"] == "v1"
    images = [storage.get(s.image_key) for s in val]
    probs = _probs_from_card(model, card, images)
    labels = [card["class_index"][s.label] for s in val]
    assert roc_auc_score(labels, probs) == pytest.approx(entry["val_auc"], abs=1e-6)
    assert log_loss(labels, probs) == pytest.approx(entry["val_loss"], abs=1e-4)
    # The Predictor the CLI and labeler use gives the same probabilities, calibrated by model.json's T.
    assert card["temperature"] > 0 and card["temperature"] == report["evaluation"]["temperature"]
    calibrated = _probs_from_card(model, card, images, temperature=card["temperature"])
    assert load_promoted(settings).predict_bytes(images) == pytest.approx(calibrated, abs=1e-5)
    _report_alone_redraws_its_figures(report, samples, calibrated)


def _report_alone_redraws_its_figures(report: dict, samples, calibrated: list[float]) -> None:
    """report.json's per-image rows are enough to recompute the AUC, its DeLong interval and the
    curves, without the model or the images (the console plots from them)."""
    from trainer.stats import auc_estimate

    rows = report["evaluation"]["images"]
    by_id = {s.id: s for s in samples}
    assert [r["id"] for r in rows] == report["evaluation"]["image_ids"]
    for row in rows:
        sample = by_id[row["id"]]
        assert (row["sha256"], row["label"], row["source"]) == (sample.sha256, sample.label, sample.source)
    labels = np.array([r["label"] == "ai" for r in rows], dtype=int)
    estimate = auc_estimate(labels, np.array([r["margin"] for r in rows]))
    assert round(estimate.auc, 4) == report["evaluation"]["auc"]
    assert [round(x, 4) for x in estimate.ci95] == report["evaluation"]["auc_ci95"]
    assert roc_auc_score(labels, [r["p_ai_raw"] for r in rows]) == pytest.approx(estimate.auc, abs=1e-6)
    assert [r["p_ai"] for r in rows] == pytest.approx(calibrated, abs=1e-5)  # after temperature
    curve = report["training"]["epochs"]
    assert [e["epoch"] for e in curve] == [1, 2, 3, 4] and all(e["train_loss"] > 0 for e in curve)


def _probs_from_card(model, card, images: list[bytes], temperature: float = 1.0) -> list[float]:
    pre = card["preprocessing"]
    cached = [_pillow_jpeg(pre["cache_jpeg_quality"], subsampling=0)] if pre.get("cache_jpeg_quality") else []
    transform = v2.Compose(
        [
            *cached,  # the training cache's JPEG round trip (these pictures need no shrink)
            v2.Resize(int(round(pre["image_size"] / pre["crop_pct"])), antialias=True),
            v2.CenterCrop(pre["image_size"]),
            _pillow_jpeg(pre["jpeg_quality"]),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(card["mean"], card["std"]),
        ]
    )
    batch = torch.stack([transform(decode_rgb(b)) for b in images])
    with torch.no_grad():
        return (model(batch) / temperature).softmax(dim=1)[:, card["class_index"]["ai"]].tolist()


def _pillow_jpeg(quality: int, **options):
    def recompress(image: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality, **options)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return recompress


def test_random_labels_stay_near_chance_and_are_never_promoted(tiny, storage):
    for seed in range(3):
        # The colour-cast pictures: the seeds at which these random labels stay at chance are known.
        # 80 images: 10 + 10 on the evaluation side, the gate's minimum (120 took twice as long).
        samples = make_samples(storage, 80, seed=seed, learnable=False, signal="cast")
        result = train_on_samples(tiny(train_seed=seed), samples, storage)
        assert result["promoted"] is False, result["promotion_reason"]
        assert "cannot be told from chance" in result["promotion_reason"]
        assert result["val_auc_ci95"][0] <= 0.5


def test_too_few_samples_names_the_counts(tiny, storage):
    samples = make_samples(storage, 10)
    with pytest.raises(TrainingError, match=r"10 labelled images \(5 real, 5 ai\).*MIN_TRAIN_SAMPLES=20"):
        train_on_samples(tiny(), samples, storage)


def test_one_class_only_is_refused_and_unlabeled_never_counts(tiny, storage):
    samples = [s for s in make_samples(storage, 60) if s.label == "real"]
    samples += [dataclasses.replace(s, id=s.id + "u", label="unlabeled") for s in samples]
    with pytest.raises(TrainingError, match=r"30 labelled images \(30 real, 0 ai\).*ai"):
        train_on_samples(tiny(), samples, storage)


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """The hub's endpoint is a closed port on loopback (refused at once) and its cache is empty."""
    import huggingface_hub.constants

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def test_unreachable_hub_fails_at_once_naming_both_settings(tiny, storage, offline_hub):
    assert not hub_reachable()
    with pytest.raises(TrainingError) as info:  # no retries with backoff: one refused request
        train_on_samples(tiny(train_pretrained=True), make_samples(storage, 40), storage)
    message = str(info.value)
    assert "TRAIN_PRETRAINED=true" in message and "TRAIN_PRETRAINED_FILE" in message
    assert "hub does not answer" in message


def test_unreachable_hub_still_serves_weights_from_the_local_cache(tiny, offline_hub):
    from safetensors.torch import save_file

    source = timm.create_model(ARCH, pretrained=False, num_classes=1000)
    repo = offline_hub / "models--timm--test_resnet.r160_in1k"  # the hub cache's own layout
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(source.state_dict(), repo / "snapshots" / ("0" * 40) / "model.safetensors")

    model = build_model(tiny(train_pretrained=True))
    name = next(k for k in source.state_dict() if k.endswith("weight") and "conv" in k)
    assert torch.equal(model.state_dict()[name], source.state_dict()[name])
    assert model.get_classifier().out_features == 2


def test_missing_pretrained_file_is_named(tiny, storage, tmp_path):
    with pytest.raises(TrainingError, match="TRAIN_PRETRAINED_FILE=.*does not exist"):
        train_on_samples(
            tiny(train_pretrained_file=tmp_path / "nope.pth"), make_samples(storage, 40), storage
        )


def test_pretrained_file_is_loaded_except_the_head(tiny, storage, tmp_path):
    source = timm.create_model(ARCH, pretrained=False, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "ckpt.pth")
    model = build_model(tiny(train_pretrained_file=tmp_path / "ckpt.pth"))
    name = next(k for k in source.state_dict() if k.endswith("weight") and "conv" in k)
    assert torch.equal(model.state_dict()[name], source.state_dict()[name])
    assert model.get_classifier().out_features == 2


def test_unknown_architecture_is_explained(tiny, storage):
    with pytest.raises(TrainingError, match="TRAIN_ARCH='no_such_net' is not a timm architecture"):
        train_on_samples(tiny(train_arch="no_such_net"), make_samples(storage, 40), storage)


def test_unreadable_images_are_skipped_and_counted_once_each(tiny, storage):
    settings, samples = tiny(train_epochs=3), make_samples(storage, 60)
    plan = assign_splits(
        samples,
        radius=settings.split_near_dup_distance,
        eval_fraction=settings.val_fraction,
        min_per_class=settings.eval_min_per_class,
    )
    train, val = plan.train, plan.eval
    broken = [train[0], val[0]]  # one on each side: training reads and validation reads
    (storage.root / broken[0].image_key).unlink()  # missing file
    (storage.root / broken[1].image_key).write_bytes(b"not a picture")  # undecodable
    result = train_on_samples(settings, samples, storage)  # each is read (and fails) 3 times
    assert result["skipped_images"] == 2 and result["version"] == "v1"
    assert result["skipped_ids"] == sorted(s.id for s in broken)


def test_promotion_keeps_the_better_model_served(tiny, storage):
    samples = make_samples(storage, 120)
    first = train_on_samples(tiny(), samples, storage)
    same = train_on_samples(tiny(), samples, storage)  # same data and seed: a tie is "as good"
    worse = train_on_samples(tiny(train_lr=1e-9, train_epochs=1), samples, storage)
    assert (first["promoted"], same["promoted"], worse["promoted"]) == (True, True, False)
    assert same["compared_with"] == "v1" and same["auc_difference"] == 0.0
    assert same["incumbent_metrics"]["val_auc"] == pytest.approx(same["val_auc"])
    assert "cannot be told from chance" in worse["promotion_reason"] or worse["auc_difference"] < 0
    settings = tiny()
    assert promoted_entry(settings.models_dir, "vit")["version"] == "v2"
    assert [e["promoted"] for e in load_registry(settings.models_dir)] == [True, True, False]
    assert (settings.models_dir / "vit" / "v3" / "weights.pt").is_file()  # rejected, but kept


def test_an_unreadable_promoted_model_card_gives_way_to_the_new_version(tiny, storage):
    samples = make_samples(storage, 80)
    settings = tiny(train_epochs=3)
    assert train_on_samples(settings, samples, storage)["promoted"]
    (settings.models_dir / "vit" / "v1" / "model.json").write_text("{not json")  # hand-edited, cut off
    second = train_on_samples(settings, samples, storage)
    assert second["promoted"] is True and "could not be scored" in second["promotion_reason"]


def test_failure_mid_run_leaves_models_as_they_were(tiny, storage):
    samples = make_samples(storage, 60)
    settings = tiny(train_epochs=2)
    train_on_samples(settings, samples, storage)
    before = _snapshot(settings.models_dir)

    def explode(event):
        if event.get("epoch") == 2:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        train_on_samples(settings, samples, storage, progress=explode)
    assert _snapshot(settings.models_dir) == before


def _snapshot(folder) -> dict:
    """Registry and version folders (the lock and resume checkpoints of a failed run are not models)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".registry.lock" and ".resume" not in p.parts
    }


def test_probabilities_are_well_formed(tiny, storage):
    settings = tiny(train_epochs=3)
    samples = make_samples(storage, 80)
    assert train_on_samples(settings, samples, storage)["promoted"]
    probs = np.array(load_promoted(settings).predict_bytes([storage.get(s.image_key) for s in samples]))
    assert probs.shape == (80,) and ((probs >= 0) & (probs <= 1)).all()


@pytest.mark.parametrize(
    ("image_size", "fmt", "decoded"),
    [
        (64, "JPEG", (144, 96)),  # decoded at 1/4 (180 >= 1.5 x 64), then shrunk to exactly 96
        (160, "JPEG", (360, 240)),  # 1/2 (360 >= 240), then 240
        (64, "PNG", (144, 96)),  # other formats reduce by the same factor
        (480, "JPEG", (1080, 720)),  # nothing to spare: full size
    ],
)
def test_big_images_are_decoded_reduced_to_what_training_needs(storage, image_size, fmt, decoded):
    from trainer.data import Preprocessing, StoredImages

    pre = Preprocessing(image_size, (0.5,) * 3, (0.5,) * 3)
    key = f"images/big.{fmt.lower()}"
    storage.put(key, encode(Image.new("RGB", (1080, 720), (90, 120, 150)), fmt))
    data = StoredImages(storage, [key], [0], transform=None, max_pixels=10_000_000, reduce_to=pre.decode_side)
    assert data.load(0).size == decoded
