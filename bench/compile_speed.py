"""Inference form vs training form (eval) at 224x224: speed ratio at batch 1 and batch 8.

Interleaved runs in one process, median per round; prints the ratio training/inference
(> 1 means the inference form is faster). Usage:
    python bench/compile_speed.py [--preset shufflenet_v2_x1_0] [--rounds 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from shufflesearch import build, to_inference


def time_once(model: torch.nn.Module, x: torch.Tensor, reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        model(x)
    return (time.perf_counter() - t) / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="shufflenet_v2_x1_0")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train = build(args.preset).eval()
    infer = to_inference(train)
    variants = {"training form (eval)": train, "inference form (NCHW)": to_inference(train, channels_last=False),
                "inference form (default, NHWC)": infer}
    print(f"{args.preset}, 224x224, {args.threads} thread(s), {args.rounds} interleaved rounds, torch {torch.__version__}")
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224)
        xs = dict.fromkeys(variants, x)  # NCHW input for all; the NHWC form converts inside
        reps = 10 if batch == 1 else 3
        ms: dict[str, list[float]] = {k: [] for k in variants}
        with torch.inference_mode():
            for k, m in variants.items():  # warm-up
                time_once(m, xs[k], reps)
            for _ in range(args.rounds):
                for k, m in variants.items():
                    ms[k].append(time_once(m, xs[k], reps))
        base = statistics.median(ms["training form (eval)"])
        print(f"\nbatch {batch}:")
        for k, v in ms.items():
            med = statistics.median(v)
            print(f"  {k:<32} median {med:8.2f} ms   speed-up x{base / med:.2f}")


if __name__ == "__main__":
    main()
