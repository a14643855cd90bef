"""Fault injection: kill -9 at named points of a trial, trials that raise, concurrent workers on
SQLite and on a real PostgreSQL. Bad input is in test_bad_input.py.

Kills use the SHUFFLESEARCH_FAULT hook in search.py (``point:N`` SIGKILLs the process the Nth
time it reaches ``point``), so each kill lands exactly where it is named; the run log proves it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from shufflesearch import UserError
from shufflesearch.search.engine import search
from shufflesearch.search.runfolder import load_run
from shufflesearch.search.worker import MAX_CONSECUTIVE_FAILURES
from tests.conftest import SPACES

TINY = SPACES / "tiny.yaml"
BUDGET = 4


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A private latency cache per test, so "measured once" can be read from it."""
    env = {k: v for k, v in os.environ.items() if k != "SHUFFLESEARCH_FAULT"}
    env.update(PYTHONWARNINGS="ignore", SHUFFLESEARCH_CACHE_DIR=str(tmp_path / "cache"), **extra)
    return env


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shufflesearch.cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def _search(study: optuna.Study, states=(TrialState.COMPLETE,)) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(states=states) if not t.user_attrs.get("baseline")]


def _completed(study: optuna.Study) -> dict[int, tuple[list[float], str]]:
    return {t.number: (t.values, t.user_attrs["archid"]) for t in _search(study)}


def _cache_records(cache_dir: Path) -> dict[str, dict]:
    con = sqlite3.connect(cache_dir / "latency.sqlite")
    try:
        rows = con.execute("SELECT archid, record FROM latency").fetchall()
    finally:
        con.close()
    out: dict[str, dict] = {}
    for archid, rec in rows:
        assert archid not in out, f"{archid} cached under two specs/fingerprints"
        out[archid] = json.loads(rec)
    return out


def _strip(lat: dict) -> dict:
    return {k: v for k, v in lat.items() if k != "cached"}


def check_invariants(root: Path, budget: int, before: dict[int, tuple[list[float], str]],
                     cache_dir: Path) -> optuna.Study:
    """Exactly the budget; every trial completed before a crash still there with its values;
    every architecture measured once."""
    _, study = load_run(root)
    done = _search(study)
    assert len(done) == budget, [(t.number, t.state) for t in study.trials]
    assert not study.get_trials(states=(TrialState.RUNNING,))
    for number, (values, archid) in before.items():
        t = study.trials[number]
        assert t.state == TrialState.COMPLETE and t.values == values and t.user_attrs["archid"] == archid
    # Measured once: the cache holds one figure per architecture (a second measurement would
    # replace it), and every completed trial of that architecture carries that very figure —
    # its timed runs included, which no two measurements share.
    cache = _cache_records(cache_dir)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        if t.user_attrs["archid"] not in cache:  # a figure still drifted after its re-time is not cached
            assert t.user_attrs["latency"].get("drifted"), t.number
            continue
        assert _strip(t.user_attrs["latency"]) == _strip(cache[t.user_attrs["archid"]]), t.number
    measured = [t.user_attrs["archid"] for t in done if "duplicate_of" not in t.user_attrs]
    assert len(measured) == len(set(measured))
    for t in done:
        if "duplicate_of" in t.user_attrs:
            src = study.trials[t.user_attrs["duplicate_of"]]
            assert src.user_attrs["archid"] == t.user_attrs["archid"] and src.values == t.values
    return study


def check_review_works(root: Path, out: Path, capsys, export: bool = True) -> None:
    """The run folder still serves its readers after a crash: pareto, report, export."""
    from shufflesearch.cli import main

    capsys.readouterr()
    assert main(["pareto", str(root)]) == 0
    assert main(["pareto", str(root), "--failed"]) == 0
    assert main(["report", str(root), "--out", str(out / "report.html"), "--quiet"]) == 0
    assert (out / "report.html").stat().st_size > 0
    if export:
        assert main(["export", str(root), "--knee", "--out", str(out / "bundle"), "--no-onnx", "--quiet"]) == 0
        assert (out / "bundle" / "model.py").exists() and (out / "bundle" / "arch.yaml").exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" not in err.lower(), err


