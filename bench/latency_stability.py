"""Is the measured latency stable enough to rank architectures on this machine?

Times 20 random architectures twice, interleaved (A1 B1 C1 ... A2 B2 C2 ...), with the same
protocol the search uses (shufflesearch.measure.protocol.measure_arch, no cache), and prints the Kendall
tau between the two passes and the median relative spread |t1 - t2| / mean. Goal (issue 4):
tau >= 0.9 and spread <= 3%.

    python bench/latency_stability.py [--n 20] [--resolution 224] [--max-seconds 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from scipy.stats import kendalltau

from shufflesearch.measure.env import fingerprint
from shufflesearch.measure.predictor import random_archs
from shufflesearch.measure.protocol import measure_arch
from shufflesearch.measure.target import TargetSpec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--space", help="sample from this search space instead of the built-in one")
    a = ap.parse_args()
    spec = TargetSpec(resolution=a.resolution, threads=a.threads)
    archs = random_archs(a.n, a.seed, a.space)
    t0 = time.time()
    passes: list[list[float]] = [[], []]
    rel_iqr = []
    with tempfile.TemporaryDirectory():
        for p in range(2):
            for arch in archs:
                lat = measure_arch(arch, spec, max_seconds=a.max_seconds)
                passes[p].append(lat.median_ms)
                rel_iqr.append(lat.rel_iqr)
                print(f"pass {p + 1} {arch.archid} {lat.median_ms:8.3f} ms  IQR {100 * lat.rel_iqr:5.1f}%  n={lat.n}", flush=True)
    tau = kendalltau(passes[0], passes[1]).statistic
    spread = [abs(x - y) / ((x + y) / 2) for x, y in zip(*passes)]
    print(f"\nfingerprint: {fingerprint(a.threads)}")
    print(f"{a.n} architectures, {a.resolution}x{a.resolution} batch 1, {a.threads} thread(s), "
          f"max {a.max_seconds}s each, {time.time() - t0:.0f}s in all")
    print(f"latency range {min(passes[0]):.2f}..{max(passes[0]):.2f} ms")
    print(f"Kendall tau pass1 vs pass2: {tau:.3f}   (goal >= 0.9)")
    print(f"median relative spread |t1-t2|/mean: {100 * statistics.median(spread):.2f}%   (goal <= 3%)")
    print(f"max relative spread: {100 * max(spread):.2f}%;  median within-run IQR/median: {100 * statistics.median(rel_iqr):.2f}%")


if __name__ == "__main__":
    main()
