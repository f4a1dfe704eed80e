"""Issue 22 point 5: a frozen benchmark (EVAL_BENCHMARK_DIR) every version is scored on, never
trained on (excluded by content), scored lazily for older versions, again when its content changes."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image, ImageOps

from tests.images import encode
from tests.trainer.builders import make_samples, textured
from trainer.benchmark import benchmark_view, read_manifest, score_pending
from trainer.registry import commit_version, load_registry, make_staging_dir
from trainer.stats import auc_estimate
from trainer.train import train_on_samples


def write_benchmark(folder: Path, n: int = 12, seed: int = 60_000) -> None:
    """``n`` new pictures per class, the same kind as the training set's (a texture on AI ones)."""
    for label in ("real", "ai"):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / label / f"{label}{i:02d}.jpg").write_bytes(
                encode(textured(seed + 2 * i + (label == "ai"), label), "JPEG", quality=90)
            )


def copy_version(models_dir: Path, version: str) -> dict:
    """A second registered version with the same files (a stand-in for another training)."""
    entry = next(e for e in load_registry(models_dir) if e["version"] == version)
    staging = make_staging_dir(models_dir)
    for name in ("weights.pt", "model.json", "train_ids.json"):
        shutil.copy(models_dir / "vit" / version / name, staging / name)
    fresh = {k: v for k, v in entry.items() if k not in ("version", "weights")}
    return commit_version(models_dir, staging, {**fresh, "promoted": False}, compared_with=None)


def test_every_version_is_scored_lazily_excluding_what_it_trained_on_by_content(tiny, storage, tmp_path):
    samples = make_samples(storage, 60, seed=5)
    settings = tiny()
    train_on_samples(settings, samples, storage)  # v1, trained before any benchmark was set
    copy_version(settings.models_dir, "v1")  # v2
    trained = json.loads((settings.models_dir / "vit" / "v1" / "train_ids.json").read_text())
    by_id = {s.id: s for s in samples}
    real_seen = next(by_id[i] for i in trained["ids"] if by_id[i].label == "real")
    ai_seen = next(by_id[i] for i in trained["ids"] if by_id[i].label == "ai")

    bench = tmp_path / "bench"
    write_benchmark(bench)
    (bench / "real" / "same-file.img.jpg").write_bytes(storage.get(real_seen.image_key))  # the same bytes
    flipped = ImageOps.mirror(Image.open(io.BytesIO(storage.get(ai_seen.image_key))).convert("RGB"))
    (bench / "ai" / "flipped.png").write_bytes(encode(flipped, "PNG"))  # an edited copy: other bytes

    with_bench = tiny(eval_benchmark_dir=bench)  # why: the setting under test
    assert [v["pending"] for v in benchmark_view(with_bench, "vit")["versions"]] == [True, True]
    assert score_pending(with_bench) == ["v1", "v2"]  # the older versions, scored the first time
    assert score_pending(with_bench) == []  # once per manifest

    manifest = read_manifest(bench)
    for version in ("v1", "v2"):
        doc = json.loads((settings.models_dir / "vit" / version / "benchmark.json").read_text())
        assert doc["manifest"] == manifest.digest
        assert doc["excluded"]["images"] == {
            "ai/flipped.png": "copy_of_training_image",
            "real/same-file.img.jpg": "same_sha256",
        }
        assert (doc["excluded"]["same_sha256"], doc["excluded"]["copy_of_training_image"]) == (1, 1)
        assert doc["n"] == {"real": 12, "ai": 12}
        scored = {row["path"] for row in doc["images"]}
        assert "ai/flipped.png" not in scored and "real/same-file.img.jpg" not in scored
        # The AUC and its DeLong interval, redrawn from the stored per-image scores.
        est = auc_estimate([r["label"] == "ai" for r in doc["images"]], [r["p_ai"] for r in doc["images"]])
        assert doc["auc"] == round(est.auc, 4) and doc["auc_ci95"] == [round(v, 4) for v in est.ci95]
        assert doc["auc_ci95"][0] <= doc["auc"] <= doc["auc_ci95"][1]
        assert doc["auc"] > 0.8  # the texture the model learnt is on the benchmark's AI pictures too

    view = benchmark_view(with_bench, "vit")
    assert [(v["version"], v["pending"], v["auc"] is not None) for v in view["versions"]] == [
        ("v1", False, True),
        ("v2", False, True),
    ]
    assert view["n"] == {"real": 13, "ai": 13}

    # A change of the benchmark's content: every version is scored again, on the new manifest.
    (bench / "ai" / "ai99.jpg").write_bytes(encode(textured(99_999, "ai"), "JPEG", quality=90))
    assert all(v["pending"] for v in benchmark_view(with_bench, "vit")["versions"])
    assert score_pending(with_bench) == ["v1", "v2"]
    doc = json.loads((settings.models_dir / "vit" / "v2" / "benchmark.json").read_text())
    assert doc["manifest"] == read_manifest(bench).digest != manifest.digest and doc["n"]["ai"] == 13


def test_without_a_benchmark_nothing_is_scored(tiny):
    assert tiny().eval_benchmark_dir is None  # the default: off
    assert score_pending(tiny()) == []