# --- kill -9 at named points ------------------------------------------------------------------

# point -> what the killed trial must look like in storage (proof of where it died)
CRASH_POINTS = {
    "sample": lambda a: "archid" in a and "params" not in a,
    "latency": lambda a: "archid" in a and "params" not in a,
    "proxies": lambda a: "archid" in a and "params" not in a,
    "storage": lambda a: "params" in a and "proxy" not in a,  # half its results written
}


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_kill_9_at_a_named_point_then_rerun(tmp_path, point, capsys):
    args = ["run", str(TINY), "--budget", str(BUDGET), "--workers", "1", "--runs", str(tmp_path / "runs"), "--quiet"]
    root = tmp_path / "runs" / "tiny"
    r = _cli(args, _env(tmp_path, SHUFFLESEARCH_FAULT=f"{point}:2"))
    assert r.returncode == -9, r.stderr  # died by SIGKILL, not by an error
    assert f"fault injection: SIGKILL at {point} #2" in (root / "run.log").read_text()
    _, study = load_run(root)
    before = _completed(study)
    assert len(before) == 1  # the first trial completed, the second was killed ...
    (killed,) = study.get_trials(states=(TrialState.RUNNING,))
    assert CRASH_POINTS[point](killed.user_attrs), killed.user_attrs  # ... where it was named
    check_review_works(root, tmp_path / "review-killed", capsys, export=False)  # readable mid-crash

    r = _cli(args, _env(tmp_path))
    assert r.returncode == 0, r.stderr
    study = check_invariants(root, BUDGET, before, tmp_path / "cache")
    assert study.trials[killed.number].state == TrialState.FAIL  # went stale, was failed
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retried and retried[0].params == killed.params  # and retried
    check_review_works(root, tmp_path / "review", capsys, export=point == "storage")


def test_repeated_kills_at_every_point_lose_nothing(tmp_path):
    """One run folder survives a kill at each point in turn (including the retries of earlier
    victims), then one clean run completes it."""
    args = ["run", str(TINY), "--budget", "5", "--workers", "1", "--runs", str(tmp_path / "runs"), "--quiet"]
    root = tmp_path / "runs" / "tiny"
    before: dict[int, tuple[list[float], str]] = {}
    for fault in ("latency:1", "proxies:1", "storage:1"):
        r = _cli(args, _env(tmp_path, SHUFFLESEARCH_FAULT=fault))
        assert r.returncode == -9, (fault, r.stderr)
        _, study = load_run(root)
        now = _completed(study)
        assert before.items() <= now.items()  # nothing completed earlier was lost or changed
        before = now
    r = _cli(args, _env(tmp_path))
    assert r.returncode == 0, r.stderr
    check_invariants(root, 5, before, tmp_path / "cache")


# --- trials that raise --------------------------------------------------------------------------


def test_trials_that_raise_fail_with_their_reason_and_the_search_goes_on(tmp_path, monkeypatch):
    import shufflesearch.search.evaluator as evaluator_mod  # where the evaluator looks them up

    real_build, real_proxies = evaluator_mod.build, evaluator_mod.compute_proxies
    calls = {"build": 0, "proxies": 0}

    def build(arch, *a, **kw):
        calls["build"] += 1
        if calls["build"] == 1:
            raise RuntimeError("Given groups=2, expected weight to be divisible by 2 (injected)")
        return real_build(arch, *a, **kw)

    def compute_proxies(*a, **kw):
        calls["proxies"] += 1
        n = calls["proxies"]
        if n == 1:
            return {**real_proxies(*a, **kw), "synflow": float("nan")}
        if n == 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        if n == 3:
            raise MemoryError()
        return real_proxies(*a, **kw)

    monkeypatch.setattr(evaluator_mod, "build", build)
    monkeypatch.setattr(evaluator_mod, "compute_proxies", compute_proxies)
    run = search(TINY, 3, runs_root=tmp_path, workers=1, quiet=True)
    _, study = load_run(run.root)
    assert len(_search(study)) == 3
    reasons = [t.user_attrs.get("fail_reason", "") for t in study.get_trials(states=(TrialState.FAIL,))]
    assert len(reasons) == 4, reasons
    assert reasons[0].startswith("RuntimeError: Given groups=2")
    assert reasons[1].startswith("FloatingPointError: proxy score is not finite") and "synflow" in reasons[1]
    assert reasons[2].startswith("out of memory: RuntimeError") and reasons[3] == "out of memory"
    log = (run.root / "run.log").read_text()
    assert "Given groups=2" in log and "proxy score is not finite" in log


