"""Worker processes: how many ``auto`` runs, what ``--workers`` accepts, latency timed alone
while other workers train (read off the lock trace, SHUFFLESEARCH_LOCK_TRACE), and Ctrl-C with
two workers followed by a resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from shufflesearch import UserError
from shufflesearch.cli import main
from shufflesearch.common.threads import (
    TRAIN_THREADS_ENV,
    check_workers,
    resolve_workers,
    usable_cores,
)
from shufflesearch.measure.env import LOCK_TRACE_ENV, timing_lock
from shufflesearch.search.engine import search
from shufflesearch.search.runfolder import load_run
from tests.conftest import SPACES

TINY = SPACES / "tiny.yaml"
WORKER_MARK = "shufflesearch:worker"  # the system attr naming the process that runs a trial


def _search_trials(study: optuna.Study, states=(TrialState.COMPLETE,)) -> list:
    return [t for t in study.get_trials(states=states) if not t.user_attrs.get("baseline")]


# --- how many workers -------------------------------------------------------------------------


def test_auto_is_one_worker_per_usable_core(monkeypatch):
    monkeypatch.delenv(TRAIN_THREADS_ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert usable_cores() == 3
    assert resolve_workers("auto") == 3
    assert resolve_workers("auto", todo=2) == 2  # never more workers than trials to run
    assert resolve_workers("auto", todo=0) == 1
    assert resolve_workers(7, todo=2) == 7  # a number is taken as given
    monkeypatch.setenv(TRAIN_THREADS_ENV, "2")
    assert resolve_workers("auto") == 1  # 3 cores // 2 training threads
    monkeypatch.delenv(TRAIN_THREADS_ENV)
    monkeypatch.delattr(os, "sched_getaffinity")  # a platform without affinity
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert resolve_workers("auto") == 4


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("AUTO", "auto"), ("1", 1), (" 3 ", 3), (2, 2)])
def test_worker_counts_accepted(value, expected):
    assert check_workers(value) == expected


@pytest.mark.parametrize("value", [0, -1, "0", "-2", "abc", "1.5", "", True, 2.0, None])
def test_worker_counts_refused(value):
    with pytest.raises(UserError, match=r"^workers: .* must be auto or an integer >= 1$"):
        check_workers(value)


@pytest.mark.parametrize("value", ["0", "-1", "many", "2.5"])
def test_the_cli_refuses_a_bad_worker_count_in_one_line(tmp_path, capsys, value):
    args = ["run", str(TINY), "--budget", "1", "--runs", str(tmp_path / "runs"), "--workers", value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --workers: ") and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # refused before anything was made


def test_the_cli_passes_auto_by_default_and_a_number_as_given(tmp_path, monkeypatch):
    seen = []

    def fake_search(*args, workers, **kw):
        seen.append(workers)
        return SimpleNamespace(space=SimpleNamespace(fidelity=None), root=tmp_path)

    monkeypatch.setattr("shufflesearch.cli.run.search", fake_search)
    base = ["run", str(TINY), "--quiet"]
    assert main(base) == 0 and main([*base, "--workers", "3"]) == 0 and main([*base, "--workers", "Auto"]) == 0
    assert seen == ["auto", 3, "auto"]


def test_the_run_log_and_the_study_say_how_many_workers_ran(tmp_path):
    with pytest.raises(UserError, match="workers"):
        search(TINY, 1, runs_root=tmp_path, workers=0, quiet=True)
    run = search(TINY, 1, runs_root=tmp_path, quiet=True)  # auto, one trial to run: one worker
    launch = run.load_study().user_attrs["launches"][-1]
    assert (launch["workers"], launch["workers_asked"], launch["budget"]) == (1, "auto", 1)
    assert launch["usable_cores"] == usable_cores()
    assert "workers 1 (asked auto" in (run.root / "run.log").read_text()


# --- latency timed alone ------------------------------------------------------------------------


def _trace(folder: Path) -> dict[int, list[tuple[str, float, float]]]:
    """pid -> [(kind, got, released)] from SHUFFLESEARCH_LOCK_TRACE files."""
    out: dict[int, list[tuple[str, float, float]]] = {}
    for f in folder.glob("*.log"):
        for line in f.read_text().splitlines():
            kind, _asked, got, released = line.split()
            out.setdefault(int(f.stem), []).append((kind, float(got), float(released)))
    return out


def _overlaps(trace: dict[int, list[tuple[str, float, float]]]) -> list:
    """Pairs of holds of two processes that overlap, one of them a timing."""
    holds = [(pid, *h) for pid, hs in trace.items() for h in hs]
    return [(a, b) for a in holds if a[1] == "timing" for b in holds
            if b[0] != a[0] and a[2] < b[3] and b[2] < a[3]]


def test_two_workers_never_time_at_once_nor_while_another_trains(tmp_path, monkeypatch):
    space = yaml.safe_load(TINY.read_text())
    space["fidelity"] = {"rungs": [2, 4, 8], "eta": 2, "estimator": "sotl", "device": "cpu",
                         "check": {"top": 0}}
    (tmp_path / "ladder.yaml").write_text(yaml.safe_dump(space))
    trace = tmp_path / "trace"
    trace.mkdir()
    monkeypatch.setenv("SHUFFLESEARCH_CACHE_DIR", str(tmp_path / "cache"))  # every arch timed here
    monkeypatch.setenv(LOCK_TRACE_ENV, str(trace))
    run = search(tmp_path / "ladder.yaml", 6, runs_root=tmp_path / "runs", workers=2, quiet=True)
    study = run.load_study()
    assert study.user_attrs["launches"][-1]["workers"] == 2
    done = _search_trials(study)
    assert len(done) == 6  # exactly the budget, each architecture measured once
    measured = [t.user_attrs["archid"] for t in done if "duplicate_of" not in t.user_attrs]
    assert len(measured) == len(set(measured))
    workers = {t.user_attrs["worker_pid"] for t in done}
    assert len(workers) == 2 and os.getpid() not in workers  # both workers did work
    held = _trace(trace)
    for pid in workers:  # both timed candidates and trained rungs
        assert {"timing", "compute"} <= {k for k, *_ in held.get(pid, [])}, (pid, held.get(pid))
    assert not _overlaps(held)
    log = (run.root / "run.log").read_text()
    assert " w0 INFO " in log and " w1 INFO " in log  # worker lines carry the worker's number


# Two trainers hold the compute lock together and never end it by themselves; a timing (this
# process) must still get in, at a pause between their steps, and they go on after it.
TRAINER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from shufflesearch.measure import env as E
    done, deadline = Path(sys.argv[1]), time.monotonic() + 60
    with E.compute_lock():
        print("in", flush=True)
        steps_after = 0
        while time.monotonic() < deadline and steps_after < 20:
            sum(range(20000))  # a training step
            E.compute_pause()
            steps_after += done.exists()
    print("after the timing" if steps_after else "deadline", flush=True)
""")


