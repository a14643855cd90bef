"""Seconds per training step of the proxy task, before and after the cheap-step work.

"before" is the step as ``Trainer.run`` took it until 2026-12-07, reproduced here: every batch
copied with ``.to(device)``, the loss read back with ``.item()`` every step, oneDNN's own
depthwise weight gradients. "after" is ``Trainer.run`` as it is now. Further variants show
what was tried and not kept (channels_last; the fused SGD step). Every variant trains its
own copy of one seeded network on the digits at the proxy settings (32 px, batch 64, 10
classes) with 1 thread; they run interleaved, ``--steps`` steps each per round, so the
machine's slow phases hit all alike. Printed: the median seconds per step of each, and the
median over rounds of the per-round ratio to "before" with its 10th-90th percentile range.
Nothing is asserted. The load average before and after is printed: the machine is shared.

    python bench/train_step.py [--arch shufflenet_v2_x1_0] [--steps 5] [--rounds 15] [--tried]
    python bench/train_step.py --trajectory 60 [--arch ...]   # the same run, before and after
    python bench/train_step.py --profile                      # where a step's time goes
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from shufflesearch.accuracy.data import DataSpec, load_data
from shufflesearch.accuracy.training import Trainer, evaluate, fresh_model
from shufflesearch.model.arch import preset


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def before(model: torch.nn.Module, data, total: int, channels_last: bool = False, fused: bool = False,
           losses: list[float] | None = None) -> Callable[[int], None]:
    """The old loop's step: its optimiser, schedule and batch order (seed 0: ``seed * 1000 +
    epoch`` is the epoch), the losses appended to ``losses``."""
    dev = torch.device("cpu")
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=5e-4, **({"fused": True} if fused else {}))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    losses = [] if losses is None else losses
    state = {"epoch": -1, "it": iter(())}

    def steps(n: int) -> None:
        for _ in range(n):
            b = next(state["it"], None)
            while b is None or len(b.y) < 2:
                state["epoch"] += 1
                state["it"] = data.batches("train", seed=state["epoch"])
                b = next(state["it"], None)
            x = b.x.to(dev)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), b.y.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())

    return steps


def after(model: torch.nn.Module, data, total: int, channels_last: bool | None = None
          ) -> Callable[[int], None]:
    t = Trainer(model, data, total_steps=total, device="cpu", channels_last=channels_last)

    def steps(n: int) -> None:
        t.run(t.step + n)

    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="shufflenet_v2_x1_0")
    ap.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--tried", action="store_true",
                    help="also time the variants tried and not kept (channels_last, fused SGD)")
    ap.add_argument("--profile", action="store_true",
                    help="instead of timing: torch.profiler's top ops of 3 steps, before and after")
    ap.add_argument("--trajectory", type=int, default=0, metavar="N",
                    help="instead of timing: train N steps both ways from seed 0 and print SoTL, val_acc")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_data(DataSpec())  # digits, 32 px, batch 64, 10 classes: the proxy defaults
    arch = preset(args.arch)
    if args.profile:
        from torch.profiler import profile

        for k, f in (("before", before(fresh_model(arch, data, 0), data, 10)),
                     ("after", after(fresh_model(arch, data, 0), data, 10))):
            f(2)
            with profile(record_shapes=True) as prof:
                f(3)
            print(f"\n{k}: 3 steps")
            print(prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=28,
                max_shapes_column_width=60))
        return
    if args.trajectory:
        runs = []
        for k, cl in (("before", False), ("before + channels_last", True)):
            m, ls = fresh_model(arch, data, 0), []
            before(m, data, args.trajectory, channels_last=cl, losses=ls)(args.trajectory)
            runs.append((k, m, ls))
        new = Trainer(fresh_model(arch, data, 0), data, total_steps=args.trajectory, device="cpu")
        new.run(args.trajectory)
        runs.append(("after", new.model, new.losses))
        for k, m, ls in runs:
            print(f"{args.arch}, {args.trajectory} steps, {k:<22}: SoTL {-sum(ls):.3f}, "
                  f"val_acc {evaluate(m, data):.4f}, first losses {[round(v, 5) for v in ls[:3]]}")
        return
    total = (args.rounds + 2) * args.steps
    variants = {"before": before(fresh_model(arch, data, 0), data, total),
                "after (Trainer.run)": after(fresh_model(arch, data, 0), data, total)}
    if args.tried:
        variants["before + channels_last"] = before(fresh_model(arch, data, 0), data, total,
                                                    channels_last=True)
        variants["before + fused SGD"] = before(fresh_model(arch, data, 0), data, total, fused=True)
        variants["after, NCHW"] = after(fresh_model(arch, data, 0), data, total, channels_last=False)
    print(f"{args.arch}, digits 32 px, batch {data.spec.batch}, 1 thread, torch {torch.__version__}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps; {load()}")
    for f in variants.values():  # warm-up: allocator, oneDNN primitive caches
        f(2)
    secs: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            variants[k](args.steps)
            secs[k].append((time.perf_counter() - t0) / args.steps)
    base = secs["before"]
    for k, v in secs.items():
        ratios = sorted(b / a for a, b in zip(v, base))
        lo, hi = ratios[len(ratios) // 10], ratios[-1 - len(ratios) // 10]
        print(f"  {k:<24} {1000 * statistics.median(v):7.1f} ms/step   speed-up vs before "
              f"x{statistics.median(ratios):.2f} (10-90%: {lo:.2f}-{hi:.2f})")
    print(load())


if __name__ == "__main__":
    main()