def test_a_search_where_every_trial_fails_stops_with_a_clear_error(tmp_path, monkeypatch):
    import shufflesearch.search.evaluator as evaluator_mod  # where the evaluator looks it up

    def build(arch, *a, **kw):
        raise RuntimeError("injected build error")

    monkeypatch.setattr(evaluator_mod, "build", build)
    with pytest.raises(UserError, match=f"{MAX_CONSECUTIVE_FAILURES} trials in a row failed"):
        search(TINY, 3, runs_root=tmp_path, workers=1, quiet=True)
    _, study = load_run(tmp_path / "tiny")
    fails = study.get_trials(states=(TrialState.FAIL,))
    assert len(fails) == MAX_CONSECUTIVE_FAILURES
    assert all(t.user_attrs["fail_reason"] == "RuntimeError: injected build error" for t in fails)


# --- concurrency ----------------------------------------------------------------------------------


def _no_lock_errors(study: optuna.Study, log: str) -> None:
    reasons = [t.user_attrs.get("fail_reason", "") for t in study.trials]
    assert not [r for r in reasons if "locked" in r.lower()]
    assert "database is locked" not in log.lower() and "Traceback" not in log


def test_three_local_workers_lose_and_duplicate_nothing(tmp_path):
    args = ["run", str(TINY), "--budget", "6", "--workers", "3", "--runs", str(tmp_path / "runs"), "--quiet"]
    r = _cli(args, _env(tmp_path))
    assert r.returncode == 0, r.stderr
    root = tmp_path / "runs" / "tiny"
    study = check_invariants(root, 6, {}, tmp_path / "cache")
    _no_lock_errors(study, (root / "run.log").read_text() + r.stderr)
    assert len({t.user_attrs["worker_pid"] for t in _search(study)}) >= 2
    # every trial ended in a known state; a FAIL can only be a budget step-back
    for t in study.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.WAITING)
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("fail_reason", "").startswith("over budget"), t.user_attrs


def _pg_url() -> str:
    url = os.environ.get("SHUFFLESEARCH_TEST_PG")
    if not url:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI=true but SHUFFLESEARCH_TEST_PG is not set: .ci/run must start PostgreSQL")
        pytest.skip("no PostgreSQL: `source .ci/postgres.sh` starts one and sets SHUFFLESEARCH_TEST_PG")
    return url


@pytest.fixture
def fresh_pg_db():
    """A new, empty database on the test server, dropped afterwards: workers starting together
    on it also race to create Optuna's tables, as the first machines of a study do."""
    import sqlalchemy as sa

    base = sa.engine.make_url(_pg_url())
    db = f"ss_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {db}"))
    yield base.set(database=db).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
    admin.dispose()


def test_two_processes_share_one_postgresql_study(tmp_path, fresh_pg_db):
    url = fresh_pg_db
    name = "tiny-pg"
    args = ["run", str(TINY), "--budget", "5", "--workers", "1", "--name", name, "--storage", url,
            "--quiet"]
    env = _env(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "shufflesearch.cli", *args, "--runs", str(tmp_path / f"m{i}")],
                              env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    study = optuna.load_study(study_name=name, storage=url)
    done = _search(study)
    assert len(done) == 5 and len({t.number for t in done}) == 5
    assert len({t.user_attrs["worker_pid"] for t in done}) == 2  # both machines did work
    assert not study.get_trials(states=(TrialState.RUNNING,))
    measured = [t.user_attrs["archid"] for t in done if "duplicate_of" not in t.user_attrs]
    assert len(measured) == len(set(measured))
    # each "machine" has its own run folder pointing at the one shared study
    for i in range(2):
        run, st = load_run(tmp_path / f"m{i}" / name)
        assert run.storage_url == url and len(_search(st)) == 5