def test_a_timing_gets_in_between_the_steps_of_overlapping_trainers(tmp_path, monkeypatch):
    trace, done = tmp_path / "trace", tmp_path / "timed"
    trace.mkdir()
    monkeypatch.setenv("SHUFFLESEARCH_LOCK", str(tmp_path / "timing.lock"))
    monkeypatch.setenv(LOCK_TRACE_ENV, str(trace))
    trainers = [subprocess.Popen([sys.executable, "-c", TRAINER, str(done)], stdout=subprocess.PIPE,
                                 text=True) for _ in range(2)]
    for p in trainers:
        assert p.stdout.readline().strip() == "in"  # both hold the shared lock now
    with timing_lock():  # flock alone would wait here until the trainers' deadline
        time.sleep(0.05)
    done.touch()
    for p in trainers:
        assert p.communicate(timeout=120)[0].strip() == "after the timing"
    held = _trace(trace)
    assert not _overlaps(held)
    (_, t0, t1), = held[os.getpid()]
    for p in trainers:  # each stepped aside for the timing and then went on
        assert any(r <= t0 for _, _, r in held[p.pid]) and any(g >= t1 for _, g, _ in held[p.pid])


# --- Ctrl-C -------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """The spawned worker processes of ``pid`` (not multiprocessing's resource tracker)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if stat.rsplit(") ", 1)[1].split()[1] == str(pid) and b"multiprocessing.spawn" in cmd:
            out.append(int(d.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker pids from /proc")
def test_ctrl_c_stops_two_workers_cleanly_and_the_run_resumes(tmp_path, monkeypatch):
    budget = 6
    args = [sys.executable, "-m", "shufflesearch.cli", "run", str(TINY), "--budget", str(budget),
            "--workers", "2", "--runs", str(tmp_path / "runs"), "--quiet"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SHUFFLESEARCH_CACHE_DIR": str(tmp_path / "cache")}
    # SIGINT as a terminal's Ctrl-C delivers it (a shell's background jobs start with it ignored).
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    db = tmp_path / "runs" / "tiny" / "study.db"
    deadline = time.time() + 300
    while time.time() < deadline:  # the first completed trial: both workers are at work
        assert p.poll() is None, p.communicate()
        try:
            if db.exists() and _search_trials(optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")):
                break
        except Exception:  # the database is being created
            pass
        time.sleep(0.2)
    workers = _children(p.pid)
    assert len(workers) == 2
    p.send_signal(signal.SIGINT)  # to the main process only: it stops the workers
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]  # no worker outlived it
    _, study = load_run(tmp_path / "runs" / "tiny")
    assert len(_search_trials(study)) < budget  # it stopped before the end
    for t in study.get_trials(states=(TrialState.RUNNING,)):  # nothing left running by a worker
        assert (t.system_attrs.get(WORKER_MARK) or {}).get("pid") not in workers, t.number
    monkeypatch.setenv("SHUFFLESEARCH_CACHE_DIR", env["SHUFFLESEARCH_CACHE_DIR"])
    run = search(TINY, budget, runs_root=tmp_path / "runs", workers=1, quiet=True)  # resume
    study = run.load_study()
    assert len(_search_trials(study)) == budget
    assert not study.get_trials(states=(TrialState.RUNNING,))
