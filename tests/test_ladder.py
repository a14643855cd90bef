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

from shufflesearch.accuracy.fidelity import latest_checkpoint, pick_estimate, rung_dir
from shufflesearch.cli import main
from shufflesearch.search.engine import search
from shufflesearch.search.promotion import promotion_quota, should_promote
from shufflesearch.search.records import trial_records
from shufflesearch.search.runfolder import load_run
from shufflesearch.search.space import load_space

HERE = Path(__file__).parent
LADDER = HERE / "spaces" / "ladder.yaml"
TINY = HERE / "spaces" / "tiny.yaml"
BUDGET = 5


def _records(root: Path):
    _, study = load_run(root)
    return study, trial_records(study.get_trials())


def check_ladder(root: Path, budget: int) -> list:
    """Exact budget; each rung's figures where they belong; promotion never lets more trials
    into a rung than the one below holds; nothing trained twice; checkpoints on disk."""
    study, recs = _records(root)
    space = load_space(LADDER)
    search_done = [r for r in recs if r.state == "COMPLETE" and not r.baseline]
    assert len(search_done) == budget
    assert not study.get_trials(states=(TrialState.RUNNING,))
    done = [r for r in recs if r.state == "COMPLETE"]
    reached = [sum(1 for r in done if r.rung is not None and r.rung >= k) for k in range(4)]
    assert reached[3] >= 1, reached
    for r in done:
        assert r.top_rung == 3 and r.estimator == "sotl"
        if r.baseline:
            assert r.rung == 3  # baselines climb every rung
        for k in range(1, r.rung + 1):
            assert r.rungs[str(k)]["steps"] == space.fidelity.rungs[k - 1]
        if r.rung < 3:
            assert r.stopped and not r.at_top
    trained: dict[tuple[str, str], int] = {}
    for r in recs:  # failed (killed) trials included: their training counts too
        if r.duplicate_of is not None or not r.rungs:
            continue
        for k, v in r.rungs.items():
            if k != "0" and v["trained_seconds"] > 0:
                trained[(r.archid, k)] = trained.get((r.archid, k), 0) + 1
    assert all(n == 1 for n in trained.values()), trained
    for r in done:
        if r.rung and r.duplicate_of is None:
            assert latest_checkpoint(rung_dir(root, r.archid, 0))[0] == r.rung
    return done