def test_a_trial_orphaned_inside_ask_does_not_block_the_last_slot(tmp_path, monkeypatch):
    """kill -9 inside study.ask() (where the sampler runs) leaves a RUNNING trial that never got
    a heartbeat; found by bench/fault_injection.py, where it held the last budget slot forever."""
    import threading

    import shufflesearch.search.worker as search_mod
    from shufflesearch.search.runfolder import open_run
    from shufflesearch.search.space import load_space
    from shufflesearch.search.worker import work

    run = open_run(load_space(TINY), runs_root=tmp_path)
    orphan = run.load_study().ask()  # and its worker "dies": no heartbeat, no archid
    monkeypatch.setattr(search_mod, "ORPHAN_S", 0.0)
    stop = threading.Event()
    th = threading.Thread(target=work, args=(run, 1, stop), daemon=True)
    th.start()
    th.join(180)
    stop.set()
    assert not th.is_alive(), "the orphaned trial held the last slot"
    study = run.load_study()
    assert len(_search(study)) == 1
    t = study.trials[orphan.number]
    assert t.state == TrialState.FAIL and "created" in t.user_attrs["fail_reason"]


# --- races between workers: claims in the study's storage ---------------------------------------
# Each test forces one interleaving with events and runs the real worker code (run_trial, work,
# evaluate_baselines) in threads, each with its own storage connection as a process would have.


def _tiny_run(tmp_path: Path, text: str | None = None):
    from shufflesearch.search.runfolder import open_run
    from shufflesearch.search.space import load_space

    path = TINY
    if text is not None:
        path = tmp_path / "space.yaml"
        path.write_text(text)
    space = load_space(path)
    return space, open_run(space, runs_root=tmp_path / "runs")


class _HeldSpace:
    """The space, with sample() held until ``go`` is set: a worker slow to publish its archid."""

    def __init__(self, space, entered, go) -> None:
        self._space, self._entered, self._go = space, entered, go

    def sample(self, trial):
        self._entered.set()
        self._go.wait(60)
        return self._space.sample(trial)

    def __getattr__(self, name):
        return getattr(self._space, name)


def test_two_workers_racing_on_one_architecture_measure_it_once(tmp_path):
    """The lower-numbered trial publishes its archid only after the higher one started measuring
    (the interleaving that used to measure twice): it must wait and copy, not measure."""
    import threading

    from shufflesearch.search.evaluator import Evaluator
    from shufflesearch.search.worker import run_trial

    space, run = _tiny_run(tmp_path)
    params, _ = space.encode(space.sample_random(1, seed=3)[0])
    first = run.load_study()
    first.enqueue_trial(params)
    first.enqueue_trial(params)  # two workers get the same architecture
    calls: list[str] = []
    a_sampling, a_measures, b_measures = threading.Event(), threading.Event(), threading.Event()
    ev_a, ev_b = Evaluator(space), Evaluator(space)

    def evaluate_a(arch, timings):
        calls.append("a")
        a_measures.set()
        return ev_a(arch, timings)

    def evaluate_b(arch, timings):
        calls.append("b")
        b_measures.set()
        a_measures.wait(3)  # long enough for A to start measuring too, if it wrongly does
        return ev_b(arch, timings)

    def worker(sp, evaluate):
        run_trial(run.load_study(), sp, evaluate)

    ta = threading.Thread(target=worker, args=(_HeldSpace(space, a_sampling, b_measures), evaluate_a))
    ta.start()
    assert a_sampling.wait(60)
    tb = threading.Thread(target=worker, args=(space, evaluate_b))
    tb.start()
    ta.join(300)
    tb.join(300)
    assert calls == ["b"], calls  # one measurement
    a, b = sorted(_search(run.load_study()), key=lambda t: t.number)
    assert a.user_attrs["archid"] == b.user_attrs["archid"] and a.values == b.values
    assert a.user_attrs["duplicate_of"] == b.number and "duplicate_of" not in b.user_attrs


