"""OpenMP's wait policy: torch steps with spinning (ACTIVE) against sleeping (PASSIVE) threads,
on an idle machine and on one whose cores are busy.

    python bench/omp_wait.py [--arch test_resnet] [--image-size 32] [--batch 8] [--steps 40]
                             [--threads 2] [--load 4]

The policy is read once, when torch loads OpenMP, so each (policy, load) case runs in a fresh
process. Each process times forward passes (inference, as evaluation runs them) and
forward + backward + optimiser steps (training) of the same model on random tensors, with
``--threads`` intra-op threads. "loaded" runs ``--load`` busy-looping processes (nice 0, like
another test suite or the API under traffic) beside it. The baseline of every ratio is ACTIVE on
the same machine in the same run: ratio = PASSIVE time / ACTIVE time (below 1 = PASSIVE faster).
The product sets PASSIVE (trainer/__init__.py) unless OMP_WAIT_POLICY is already set.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import torch, timm
args = json.loads(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(args["threads"])
model = timm.create_model(args["arch"], pretrained=False, num_classes=2)
x = torch.randn(args["batch"], 3, args["size"], args["size"])
y = torch.randint(0, 2, (args["batch"],))
model.eval()
with torch.no_grad():
    model(x)
    t = time.perf_counter()
    for _ in range(args["steps"]):
        model(x)
    forward = (time.perf_counter() - t) / args["steps"]
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
t = time.perf_counter()
for _ in range(args["steps"]):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
step = (time.perf_counter() - t) / args["steps"]
print(json.dumps({"forward_ms": forward * 1000, "step_ms": step * 1000}))
"""


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def measure(policy: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    spec = json.dumps(
        {
            "arch": args.arch,
            "size": args.image_size,
            "batch": args.batch,
            "steps": args.steps,
            "threads": args.threads,
        }
    )
    out = subprocess.run(
        [sys.executable, "-c", CHILD, spec], env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="test_resnet")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--load", type=int, default=4, help="busy processes beside the loaded cases")
    args = parser.parse_args()
    print(
        f"{args.arch} at {args.image_size} px, batch {args.batch}, {args.threads} intra-op threads, "
        f"{args.steps} steps per figure, {os.cpu_count()} cores, loaded = {args.load} busy processes"
    )
    rows = []
    for load in ("idle", "loaded"):
        stop = mp.Event()
        spinners = [
            mp.Process(target=_spin, args=(stop,), daemon=True)
            for _ in range(args.load if load == "loaded" else 0)
        ]
        for p in spinners:
            p.start()
        try:
            time.sleep(0.5 if spinners else 0)
            results = {policy: measure(policy, args) for policy in ("ACTIVE", "PASSIVE")}
        finally:
            stop.set()
            for p in spinners:
                p.join()
        for what in ("forward_ms", "step_ms"):
            active, passive = results["ACTIVE"][what], results["PASSIVE"][what]
            rows.append((load, what.removesuffix("_ms"), active, passive, passive / active))
    print(f"{'machine':8} {'what':8} {'ACTIVE ms':>10} {'PASSIVE ms':>11} {'ratio':>7}")
    for load, what, active, passive, ratio in rows:
        print(f"{load:8} {what:8} {active:10.2f} {passive:11.2f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
