"""The content-only baseline (trainer/baseline.py) on a folder of real/ and ai/ pictures.

    python bench/content_baseline_bench.py /path/to/acceptance-data

Prints the cross-validated AUC (5 folds by pHash group, as the product folds by split group) of
the logistic regression on 8x8 colour thumbnails, with its DeLong interval on the out-of-fold
scores, against a shuffled-label run of the same probe in the same run (the chance baseline).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dataset.images import decode_rgb, inspect_image  # noqa: E402
from trainer.baseline import L2, features  # noqa: E402
from trainer.copies import signature  # noqa: E402
from trainer.split import hamming_groups  # noqa: E402
from trainer.stats import auc_estimate, logistic_fit, sigmoid  # noqa: E402

L = dict(max_bytes=200_000_000, min_side=16, max_pixels=100_000_000)
root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/acceptance-data")


def out_of_fold(x: np.ndarray, y: np.ndarray, groups: list[int], folds: int = 5) -> np.ndarray:
    keys = sorted(set(groups))
    fold_of = {g: i % folds for i, g in enumerate(keys)}
    fold = np.array([fold_of[g] for g in groups])
    scores = np.zeros(len(y))
    for k in range(folds):
        test = fold == k
        mean, std = x[~test].mean(axis=0), x[~test].std(axis=0)
        std[std == 0] = 1.0
        w = logistic_fit((x[~test] - mean) / std, y[~test], l2=L2)
        scores[test] = sigmoid(np.hstack([(x[test] - mean) / std, np.ones((int(test.sum()), 1))]) @ w)
    return scores


rows, labels, hashes = [], [], []
for label in ("real", "ai"):
    for path in sorted((root / label).iterdir()):
        data = path.read_bytes()
        try:
            info = inspect_image(data, **L)
            sig = signature(decode_rgb(data, max_pixels=L["max_pixels"], reduce_to=128))
        except Exception:  # noqa: BLE001 - unreadable files are left out
            continue
        rows.append(features(sig))
        labels.append(1.0 if label == "ai" else 0.0)
        hashes.append(info.phash)
x, y = np.stack(rows), np.array(labels)
groups = hamming_groups(hashes, 12)
est = auc_estimate(y.astype(int), out_of_fold(x, y, groups))
shuffled = np.random.default_rng(0).permutation(y)
chance = auc_estimate(shuffled.astype(int), out_of_fold(x, shuffled, groups))
print(f"{int(y.sum())} ai + {int(len(y) - y.sum())} real pictures, {len(set(groups))} groups")
lo, hi = est.ci95
print(
    f"content-only baseline (8x8 colour thumbnails, L2={L2}): AUC {est.auc:.3f} [95% CI {lo:.3f}, {hi:.3f}]"
)
print(f"same probe, shuffled labels (same run): AUC {chance.auc:.3f}")
