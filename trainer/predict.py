"""P(ai) for images with a saved model: loaded once, scored in batches.

Used by ``exposr-trainer predict`` and by the labeler.  Images go through the same evaluation
transform the model was validated with (decode to RGB, resize, centre crop, JPEG, normalise).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from config.settings import Settings
from dataset.images import decode_rgb
from trainer.data import Normalizer, eval_transform
from trainer.errors import ModelNotFound
from trainer.evaluate import CLASS_INDEX
from trainer.modeling import load_artifacts, pick_device
from trainer.registry import promoted_entry

log = logging.getLogger(__name__)


class Predictor:
    """A loaded model plus its preprocessing; ``predict_bytes`` returns P(ai) per image."""

    def __init__(self, folder: Path, device: str = "auto", batch_size: int = 32,
                 max_pixels: int = 50_000_000) -> None:
        self.device, self.amp_dtype = pick_device(device)
        self.model, self.pre, self.card = load_artifacts(folder, self.device)
        self.transform = eval_transform(self.pre)
        self.normalize = Normalizer(self.pre, self.device)
        self.batch_size = batch_size
        self.max_pixels = max_pixels

    @property
    def version(self) -> str | None:
        return self.card.get("version")

    def predict_bytes(self, images: Sequence[bytes]) -> list[float]:
        """P(ai) for each encoded image; raises dataset.images.ImageRejected for one that is not an image."""
        probs: list[float] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = torch.stack([self.transform(self._decode(b)) for b in chunk])
            probs += self._forward(batch)
        return probs

    def _decode(self, data: bytes):
        return decode_rgb(data, max_pixels=self.max_pixels, reduce_to=self.pre.decode_side)

    def predict_paths(self, paths: Sequence[Path | str]) -> list[float]:
        return self.predict_bytes([Path(p).read_bytes() for p in paths])

    @torch.no_grad()
    def _forward(self, batch: torch.Tensor) -> list[float]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(self.normalize(batch))
        return logits.float().softmax(dim=1)[:, CLASS_INDEX["ai"]].cpu().tolist()


def load_promoted(settings: Settings, batch_size: int | None = None) -> Predictor:
    """The served model; ModelNotFound (with what to do) when none has been promoted yet."""
    entry = promoted_entry(settings.models_dir, settings.model_name)
    if entry is None:
        raise ModelNotFound(f"no promoted {settings.model_name!r} model in {settings.models_dir}; "
                            "run `exposr-trainer train` first")
    folder = Path(settings.models_dir) / entry["model"] / entry["version"]
    log.info("loading %s %s from %s", entry["model"], entry["version"], folder)
    return Predictor(folder, device=settings.train_device,
                     batch_size=batch_size or settings.train_batch_size,
                     max_pixels=settings.max_image_pixels)
