"""Zero-cost scoring time of a 1x-sized ShuffleNet V2 at the default proxy settings.

Issue 5's goal: compute_proxies for one architecture (what a search trial pays) in <= 1 s.
Two variants are measured interleaved, median of --repeats: the default ensemble alone
(naswot + synflow + jacob_cov, plus the free params/macs) and every registered proxy.

    python bench/proxy_cost.py [--repeats 7] [--arch shufflenet_v2_x1_0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from shufflesearch import preset
from shufflesearch.accuracy.data import DataSpec, load_data
from shufflesearch.accuracy.proxies import DEFAULT_ENSEMBLE, PROXIES, compute_proxies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--arch", default="shufflenet_v2_x1_0")
    args = ap.parse_args()
    data = load_data(DataSpec())  # the default proxy task: digits, 32 px, batch 64
    arch = preset(args.arch)
    variants = {
        "default (ensemble+params+macs)": ["params", "macs", *DEFAULT_ENSEMBLE],
        "all proxies": list(PROXIES),
    }
    for names in variants.values():  # warm-up: first-call allocations, lazy imports
        compute_proxies(arch, data, names)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats):
        for k, names in variants.items():  # interleaved so load drifts hit both alike
            t0 = time.perf_counter()
            compute_proxies(arch, data, names, seed=r)
            times[k].append(time.perf_counter() - t0)
    print(f"{args.arch}, digits {data.resolution}px, batch {data.spec.batch}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} repeats (median, min-max)")
    for k, ts in times.items():
        print(f"  {k:<32} {statistics.median(ts):6.3f} s  ({min(ts):.3f}-{max(ts):.3f})")
    base = statistics.median(times["default (ensemble+params+macs)"])
    print(f"  all / default ratio: {statistics.median(times['all proxies']) / base:.2f}")
    print(f"  goal <= 1 s for the default: {'met' if base <= 1.0 else 'NOT met'} on this run")


if __name__ == "__main__":
    main()
