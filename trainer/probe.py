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
   features of the training side, class-weighted like the fine-tune loss. The features are never
   held in RAM as a whole: shards (``CHUNK_ROWS`` each at most) are appended to a float16 file
   on disk and the loss and gradient are summed a chunk at a time, so memory stays flat as the
   dataset grows (docs/benchmarks.md, "Peak memory").
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from dataset.storage import StorageDriver

log = logging.getLogger(__name__)

FEATURES_PREFIX = "features"
HEAD_L2 = 1e-3  # weight decay of the head, per image (the loss is a mean)
HEAD_MAX_ITER = 200
CHUNK_ROWS = 8192  # rows per feature shard and per step of the head fit: the memory bound


def timm_model(model: torch.nn.Module) -> Any:
    """The model as timm built it: ``get_classifier``, ``forward_features``, ``forward_head`` (untyped)."""
    return model


def backbone_digest(model: torch.nn.Module) -> str:
    """sha256 of every weight but the classifier's: features are only reused by the same backbone."""
    skip = {id(p) for p in timm_model(model).get_classifier().parameters()}
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


class Rows(Protocol):
    """What the head fit reads: a 2-D shape and contiguous row slices (an ndarray, a RowFile)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: slice, /) -> np.ndarray: ...


class RowFile:
    """A float16 matrix kept on disk row after row, read a chunk at a time.

    ``rows[a:b]`` reads those rows into a new array; :meth:`take` maps only the span of the rows
    asked for, for the time of the copy. Pages read once stay in the kernel's page cache (cheap to
    read again, reclaimable), not in this process: a memory map of the whole file would count every
    page it touched in the process's RSS -- 200 MB for 100k x 1,024 features, 400 MB with the
    training copy (measured with ``bench/train_bench.py --mode probe-memory``).
    """

    def __init__(self, path: Path, dims: int = 0) -> None:
        self.path, self.dims, self.count = Path(path), dims, 0
        self.path.write_bytes(b"")

    @property
    def shape(self) -> tuple[int, int]:
        return self.count, self.dims

    def __len__(self) -> int:
        return self.count

    def append(self, rows: np.ndarray) -> None:
        if len(rows) == 0:
            return
        if self.dims and rows.shape[1] != self.dims:
            raise ValueError(f"rows of {rows.shape[1]} values after rows of {self.dims}")
        self.dims = int(rows.shape[1])
        with self.path.open("ab") as f:
            f.write(np.ascontiguousarray(rows, dtype=np.float16).tobytes())
        self.count += len(rows)

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.count)
        if step != 1:
            raise ValueError("RowFile reads contiguous rows only")
        n = max(0, stop - start)
        if n == 0:
            return np.zeros((0, self.dims), dtype=np.float16)
        out = np.fromfile(self.path, dtype=np.float16, count=n * self.dims, offset=start * self.dims * 2)
        return out.reshape(n, self.dims)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows, in that order (a chunk's worth: the copy is in memory)."""
        if len(rows) == 0:
            return np.zeros((0, self.dims), dtype=np.float16)
        low, high = int(rows.min()), int(rows.max()) + 1
        span = np.memmap(
            self.path, dtype=np.float16, mode="r", offset=low * self.dims * 2, shape=(high - low, self.dims)
        )
        try:
            return np.array(span[rows - low])
        finally:
            del span  # unmapped here: the pages read do not stay in this process


