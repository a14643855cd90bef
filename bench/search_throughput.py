"""Seconds per trial of a real search, split into sampling, build (costs, guidelines, module),
latency, proxies and storage, plus the rest (sampler, bookkeeping, progress).

Runs `search_spaces/v2.yaml` (or --space) for --budget trials into a temporary run folder with
a fresh latency cache, and prints the split from the timings stored on every trial. Usage:
    python bench/search_throughput.py [--space search_spaces/v2.yaml] [--budget 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--space", default="search_spaces/v2.yaml")
    ap.add_argument("--budget", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SHUFFLESEARCH_CACHE_DIR"] = os.path.join(tmp, "cache")
        from shufflesearch.search.engine import search
        from shufflesearch.search.runfolder import load_run

        t0 = time.perf_counter()
        run = search(args.space, args.budget, name="throughput", runs_root=tmp, quiet=True)
        wall = time.perf_counter() - t0
        _, study = load_run(run.root)
        trials = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    phases = ("sample", "build", "latency", "proxies", "storage")
    per = {p: [t.user_attrs.get("timings", {}).get(p, 0.0) for t in trials] for p in phases}
    n = len(trials)
    total = {p: sum(v) for p, v in per.items()}
    rest = wall - sum(total.values())
    print(f"{args.space}: {n} completed trials (baselines included) in {wall:.1f} s wall, "
          f"{wall / n:.2f} s per trial")
    for p in phases:
        print(f"  {p:<9} mean {total[p] / n:6.3f} s   median {statistics.median(per[p]):6.3f} s   "
              f"{100 * total[p] / wall:5.1f}% of wall")
    print(f"  {'rest':<9} mean {rest / n:6.3f} s                      {100 * rest / wall:5.1f}% of wall"
          "  (sampler, data loading, start-up, progress)")
    measured = total["latency"] + total["proxies"]
    print(f"measurement and proxies: {100 * measured / wall:.1f}% of wall (goal >= 80%)")


if __name__ == "__main__":
    main()