def check_promotions(recs: list, eta: int) -> tuple[int, list[int]]:
    """One worker: trials climb one after another in trial order, so every promotion decision
    can be replayed from the stored rung entries. Trial t climbed from rung k exactly when it
    was in the best floor(n / eta) (at least one) of the n architectures that had finished rung
    k by then (the baselines, climbing first, and earlier trials), ranked by non-dominated
    sorting and crowding on (estimate, ratio to the reference). Returns the number of decisions
    replayed and the promotions per rung."""
    done = [r for r in recs if r.state == "COMPLETE" and r.rungs and r.duplicate_of is None]
    promoted, decisions = [0, 0, 0], 0
    for t in sorted((r for r in done if not r.baseline), key=lambda r: r.trial):
        for k in range(3):
            if str(k) not in t.rungs:
                break
            field: dict[str, tuple[int, float, float]] = {}
            for r in done:
                e = r.rungs.get(str(k))
                if e is not None and (r.baseline or r.trial <= t.trial) and r.archid not in field:
                    est = e["estimate"] if k == 0 else pick_estimate(e, "sotl")
                    field[r.archid] = (r.trial, est, e["ratio"])
            n = len(field)
            climbed = str(k + 1) in t.rungs
            assert climbed == should_promote(t.trial, list(field.values()), eta), (t.trial, k, field)
            assert promotion_quota(n, eta, min_one=True) >= 1
            if not climbed:
                assert t.stopped == f"stopped at rung {k}: not in the best 1/{eta} of {n} at that rung"
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
    rep = study.user_attrs["check"]
    assert rep["n"] >= 3 and rep["chosen"] in ("val_acc", "sotl") and len(rep["tau_ci"]) == 2
    assert len(study.user_attrs["check_runs"]) == rep["n"]
    capsys.readouterr()
    assert main(["pareto", str(root)]) == 0
    text = capsys.readouterr().out
    assert "self-check:" in text and "Kendall τ vs check" in text and "rung" in text
    assert main(["pareto", str(root), "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["rung"] == 3 for r in rows if r["on_front"] or r["knee"])
    assert all(r["estimator"] == rep["chosen"] for r in rows if r["rung"])
    assert main(["pareto", str(root), "--all"]) == 0
    text = capsys.readouterr().out
    if any(r.rung is not None and r.rung < 3 for r in recs if r.state == "COMPLETE"):
        assert "stopped early" in text
    assert main(["report", str(root), "--out", str(out / "report.html"), "--quiet"]) == 0
    page = (out / "report.html").read_text()
    assert "Fidelity ladder" in page and "self-check:" in page
    assert 'id="fig-ladder"' in page and (out / "report_ladder.png").exists()  # rungs reached, estimate vs rung
    assert main(["export", str(root), "--knee", "--out", str(out / "b"), "--no-onnx", "--quiet"]) == 0
    md = (out / "b" / "report.md").read_text()
    assert "3 of 3" in md and "self-check" in md


def test_ladder_one_worker(tmp_path, capsys):
    run = search(LADDER, BUDGET, runs_root=tmp_path / "runs", quiet=True)
    check_ladder(run.root, BUDGET)
    decisions, _ = check_promotions(_records(run.root)[1], load_space(LADDER).fidelity.eta)
    assert decisions >= BUDGET  # every search trial's decision at rung 0, at least
    check_review(run.root, tmp_path, capsys)
    # Re-running the finished run trains nothing and re-checks nothing.
    before = run.load_study().user_attrs["check_runs"]
    search(LADDER, BUDGET, runs_root=tmp_path / "runs", quiet=True)
    assert run.load_study().user_attrs["check_runs"] == before
    check_ladder(run.root, BUDGET)


def test_ladder_two_workers(tmp_path):
    run = search(LADDER, BUDGET, runs_root=tmp_path / "runs", workers=2, quiet=True)
    done = check_ladder(run.root, BUDGET)
    assert len({r.worker_pid for r in done if not r.baseline and r.worker_pid}) >= 1
    assert_check_ran(run.load_study().user_attrs["check"], done)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SHUFFLESEARCH_FAULT"}
    env.update(PYTHONWARNINGS="ignore", SHUFFLESEARCH_CACHE_DIR=str(tmp_path / "cache"), **extra)
    return env


def test_kill_9_after_a_rung_checkpoint_resumes_and_trains_nothing_twice(tmp_path):
    args = [sys.executable, "-m", "shufflesearch.cli", "run", str(LADDER), "--budget", str(BUDGET),
            "--runs", str(tmp_path / "runs"), "--quiet"]
    root = tmp_path / "runs" / "ladder"
    # The 8th rung checkpoint of the process: past the baselines' 6, inside a search trial.
    r = subprocess.run(args, capture_output=True, text=True, timeout=600,
                       env=_env(tmp_path, SHUFFLESEARCH_FAULT="rung:8"))
    assert r.returncode == -9, r.stderr
    assert "fault injection: SIGKILL at rung #8" in (root / "run.log").read_text()
    _, study = load_run(root)
    (killed,) = study.get_trials(states=(TrialState.RUNNING,))
    archid = killed.user_attrs["archid"]
    on_disk = latest_checkpoint(rung_dir(root, archid, 0))[0]
    stored = killed.user_attrs.get("rung", 0)
    assert on_disk == stored + 1  # the checkpoint got to disk, its result did not

    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env=_env(tmp_path))
    assert r.returncode == 0, r.stderr
    check_ladder(root, BUDGET)
    _, study = load_run(root)
    assert study.trials[killed.number].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    rungs = retry.user_attrs.get("rungs") or {}
    rungs = retry.user_attrs["rungs"]
    # The rung on disk was a promotion already won: the retry climbs to it without deciding
    # again, and takes it from the checkpoint without training it.
    assert rungs[str(on_disk)]["trained_seconds"] == 0.0
    assert rungs[str(on_disk)]["resumed_from"] == on_disk


def test_infeasible_trials_never_train(tmp_path):
    text = LADDER.read_text() + "constraints: {macs_m: 0.9}\n"
    space = tmp_path / "ladder.yaml"
    space.write_text(text)
    run = search(space, 4, runs_root=tmp_path / "runs", quiet=True)
    _, recs = _records(run.root)
    bad = [r for r in recs if r.state == "COMPLETE" and not r.feasible]
    assert bad, "the constraint should rule some trials out"
    for r in bad:
        assert r.rung == 0 and not r.rungs and r.stopped == "infeasible: never trained"
        assert latest_checkpoint(rung_dir(run.root, r.archid, 0)) is None
    good = [r for r in recs if r.state == "COMPLETE" and r.feasible]
    assert all(r.rungs and "0" in r.rungs for r in good)


def test_fidelity_none_is_the_zero_cost_search(tmp_path):
    space = load_space(TINY)
    assert space.fidelity is None and "fidelity" not in space.raw
    text = LADDER.read_text().split("fidelity:")[0] + "fidelity: none\n"
    (tmp_path / "none.yaml").write_text(text)
    s2 = load_space(tmp_path / "none.yaml")
    assert s2.fidelity is None and "fidelity" not in s2.raw
    run = search(TINY, 3, runs_root=tmp_path / "runs", quiet=True)
    _, recs = _records(run.root)
    for r in recs:
        assert r.rung is None and r.rungs is None and r.at_top
    assert not (run.root / "rungs").exists()
    assert "check" not in run.load_study().user_attrs


def test_shipped_spaces_have_the_ladder_on():
    for f in sorted((HERE.parent / "search_spaces").glob("*.yaml")):
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
        args = ["run", str(LADDER), "--budget", str(BUDGET), "--name", "lpg", "--storage", storage, "--quiet"]
        procs = [subprocess.Popen([sys.executable, "-m", "shufflesearch.cli", *args, "--runs",
                                   str(tmp_path / f"m{i}")], env=_env(tmp_path), stderr=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for i in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
        assert all("self-check:" in o for o, _ in outs)
        import optuna

        study = optuna.load_study(study_name="lpg", storage=storage)
        recs = trial_records(study.get_trials())
        assert sum(1 for r in recs if r.state == "COMPLETE" and not r.baseline) == BUDGET
        trained: dict[tuple[str, str], int] = {}
        for r in recs:
            if r.duplicate_of is None and r.rungs:
                for k, v in r.rungs.items():
                    if k != "0" and v["trained_seconds"] > 0:
                        trained[(r.archid, k)] = trained.get((r.archid, k), 0) + 1
        assert trained and all(n == 1 for n in trained.values()), trained
        assert_check_ran(study.user_attrs["check"], [r for r in recs if r.state == "COMPLETE"])
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        admin.dispose()
