"""Do separate `shufflesearch latency` calls agree? The six presets, two passes, each call its
own process (`shufflesearch latency NAME --json --remeasure`), sharing one cache folder (so the
reference schedule's log carries over between calls, as on a user's machine).

Prints the Kendall tau between the passes and the median relative spread |x1 - x2| / mean of
the ratio to the reference, of the reported ms (ratio x the reference figure) and of each
call's own absolute median, with the load average before and after. Goals: tau >= 0.9, spread
<= 5% (issue 13); reported ms spread <= 3% on a quiet machine (issue 21).

    python bench/latency_cli.py [--resolution 224] [--max-seconds 1.0] [--burn]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from shufflesearch.common.stats import kendall_tau

PRESETS = ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
           "shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x1_0")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--max-seconds", type=float, default=1.0)
    ap.add_argument("--burn", action="store_true", help="a CPU-burning process on the other core meanwhile")
    a = ap.parse_args()
    env = {**os.environ, "SHUFFLESEARCH_CACHE_DIR": tempfile.mkdtemp(prefix="latency-cli-")}
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.burn else None
    figs: dict[str, list[list[float]]] = {k: [[], []] for k in ("ratio", "reported_ms", "absolute_ms")}
    t0 = time.time()
    load0 = os.getloadavg()[0]
    try:
        for p in range(2):
            for name in PRESETS:
                out = subprocess.run(
                    [sys.executable, "-m", "shufflesearch.cli", "latency", name, "--json", "--remeasure",
                     "--resolution", str(a.resolution), "--max-seconds", str(a.max_seconds)],
                    capture_output=True, text=True, env=env, check=True)
                d = json.loads(out.stdout)
                figs["ratio"][p].append(d["ratio"])
                figs["reported_ms"][p].append(d["median_ms"])
                figs["absolute_ms"][p].append(d["abs_ms"])
                print(f"pass {p + 1} {name:<24} ratio {d['ratio']:.3f} [{d['ratio_ci'][0]:.3f}, {d['ratio_ci'][1]:.3f}]"
                      f"  {d['median_ms']:8.3f} ms  own {d['abs_ms']:8.3f} ms  reference {d['reference']['ms']:.3f} ms"
                      f" (n={d['reference']['n']}){'  DRIFTED' if d['drifted'] else ''}", flush=True)
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    print(f"\n{len(PRESETS)} presets x 2 passes, separate processes, {a.resolution}x{a.resolution}, max "
          f"{a.max_seconds}s, {'with a CPU burner' if a.burn else 'no burner'}, {time.time() - t0:.0f}s in all, "
          f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"{'figure':<14}{'tau':>7}{'median spread':>15}{'max spread':>12}")
    for k, (p1, p2) in figs.items():
        sp = [abs(x - y) / ((x + y) / 2) for x, y in zip(p1, p2)]
        print(f"{k:<14}{kendall_tau(p1, p2):7.3f}{100 * statistics.median(sp):14.2f}%{100 * max(sp):11.2f}%")
    print("goal: tau >= 0.9, spread <= 5%; reported ms spread <= 3% on a quiet machine")


if __name__ == "__main__":
    main()
