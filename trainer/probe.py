"""``TRAIN_MODE=linear_probe``: a frozen backbone embeds each image once; a linear head is fitted.

The field's strongest recipe for small, fast-changing data (UnivFD: a frozen CLIP ViT-L/14 and a
linear layer generalise to unseen generators better than fine-tuned CNNs). Here:

1. The backbone is ``timm.create_model(TRAIN_ARCH)`` with its pretrained weights
   (``TRAIN_PRETRAINED_FILE`` offline), frozen, in eval mode.
2. Each image is embedded once, with the evaluation transform (no augmentation), on the cached
   picture; embeddings are stored through the storage driver under
   ``features/{feature id}/{shard}.npz`` (float16, with the sha256 of each image), where the
   feature id hashes the architecture, the backbone's weights and the preprocessing. A retrain
   embeds only images not yet in a shard; every host shares them.
3. The head (the model's own classifier, ``model.get_classifier()``) is fitted by L-BFGS on the
   features of the training side, class-weighted like the fine-tune loss.
4. The saved artifact is the whole model -- backbone plus head -- so ``model.json``,
   ``predict``, the labeler, promotion and Exposr-Core use it unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dataset.storage import StorageDriver

log = logging.getLogger(__name__)

FEATURES_PREFIX = "features"
HEAD_L2 = 1e-3  # weight decay of the head, per image (the loss is a mean)
HEAD_MAX_ITER = 200


def backbone_digest(model: torch.nn.Module) -> str:
    """sha256 of every weight but the classifier's: features are only reused by the same backbone."""
    skip = {id(p) for p in model.get_classifier().parameters()}
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        if id(tensor) in skip:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def feature_id(arch: str, model: torch.nn.Module, preprocessing: dict) -> str:
    key = json.dumps({"arch": arch, "weights": backbone_digest(model), "pre": preprocessing}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


class FeatureStore:
    """Embeddings per image sha256 in shards under ``features/{id}/``; a new shard per retrain."""

    def __init__(self, storage: StorageDriver, fid: str) -> None:
        self.storage, self.prefix = storage, f"{FEATURES_PREFIX}/{fid}/"

    def load(self) -> tuple[dict[str, int], np.ndarray | None]:
        """(sha256 -> row, float16 matrix) of every shard; later shards win on a repeated sha256."""
        rows: dict[str, int] = {}
        parts: list[np.ndarray] = []
        offset = 0
        for key in sorted(self.storage.list(self.prefix)):
            if not key.endswith(".npz"):
                continue
            try:
                with np.load(io.BytesIO(self.storage.get(key))) as shard:
                    shas, emb = shard["sha256"], shard["emb"]
            except (OSError, ValueError, KeyError) as exc:
                log.warning("feature shard %s unreadable (%s): its images are embedded again", key, exc)
                continue
            parts.append(emb)
            rows.update((s.decode(), offset + i) for i, s in enumerate(shas.tolist()))
            offset += len(emb)
        return rows, (np.concatenate(parts) if parts else None)

    def add(self, shas: Sequence[str], emb: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, sha256=np.array([s.encode() for s in shas], dtype="S64"), emb=emb.astype(np.float16))
        self.storage.put(
            f"{self.prefix}{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.npz", buf.getvalue()
        )


@torch.no_grad()
def embed(model: torch.nn.Module, loader, prepare, amp_dtype) -> tuple[np.ndarray, np.ndarray]:
    """(dataset positions, pre-logit features) of every readable image of ``loader``."""
    model.eval()
    positions, feats = [], []
    for images, _, where, _ in loader:
        if len(where) == 0:
            continue
        images = prepare(images)
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model.forward_head(model.forward_features(images), pre_logits=True)
        feats.append(out.float().cpu().numpy())
        positions.append(where.numpy())
    if not feats:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(positions), np.concatenate(feats)


def fit_head(
    features: np.ndarray,
    labels: np.ndarray,
    class_weights: torch.Tensor | None = None,
    l2: float = HEAD_L2,
    max_iter: int = HEAD_MAX_ITER,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(weight [2, D], bias [2], final loss) of a class-weighted, L2-regularised softmax regression."""
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    weight = torch.zeros(2, x.shape[1], requires_grad=True)
    bias = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y, weight=class_weights) + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = float(F.cross_entropy(x @ weight.T + bias, y, weight=class_weights))
    return weight.detach(), bias.detach(), final


def set_head(model: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear) or tuple(head.weight.shape) != tuple(weight.shape):
        raise ValueError(
            f"the classifier of this architecture is {type(head).__name__} "
            f"{tuple(getattr(head, 'weight', torch.empty(0)).shape)}, not a linear layer of "
            f"shape {tuple(weight.shape)}: linear_probe needs a timm model with a linear head"
        )
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_(bias.to(head.bias))
