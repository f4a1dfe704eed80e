"""The linear probe's features on disk (memory-mapped) and its head fitted chunk by chunk."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer import probe
from trainer.probe import FEATURES_PREFIX, FeatureMatrix, FeatureStore, RowFile, fit_head, head_objective


def in_memory_fit(x: np.ndarray, y: np.ndarray, class_weights=None, l2=probe.HEAD_L2):
    """The head fit as it was before streaming: one float32 tensor, one cross_entropy over it."""
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    weight = torch.zeros(2, x.shape[1], requires_grad=True)
    bias = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=probe.HEAD_MAX_ITER,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xt @ weight.T + bias, yt, weight=class_weights) + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = float(F.cross_entropy(xt @ weight.T + bias, yt, weight=class_weights))
    return weight.detach(), bias.detach(), final


def features(n: int, dims: int, seed: int = 0, ai_share: float = 0.5):
    """Two overlapping classes (a separable set has no finite optimum), float16 as cached."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < ai_share).astype(np.int64)
    x = rng.normal(0, 1, (n, dims)) + y[:, None] * rng.normal(0, 0.6, dims)
    return x.astype(np.float16), y


class CountingRows:
    """A 2-D float16 array that records how many rows each read asked for."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.reads = data, data.shape, []

    def __getitem__(self, rows: slice) -> np.ndarray:
        out = self.data[rows]
        self.reads.append(len(out))
        return out


def on_disk(tmp_path, x16: np.ndarray) -> RowFile:
    """``x16`` written to a float16 row file, as the trainer hands the features to the fit."""
    rows = RowFile(tmp_path / "x.f16")
    rows.append(x16[:300])
    rows.append(x16[300:])
    return rows


def balancing(y: np.ndarray) -> torch.Tensor:
    return torch.tensor([len(y) / (2 * (y == 0).sum()), len(y) / (2 * (y == 1).sum())], dtype=torch.float32)


@pytest.mark.parametrize("balanced", [True, False])
def test_streamed_loss_and_gradient_equal_the_whole_matrix_ones(tmp_path, balanced):
    x16, y = features(700, 24, seed=3, ai_share=0.5 if balanced else 0.2)
    weights = None if balanced else balancing(y)
    torch.manual_seed(0)
    w0, b0 = torch.randn(2, 24) * 0.3, torch.randn(2) * 0.3

    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    loss = head_objective(on_disk(tmp_path, x16), torch.from_numpy(y), w, b, weights, 1e-3, chunk_rows=64)

    w_ref, b_ref = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    xt = torch.from_numpy(x16.astype(np.float32))
    ref = (
        F.cross_entropy(xt @ w_ref.T + b_ref, torch.from_numpy(y), weight=weights) + 0.5e-3 * (w_ref**2).sum()
    )
    ref.backward()

    assert loss == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(w.grad, w_ref.grad, atol=1e-7) and torch.allclose(b.grad, b_ref.grad, atol=1e-7)


def test_streamed_fit_from_disk_gives_the_in_memory_weights(tmp_path):
    x16, y = features(700, 24, seed=1)
    w, b, loss = fit_head(on_disk(tmp_path, x16), y, l2=1e-2, chunk_rows=64)  # 11 chunks
    w_ref, b_ref, loss_ref = in_memory_fit(x16, y, l2=1e-2)
    assert torch.allclose(w, w_ref, atol=1e-5) and torch.allclose(b, b_ref, atol=1e-5)
    assert loss == pytest.approx(loss_ref, abs=1e-6)
    assert float(w.abs().max()) > 0.05  # a real fit, not two zero heads agreeing


def test_class_weighted_streamed_fit_matches_the_in_memory_one_to_the_fits_own_precision(tmp_path):
    """L-BFGS in float32 stops ~1e-4 from the optimum (measured against a float64 fit), wherever
    the summation order differs; the two fits agree to that and to 1e-6 in loss."""
    x16, y = features(700, 24, seed=1, ai_share=0.2)
    w, b, loss = fit_head(on_disk(tmp_path, x16), y, balancing(y), chunk_rows=64)
    w_ref, b_ref, loss_ref = in_memory_fit(x16, y, balancing(y))
    assert torch.allclose(w, w_ref, atol=2e-4) and torch.allclose(b, b_ref, atol=2e-4)
    assert loss == pytest.approx(loss_ref, abs=1e-6)


def test_the_fit_never_reads_more_than_one_chunk_at_a_time():
    x16, y = features(500, 8, seed=2)
    counting = CountingRows(x16)
    fit_head(counting, y, chunk_rows=50, max_iter=5)
    assert counting.reads and max(counting.reads) == 50
    assert sum(counting.reads) % 500 == 0  # whole passes over the data, chunk by chunk


def test_feature_store_writes_bounded_shards_and_loads_them_one_by_one(storage, tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "CHUNK_ROWS", 4)
    store = FeatureStore(storage, "fid")
    shas = [f"{i:064x}" for i in range(10)]
    emb = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    store.add(shas, emb)
    shards = sorted(storage.list(f"{FEATURES_PREFIX}/fid/"))
    assert len(shards) == 3  # 4 + 4 + 2 rows

    loaded = store.load(FeatureMatrix(tmp_path))
    rows = loaded.rows_of([*shas, "f" * 64])
    assert rows[-1] == -1  # never embedded
    assert loaded.rows.shape == (10, 3)
    np.testing.assert_array_equal(loaded.rows[:], emb.astype(np.float16))
    np.testing.assert_array_equal(loaded.rows[3:7], emb[3:7].astype(np.float16))
    np.testing.assert_array_equal(loaded.rows.take(rows[:-1][::-1]), emb[::-1].astype(np.float16))

    # A later shard wins on a repeated sha256; the train matrix comes out in the order asked.
    store.add([shas[2]], np.full((1, 3), -1.0, dtype=np.float32))
    (tmp_path / "again").mkdir()
    loaded = store.load(FeatureMatrix(tmp_path / "again"))
    assert loaded.count == 11
    picked = loaded.gather(loaded.rows_of([shas[5], shas[2]]))
    np.testing.assert_array_equal(picked[:], np.array([emb[5], [-1, -1, -1]], dtype=np.float16))


def test_an_unreadable_shard_is_skipped_and_named(storage, tmp_path, caplog):
    store = FeatureStore(storage, "fid")
    store.add(["a" * 64], np.ones((1, 2), dtype=np.float32))
    storage.put(f"{FEATURES_PREFIX}/fid/zzz-broken.npz", b"not a zip file")
    with caplog.at_level(logging.WARNING):
        loaded = store.load(FeatureMatrix(tmp_path))
    assert loaded.count == 1 and loaded.rows_of(["a" * 64]).tolist() == [0]
    assert "zzz-broken.npz" in caplog.text