def test_a_retry_that_lands_between_ask_and_its_trial_cannot_overrun_the_budget(tmp_path):
    """A peer's stale sweep queues a retry after this worker found no waiting trial but before
    its own trial was created: the retry has the lower number but is popped later. With one
    slot left, only one of them may complete."""
    from optuna.trial import create_trial

    from shufflesearch.search.evaluator import Evaluator
    from shufflesearch.search.worker import run_trial

    space, run = _tiny_run(tmp_path)
    params, dists = space.encode(space.sample_random(1, seed=5)[0])
    mine, peer = run.load_study(), run.load_study()
    pop = mine._pop_waiting_trial_id

    def pop_then_a_retry_lands():
        mine._pop_waiting_trial_id = pop
        got = pop()
        peer.add_trial(create_trial(state=TrialState.WAITING, params=params, distributions=dists,
                                    system_attrs={"failed_trial": 99, "retry_history": [99]}))
        return got

    mine._pop_waiting_trial_id = pop_then_a_retry_lands
    real = Evaluator(space)
    nested: list[object] = []

    def evaluate(arch, timings):
        if not nested:  # while this trial runs, a peer pops the retry
            nested.append(run_trial(peer, space, real, budget=1))
        return real(arch, timings)

    run_trial(mine, space, evaluate, budget=1)
    study = run.load_study()
    done = _search(study)
    assert len(done) == 1, [(t.number, t.state, t.user_attrs.get("fail_reason")) for t in study.trials]
    retry = study.trials[0]
    assert retry.system_attrs["failed_trial"] == 99 and retry.state == TrialState.FAIL
    assert retry.user_attrs["fail_reason"].startswith("over budget")


def test_a_retry_killed_inside_ask_holds_no_slot_and_blocks_no_architecture(tmp_path, monkeypatch):
    """Optuna's retry copies the dead trial's archid; a worker popping it dies inside ask():
    RUNNING, no heartbeat, an archid. It must be failed as an orphan, and a later trial of
    that architecture must not wait for it."""
    import threading

    from optuna.trial import create_trial

    import shufflesearch.search.worker as worker_mod
    from shufflesearch.search.worker import work

    space, run = _tiny_run(tmp_path)
    arch = space.sample_random(1, seed=3)[0]
    params, dists = space.encode(arch)
    study = run.load_study()
    study.add_trial(create_trial(state=TrialState.WAITING, params=params, distributions=dists,
                                 user_attrs={"archid": arch.archid},
                                 system_attrs={"failed_trial": 0, "retry_history": [0]}))
    (w,) = study.get_trials(states=(TrialState.WAITING,))
    assert study._pop_waiting_trial_id() == w._trial_id  # popped in ask(), then the worker died
    study.enqueue_trial(params)  # the next trial is the same architecture
    monkeypatch.setattr(worker_mod, "ORPHAN_S", 0.0)
    stop = threading.Event()
    th = threading.Thread(target=work, args=(run, 2, stop), daemon=True)
    th.start()
    th.join(240)
    stop.set()
    assert not th.is_alive(), "the dead retry held a slot or its architecture"
    study = run.load_study()
    t = study.trials[w.number]
    assert t.state == TrialState.FAIL and "created" in t.user_attrs["fail_reason"]
    done = _search(study)
    assert len(done) == 2 and arch.archid in {d.user_attrs["archid"] for d in done}


def test_the_retry_of_a_dead_trial_does_not_inherit_its_results(tmp_path):
    """The WAITING retry keeps the dead trial's params (same architecture) and its retry
    history, not its archid or half-written results."""
    space, run = _tiny_run(tmp_path)
    study = run.load_study()
    trial = study.ask()
    space.sample(trial)
    trial.set_user_attr("archid", "x" * 16)
    trial.set_user_attr("params", 123)  # half of its results, as a kill at `storage` leaves
    st = run.storage()
    st.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # what the stale sweep does
    st.get_heartbeat_stale_trial_callback()(study, st.get_trial(trial._trial_id))
    (retry,) = run.load_study().get_trials(states=(TrialState.WAITING,))
    assert retry.params == trial.params and retry.system_attrs["failed_trial"] == trial.number
    assert retry.user_attrs == {}


