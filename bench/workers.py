"""How much faster a search runs with K workers than with one, and how long latency timings
wait for the lock meanwhile.

The same search (a fresh run folder and latency cache each time) runs with --workers 1 and
with --workers K, alternately for --rounds rounds, so load changes on the machine hit both.
For each it prints the search phase's wall time (first search trial started to last one
finished; baselines and end-of-run steps left out), the trials per minute, and from the lock
trace (SHUFFLESEARCH_LOCK_TRACE) the time spent timing, what the timings waited for the lock,
and how much of the training ran side by side in two or more workers. Nothing is asserted: the ratio depends on the machine, on what else runs, and on how
much of a trial is timing (docs: "What this costs").

    python bench/workers.py [--space tests/spaces/ladder.yaml] [--budget 12] [--workers auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shufflesearch.common.threads import check_workers, resolve_workers
from shufflesearch.search.runfolder import load_run


def lock_holds(trace: Path) -> list[tuple[str, float, float, float]]:
    """(kind, asked, got, released) of every hold in a SHUFFLESEARCH_LOCK_TRACE folder."""
    out = []
    for f in trace.glob("*.log"):
        for line in f.read_text().splitlines():
            kind, *times = line.split()
            out.append((kind, *map(float, times)))
    return out


def side_by_side(holds: list[tuple[str, float, float, float]]) -> float:
    """Seconds during which two or more processes trained (held the compute lock) at once."""
    edges = sorted([(g, 1) for k, _, g, _ in holds if k == "compute"]
                   + [(r, -1) for k, _, _, r in holds if k == "compute"])
    busy, last, both = 0, 0.0, 0.0
    for t, d in edges:
        if busy >= 2:
            both += t - last
        busy, last = busy + d, t
    return both


def one_run(space: str, budget: int, workers: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        root = Path(tmp)
        (root / "trace").mkdir()
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "SHUFFLESEARCH_CACHE_DIR": str(root / "cache"),
               "SHUFFLESEARCH_LOCK_TRACE": str(root / "trace")}
        cmd = [sys.executable, "-m", "shufflesearch.cli", "run", space, "--budget", str(budget),
               "--workers", str(workers), "--runs", str(root / "runs"), "--name", "bench", "--quiet"]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        _, study = load_run(root / "runs" / "bench")
        trials = [t for t in study.get_trials() if t.state.name == "COMPLETE"
                  and not t.user_attrs.get("baseline")]
        start = min(t.datetime_start for t in trials)
        end = max(t.datetime_complete for t in trials)
        holds = lock_holds(root / "trace")
        timings = [h for h in holds if h[0] == "timing"]
    return {"wall": wall, "search": (end - start).total_seconds(), "trials": len(trials),
            "timed": sum(r - g for _, _, g, r in timings),
            "trained": sum(r - g for k, _, g, r in holds if k == "compute"),
            "side_by_side": side_by_side(holds),
            "wait_median": statistics.median([g - a for _, a, g, _ in timings]) if timings else 0.0,
            "wait_max": max([g - a for _, a, g, _ in timings], default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="tests/spaces/ladder.yaml")
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--workers", default="auto", help="K, compared with 1 (default auto)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    k = resolve_workers(check_workers(args.workers, "--workers"), todo=args.budget)
    if k == 1:
        raise SystemExit(f"--workers {args.workers} is one worker here: nothing to compare (give --workers 2)")
    res: dict[int, list[dict[str, float]]] = {1: [], k: []}
    for _ in range(args.rounds):
        for w in (1, k):
            res[w].append(one_run(args.space, args.budget, w))
    print(f"{args.space}, budget {args.budget}, {args.rounds} round(s); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for w, rs in res.items():
        med = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        print(f"  {w:2d} worker(s): search phase {med['search']:6.1f} s ({60 * med['trials'] / med['search']:5.1f} "
              f"trials/min), whole command {med['wall']:6.1f} s; timing {med['timed']:5.1f} s, a timing "
              f"waited {med['wait_median']:.3f} s (median), {med['wait_max']:.3f} s (max); trained "
              f"{med['trained']:5.1f} s, {med['side_by_side']:5.1f} s of it side by side")
    one = statistics.median(r["search"] for r in res[1])
    many = statistics.median(r["search"] for r in res[k])
    print(f"  speed-up of the search phase with {k} workers: {one / many:.2f}x")


if __name__ == "__main__":
    main()