class FeatureMatrix:
    """Embeddings of the cached images in a float16 :class:`RowFile` in ``folder``, with the sha256
    of each row as fixed-width bytes (65 bytes a row, not a Python string). Filled shard by shard
    (:meth:`append`), so neither loading nor extending holds more than one shard in memory.
    Later rows win on a repeated sha256.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.rows = RowFile(self.folder / "features.f16")
        self._shas: list[np.ndarray] = []

    @property
    def dims(self) -> int:
        return self.rows.dims

    @property
    def count(self) -> int:
        return self.rows.count

    def append(self, shas: np.ndarray, emb: np.ndarray) -> None:
        """Rows for ``shas`` (S64 array) with embeddings ``emb`` (stored as float16)."""
        if len(shas) != len(emb):
            raise ValueError(f"{len(shas)} sha256s for {len(emb)} embeddings")
        self.rows.append(emb)
        if len(shas):
            self._shas.append(np.asarray(shas, dtype="S64"))

    def rows_of(self, shas: Sequence[str]) -> np.ndarray:
        """Row of each sha256 (the last one stored), -1 where it has none."""
        wanted = np.array(shas, dtype="S64")  # hex digests: ASCII, encoded without a list of bytes
        if not self.count:
            return np.full(len(wanted), -1, dtype=np.int64)
        have = np.concatenate(self._shas)
        order = np.argsort(have, kind="stable")  # equal sha256s keep their row order ...
        have = have[order]
        at = np.searchsorted(have, wanted, side="right") - 1  # ... so the last of them is the latest
        found = (at >= 0) & (have[np.maximum(at, 0)] == wanted)
        return np.where(found, order[np.maximum(at, 0)], -1).astype(np.int64)

    def gather(self, rows: np.ndarray, name: str = "train.f16") -> RowFile:
        """The given rows, in that order, copied chunk by chunk into a new RowFile beside this one."""
        out = RowFile(self.folder / name, self.dims)
        for start in range(0, len(rows), CHUNK_ROWS):
            out.append(self.rows.take(rows[start : start + CHUNK_ROWS]))
        return out


class FeatureStore:
    """Embeddings per image sha256 in shards under ``features/{id}/``; new shards per retrain
    (at most ``CHUNK_ROWS`` rows each, so a shard is always small enough to load)."""

    def __init__(self, storage: StorageDriver, fid: str) -> None:
        self.storage, self.prefix = storage, f"{FEATURES_PREFIX}/{fid}/"

    def load(self, into: FeatureMatrix) -> FeatureMatrix:
        """Every shard appended to ``into``, one at a time, in name order (later shards win)."""
        for key in sorted(self.storage.list(self.prefix)):
            if not key.endswith(".npz"):
                continue
            try:
                with np.load(io.BytesIO(self.storage.get(key))) as shard:
                    shas, emb = shard["sha256"], shard["emb"]
                if emb.ndim != 2 or len(emb) != len(shas):
                    raise ValueError(f"{len(shas)} sha256s for embeddings of shape {emb.shape}")
                into.append(shas, emb)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("feature shard %s unreadable (%s): its images are embedded again", key, exc)
        return into

    def add(self, shas: Sequence[str], emb: np.ndarray) -> np.ndarray:
        """Store the embeddings of ``shas`` in shards of at most ``CHUNK_ROWS``; returns the S64 array."""
        encoded = np.array([s.encode() for s in shas], dtype="S64")
        # Names sort in the order written (to the nanosecond), so a later shard wins on load.
        now = time.time_ns()
        stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.localtime(now // 10**9))}.{now % 10**9:09d}"
        stamp += f"-{uuid.uuid4().hex[:8]}"
        for part, start in enumerate(range(0, len(encoded), CHUNK_ROWS)):
            buf = io.BytesIO()
            np.savez(
                buf,
                sha256=encoded[start : start + CHUNK_ROWS],
                emb=np.asarray(emb[start : start + CHUNK_ROWS]).astype(np.float16),
            )
            self.storage.put(f"{self.prefix}{stamp}-{part:05d}.npz", buf.getvalue())  # name order = row order
        return encoded


@torch.no_grad()
def embed_chunks(
    model: torch.nn.Module, loader, prepare, amp_dtype, rows: int = CHUNK_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(dataset positions, float32 pre-logit features) of the readable images of ``loader``, about
    ``rows`` at a time: the caller stores each chunk, so the features never pile up in memory."""
    model.eval()
    positions: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    held = 0
    for images, _, where, _ in loader:
        if len(where) == 0:
            continue
        images = prepare(images)
        with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = timm_model(model).forward_head(timm_model(model).forward_features(images), pre_logits=True)
        feats.append(out.float().cpu().numpy())
        positions.append(where.numpy())
        held += len(where)
        if held >= rows:
            yield np.concatenate(positions), np.concatenate(feats)
            positions, feats, held = [], [], 0
    if feats:
        yield np.concatenate(positions), np.concatenate(feats)


