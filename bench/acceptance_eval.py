"""Issue 25's sections on the acceptance pictures: does the laundering augmentation shrink the drops?

    python bench/acceptance_eval.py /path/to/acceptance-data [--arch resnet10t --size 64 --epochs 10]

Ingests ``real/`` and ``ai/`` into one temporary dataset (the pictures are never copied into the
project), naming each AI picture's generator from ``manifest.csv`` and ingesting the generators in
the order they appeared (DALL-E 2, Stable Diffusion v1, the ML72 diffusion set, ChatGPT), a second
apart, so their first-seen times follow history and the newest (ChatGPT) is the future generator.
Then trains twice from scratch on CPU in the same dataset (same seed, same split): once with
``TRAIN_LAUNDER_AUG=0`` (the baseline) and once with ``TRAIN_LAUNDER_AUG=<p>`` (0.5 by default), and
prints from each report.json the evaluation AUC, every laundering chain's AUC and drop, the
operating points, future generators, AUC by month and the content baseline, then the drops side by
side with their difference.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.eval_bench import settings_for as eval_settings  # noqa: E402
from config.settings import Settings  # noqa: E402
from dataset.manager import DatasetManager  # noqa: E402
from trainer.launder import CHAINS, Chain, laundered_picture  # noqa: E402
from trainer.predict import load_version  # noqa: E402
from trainer.train import train_model  # noqa: E402

# manifest source_repo -> generator, in the order the generators appeared (oldest first).
GENERATORS = (
    ("openai/dalle-2-preview", "dall-e-2"),
    ("CompVis/stable-diffusion", "stable-diffusion-v1"),
    ("edmundhong/stable-diffusion", "stable-diffusion-v1"),
    ("ML72/AI-Image-Classifier-Playground", "ml72-diffusion"),  # dates unspecified in its source
    ("necenzurat/ai-image-filter", "chatgpt-image"),  # 2025; 16 ChatGPT + 2 Gemini, one source
)


def ai_generators(root: Path) -> dict[str, str]:
    """``{"ai/...": generator}`` from the manifest's ``copied_as`` / ``file`` and ``source_repo``."""
    names = dict(GENERATORS)
    out = {}
    with (root / "manifest.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            path = row.get("copied_as") or row["file"]
            if path.startswith("ai/"):
                out[path] = names.get(row["source_repo"], "unknown")
    return out


async def ingest(settings: Settings, root: Path, path_of: dict[str, Path]) -> dict[str, int]:
    """Ingest real/ then ai/ generator by generator; ``path_of`` receives {image id: file}."""
    gen_of = ai_generators(root)
    counts: dict[str, int] = {}
    reals = [p for p in sorted((root / "real").rglob("*")) if p.is_file()]
    ais = [p for p in sorted((root / "ai").rglob("*")) if p.is_file()]
    order = list(dict.fromkeys(g for _, g in GENERATORS))
    by_gen = {g: [p for p in ais if gen_of.get(str(p.relative_to(root)), "unknown") == g] for g in order}
    by_gen["unknown"] = [p for p in ais if gen_of.get(str(p.relative_to(root)), "unknown") not in order]
    async with DatasetManager(settings) as dm:
        for path in reals:
            outcome = await dm.ingest(
                path.read_bytes(), {"source": "folder", "label": "real", "generator": "camera"}
            )
            if outcome.status == "stored":
                path_of[outcome.id] = path
            counts[f"real {outcome.status}"] = counts.get(f"real {outcome.status}", 0) + 1
        for gen, paths in by_gen.items():
            if not paths:
                continue
            time.sleep(1.1)  # first-seen times are whole seconds: one generator per second
            for path in paths:
                outcome = await dm.ingest(
                    path.read_bytes(), {"source": "folder", "label": "ai", "generator": gen}
                )
                if outcome.status == "stored":
                    path_of[outcome.id] = path
                counts[f"{gen} {outcome.status}"] = counts.get(f"{gen} {outcome.status}", 0) + 1
    return counts


def settings_for(root: Path, args, launder: float) -> Settings:
    return eval_settings(root, args, train_launder_aug=launder, val_fraction=args.val_fraction)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count half)."""
    pos, neg = p[y], p[~y]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def chain_scores(settings: Settings, version: str, ids: list[str], path_of: dict[str, Path]) -> dict:
    """P(ai) per evaluation image, clean and through every chain, scored the way the report's
    evaluation scores them (trainer/launder.py's laundered_picture, then the eval transform)."""
    pred = load_version(settings, version)
    datas = [path_of[i].read_bytes() for i in ids]
    out = {"clean": np.array([pred._forward(pred._prepare(d)[None])[0] for d in datas])}
    pre = pred.pre
    for name in CHAINS:
        chain = Chain(name)
        rows = [
            pred.transform(laundered_picture(d, chain, pre.decode_side, pred.max_pixels, pre.cache_quality))
            for d in datas
        ]
        out[name] = np.array(pred._forward(torch.stack(rows)))
    return out


def paired_drops(y: np.ndarray, base: dict, aug: dict, rounds: int = 2000, seed: int = 0) -> dict:
    """Per chain: drop = clean AUC - chain AUC for each run on the same images, and the difference
    aug - base with a 95 % interval from a bootstrap over the evaluation images (resampled within
    each class, the same resample for both runs: a paired comparison)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    draws = [np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]) for _ in range(rounds)]
    out = {}
    for name in CHAINS:

        def diff(idx, name=name):
            yy = y[idx]
            d_base = auc(yy, base["clean"][idx]) - auc(yy, base[name][idx])
            d_aug = auc(yy, aug["clean"][idx]) - auc(yy, aug[name][idx])
            return d_base, d_aug, d_aug - d_base

        point = diff(np.arange(len(y)))
        boot = np.array([diff(idx) for idx in draws])
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
        out[name] = {
            "drop_base": point[0],
            "drop_base_ci95": (lo[0], hi[0]),
            "drop_aug": point[1],
            "drop_aug_ci95": (lo[1], hi[1]),
            "aug_minus_base": point[2],
            "aug_minus_base_ci95": (lo[2], hi[2]),
        }
    return out


def ci(pair) -> str:
    return "—" if not pair else f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def num(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def show(report: dict, title: str) -> None:
    ev = report["evaluation"]
    print(f"\n== {title}")
    print("split:", {k: report["split"][k] for k in ("train", "eval", "held_out", "excluded")})
    print(f"evaluation AUC {num(ev['auc'])} {ci(ev.get('auc_ci95'))} n={ev['n']}  acc {num(ev.get('acc'))}")
    print("robustness (AUC [95% CI] drop n):")
    for name, r in report["robustness"].items():
        tag = "chain" if name in CHAINS else "step "
        print(f"  {tag} {name:24s} {num(r['auc'])} {ci(r['auc_ci95'])} drop {num(r['drop'])} n={r['n']}")
    print("operating points:")
    for name, op in report["operating_points"].items():
        print(
            f"  {name}: threshold {num(op['threshold'])} TPR {num(op['tpr'])} {ci(op['tpr_ci95'])} "
            f"FPR {num(op['fpr'])} n={op['n']} warning: {op.get('warning')}"
        )
    fut = report.get("future_generators") or {}
    print(
        f"future_generators: held_out={fut.get('held_out')} AUC {num(fut.get('auc'))} "
        f"{ci(fut.get('auc_ci95'))} n={fut.get('n')} reason={fut.get('reason')}"
    )
    print("  first_seen:", fut.get("first_seen"))
    print("by_month:", json.dumps(report.get("by_month")))
    leak = report.get("leakage")
    if leak:
        print("leakage:", {k: v for k, v in leak.items() if k != "nearest_train_distance"})
    cb = report.get("content_baseline") or {}
    print("content_baseline:", json.dumps({k: v for k, v in cb.items() if k not in ("scores",)})[:600])
    print(
        "by_generator:",
        json.dumps({g: (v.get("auc"), v.get("n")) for g, v in report.get("by_generator", {}).items()}),
    )


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--arch", default="resnet10t")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--launder", type=float, default=0.5)
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="VAL_FRACTION (shipped 0.1): a bigger evaluation set"
    )
    parser.add_argument("--keep", type=Path, help="copy both report.json files here")
    args = parser.parse_args()
    print(
        f"commit {commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{args.arch} {args.size}px {args.epochs} epochs, VAL_FRACTION={args.val_fraction}, "
        "TRAIN_PRETRAINED=false, CPU"
    )
    reports, scores = {}, {}
    path_of: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("ingest:", asyncio.run(ingest(settings_for(root, args, 0.0), args.data, path_of)))
        for launder, version in ((0.0, "v1"), (args.launder, "v2")):
            settings = settings_for(root, args, launder)
            started = time.perf_counter()
            result = train_model(settings)
            version = result.get("version", version)
            took = time.perf_counter() - started
            report = json.loads(
                (settings.models_dir / settings.model_name / version / "report.json").read_text()
            )
            reports[launder] = report
            show(report, f"TRAIN_LAUNDER_AUG={launder} ({version}, trained and evaluated in {took:.0f} s)")
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                (args.keep / f"report_launder_{launder}.json").write_text(json.dumps(report, indent=1))
            rows = report["evaluation"]["images"]
            ids = [r["id"] for r in rows]
            y = np.array([r["label"] == "ai" for r in rows], dtype=bool)
            scores[launder] = chain_scores(settings, version, ids, path_of)
            print(
                f"rescored here: clean AUC {auc(y, scores[launder]['clean']):.3f} "
                f"(report {num(report['evaluation']['auc'])}); chains "
                + ", ".join(f"{n} {auc(y, scores[launder][n]):.3f}" for n in CHAINS)
            )
    base, aug = reports[0.0], reports[args.launder]
    same_eval = [r["id"] for r in base["evaluation"]["images"]] == ids
    print(f"\n== laundering drops from report.json, TRAIN_LAUNDER_AUG=0 (baseline) vs {args.launder}")
    print(f"same evaluation images in both runs: {same_eval}")
    head = ("chain", "AUC base [CI]", "drop", "AUC aug [CI]", "drop", "aug-base")
    print(f"{head[0]:24s} {head[1]:>26s} {head[2]:>7s} {head[3]:>26s} {head[4]:>7s} {head[5]:>9s}")
    for name in CHAINS:
        b, a = base["robustness"].get(name, {}), aug["robustness"].get(name, {})
        diff = None if a.get("drop") is None or b.get("drop") is None else a["drop"] - b["drop"]
        print(
            f"{name:24s} {num(b.get('auc'))} {ci(b.get('auc_ci95')):>19s} {num(b.get('drop')):>7s} "
            f"{num(a.get('auc'))} {ci(a.get('auc_ci95')):>19s} {num(a.get('drop')):>7s} {num(diff):>9s}"
        )
    if same_eval:
        print(
            "\n== paired bootstrap over the same evaluation images (2000 rounds, within class), rescored here"
        )
        print(f"{'chain':24s} {'drop base [CI]':>24s} {'drop aug [CI]':>24s} {'aug - base [CI]':>24s}")
        for name, r in paired_drops(y, scores[0.0], scores[args.launder]).items():
            print(
                f"{name:24s} {r['drop_base']:6.3f} {ci(r['drop_base_ci95']):>17s} "
                f"{r['drop_aug']:6.3f} {ci(r['drop_aug_ci95']):>17s} "
                f"{r['aug_minus_base']:6.3f} {ci(r['aug_minus_base_ci95']):>17s}"
            )
    ba, aa = base["evaluation"]["auc"], aug["evaluation"]["auc"]
    if ba and aa:
        print(f"\nclean evaluation AUC ratio aug/baseline: {aa / ba:.3f} (baseline = TRAIN_LAUNDER_AUG=0)")


if __name__ == "__main__":
    main()
