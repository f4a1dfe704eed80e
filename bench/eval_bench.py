"""Honest evaluation on real pictures: grow-and-retrain, format-only labels, the shortcut audit.

    python bench/eval_bench.py /path/to/acceptance-data [--arch resnet10t --size 64 --epochs 3]

The folder holds `real/` (camera photos) and `ai/` (generated images). Two scenarios, each in a
fresh temporary dataset, through the product's own ingest and ``train_model``:

1. grow: 70 % of the files -> train v1 -> the other 30 % -> train v2. Prints each version's
   evaluation AUC with its 95 % interval and sample size, how many of v1's training images are in
   v2's evaluation set (must be 0), the promotion decision, calibration (ECE before/after, T),
   robustness and the shortcut audit.
2. format-only labels: the same pictures labelled by file format alone (PNG = "ai"), a label the
   preprocessing hides from the model. The metadata-only probe sees it; the model must not be
   promoted (its AUC cannot be told from chance).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.settings import Settings  # noqa: E402
from dataset.manager import DatasetManager  # noqa: E402
from trainer.train import train_model  # noqa: E402


def files(root: Path, label: str) -> list[tuple[Path, str]]:
    return [(p, label) for p in sorted((root / label).iterdir()) if p.is_file()]


async def ingest(settings: Settings, items: list[tuple[Path, str]], relabel=None) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with DatasetManager(settings) as dm:
        for path, label in items:
            data = path.read_bytes()
            outcome = await dm.ingest(
                data,
                {
                    "source": "folder",
                    "label": relabel(data) if relabel else label,
                    "generator": "camera" if label == "real" else "unknown",
                },
            )
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts


def settings_for(root: Path, args, **overrides) -> Settings:
    """A from-scratch CPU training of ``args.arch`` in ``root``; ``overrides`` win (acceptance_eval)."""
    return Settings(
        _env_file=None,
        dataset_dir=root / "datasets",
        models_dir=root / "models",
        log_dir=root / "logs",
        train_arch=args.arch,
        train_image_size=args.size,
        train_epochs=args.epochs,
        train_batch_size=16,
        train_workers=0,
        train_pretrained=False,
        train_device="cpu",
        min_train_samples=20,
        scheduler_enabled=False,
        min_image_side=16,
        **overrides,
    )


def summary(settings: Settings, version: str) -> dict:
    report = json.loads((settings.models_dir / "vit" / version / "report.json").read_text())
    ev, sc = report["evaluation"], report["shortcut"]
    return {
        "version": version,
        "split": report["split"],
        "eval_n": ev["n"],
        "auc": ev["auc"],
        "auc_ci95": ev["auc_ci95"],
        "ece_uncalibrated": ev["ece_uncalibrated"],
        "ece": ev["ece"],
        "temperature": ev["temperature"],
        "robustness": {k: (v["auc"], v["drop"]) for k, v in report["robustness"].items()},
        "metadata_probe_auc": sc["metadata_probe_auc"],
        "metadata_probe_auc_without_source": sc["metadata_probe_auc_without_source"],
        "format_swap_auc": sc["format_swap_auc"],
        "promoted": report["promotion"]["promoted"],
        "reason": report["promotion"]["reason"],
    }


def grow(data: Path, args) -> None:
    items = files(data, "real") + files(data, "ai")
    random.Random(0).shuffle(items)
    cut = int(len(items) * 0.7)
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), args)
        print("ingest 70 %:", asyncio.run(ingest(settings, items[:cut])))
        started = time.perf_counter()
        train_model(settings)
        print(f"v1 trained in {time.perf_counter() - started:.1f} s")
        print(json.dumps(summary(settings, "v1"), indent=1))
        v1_train = set(json.loads((settings.models_dir / "vit" / "v1" / "train_ids.json").read_text())["ids"])
        print("ingest the other 30 %:", asyncio.run(ingest(settings, items[cut:])))
        train_model(settings)
        v2 = summary(settings, "v2")
        v2_eval = set(
            json.loads((settings.models_dir / "vit" / "v2" / "report.json").read_text())["evaluation"][
                "image_ids"
            ]
        )
        print(json.dumps(v2, indent=1))
        print(f"v1 training images in v2's evaluation set: {len(v1_train & v2_eval)} of {len(v2_eval)}")


def format_only(data: Path, args) -> None:
    items = files(data, "real") + files(data, "ai")
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), args)
        counts = asyncio.run(
            ingest(settings, items, relabel=lambda b: "ai" if b[:4] == b"\x89PNG" else "real")
        )
        print("format-only labels (PNG = ai):", counts)
        train_model(settings)
        print(json.dumps(summary(settings, "v1"), indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--arch", default="resnet10t")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print("== 1. grow and retrain")
    grow(args.data, args)
    print("== 2. format-only labels")
    format_only(args.data, args)


if __name__ == "__main__":
    main()
