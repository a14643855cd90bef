"""Is the measured latency stable enough to rank architectures on this machine, and which
estimator of the ratio to the reference ranks most stably?

Times --n random architectures twice (pass 1 over all, then pass 2 over all), each in its own
window interleaved with the reference network (shufflesearch.measure.protocol, no cache), and
prints, between the two passes, the Kendall tau and the median relative spread |x1 - x2| / mean
of: each estimator of the ratio (median of per-round ratios, ratio of minima, ratio of
medians, all computed from the SAME rounds), the reported ms (ratio x the reference schedule's
figure) and, for comparison, the candidate's own absolute median (protocol 1's figure).
``--burn`` runs a CPU-burning process on the other core during both passes.
``--train`` runs a training process there instead, as a second search worker trains: the proxy
task's SGD steps under the shared compute lock, stepping aside while a timing holds the lock
(measure/env.py), so this shows whether timing beside ``--workers`` keeps its quality.
Goals (issue 13): tau >= 0.95 and spread <= 3% quiet; tau >= 0.9 with the burner.

    python bench/latency_stability.py [--n 20] [--resolution 224] [--max-seconds 1.0] [--burn | --train]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from shufflesearch.common.stats import kendall_tau
from shufflesearch.measure.env import fingerprint
from shufflesearch.measure.predictor import random_archs
from shufflesearch.measure.protocol import ReferenceSchedule, inference_model, measure_model
from shufflesearch.measure.target import TargetSpec
from shufflesearch.measure.timing import ESTIMATOR, ESTIMATORS, estimate
from shufflesearch.search.space import load_space


def sample(n: int, seed: int, space: str | None) -> list:
    """``n`` random Archs from ``space`` (a search-space file), else the predictor's own space."""
    return load_space(space).sample_random(n, seed) if space else random_archs(n, seed)


def _burner() -> subprocess.Popen:
    # One busy process; on a 2-core machine it takes the core the timing thread is not on.
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


_TRAINER = """
from shufflesearch.accuracy.data import load_data
from shufflesearch.accuracy.training import fresh_model, train_model
from shufflesearch.model.arch import preset
data = load_data()
while True:  # V2 1x on the default proxy task, stepping aside for every timing, as a worker does
    train_model(fresh_model(preset("shufflenet_v2_x1_0"), data, 0), data, steps=100, device="cpu")
"""


def _trainer() -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _TRAINER])
    time.sleep(5.0)  # imports and the task loaded: training by the first window
    return p


def _spread(a: list[float], b: list[float]) -> list[float]:
    return [abs(x - y) / ((x + y) / 2) for x, y in zip(a, b)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--space", help="sample from this search space instead of the built-in one")
    load = ap.add_mutually_exclusive_group()
    load.add_argument("--burn", action="store_true", help="a CPU-burning process on the other core meanwhile")
    load.add_argument("--train", action="store_true",
                      help="a training process that steps aside for timings, as a second worker")
    a = ap.parse_args()
    spec = TargetSpec(resolution=a.resolution, threads=a.threads)
    archs = sample(a.n, a.seed, a.space)
    burner = _burner() if a.burn else _trainer() if a.train else None
    t0 = time.time()
    figures: dict[str, list[list[float]]] = {k: [[], []] for k in (*ESTIMATORS, "reported_ms", "absolute_ms")}
    schedule = ReferenceSchedule(spec)  # no cache: this bench's own reference figure
    try:
        for p in range(2):
            for arch in archs:
                lat = measure_model(inference_model(arch, spec), spec, max_seconds=a.max_seconds, schedule=schedule)
                for name in ESTIMATORS:
                    figures[name][p].append(estimate(lat.runs_ms, lat.ref_runs_ms, name))  # type: ignore[arg-type]
                figures["reported_ms"][p].append(lat.median_ms)
                figures["absolute_ms"][p].append(lat.abs_ms)  # type: ignore[arg-type]
                print(f"pass {p + 1} {arch.archid} ratio {lat.ratio:6.3f} [{lat.ratio_ci[0]:.3f}, "  # type: ignore[index]
                      f"{lat.ratio_ci[1]:.3f}]  {lat.median_ms:8.3f} ms  own {lat.abs_ms:8.3f} ms  "  # type: ignore[index]
                      f"ref {lat.reference['window_ms']:.3f} ms  n={lat.n}", flush=True)  # type: ignore[index]
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    print(f"\nfingerprint: {fingerprint(a.threads)}")
    print(f"{a.n} architectures, {a.resolution}x{a.resolution} batch 1, {a.threads} thread(s), max {a.max_seconds}s "
          f"per window, {'with a CPU burner' if a.burn else 'beside a training worker' if a.train else 'no burner'}, "
          f"load average at the end "
          f"{os.getloadavg()[0]:.1f}, {time.time() - t0:.0f}s in all")
    fig = schedule.figure() or {}
    print(f"reference figure {fig.get('ms', float('nan')):.3f} ms, spread {100 * fig.get('spread', float('nan')):.1f}% "
          f"over {fig.get('n')} windows")
    print(f"{'figure':<20}{'tau':>7}{'median spread':>15}{'max spread':>12}")
    for name, (p1, p2) in figures.items():
        sp = _spread(p1, p2)
        mark = "  <- the protocol's estimator" if name == ESTIMATOR else ""
        print(f"{name:<20}{kendall_tau(p1, p2):7.3f}{100 * statistics.median(sp):14.2f}%{100 * max(sp):11.2f}%{mark}")
    print("goals: tau >= 0.95, spread <= 3% quiet; tau >= 0.9 with the burner")


if __name__ == "__main__":
    main()
