"""Building (``build_network``), saving and loading the timm model, and choosing the device.

An artifact folder holds ``weights.pt`` (a plain ``state_dict``) and ``model.json`` (architecture,
preprocessing, class index map, metrics, sha256 of the weights): enough for Exposr-Core to call
``timm.create_model(arch, num_classes=2)`` and ``load_state_dict`` without this code.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from config.settings import Settings
from trainer.cache import CACHE_QUALITY
from trainer.data import Normalizer, Preprocessing, preprocessing_for
from trainer.errors import ModelNotFound, TrainingError
from trainer.evaluate import CLASS_INDEX
from trainer.registry import write_json_atomic

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
MODEL_JSON = "model.json"
_PRETRAINED_HELP = (
    "Set TRAIN_PRETRAINED_FILE to a local checkpoint of this architecture "
    "(offline machines), or TRAIN_PRETRAINED=false to train from scratch."
)
# One request, no retries, to learn whether the hub answers at all: offline, the hub client would
# otherwise retry with backoff for about 50 s per weights file before giving up.
HUB_PROBE_TIMEOUT_S = 5.0


def build_model(settings: Settings) -> torch.nn.Module:
    """timm model with a two-class head, starting from the configured pretrained weights."""
    arch = settings.train_arch
    if not timm.is_model(arch):
        raise TrainingError(
            f"TRAIN_ARCH={arch!r} is not a timm architecture; "
            "pick one of timm.list_models(), e.g. 'vit_small_patch16_224'"
        )
    file = settings.train_pretrained_file
    if file is not None:
        return _from_file(arch, Path(file))
    if not settings.train_pretrained:
        return timm.create_model(arch, pretrained=False, num_classes=len(CLASS_INDEX))
    return _from_hub(arch)


def _from_hub(arch: str) -> torch.nn.Module:
    """Hub weights through timm; when the hub does not answer, only the local hub cache is tried."""
    online = hub_reachable()
    try:
        with _hub_offline(not online):
            return timm.create_model(arch, pretrained=True, num_classes=len(CLASS_INDEX))
    except (OSError, RuntimeError, ValueError) as exc:
        where = (
            "could not be fetched"
            if online
            else ("are not in the local Hugging Face cache and the hub does not answer (no network?)")
        )
        raise TrainingError(
            f"pretrained weights for {arch!r} {where} (TRAIN_PRETRAINED=true): "
            f"{type(exc).__name__}: {_first_line(exc)}. {_PRETRAINED_HELP}"
        ) from exc


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub answers one HEAD request (its own client: proxies, TLS verified).

    False at once when HF_HUB_OFFLINE is set.  Any HTTP answer counts: the question is only
    whether the network path exists.
    """
    import httpx2  # the HTTP library huggingface_hub is built on
    from huggingface_hub import constants, get_session

    if constants.is_offline_mode():
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except httpx2.TransportError as exc:
        log.warning(
            "Hugging Face Hub at %s does not answer (%s): using the local cache only",
            constants.ENDPOINT,
            _first_line(exc),
        )
        return False
    return True


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's own offline mode (the HF_HUB_OFFLINE switch, read at call time) for the
    duration of one model build: cached weights load at once, missing ones fail at once."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _from_file(arch: str, file: Path) -> torch.nn.Module:
    if not file.is_file():
        raise TrainingError(
            f"TRAIN_PRETRAINED_FILE={file} does not exist or is not a file. "
            "Point it at a checkpoint for TRAIN_ARCH, or unset it and use "
            "TRAIN_PRETRAINED=true (needs internet) or false (from scratch)."
        )
    try:
        # timm loads the file and drops the classifier when its class count differs from ours.
        return timm.create_model(
            arch, pretrained=True, num_classes=len(CLASS_INDEX), pretrained_cfg_overlay={"file": str(file)}
        )
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise TrainingError(
            f"TRAIN_PRETRAINED_FILE={file} does not fit TRAIN_ARCH={arch!r} (a checkpoint of "
            f"another architecture?): {_first_line(exc)}. {_PRETRAINED_HELP}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300].rstrip(".") if text else type(exc).__name__


@dataclass
class Network:
    """The model of a training and how it is fed: device, mixed precision, preprocessing."""

    model: torch.nn.Module
    pre: Preprocessing
    prepare: Normalizer  # a uint8 batch to the device, normalised
    device: torch.device
    amp_dtype: torch.dtype | None


def build_network(settings: Settings) -> Network:
    """The timm model on its device, with the preprocessing it is trained and evaluated with."""
    device, amp_dtype = pick_device(settings.train_device)
    model = build_model(settings).to(device)
    pre = preprocessing_for(
        model, settings.train_image_size, cache_quality=CACHE_QUALITY if settings.train_cache else None
    )
    return Network(model, pre, Normalizer(pre, device), device, amp_dtype)


def pick_device(name: str) -> tuple[torch.device, torch.dtype | None]:
    """(device, autocast dtype or None): ``auto`` takes CUDA when present, with mixed precision there."""
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("TRAIN_DEVICE=cuda but no CUDA device is available; use auto or cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu"), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cuda"), dtype


def save_artifacts(folder: Path, model: torch.nn.Module, pre: Preprocessing, info: dict) -> str:
    """Write weights.pt and model.json into ``folder``; returns the weights' sha256."""
    weights = folder / WEIGHTS_FILE
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, weights)
    sha256 = file_sha256(weights)
    write_json_atomic(
        folder / MODEL_JSON,
        {
            **info,
            "num_classes": len(CLASS_INDEX),
            "class_index": CLASS_INDEX,
            "positive_class": "ai",
            "image_size": pre.image_size,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "preprocessing": pre.as_dict(),
            "weights_file": WEIGHTS_FILE,
            "sha256": sha256,
            "timm_version": timm.__version__,
            "torch_version": torch.__version__,
        },
    )
    return sha256


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_artifacts(
    folder: Path,
    device: torch.device | str = "cpu",
) -> tuple[torch.nn.Module, Preprocessing, dict]:
    """Rebuild the model from model.json with timm and load its weights (checked against sha256)."""
    folder = Path(folder)
    try:
        card = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelNotFound(f"{folder / MODEL_JSON} is missing; retrain or restore the model folder") from exc
    weights = folder / card.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelNotFound(f"{weights} is missing; retrain or restore the model folder")
    if card.get("sha256") and file_sha256(weights) != card["sha256"]:
        raise ModelNotFound(f"{weights} does not match the sha256 in model.json (corrupt or replaced)")
    model = timm.create_model(card["architecture"], pretrained=False, num_classes=card["num_classes"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    p = card["preprocessing"]
    pre = Preprocessing(
        image_size=p["image_size"],
        mean=tuple(p["mean"]),
        std=tuple(p["std"]),
        crop_pct=p["crop_pct"],
        jpeg_quality=p["jpeg_quality"],
        cache_quality=p.get("cache_jpeg_quality"),
    )
    return model.to(device).eval(), pre, card
