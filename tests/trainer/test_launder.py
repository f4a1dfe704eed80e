"""The laundering chains produce the documented sizes and encodings, start from the original, and
act as an augmentation at the probability asked for."""

from __future__ import annotations

import io
import json
import random

import pytest
from PIL import Image, JpegImagePlugin

from dataset.storage import LocalStorage
from tests.images import encode, scene
from trainer.data import StoredImages
from trainer.launder import CHAINS, Chain, Encode, Launder, laundered_picture


def _big(size=(2400, 1600)) -> Image.Image:
    return scene(7, (240, 160)).resize(size, Image.Resampling.BILINEAR)


def _ijg_luma_dc(quality: int) -> int:
    """The first luminance quantiser of libjpeg's standard table (16) scaled for ``quality``."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return max(1, min(255, (16 * scale + 50) // 100))


def _encodings(name: str, image: Image.Image) -> list[tuple[tuple[int, int], bytes]]:
    """(size of the picture encoded, the bytes) for each encoding step of the chain, in order."""
    out = []
    for step in CHAINS[name]:
        if isinstance(step, Encode):
            out.append((image.size, step.encode(image)))
        image = step(image)
    return out


def _jpeg_facts(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        return img.quantization[0][0], JpegImagePlugin.get_sampling(img)


@pytest.mark.parametrize(
    ("name", "size", "encoded_at"),
    [
        ("social_1080_q75", (1620, 1080), [(1620, 1080)]),
        ("messenger_1280_q60", (1280, 853), [(1280, 853)]),
        ("webp_q80", (2400, 1600), [(2400, 1600)]),
        ("screenshot_075_png", (1800, 1200), [(1800, 1200)]),
        ("reshare_twice", (1280, 853), [(1620, 1080), (1280, 853)]),
    ],
)
def test_each_chain_gives_its_documented_size(name, size, encoded_at):
    image = _big()
    assert Chain(name)(image).size == size
    assert [at for at, _ in _encodings(name, image)] == encoded_at


def test_the_encodings_have_the_documented_quality_and_chroma_subsampling():
    image = _big()
    ((_, social),) = _encodings("social_1080_q75", image)
    assert _jpeg_facts(social) == (_ijg_luma_dc(75), 2)  # q75, 4:2:0 (Pillow's 2)
    ((_, messenger),) = _encodings("messenger_1280_q60", image)
    assert _jpeg_facts(messenger) == (_ijg_luma_dc(60), 2)
    assert [_jpeg_facts(b) for _, b in _encodings("reshare_twice", image)] == [
        (_ijg_luma_dc(75), 2),
        (_ijg_luma_dc(60), 2),
    ]
    ((_, webp),) = _encodings("webp_q80", image)
    assert webp[:4] == b"RIFF" and webp[8:16] == b"WEBPVP8 "  # lossy WebP ("VP8L" is lossless)
    ref = io.BytesIO()
    image.save(ref, format="WEBP", quality=80)
    assert webp == ref.getvalue()
    ((_, shot),) = _encodings("screenshot_075_png", image)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"


def test_small_pictures_are_never_enlarged_but_the_screenshot_always_scales():
    small = scene(3, (800, 600))
    assert Chain("social_1080_q75")(small).size == (800, 600)
    assert Chain("messenger_1280_q60")(small).size == (800, 600)
    assert Chain("screenshot_075_png")(small).size == (600, 450)
    with pytest.raises(ValueError, match="unknown laundering chain"):
        Chain("fax")


def test_the_chain_starts_from_the_original_then_shrinks_as_usual():
    original = encode(_big((3000, 2000)), "JPEG", quality=95)
    # Decoded without a reduction (a factor of 2 would leave 1000 < 1280 px), laundered to
    # 1620 x 1080, then shrunk to the model's decode side (48): 72 x 48.
    assert laundered_picture(original, Chain("social_1080_q75"), 48, 10**8, None).size == (72, 48)
    assert laundered_picture(original, Chain("social_1080_q75"), None, 10**8, None).size == (1620, 1080)


def test_stored_images_launder_at_the_probability_asked(tmp_path):
    storage = LocalStorage(tmp_path / "ds")
    storage.put("a.png", encode(scene(1, (400, 300)), "PNG"))
    data = StoredImages(storage, ["a.png"], [0], lambda image: image, 10**8)
    assert data.load(0).size == (400, 300)
    data.launder = Launder(1.0, ("screenshot_075_png",))
    assert data.load(0).size == (300, 225)
    random.seed(0)
    data.launder = Launder(0.3, ("screenshot_075_png",))
    sizes = [data.load(0).size for _ in range(400)]
    assert 0.2 < sizes.count((300, 225)) / 400 < 0.4
    data.launder = Launder(0.0)
    assert {data.load(0).size for _ in range(20)} == {(400, 300)}
    with pytest.raises(ValueError, match="within"):
        Launder(1.5)


def test_train_launder_aug_sends_training_pictures_through_the_chains(tiny, tmp_path, monkeypatch):
    from tests.trainer.builders import make_samples
    from trainer.train import train_on_samples

    storage = LocalStorage(tmp_path / "datasets")
    picks: list[tuple[float, str | None]] = []
    original = Launder.pick

    def spy(self):
        chain = original(self)
        picks.append((self.p, None if chain is None else chain.name))
        return chain

    monkeypatch.setattr(Launder, "pick", spy)
    monkeypatch.setattr("trainer.report.LAUNDER_MAX_IMAGES", 12)  # the report's cap, made small
    settings = tiny(train_launder_aug=0.5, train_epochs=2)
    train_on_samples(settings, make_samples(storage, 60), storage)
    report = json.loads((settings.models_dir / "vit" / "v1" / "report.json").read_text())
    n_eval = sum(report["evaluation"]["n"].values())
    assert n_eval > 12 and report["robustness"]["jpeg65"]["n"] == n_eval
    assert all(report["robustness"][name]["n"] == 12 for name in CHAINS)
    training = [name for p, name in picks if p == 0.5]  # the evaluation's chains have p = 1
    laundered = [name for name in training if name is not None]
    assert len(training) >= 60  # every training picture of both epochs asked
    assert 0.3 < len(laundered) / len(training) < 0.7 and len(set(laundered)) >= 3
    assert {name for p, name in picks if p == 1.0} == set(CHAINS)  # the report's robustness section
    assert len([p for p, _ in picks if p == 1.0]) == 12 * len(CHAINS)
