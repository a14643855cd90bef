"""The fidelity ladder inside a search (search/ladder.py): promotion across 1 and 2 workers,
kill -9 after a rung's checkpoint, infeasible trials never trained, the front at the top rung,
the self-check in pareto/report/export, and `fidelity: none` unchanged.

Runs use tests/spaces/ladder.yaml (16x16 proxy, rungs [2, 4, 8], eta 2, two V2 baselines that
climb every rung, a check of 3+ architectures at 8 steps x 2 seeds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from shufflesearch.accuracy.fidelity import latest_checkpoint, rung_dir
from shufflesearch.cli import main
from shufflesearch.search.engine import search
from shufflesearch.search.promotion import promotion_quota, should_promote
from shufflesearch.search.runfolder import load_run
from shufflesearch.search.space import load_space
from shufflesearch.search.storage import read_record, read_records, study_attr
from tests.conftest import ROOT, SPACES

LADDER = SPACES / "ladder.yaml"
TINY = SPACES / "tiny.yaml"
BUDGET = 5


def _records(root: Path):
    _, study = load_run(root)
    return study, read_records(study.get_trials())


def check_ladder(root: Path, budget: int, workers: int = 1) -> list:
    """Exact budget; each rung's figures where they belong; successive halving halves (the
    search trials reaching rung k+1 are at most ceil(n_k / eta) plus one per worker); one
    scale (the accuracy figure is the top rung's, None below it); nothing trained twice;
    checkpoints on disk."""
    study, recs = _records(root)
    space = load_space(LADDER)
    search_done = [r for r in recs if r.state == "COMPLETE" and not r.baseline]
    assert len(search_done) == budget
    assert not study.get_trials(states=(TrialState.RUNNING,))
    done = [r for r in recs if r.state == "COMPLETE"]
    reached = [sum(1 for r in done if r.rung is not None and r.rung >= k) for k in range(4)]
    assert reached == sorted(reached, reverse=True) and reached[3] >= 1, reached
    search_arch = {r.archid: r.rung for r in done if not r.baseline and r.duplicate_of is None}
    n = [sum(1 for k in search_arch.values() if k >= j) for j in range(4)]
    for j in range(1, 3):
        assert n[j + 1] <= -(-n[j] // space.fidelity.eta) + workers, (j, n)
    told = {t.number: t.values[0] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    for r in done:
        assert r.top_rung == 3 and r.estimator == "sotl"
        assert (r.proxy is not None) == (r.rung == 3)  # one scale: the top rung's figure only
        # ... and Optuna is told that figure, or -inf (no figure) with the ladder constraint
        assert told[r.trial] == (r.proxy if r.rung == 3 else float("-inf"))
        assert not r.proxies  # no zero-cost scores in a ladder run
        if r.baseline:
            assert r.rung == 3  # baselines climb every rung
        for k in range(1, r.rung + 1):
            assert r.rungs[k].steps == space.fidelity.rungs[k - 1]
        if r.rung < 3:
            assert r.stopped and not r.at_top
    trained: dict[tuple[str, int], int] = {}
    for r in recs:  # failed (killed) trials included: their training counts too
        if r.duplicate_of is not None or not r.rungs:
            continue
        for k, v in r.rungs.items():
            if v.trained_seconds > 0:
                trained[(r.archid, k)] = trained.get((r.archid, k), 0) + 1
    assert all(n == 1 for n in trained.values()), trained
    # Lean run folder: a trial stopped below the top keeps no checkpoint; at the end only the
    # shown front and the check's picks keep theirs (their top rung's).
    kept = {d.name.rsplit("-s", 1)[0] for d in (root / "rungs").glob("*-s*")}
    check = study_attr(study, "check", {})
    for r in done:
        if r.rung and r.duplicate_of is None and r.rung < 3:
            assert r.archid not in kept
    for a in kept:
        assert latest_checkpoint(rung_dir(root, a, 0))[0] == 3
    assert set(check.get("archids") or []) <= kept
    return done


def check_promotions(recs: list, eta: int) -> tuple[int, list[int]]:
    """One worker: trials climb one after another in trial order, so every promotion decision
    can be replayed from the stored rung entries. Trial t climbed from rung k (k >= 1) exactly
    when it was in the best max(1, floor(n / eta)) of the n search architectures that had
    finished rung k by then, ranked by non-dominated sorting and crowding on (estimate, latency
    ratio), and fewer than that many earlier ones had started rung k+1 (baselines are outside
    both). Returns the number of decisions replayed and the promotions per rung."""
    done = [r for r in recs if r.state == "COMPLETE" and r.rungs and r.duplicate_of is None
            and not r.baseline]
    promoted, decisions = [0, 0, 0], 0
    for t in sorted(done, key=lambda r: r.trial):
        for k in (1, 2):
            if k not in t.rungs:
                break
            field: dict[str, tuple[int, float, float]] = {}
            for r in done:
                e = r.rungs.get(k)
                if e is not None and r.trial <= t.trial and r.archid not in field:
                    field[r.archid] = (r.trial, e.estimate("sotl"), e.latency)
            started = sum(1 for r in done if r.trial < t.trial and k + 1 in r.rungs)
            n = len(field)
            climbed = k + 1 in t.rungs
            assert climbed == should_promote(t.trial, list(field.values()), eta, started=started), (t.trial, k, field)
            assert started + climbed <= promotion_quota(n, eta, min_one=True)
            if not climbed:
                assert t.stopped.startswith(f"stopped at rung {k}: not in the best 1/{eta} of {n} at that rung")
            promoted[k] += climbed
            decisions += 1
    return decisions, promoted


def assert_check_ran(check: dict, done: list) -> None:
    """With several workers, which trials climb to the top rung depends on the interleaving and
    on measured latency: the check runs when a search trial reached the top (3+ architectures with
    the two baselines), and otherwise the stored check says why it did not."""
    if any(r.at_top and not r.baseline for r in done):
        assert check["n"] >= 3 and len(check["tau_ci"]) == 2
    else:  # only the two baselines reached the top rung
        assert "needs 3" in check["skipped"]


def check_review(root: Path, out: Path, capsys) -> None:
    """pareto, --all, report and export use the top rung and show the check."""
    study, recs = _records(root)
    rep = study_attr(study, "check")
    assert rep["n"] >= 3 and rep["chosen"] in ("val_acc", "sotl") and len(rep["tau_ci"]) == 2
    assert len(study_attr(study, "check_runs")) == rep["n"]
    capsys.readouterr()
    assert main(["pareto", str(root)]) == 0
    text = capsys.readouterr().out
    assert "self-check:" in text and "rung" in text
    assert ("Kendall τ vs check" in text) == (rep["n"] >= 8) and ("too few to tell" in text) == (rep["n"] < 8)
    assert main(["pareto", str(root), "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["rung"] == 3 for r in rows if r["on_front"] or r["knee"])
    assert all(r["estimator"] == rep["chosen"] for r in rows if r["rung"])
    assert main(["pareto", str(root), "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    below = [r for r in rows if r["rung"] is not None and r["rung"] < 3]
    assert all(r["proxy"] is not None for r in rows if r["rung"] == 3)
    assert all(r["proxy"] is None for r in below)  # one scale: never a lower rung's figure
    assert all(r["rung_estimate"] is not None and r["rung_estimator"] == "sotl" for r in below if r["rung"] >= 1)
    from shufflesearch.review.pareto import hypervolume_history, load_records

    hv = hypervolume_history(load_records(root)[1])  # top-rung trials only, its reference too
    assert hv.trials and set(hv.trials) <= {r.trial for r in recs if r.rung == 3}
    assert main(["pareto", str(root), "--all"]) == 0
    text = capsys.readouterr().out
    if below:
        assert "stopped below the top" in text and "below-top estimate" in text
    assert main(["report", str(root), "--out", str(out / "report.html"), "--quiet"]) == 0
    page = (out / "report.html").read_text()
    assert "Fidelity ladder" in page and "self-check:" in page
    assert 'id="fig-ladder"' in page  # rungs reached, estimate vs rung
    assert main(["export", str(root), "--knee", "--out", str(out / "b"), "--no-onnx", "--quiet"]) == 0
    md = (out / "b" / "report.md").read_text()
    assert "3 of 3" in md and "self-check" in md


def test_ladder_one_worker(tmp_path, capsys):
    run = search(LADDER, BUDGET, runs_root=tmp_path / "runs", workers=1, quiet=True)
    check_ladder(run.root, BUDGET)
    decisions, _ = check_promotions(_records(run.root)[1], load_space(LADDER).fidelity.eta)
    assert decisions >= BUDGET  # every search trial decides once at rung 1, at least
    check_review(run.root, tmp_path, capsys)
    # Re-running the finished run trains nothing and re-checks nothing.
    before = study_attr(run.load_study(), "check_runs")
    search(LADDER, BUDGET, runs_root=tmp_path / "runs", workers=1, quiet=True)
    assert study_attr(run.load_study(), "check_runs") == before
    check_ladder(run.root, BUDGET)


def test_ladder_two_workers(tmp_path):
    run = search(LADDER, BUDGET, runs_root=tmp_path / "runs", workers=2, quiet=True)
    done = check_ladder(run.root, BUDGET, workers=2)
    assert len({r.worker_pid for r in done if not r.baseline and r.worker_pid}) >= 1
    assert_check_ran(study_attr(run.load_study(), "check"), done)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SHUFFLESEARCH_FAULT"}
    env.update(PYTHONWARNINGS="ignore", SHUFFLESEARCH_CACHE_DIR=str(tmp_path / "cache"), **extra)
    return env


def test_kill_9_after_a_rung_checkpoint_resumes_and_trains_nothing_twice(tmp_path):
    args = [sys.executable, "-m", "shufflesearch.cli", "run", str(LADDER), "--budget", str(BUDGET),
            "--workers", "1", "--runs", str(tmp_path / "runs"), "--quiet"]
    root = tmp_path / "runs" / "ladder"
    # The 8th rung checkpoint of the process: past the baselines' 6, inside a search trial.
    r = subprocess.run(args, capture_output=True, text=True, timeout=600,
                       env=_env(tmp_path, SHUFFLESEARCH_FAULT="rung:8"))
    assert r.returncode == -9, r.stderr
    assert "fault injection: SIGKILL at rung #8" in (root / "run.log").read_text()
    _, study = load_run(root)
    (killed,) = study.get_trials(states=(TrialState.RUNNING,))
    archid = read_record(killed).archid
    on_disk = latest_checkpoint(rung_dir(root, archid, 0))[0]
    stored = read_record(killed).rung or 0
    assert on_disk == stored + 1  # the checkpoint got to disk, its result did not

    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=_env(tmp_path))
    assert r.returncode == 0, r.stderr
    check_ladder(root, BUDGET)
    _, study = load_run(root)
    assert study.trials[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    rungs = read_record(retry).rungs
    # The rung on disk was a promotion already won: the retry climbs to it without deciding
    # again, and takes it from the checkpoint without training it.
    assert rungs[on_disk].trained_seconds == 0.0
    assert rungs[on_disk].resumed_from == on_disk


def test_infeasible_trials_never_train(tmp_path):
    text = LADDER.read_text() + "constraints: {macs_m: 0.9}\n"
    space = tmp_path / "ladder.yaml"
    space.write_text(text)
    run = search(space, 4, runs_root=tmp_path / "runs", workers=1, quiet=True)
    _, recs = _records(run.root)
    bad = [r for r in recs if r.state == "COMPLETE" and not r.feasible]
    assert bad, "the constraint should rule some trials out"
    for r in bad:
        assert r.rung == 0 and not r.rungs and r.stopped == "infeasible: never trained"
        assert latest_checkpoint(rung_dir(run.root, r.archid, 0)) is None
    good = [r for r in recs if r.state == "COMPLETE" and r.feasible]
    assert all(r.rungs and 1 in r.rungs for r in good)  # every feasible trial trains rung 1


def test_fidelity_none_is_the_zero_cost_search(tmp_path):
    space = load_space(TINY)
    assert space.fidelity is None and "fidelity" not in space.raw
    text = LADDER.read_text().split("fidelity:")[0] + "fidelity: none\n"
    (tmp_path / "none.yaml").write_text(text)
    s2 = load_space(tmp_path / "none.yaml")
    assert s2.fidelity is None and "fidelity" not in s2.raw
    run = search(TINY, 3, runs_root=tmp_path / "runs", workers=1, quiet=True)
    _, recs = _records(run.root)
    for r in recs:
        assert r.rung is None and r.rungs is None and r.at_top
    assert not (run.root / "rungs").exists()
    assert study_attr(run.load_study(), "check") is None


def test_shipped_spaces_have_the_ladder_on():
    for f in sorted((ROOT / "search_spaces").glob("*.yaml")):
        fs = load_space(f).fidelity
        assert fs is not None and len(fs.rungs) >= 2 and fs.check.seeds >= 2, f


@pytest.mark.parametrize("bad,msg", [("{rungs: [4, 2]}", "increase strictly"),
                                     ("{eta: 1}", "eta"), ("{bogus: 1}", "unknown key"),
                                     ("7", "must be a mapping")])
def test_bad_fidelity_section_names_the_field(tmp_path, bad, msg):
    from shufflesearch import UserError

    p = tmp_path / "s.yaml"
    p.write_text(TINY.read_text() + f"fidelity: {bad}\n")
    with pytest.raises(UserError, match=msg) as e:
        load_space(p)
    assert "s.yaml:" in str(e.value) and "fidelity" in str(e.value)


def test_proxy_val_fraction_is_read_and_kept_out_of_old_fingerprints(tmp_path):
    base = load_space(TINY)
    p = tmp_path / "vf.yaml"
    p.write_text(TINY.read_text().replace("batch: 16}", "batch: 16, val_fraction: 0.5}"))
    s = load_space(p)
    assert base.data.val_fraction == 0.2 and s.data.val_fraction == 0.5
    assert "val_fraction" not in base.raw["proxy"] and s.fingerprint() != base.fingerprint()
    p.write_text(TINY.read_text().replace("batch: 16}", "batch: 16, val_fraction: 1.5}"))
    from shufflesearch import UserError

    with pytest.raises(UserError, match=r"proxy.val_fraction: 1.5 is out of range"):
        load_space(p)


def test_two_machines_share_one_postgresql_ladder(tmp_path):
    """Two processes, each with its own run folder (as two machines), on one PostgreSQL study:
    exact budget, every (architecture, rung) trained once across both, the check stored."""
    url = os.environ.get("SHUFFLESEARCH_TEST_PG")
    if not url:
        pytest.skip("no PostgreSQL: `source .ci/postgres.sh` starts one and sets SHUFFLESEARCH_TEST_PG")
    import uuid

    import sqlalchemy as sa

    base = sa.engine.make_url(url)
    db = f"ss_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {db}"))
    storage = base.set(database=db).render_as_string(hide_password=False)
    try:
        args = ["run", str(LADDER), "--budget", str(BUDGET), "--workers", "1", "--name", "lpg", "--storage", storage, "--quiet"]
        procs = [subprocess.Popen([sys.executable, "-m", "shufflesearch.cli", *args, "--runs",
                                   str(tmp_path / f"m{i}")], env=_env(tmp_path), stderr=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for i in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
        assert all("self-check:" in o for o, _ in outs)
        import optuna

        study = optuna.load_study(study_name="lpg", storage=storage)
        recs = read_records(study.get_trials())
        assert sum(1 for r in recs if r.state == "COMPLETE" and not r.baseline) == BUDGET
        trained: dict[tuple[str, int], int] = {}
        for r in recs:
            if r.duplicate_of is None and r.rungs:
                for k, v in r.rungs.items():
                    if v.trained_seconds > 0:
                        trained[(r.archid, k)] = trained.get((r.archid, k), 0) + 1
        assert trained and all(n == 1 for n in trained.values()), trained
        assert_check_ran(study_attr(study, "check"), [r for r in recs if r.state == "COMPLETE"])
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        admin.dispose()


# --- successive halving that halves (search/ladder.climb with training stubbed out) -----------


def _simulate(tmp_path: Path, monkeypatch, n: int, baselines: int = 0, improving: bool = True,
              seed: int = 0) -> tuple[list[int], list[int]]:
    """``n`` search trials through ``climb`` on one in-memory study, in order, each trained by a
    stub whose estimate grows with the trial number when ``improving`` (a model-based sampler
    that gets better over time: the case that broke decide-at-finish promotion). Returns the
    number of search architectures that reached rungs 1..3, and the trial numbers promoted to
    rung 2."""
    import numpy as np
    import optuna

    from shufflesearch.model.arch import Arch
    from shufflesearch.search import ladder
    from shufflesearch.search.objective import objective_values
    from shufflesearch.search.records import TrialRecord
    from shufflesearch.search.storage import trial_id, write_fields

    space = load_space(LADDER)
    quality: dict[str, float] = {}

    def fake_train(arch, data, fs, k, ckpt, seed=0, on_rung=None):
        q = quality[Path(ckpt).name.split("-s")[0]]
        return {"rung": k, "steps": fs.rungs[k - 1], "sotl": q * fs.rungs[k - 1], "val_acc": q,
                "seconds": 0.0, "trained_seconds": 0.0, "resumed_from": k - 1, "device": "cpu"}

    monkeypatch.setattr(ladder, "train_to_rung", fake_train)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    arch = Arch.from_dict({"in_channels": 3, "stem": {"channels": 8, "stride": 1, "pool": False},
                           "stages": [{"family": "v2", "channels": 16, "depth": 1}], "head": 0,
                           "num_classes": 10})
    for i in range(baselines + n):
        t = study.ask()
        base = i < baselines
        aid = f"{i:012x}"
        j = i - baselines  # the search trial's own stream: the same with or without baselines
        rng = np.random.default_rng([seed, j + 1000])
        # baselines are strong networks: in the field they would take the best places
        quality[aid] = 100.0 if base else (j if improving else 0.0) + rng.normal(0.0, 3.0)
        write_fields(study, trial_id(t), archid=aid, baseline=f"b{i}" if base else None)
        rec = TrialRecord(archid=aid, arch=arch, params=1000, macs=10_000, mac=2000,
                          latency_ms=float(rng.uniform(1, 10)))
        ladder.climb(study, trial_id(t), rec, space, None, tmp_path, baseline=base)
        write_fields(study, trial_id(t), rec)
        study.tell(t, objective_values(space, rec))
    recs = [r for r in read_records(study.get_trials()) if not r.baseline]
    reached = [sum(1 for r in recs if (r.rung or 0) >= k) for k in (1, 2, 3)]
    return reached, [r.trial - baselines for r in recs if (r.rung or 0) >= 2]


def test_successive_halving_halves_under_an_improving_sampler(tmp_path, monkeypatch):
    eta = load_space(LADDER).fidelity.eta
    reached, promoted = _simulate(tmp_path, monkeypatch, 120, improving=True)
    assert reached[0] == 120  # every feasible trial trains rung 1
    for k in range(2):
        assert reached[k + 1] <= -(-reached[k] // eta), reached  # one worker: no slack
    # and it still halves: the cap is met, not undershot by more than the first decisions
    assert reached[1] >= reached[0] // eta - 1, reached
    # later (better) trials still get places as the quota grows: not all taken by the first ones
    assert sum(p >= 60 for p in promoted) >= len(promoted) // 3, promoted


def test_baselines_take_no_search_trials_place(tmp_path, monkeypatch):
    none, _ = _simulate(tmp_path / "a", monkeypatch, 30, baselines=0, improving=False, seed=1)
    six, _ = _simulate(tmp_path / "b", monkeypatch, 30, baselines=6, improving=False, seed=1)
    # the same places for the search trials (±1: ties break by a hash of the trial number, and
    # the baselines shift the numbers); in the field, six strong baselines would take six
    assert none[0] == six[0] and all(abs(a - b) <= 1 for a, b in zip(none, six)), (none, six)


def test_ties_do_not_favour_older_trials():
    from shufflesearch.search.promotion import Point, ranking

    same = [Point(i, 0.5, 3.0) for i in range(100)]
    top = [p.id for p in ranking(same)[:20]]
    assert 30 <= sum(top) / len(top) <= 70, top  # lowest-id-first would give 9.5


def test_estimator_switch_redraws_the_front():
    """Once the check picks an estimator, the front follows it: a trial on the val_acc front but
    off the sotl front is shown (and the one only sotl favours is not)."""
    from shufflesearch.search.front import pareto_front
    from shufflesearch.search.ladder import apply_estimator
    from shufflesearch.search.records import RungResult, TrialRecord

    def rec(n, lat, sotl_per_step, val, rung=2):
        res = RungResult(rung=rung, steps=10, sotl=10 * sotl_per_step, val_acc=val)
        return TrialRecord(trial=n, archid=f"a{n}", latency_ms=lat, top_rung=2, rung=rung,
                           rungs={rung: res}, estimator="sotl", proxy=sotl_per_step)

    recs = [rec(1, 1.0, -1.0, 0.5), rec(2, 2.0, -0.5, 0.4), rec(3, 3.0, -2.0, 0.9),
            rec(4, 0.5, -0.1, 0.99, rung=1)]
    apply_estimator(recs, "sotl")
    assert {r.trial for r in pareto_front(recs)} == {1, 2}
    assert recs[3].proxy is None  # below the top: no figure on the front's scale
    apply_estimator(recs, "val_acc")
    assert {r.trial for r in pareto_front(recs)} == {1, 3}
    assert all(r.estimator == "val_acc" for r in recs)


def test_the_check_takes_the_processes_asked_for_when_no_trial_is_left(tmp_path, monkeypatch):
    """A resumed run with its budget met starts one worker, but its check still spreads over
    what --workers asks for; --workers 1 keeps it in one process."""
    from shufflesearch.search import engine

    got: list[int] = []
    monkeypatch.setattr(engine, "run_check", lambda run, **kw: got.append(kw["workers"]))
    monkeypatch.setattr("shufflesearch.common.threads.usable_cores", lambda: 4)
    search(TINY, 0, runs_root=tmp_path / "runs", quiet=True)  # auto: 4 cores, no trial to run
    search(TINY, 0, name="one", runs_root=tmp_path / "runs", quiet=True, workers=1)
    assert got == [4, 1]


def test_the_check_comes_before_the_retiming(tmp_path, monkeypatch):
    """The re-timing (and so the shown, picked and exported front) follows the estimator the
    check chooses: the check runs first."""
    from shufflesearch.search import engine

    calls: list[str] = []
    monkeypatch.setattr(engine, "run_check", lambda run, **_: calls.append("check"))
    monkeypatch.setattr(engine, "retime_run", lambda run, say=None: calls.append("retime"))
    monkeypatch.setattr(engine, "short_train_front", lambda run, quiet=True: calls.append("short"))
    search(TINY, 0, runs_root=tmp_path / "runs", quiet=True)
    assert calls == ["check", "retime", "short"]