def test_a_worker_whose_trial_was_failed_as_stale_goes_on(tmp_path, monkeypatch, caplog):
    """Its heartbeats paused beyond the grace period (a suspended process), a peer failed its
    trial; storing the result then meets a finished trial. Log it and run the next trial."""
    import logging
    import time

    import shufflesearch.search.storage as storage_mod
    import shufflesearch.search.worker as worker_mod
    from shufflesearch.search.worker import work

    monkeypatch.setattr(storage_mod, "GRACE_S", 1.0)
    monkeypatch.setattr(storage_mod, "HEARTBEAT_S", 3600.0)  # one beat at the start, then silence
    _, run = _tiny_run(tmp_path)
    paused: list[int] = []

    class Suspended(worker_mod.Evaluator):
        def __call__(self, arch, timings):
            if not paused:
                paused.append(1)
                time.sleep(2.5)  # suspended past the grace period ...
                optuna.storages.fail_stale_trials(run.load_study())  # ... and a peer's sweep
            return super().__call__(arch, timings)

    monkeypatch.setattr(worker_mod, "Evaluator", Suspended)
    with caplog.at_level(logging.WARNING, logger="shufflesearch"):
        assert work(run, 1) == 0
    assert "taken over" in caplog.text
    study = run.load_study()
    assert study.trials[0].state == TrialState.FAIL
    assert len(_search(study)) == 1


def test_a_baseline_the_prefilter_rejects_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    """V2 0.5x has about 19 units, the tiny space's architectures at most 7: at 10 ms a unit
    the pre-filter (limit 100 ms + 20%) rejects the baseline and passes the search. The table's
    reference figure is the one the run converts its limit with, so ratios compare as ms."""
    from shufflesearch.measure.cache import LatencyCache
    from shufflesearch.measure.drift import DriftMonitor
    from shufflesearch.search.space import load_space
    from tests.search.test_search import _table_for_tiny

    monkeypatch.setenv("SHUFFLESEARCH_CACHE_DIR", str(tmp_path / "cache"))
    text = TINY.read_text().replace("max_seconds: 0.1}", "max_seconds: 0.1, prefilter: 0.2}")
    text = text.replace("baselines: []", "constraints: {latency_ms: 100}\nbaselines: [shufflenet_v2_x0_5]")
    space = tmp_path / "pre.yaml"
    space.write_text(text)
    fig = DriftMonitor(load_space(space).target, cache=LatencyCache()).seed()
    _table_for_tiny(10.0, reference_ms=fig["ms"])
    search(space, 1, runs_root=tmp_path / "runs", quiet=True)
    search(space, 2, runs_root=tmp_path / "runs", quiet=True)  # a re-run neither retries nor crashes
    _, study = load_run(tmp_path / "runs" / "pre")
    (base,) = [t for t in study.trials if t.user_attrs.get("baseline")]
    assert base.state == TrialState.PRUNED and "not measured" in base.user_attrs["fail_reason"]
    assert len(_search(study)) == 2


def test_machines_starting_one_study_together_evaluate_the_baselines_once(tmp_path):
    import threading

    from shufflesearch.search.baselines import evaluate_baselines
    from shufflesearch.search.evaluator import Evaluator

    text = TINY.read_text().replace("baselines: []", "baselines: [shufflenet_v2_x0_5]")
    space, run = _tiny_run(tmp_path, text)
    real = Evaluator(space)
    calls: list[str] = []
    both = threading.Barrier(2)

    def evaluate(arch, timings):
        calls.append(arch.archid)
        try:
            both.wait(5)  # the second machine, if it evaluates too, gets here meanwhile
        except threading.BrokenBarrierError:
            pass
        return real(arch, timings)

    ths = [threading.Thread(target=evaluate_baselines, args=(run, evaluate)) for _ in range(2)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(300)
    assert len(calls) == 1, calls
    study = run.load_study()
    done = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.user_attrs.get("baseline")]
    assert len(done) == 1 and not study.get_trials(states=(TrialState.RUNNING,))
    evaluate_baselines(run, evaluate)  # a later start finds it done
    assert len(calls) == 1


