"""Why `shufflesearch train` defaults to --threads 1: training-step time at 1 thread vs all cores.

On a small proxy network (digits at 32 px) most convolutions are too small to split across
threads, and when other processes share the cores, torch's OpenMP threads wait on each other.
The two settings run interleaved (so load changes hit both alike); the median step time of
each and their ratio are printed. Nothing is asserted: the ratio depends on the machine and
on what else runs.

    python bench/train_threads.py [--arch shufflenet_v2_x0_5] [--steps 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from shufflesearch import build, preset
from shufflesearch.accuracy.data import DataSpec, load_data


def step_times(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="shufflenet_v2_x0_5")
    ap.add_argument("--steps", type=int, default=10, help="training steps per setting per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    data = load_data(DataSpec())  # digits, 32 px, batch 64: the `train` default
    b = data.batch("train")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = sorted({1, cores})
    model = build(preset(args.arch).replace(num_classes=data.num_classes)).train()
    times: dict[int, list[float]] = {t: [] for t in settings}
    for t in settings:  # warm-up
        torch.set_num_threads(t)
        step_times(model, b.x, b.y, 2)
    for _ in range(args.rounds):
        for t in settings:
            torch.set_num_threads(t)
            times[t] += step_times(model, b.x, b.y, args.steps)
    med = {t: statistics.median(v) for t, v in times.items()}
    print(f"{args.arch}, digits 32 px, batch {len(b.y)}; {args.rounds} x {args.steps} steps per setting; "
          f"load average {os.getloadavg()[0]:.1f} on {cores} cores")
    for t in settings:
        print(f"  {t} thread(s): median step {1000 * med[t]:.1f} ms")
    if len(settings) == 2:
        print(f"  ratio {cores} threads / 1 thread: {med[cores] / med[1]:.2f}")


if __name__ == "__main__":
    main()
