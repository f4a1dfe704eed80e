"""P(ai) for images with a saved model: loaded once, scored in batches.

Used by ``exposr-trainer predict`` and by the labeler.  Images go through the same evaluation
transform the model was validated with (decode to RGB, resize, centre crop, JPEG, normalise).
One file that cannot be read or decoded is a per-image outcome (:class:`Prediction` with a
reason), never the end of the batch: :meth:`Predictor.predict_each` scores the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from config.settings import Settings
from dataset.errors import ImageRejected
from trainer.cache import prepared
from trainer.data import Normalizer, eval_transform
from trainer.errors import ArtifactMissing, ModelNotFound
from trainer.evaluate import CLASS_INDEX
from trainer.model_store import ModelRegistry, version_folder
from trainer.model_sync import why_none_served
from trainer.modeling import load_artifacts, pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One image's outcome: P(ai), or why it could not be scored (``reason`` code + ``message``)."""

    probability: float | None
    reason: str | None = None  # dataset.images.REASONS code, or "unreadable" for a file not read
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.probability is not None


class Predictor:
    """A loaded model plus its preprocessing; ``predict_bytes`` returns P(ai) per image."""

    def __init__(
        self, folder: Path, device: str = "auto", batch_size: int = 32, max_pixels: int = 50_000_000
    ) -> None:
        self.device, self.amp_dtype = pick_device(device)
        self.model, self.pre, self.card = load_artifacts(folder, self.device)
        # Calibration (docs/evaluation.md): P(ai) = softmax(logits / T)[ai]; 1 for older models.
        self.temperature = float(self.card.get("temperature") or 1.0)
        self.transform = eval_transform(self.pre)
        self.normalize = Normalizer(self.pre, self.device)
        self.batch_size = batch_size
        self.max_pixels = max_pixels

    served_version: str | None = None  # the version served now (None: none is)

    @property
    def version(self) -> str | None:
        return self.card.get("version")

    @property
    def served(self) -> bool:
        """Whether this is the version /models/latest serves."""
        return self.version is not None and self.version == self.served_version

    def predict_each(self, images: Sequence[bytes]) -> list[Prediction]:
        """A Prediction per encoded image, in order; a bad image gets its reason, the rest are scored."""
        outcomes: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            prepared = [self._prepare(data) for data in images[start : start + self.batch_size]]
            good = [tensor for tensor in prepared if isinstance(tensor, torch.Tensor)]
            probs = iter(self._forward(torch.stack(good)) if good else [])
            outcomes += [
                Prediction(next(probs)) if isinstance(item, torch.Tensor) else item for item in prepared
            ]
        return outcomes

    def predict_bytes(self, images: Sequence[bytes]) -> list[float]:
        """P(ai) for each encoded image; raises dataset.images.ImageRejected (the first bad image's
        reason) when one cannot be scored -- use :meth:`predict_each` to score the others anyway."""
        outcomes = self.predict_each(images)
        failed = next((o for o in outcomes if not o.ok), None)
        if failed is not None:
            raise ImageRejected(failed.reason or "prediction_failed", failed.message or "not scored")
        return [o.probability for o in outcomes if o.probability is not None]

    def predict_files(self, paths: Sequence[Path | str]) -> list[Prediction]:
        """A Prediction per file; one that cannot be read (missing, a folder, no permission) says so.

        Files are read one batch at a time, so a long list of big photos is never all in memory.
        """
        outcomes: list[Prediction] = []
        for start in range(0, len(paths), self.batch_size):
            contents = [_read(Path(p)) for p in paths[start : start + self.batch_size]]
            scored = iter(self.predict_each([data for data in contents if isinstance(data, bytes)]))
            outcomes += [next(scored) if isinstance(data, bytes) else data for data in contents]
        return outcomes

    def _prepare(self, data: bytes) -> torch.Tensor | Prediction:
        """The eval-transformed uint8 tensor, or a failed Prediction saying why."""
        try:
            # the pixels the trainer saw: reduced decode, shrink, the cache's JPEG round trip
            image = prepared(data, self.pre.decode_side, self.max_pixels, self.pre.cache_quality)
            return self.transform(image)
        except ImageRejected as exc:
            return Prediction(None, exc.reason, exc.message)
        except (OSError, ValueError) as exc:  # decoded, but Pillow could not resize/re-encode it
            return Prediction(None, "truncated", f"the image could not be processed: {exc}")

    @torch.no_grad()
    def _forward(self, batch: torch.Tensor) -> list[float]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(self.normalize(batch))
        return (logits.float() / self.temperature).softmax(dim=1)[:, CLASS_INDEX["ai"]].cpu().tolist()


def load_promoted(settings: Settings, batch_size: int | None = None) -> Predictor:
    """The served model; ModelNotFound (with what to do) when none has been promoted yet."""
    registry = ModelRegistry.local(settings)
    entry = registry.champion()
    if entry is None:
        raise ModelNotFound(why_none_served([dict(e) for e in registry.entries()], settings.model_name))
    folder = Path(settings.models_dir) / entry["model"] / entry["version"]
    return _predictor(settings, dict(entry), folder, batch_size)


def load_version(settings: Settings, version: str, batch_size: int | None = None) -> Predictor:
    """Any registered version of MODEL_NAME, served or not (``Predictor.served`` tells which);
    ModelNotFound naming the registered versions when ``version`` is not one of them."""
    registry = ModelRegistry(settings)
    entry = registry.entry(settings.model_name, version)
    if entry is None:
        known = [e["version"] for e in registry.entries() if e.get("model") == settings.model_name]
        raise ModelNotFound(
            f"no {settings.model_name!r} version {version!r} is registered"
            + (f"; registered: {', '.join(known)}" if known else "; none is registered yet")
        )
    try:
        folder = version_folder(settings, dict(entry))
    except ArtifactMissing as exc:
        raise ModelNotFound(str(exc)) from exc
    served = registry.champion()
    return _predictor(settings, dict(entry), folder, batch_size, served=served["version"] if served else None)


def _predictor(
    settings: Settings, entry: dict, folder: Path, batch_size: int | None, served: str | None = "self"
) -> Predictor:
    log.info("loading %s %s from %s", entry["model"], entry["version"], folder)
    predictor = Predictor(
        folder,
        device=settings.train_device,
        batch_size=batch_size or settings.train_batch_size,
        max_pixels=settings.max_image_pixels,
    )
    predictor.served_version = entry["version"] if served == "self" else served
    return predictor


def _read(path: Path) -> bytes | Prediction:
    try:
        return path.read_bytes()
    except OSError as exc:  # FileNotFoundError, IsADirectoryError, PermissionError ...
        return Prediction(None, "unreadable", f"cannot read the file: {exc.strerror or exc}")