# --- end-of-run steps across processes and machines (issue 21 items 7, 8) --------------------


def test_an_end_of_run_step_is_done_by_one_process_while_the_other_waits(tmp_path):
    import threading
    import time

    from shufflesearch.search.storage import GRACE_S, run_step, step_state

    _, run = _tiny_run(tmp_path)
    study = run.load_study()
    ran: list[str] = []
    out: dict[str, tuple[bool, object]] = {}

    def slow(who: str):
        def fn() -> str:
            ran.append(who)
            time.sleep(GRACE_S + 3)  # longer than the grace period: only the heartbeat keeps it
            return who
        return fn

    def go(who: str) -> None:
        out[who] = run_step(run.load_study(), "end:retime:3", slow(who))  # its own connection

    a = threading.Thread(target=go, args=("a",))
    a.start()
    while step_state(study, "end:retime:3") is None:
        time.sleep(0.05)
    t0 = time.monotonic()
    go("b")  # a second machine: waits for the holder, does not take it over, does not redo it
    a.join()
    assert ran == ["a"] and out == {"a": (True, "a"), "b": (False, None)}
    assert time.monotonic() - t0 > GRACE_S  # it waited for the step to finish
    assert step_state(study, "end:retime:3")["done"]
    assert run_step(study, "end:retime:3", slow("c")) == (False, None)
    # a step that raises frees its claim at once: the next process does it
    with pytest.raises(ZeroDivisionError):
        run_step(study, "end:check:3", lambda: 1 / 0)
    assert step_state(study, "end:check:3") is None


@pytest.mark.parametrize("fault", ["retime:1", "short_train:2", "check:1"])
def test_kill_9_during_an_end_of_run_step_then_rerun_completes_it(tmp_path, fault):
    from shufflesearch.search.ladder import describe_check
    from shufflesearch.search.storage import step_state, study_attr

    step = fault.split(":")[0]
    text = TINY.read_text().replace("baselines: []", "baselines: [shufflenet_v2_x0_5]")
    text = text.replace("batch: 16}", "batch: 16, short_train_top_k: 2, short_train_steps: 400}")
    if step == "check":
        text = (SPACES / "ladder.yaml").read_text().replace("top: 3", "top: 0")
    space = tmp_path / "space.yaml"
    space.write_text(text)
    env = _env(tmp_path)
    args = ["run", str(space), "--budget", "2", "--workers", "1", "--runs", str(tmp_path / "runs"), "--name", "s", "--quiet"]
    r = _cli(args, {**env, "SHUFFLESEARCH_FAULT": fault})
    assert r.returncode == -9, r.stderr
    root = tmp_path / "runs" / "s"
    _, study = load_run(root)
    state = step_state(study, f"end:{step}:2")
    assert state is not None and not state["done"]  # claimed, then killed inside it
    before = {k: study_attr(study, k) for k in ("retime", "short_train")}
    r = _cli(args, env)  # the re-run waits out the dead holder's grace period and does it
    assert r.returncode == 0, r.stderr
    _, study = load_run(root)
    assert step_state(study, f"end:{step}:2")["done"]
    assert "taken over" in (root / "run.log").read_text()
    if step == "retime":
        assert before["retime"] is None and study_attr(study, "retime")["trials"]
    if step == "short_train":  # killed 2 s in; what was stored before the kill is kept
        assert (before["short_train"] or {}).items() <= study_attr(study, "short_train").items()
        assert len(study_attr(study, "short_train")) >= 2
    if step == "check":  # check.top: 0 is stored as switched off, and said so
        assert study_attr(study, "check") == {"skipped": "check.top: 0 in the space", "top": 0}
        assert describe_check(study_attr(study, "check")).startswith("self-check: off (check.top: 0")