def head_objective(
    features: Rows,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    l2: float = HEAD_L2,
    chunk_rows: int = CHUNK_ROWS,
    *,
    backward: bool = True,
    buffer: torch.Tensor | None = None,
) -> float:
    """Class-weighted mean cross-entropy of the head over ``features`` plus ``l2 / 2 * |weight|^2``;
    with ``backward`` its gradient is added to ``weight.grad`` and ``bias.grad``.

    The same value as ``F.cross_entropy(x @ weight.T + bias, labels, weight=class_weights)`` on the
    whole float32 matrix, summed over ``chunk_rows`` rows at a time, each chunk converted to float32
    on its own: ``features`` may be float16 rows on disk (:class:`RowFile`), and only one chunk is in
    memory. ``buffer`` (float32, ``chunk_rows`` x dims) is reused for the conversion: torch converts
    float16 into an existing tensor ~5x faster than numpy into a new array.
    """
    if buffer is None:
        buffer = torch.empty(min(chunk_rows, len(labels)), features.shape[1])
    cw = class_weights if class_weights is not None else torch.ones(2)
    total_weight = cw[labels].sum()  # the denominator of the weighted mean (float32, as cross_entropy's)
    total = 0.0
    with torch.set_grad_enabled(backward):
        for start in range(0, len(labels), chunk_rows):
            chunk = np.asarray(features[start : start + chunk_rows])
            x = buffer[: len(chunk)]
            x.copy_(torch.from_numpy(chunk if chunk.flags.writeable else chunk.copy()))
            part = (
                F.cross_entropy(
                    x @ weight.T + bias, labels[start : start + chunk_rows], weight=cw, reduction="sum"
                )
                / total_weight
            )
            if backward:
                part.backward()  # gradients add up over the chunks
            total += part.item()
        if l2:
            penalty = 0.5 * l2 * (weight**2).sum()
            if backward:
                penalty.backward()
            total += penalty.item()
    return total


def fit_head(
    features: Rows,
    labels: np.ndarray,
    class_weights: torch.Tensor | None = None,
    l2: float = HEAD_L2,
    max_iter: int = HEAD_MAX_ITER,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(weight [2, D], bias [2], final loss) of a class-weighted, L2-regularised softmax regression.

    ``features`` may be float16 rows on disk (:class:`RowFile`) or any array: the loss and its
    gradient are streamed (:func:`head_objective`), so the fit holds one chunk of ``chunk_rows``
    rows in memory, not the dataset. The final loss is the weighted mean cross-entropy without the
    L2 term.
    """
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    weight = torch.zeros(2, features.shape[1], requires_grad=True)
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

    buffer = torch.empty(min(chunk_rows, len(y)), features.shape[1])  # one chunk, float32, reused

    def closure():
        opt.zero_grad()
        return torch.tensor(
            head_objective(features, y, weight, bias, class_weights, l2, chunk_rows, buffer=buffer)
        )

    opt.step(closure)
    final = head_objective(
        features, y, weight, bias, class_weights, 0.0, chunk_rows, backward=False, buffer=buffer
    )
    return weight.detach(), bias.detach(), final


def set_head(model: torch.nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    head = timm_model(model).get_classifier()
    if not isinstance(head, torch.nn.Linear) or tuple(head.weight.shape) != tuple(weight.shape):
        raise ValueError(
            f"the classifier of this architecture is {type(head).__name__} "
            f"{tuple(getattr(head, 'weight', torch.empty(0)).shape)}, not a linear layer of "
            f"shape {tuple(weight.shape)}: linear_probe needs a timm model with a linear head"
        )
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight))
        head.bias.copy_(bias.to(head.bias))
