"""Kill -9 one search again and again, then finish it, and count what was lost.

    python bench/fault_injection.py [--repeats 2] [--external 2] [--end-steps 1] [--space tests/spaces/tiny.yaml]

Each cycle starts `shufflesearch run` on the same run folder and kills it: at a named point
(SHUFFLESEARCH_FAULT=point:1, for sample, latency, retry, ask, proxies and storage, each
--repeats times), or from outside with SIGKILL after a random 4-12 s (--external times).
`ask` dies inside study.ask() (the trial created, no heartbeat yet); `retry` dies inside the
ask() that pops the queued retry of the trial the previous cycle killed. After every kill the
completed trials are compared with those before it; a final clean run must reach the budget
exactly, with no trial left RUNNING. Prints faults injected, survived, trials lost,
architectures measured twice, retries and orphans failed.

Then the end of the run (--end-steps times each): a kill -9 inside each end-of-run step
(``retime`` as it is claimed; ``short_train`` and ``check`` 4 s in; each claimed in the study's
storage: runfolder.run_step) of a second run folder whose space short-trains the front and has
a fidelity ladder with a check;
the re-run must take the dead claim over and complete the step, keeping every result stored
before the kill (short-training results, the check's retrainings).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

POINTS = ("ask", "sample", "latency", "retry", "proxies", "storage")  # retry follows a kill


def completed(db: Path) -> dict[int, tuple[list[float], str]]:
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    return {t.number: (t.values, t.user_attrs["archid"]) for t in study.get_trials(states=(TrialState.COMPLETE,))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--external", type=int, default=2)
    ap.add_argument("--space", default=str(Path(__file__).parent.parent / "tests" / "spaces" / "tiny.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--end-steps", type=int, default=1, help="kills inside each end-of-run step (x2 points)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    faults = [f"{p}:1" for _ in range(a.repeats) for p in POINTS] + ["external"] * a.external
    # Room for the outside kills to land mid-run: a tiny trial takes about a second.
    budget = len(faults) + 2 + 10 * a.external
    tmp = Path(tempfile.mkdtemp(prefix="fault-bench-"))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SHUFFLESEARCH_CACHE_DIR": str(tmp / "cache")}
    env.pop("SHUFFLESEARCH_FAULT", None)
    cmd = [sys.executable, "-m", "shufflesearch.cli", "run", a.space, "--budget", str(budget), "--workers", "1",
           "--runs", str(tmp / "runs"), "--name", "tiny", "--quiet"]
    db = tmp / "runs" / "tiny" / "study.db"
    before: dict[int, tuple[list[float], str]] = {}
    injected = survived = lost = 0
    t0 = time.perf_counter()
    for f in faults:
        if f == "external":
            p = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(4, 12))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            rc = p.wait()
        else:
            rc = subprocess.run(cmd, env={**env, "SHUFFLESEARCH_FAULT": f}, stderr=subprocess.DEVNULL).returncode
        injected += rc == -9
        now = completed(db) if db.exists() else {}
        gone = [n for n, v in before.items() if now.get(n) != v]
        lost += len(gone)
        survived += rc == -9 and not gone
        print(f"  {f:<10} exit {rc:>3}  completed {len(now):>2}  lost {len(gone)}", flush=True)
        before = now
    t_kill = time.perf_counter()
    rc = subprocess.run(cmd, env=env).returncode
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    swept = 0
    if rc == 0 and study.get_trials(states=(TrialState.RUNNING,)):
        # A trial orphaned inside ask() is failed once it is ORPHAN_S (60 s) old; a run that
        # reaches the budget sooner leaves it RUNNING (it holds no slot), and the next run fails it.
        swept = len(study.get_trials(states=(TrialState.RUNNING,)))
        time.sleep(max(0.0, 65 - (time.perf_counter() - t_kill)))
        rc = subprocess.run(cmd, env=env).returncode
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    done = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if not t.user_attrs.get("baseline")]
    lost += len([n for n, v in before.items() if completed(db).get(n) != v])
    con = sqlite3.connect(tmp / "cache" / "latency.sqlite")
    cache = {k: json.loads(r) for k, r in con.execute("SELECT archid, record FROM latency")}
    con.close()
    twice = sum(1 for t in done if t.user_attrs["latency"]["runs_ms"] != cache[t.user_attrs["archid"]]["runs_ms"])
    print(f"faults injected (kill -9): {injected} of {len(faults)} attempted "
          f"({a.repeats}x each of {', '.join(POINTS)}; {a.external} external)")
    print(f"faults survived: {survived}; final run exit {rc}; completed {len(done)} of budget {budget} "
          f"(exact: {len(done) == budget}); still RUNNING: {len(study.get_trials(states=(TrialState.RUNNING,)))}")
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") is not None]
    orphans = [t for t in study.trials if "being created" in t.user_attrs.get("fail_reason", "")]
    running = len(study.get_trials(states=(TrialState.RUNNING,)))
    print(f"trials lost: {lost}; architectures measured twice: {twice}; "
          f"stale trials failed and retried: {len(retries)} ({sum(t.state == TrialState.COMPLETE for t in retries)} "
          f"retries completed); orphaned inside ask() and failed: {len(orphans)} "
          f"({swept} by a second run); "
          f"{time.perf_counter() - t0:.0f} s")
    ok = lost == 0 and len(done) == budget and rc == 0 and twice == 0 and running == 0
    ok = end_steps(a.end_steps, tmp, env) and ok
    return 0 if ok else 1


END_STEPS = ("retime", "short_train", "check")
LADDER = Path(__file__).parent.parent / "tests" / "spaces" / "ladder.yaml"


def end_steps(repeats: int, tmp: Path, env: dict[str, str]) -> bool:
    """Kill -9 inside each end-of-run step (hit 1: just claimed; hit 3: at its second heartbeat,
    4 s in, for the steps that last that long), re-run, and check the step completed and kept what was stored before the kill."""
    from shufflesearch.search.runfolder import load_run
    from shufflesearch.search.storage import step_state, study_attr

    text = LADDER.read_text().replace("batch: 16}", "batch: 16, short_train_top_k: 2, short_train_steps: 60}")
    text = text.replace("check: {top: 3, steps: 8,", "check: {top: 3, steps: 40,")  # lasts past 2 heartbeats
    # a third baseline: baselines climb every rung, so the check has its 3 architectures
    text = text.replace("baselines: [shufflenet_v2_x0_5,", "baselines: [shufflenet_v1_g3_x1_0, shufflenet_v2_x0_5,")
    space = tmp / "ends.yaml"
    space.write_text(text)
    injected = completed_steps = kept = checked = 0
    t0 = time.perf_counter()
    for r in range(repeats):
        for st in END_STEPS:
            # retime: just claimed (a tiny front's window ends within 2 s); the others at their
            # 2nd heartbeat, 4 s in, with results of the step stored before the kill
            for hit in (1,) if st == "retime" else (3,):
                name = f"e{r}{st}{hit}"
                cmd = [sys.executable, "-m", "shufflesearch.cli", "run", str(space), "--budget", "3", "--workers", "1",
                       "--runs", str(tmp / "ends"), "--name", name, "--quiet"]
                rc = subprocess.run(cmd, env={**env, "SHUFFLESEARCH_FAULT": f"{st}:{hit}"},
                                    stderr=subprocess.DEVNULL).returncode
                injected += rc == -9
                _, study = load_run(tmp / "ends" / name)
                before = {k: study_attr(study, k, {}) for k in ("short_train", "check_runs")}
                rc2 = subprocess.run(cmd, env=env, stderr=subprocess.DEVNULL).returncode
                _, study = load_run(tmp / "ends" / name)
                done = all((step_state(study, f"end:{s}:3") or {}).get("done")
                           for s in END_STEPS)
                after = {k: study_attr(study, k, {}) for k in before}
                keep = all(v.items() <= after[k].items() for k, v in before.items())
                ok = rc2 == 0 and done and bool(study_attr(study, "retime")) and bool(study_attr(study, "check"))
                completed_steps += ok
                kept += keep
                checked += 1
                print(f"  {st}:{hit:<5} exit {rc:>3}  re-run exit {rc2}  steps done {done}  "
                      f"kept {sum(len(v) for v in before.values())} stored result(s): {keep}", flush=True)
    print(f"end-of-run faults injected (kill -9): {injected} of {checked}; re-runs that completed every "
          f"step: {completed_steps}; kept everything stored before the kill: {kept}; "
          f"{time.perf_counter() - t0:.0f} s")
    return injected == checked and completed_steps == checked and kept == checked


if __name__ == "__main__":
    sys.exit(main())
