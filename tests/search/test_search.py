"""The search end to end on a tiny space: budget, resume, workers, baselines, bad input."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from shufflesearch import Arch, UserError
from shufflesearch.search.engine import search
from shufflesearch.search.runfolder import load_run
from shufflesearch.search.space import load_space
from shufflesearch.search.storage import read_record, search_trials, study_attr
from tests.conftest import ROOT, SPACES

TINY = SPACES / "tiny.yaml"


def _search_trials(study: optuna.Study, state=TrialState.COMPLETE):
    return search_trials(study, (state,))


def _cli(*args: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "shufflesearch.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600, **kw)


def test_tiny_search_stores_everything_and_resumes_to_exactly_the_budget(tmp_path):
    run = search(TINY, 3, runs_root=tmp_path, workers=1, quiet=True)
    _, study = load_run(run.root)
    assert len(_search_trials(study)) == 3
    t = _search_trials(study)[0]
    r = read_record(t)
    for name in ("arch", "archid", "latency_ms", "proxy", "proxy_raw", "params", "macs", "mac",
                 "peak_activation", "worker_pid"):
        assert getattr(r, name) not in (None, ""), name
    assert r.latency and r.proxies and r.timings and r.extra == {}
    assert isinstance(r.arch, Arch) and r.arch.archid == r.archid
    assert r.latency.fingerprint
    assert t.values == [r.proxy, r.latency_ms]
    assert r.feasible and r.constraints == {}  # the tiny space has no constraints
    assert (run.root / "config.yaml").exists() and (run.root / "run.log").exists()
    # re-running with a larger budget resumes; with the same budget it does nothing
    search(TINY, 5, runs_root=tmp_path, workers=1, quiet=True)
    search(TINY, 5, runs_root=tmp_path, workers=1, quiet=True)
    _, study = load_run(run.root)
    done = _search_trials(study)
    assert len(done) == 5
    recs = [read_record(t) for t in done]
    # an architecture is measured once: repeats are recognised by archid and copied
    measured = [r.archid for r in recs if r.duplicate_of is None]
    assert len(measured) == len(set(measured))
    for t, r in zip(done, recs):
        if r.duplicate_of is not None:
            src = study.trials[r.duplicate_of]
            assert read_record(src).archid == r.archid and src.values == t.values
        # what the sampler recorded is what was built
        assert load_space(TINY).sample(optuna.trial.FixedTrial(t.params)).archid == r.archid


def _tiny_with_baseline(tmp_path: Path) -> Path:
    """The tiny space with V2 0.5x as its baseline."""
    space = tmp_path / "withbase.yaml"
    space.write_text(TINY.read_text().replace("baselines: []", "baselines: [shufflenet_v2_x0_5]"))
    return space


def test_baselines_are_evaluated_first_and_not_counted(tmp_path):
    space = _tiny_with_baseline(tmp_path)
    run = search(space, 2, runs_root=tmp_path / "runs", workers=1, quiet=True)
    _, study = load_run(run.root)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    base = read_record(trials[0])
    assert base.baseline == "shufflenet_v2_x0_5"
    assert base.arch.stages[0].channels == 48
    assert len(_search_trials(study)) == 2 and len(trials) == 3
    # a preset the space cannot produce (the tiny space has no 1024-wide head) is stored
    # without params: params that do not decode to it would mislead the sampler
    assert not load_space(space).contains(base.arch) and trials[0].params == {}


def test_kill_9_then_rerun_reaches_exactly_the_budget(tmp_path):
    args = ("run", str(TINY), "--budget", "4", "--workers", "1", "--runs", str(tmp_path), "--quiet")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    err = (tmp_path / "stderr.txt").open("w")
    p = subprocess.Popen([sys.executable, "-m", "shufflesearch.cli", *args], env=env, stderr=err)
    db = tmp_path / "tiny" / "study.db"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for the first completed trial, then kill mid-run
        # A run that fails by itself (e.g. racing this loop to create the database) must say so
        # now, not after the deadline.
        assert p.poll() in (None, 0), (tmp_path / "stderr.txt").read_text()
        if db.exists():
            try:
                s = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
                if _search_trials(s):
                    break
            except Exception:
                pass
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    err.close()
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    _, study = load_run(tmp_path / "tiny")
    assert len(_search_trials(study)) == 4
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_changed_space_under_the_same_name_is_refused(tmp_path):
    search(TINY, 1, runs_root=tmp_path, quiet=True)
    changed = tmp_path / "tiny.yaml"
    changed.write_text(TINY.read_text().replace("seed: 0", "seed: 1"))
    with pytest.raises(UserError, match="different search space"):
        search(changed, 1, runs_root=tmp_path, quiet=True)
    search(changed, 1, name="tiny-seed1", runs_root=tmp_path, quiet=True)


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "", ".hidden", "x" * 200])
def test_names_cannot_leave_runs(tmp_path, name):
    with pytest.raises(UserError) as e:  # named as the argument; the CLI names --name
        search(TINY, 1, name=name, runs_root=tmp_path, quiet=True)
    assert (e.value.field, e.value.value) == ("name", name)
    assert list(tmp_path.iterdir()) == []


GOOD = TINY.read_text()
BAD_YAML = [
    ("", "empty"),
    ("space: [", "not valid YAML"),
    ("- a\n- b\n", "must be a YAML mapping"),
    (GOOD.replace("target:", "targte:"), "did you mean 'target'"),
    (GOOD.replace("width: {low: 16, high: 32, step: 8}", "width: {low: 16, high: 32, stp: 8}"), "space.stages[0].width.stp: unknown key (did you mean 'step'"),
    (GOOD.replace("width: {low: 16, high: 32, step: 8}", "width: {low: 32, high: 16}"), "space.stages[0].width: high (16) is below low (32)"),
    (GOOD.replace("depth: [1, 2], split", "depth: [0, 2], split"), "space.stages[0].depth[0]: 0 is out of range"),
    (GOOD.replace("kernel: [3, 5]", "kernel: [3, 4]"), "space.stages[0].kernel[1]: must be one of 3, 5, 7"),
    (GOOD.replace("family: [v1, v2]", "family: [v1, v9]"), "space.stages[1].family[1]: must be one of v1, v2"),
    (GOOD.replace("resolution: 32, batch: 1", "resolution: 'big', batch: 1"), "target.resolution: must be an integer"),
    (GOOD.replace("objectives: [proxy, latency]", "objectives: [proxy, speed]"), "objectives[1]: unknown objective 'speed'"),
    (GOOD.replace("objectives: [proxy, latency]", "objectives: [proxy, proxy]"), "listed twice"),
    (GOOD.replace("sampler: {name: tpe", "sampler: {name: cmaes"), "sampler.name: must be one of"),
    (GOOD.replace("baselines: []", "baselines: [shufflenet_v9]"), "baselines[0]: unknown preset"),
    (GOOD.replace("baselines: []", "constraints: {latency_ms: -1}\nbaselines: []"), "constraints.latency_ms: -1 is out of range"),
    (GOOD.replace("baselines: []", "constraints: {latnecy_ms: 5}\nbaselines: []"), "did you mean 'latency_ms'"),
    (GOOD.replace("split: [0.5]", "split: [1.5]"), "space.stages[0].split[0]: 1.5 is out of range"),
    (GOOD.replace("width: {low: 16, high: 32, step: 8}", "width: {low: 16, high: 99999999999, step: 1}"), "out of range"),
    ("space: {stages: []}", "space.stages: required: a non-empty list"),
    (GOOD.replace("batch: 16}", "batch: 16, score: accuracy}"), "proxy.score: must be one of"),
    (GOOD.replace("batch: 16}", "batch: 16, score: naswot, proxies: [macs]}"), "proxy.proxies: score 'naswot' needs naswot"),
    (GOOD.replace("batch: 16}", "batch: 16, proxies: [macs, nasbot]}"), "proxy.proxies[1]: unknown proxy 'nasbot'"),
]


@pytest.mark.parametrize("text, needle", BAD_YAML)
def test_invalid_yaml_gets_a_clear_error(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_space(p)
    assert needle in str(e.value)
    assert str(e.value).startswith(str(p))


def test_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(GOOD.replace("kernel: [3, 5]", "kernel: [3, 4]"))
    line = next(i for i, s in enumerate(p.read_text().splitlines(), 1) if "kernel: [3, 4]" in s)
    with pytest.raises(UserError, match=rf"bad.yaml:{line}: space.stages\[0\].kernel\[1\]"):
        load_space(p)


def test_cli_space_and_run_errors_exit_2_without_traceback(tmp_path):
    r = _cli("space", str(TINY), "--sample", "5")
    assert r.returncode == 0 and "ok" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\x00\x01binary")
    for args in (("space", str(bad)), ("run", str(bad)), ("run", str(tmp_path / "missing.yaml")),
                 ("run", str(TINY), "--name", "../x", "--runs", str(tmp_path))):
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")


@pytest.mark.parametrize("f", sorted((ROOT / "search_spaces").glob("*.yaml")))
def test_shipped_spaces_validate_and_sample(f):
    space = load_space(f)
    archs = space.sample_random(10, seed=0)
    assert len(archs) == 10
    for name in space.baselines:
        assert name.startswith("shufflenet_")


def test_baselines_encode_to_params_that_sample_back_to_them():
    import optuna

    for f in ("v2", "v1", "mixed"):
        space = load_space(ROOT / "search_spaces" / f"{f}.yaml")
        for name, arch in space.baseline_archs().items():
            if not space.contains(arch):
                continue
            params, dists = space.encode(arch)
            trial = optuna.trial.FixedTrial(params)
            got = space.sample(trial)  # the space has no fc_bias choice: V1 presets have none
            assert got.replace(fc_bias=arch.fc_bias).archid == arch.archid, (f, name)
            for k, v in params.items():
                assert dists[k]._contains(dists[k].to_internal_repr(v)), (k, v)


def test_each_run_logs_to_its_own_file(tmp_path):
    a = search(TINY, 1, name="a", runs_root=tmp_path, quiet=True)
    b = search(TINY, 1, name="b", runs_root=tmp_path, quiet=True)
    assert "run b: budget 1" in (b.root / "run.log").read_text()
    assert "run b" not in (a.root / "run.log").read_text()


def _table_for_tiny(per_unit_ms: float, reference_ms: float = 0.01) -> None:
    """A latency table for the tiny space's target whose unit model says every unit takes
    ``per_unit_ms``, its ratios scaled by ``reference_ms`` (a stand-in for `shufflesearch
    latency table build`)."""
    from shufflesearch.measure.env import fingerprint
    from shufflesearch.measure.predictor import LatencyTable, table_path
    spec = load_space(TINY).target  # the space's target (NHWC by default)
    LatencyTable(spec.to_dict(), fingerprint(1, "torch"), joint=[per_unit_ms] + [0.0] * 7,
                 reference_ms=reference_ms).save(table_path(spec))


def test_prefilter_compares_the_predicted_ratio_with_the_limits_ratio(tmp_path, monkeypatch):
    # Issue 21 item 1: the table predicts 10 ms, under the 50 ms limit in ms; but its reference
    # ran at 1 ms when it was built, so the prediction is 10x the reference, and the run's limit
    # is 5x the reference (50 ms at a 10 ms reference figure): a clear miss on the one yardstick.
    from shufflesearch.measure.predictor import unit_entries
    from shufflesearch.search.evaluator import Evaluator

    monkeypatch.setenv("SHUFFLESEARCH_CACHE_DIR", str(tmp_path / "cache"))
    text = TINY.read_text().replace("max_seconds: 0.1}", "max_seconds: 0.1, prefilter: 0.2}")
    text = text.replace("baselines: []", "constraints: {latency_ms: 50}\nbaselines: []")
    (tmp_path / "pre.yaml").write_text(text)
    space = load_space(tmp_path / "pre.yaml")
    arch = space.sample(optuna.create_study().ask())
    n_units = len(unit_entries(arch, space.target))
    _table_for_tiny(10.0 / n_units, reference_ms=1.0)
    ev = Evaluator(space, limit={"ms": 50.0, "reference_ms": 10.0, "ratio": 5.0})
    assert ev.table.predict(arch) == pytest.approx(10.0) and ev.table.predict_ratio(arch) == pytest.approx(10.0)
    with pytest.raises(optuna.TrialPruned, match=r"predicted ratio 10\.000 .* \(ratio 5\.000\)"):
        ev(arch, {})
    ev.limit = {"ms": 50.0, "reference_ms": 1.0, "ratio": 50.0}  # the limit at the table's reference
    assert ev(arch, {}).latency_limit == 50.0  # measured, and judged against that ratio


def test_prefilter_skips_predicted_misses_and_measures_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("SHUFFLESEARCH_CACHE_DIR", str(tmp_path / "cache"))  # the stand-in table stays here
    text = TINY.read_text().replace("max_seconds: 0.1}", "max_seconds: 0.1, prefilter: 0.2}")
    text = text.replace("baselines: []", "constraints: {latency_ms: 50}\nbaselines: []")
    space = tmp_path / "pre.yaml"
    space.write_text(text)
    _table_for_tiny(100.0)  # every unit "takes" 100 ms: every architecture is a clear miss
    with pytest.raises(UserError, match="in a row failed or were rejected"):
        search(space, 2, runs_root=tmp_path / "a", workers=1, quiet=True)
    _, study = load_run(tmp_path / "a" / "pre")
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned and all("not measured" in read_record(t).fail_reason for t in pruned)
    assert not any(read_record(t).latency for t in pruned)
    _table_for_tiny(0.001)  # now everything passes the filter and is measured as usual
    run = search(space, 2, runs_root=tmp_path / "b", workers=1, quiet=True)
    _, study = load_run(run.root)
    done = _search_trials(study)
    assert len(done) == 2 and all(read_record(t).latency.n > 0 for t in done)


def test_prefilter_without_a_table_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SHUFFLESEARCH_CACHE_DIR", str(tmp_path / "empty-cache"))
    text = TINY.read_text().replace("max_seconds: 0.1}", "max_seconds: 0.1, prefilter: 0.2}")
    text = text.replace("baselines: []", "constraints: {latency_ms: 50}\nbaselines: []")
    space = tmp_path / "pre.yaml"
    space.write_text(text)
    with pytest.raises(UserError, match="^target.prefilter: needs a latency table.*latency table build"):
        search(space, 1, runs_root=tmp_path / "runs", quiet=True)
    assert not (tmp_path / "runs").exists()


def test_multi_fidelity_short_trains_the_front_once(tmp_path):
    import json

    from shufflesearch.cli import main

    text = TINY.read_text().replace("batch: 16}", "batch: 16, short_train_top_k: 2, short_train_steps: 3}")
    text = text.replace("baselines: []", "baselines: [shufflenet_v2_x0_5]")
    space = tmp_path / "mf.yaml"
    space.write_text(text)
    run = search(space, 3, runs_root=tmp_path, workers=1, quiet=True)
    _, study = load_run(run.root)
    trained = study_attr(study, "short_train")
    base = next(t.number for t in study.trials if read_record(t).baseline)
    assert str(base) in trained and 2 <= len(trained) <= 3
    assert all(0.0 <= v["val_acc"] <= 1.0 and v["steps"] == 3 for v in trained.values())
    search(space, 3, runs_root=tmp_path, workers=1, quiet=True)  # resuming does not train again
    assert study_attr(load_run(run.root)[1], "short_train") == trained
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["pareto", str(run.root), "--json"]) == 0
    rows = {r["trial"]: r for r in json.loads(out.getvalue())}
    assert rows[base]["short_train_acc"] == trained[str(base)]["val_acc"]


def test_constraints_reach_optuna_on_every_trial(tmp_path):
    import warnings

    text = TINY.read_text().replace("baselines: []", "constraints: {latency_ms: 0.01, params_m: 5}\n"
                                                      "baselines: [shufflenet_v2_x0_5]")
    space = tmp_path / "c.yaml"
    space.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated constraints API
        run = search(space, 2, runs_root=tmp_path, workers=1, quiet=True)
    _, study = load_run(run.root)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        r = read_record(t)
        assert list(r.constraints) == ["latency_ms", "params_m"]  # by name, sorted
        lat, par = r.constraints["latency_ms"], r.constraints["params_m"]
        # one yardstick: the ratio against the limit's ratio, in ms at the stated reference
        lim = study_attr(study, "latency_limit")
        assert lim["ms"] == 0.01 and lim["ratio"] == pytest.approx(0.01 / lim["reference_ms"])
        assert r.latency_limit == pytest.approx(lim["ratio"])
        assert lat == pytest.approx(r.ratio * lim["reference_ms"] - 0.01)
        assert par == pytest.approx(r.params / 1e6 - 5)
        if hasattr(optuna.trial.Trial, "set_constraint"):
            assert t.system_attrs["constraints:latency_ms"] == pytest.approx(lat)
        assert lat > 0  # nothing runs in 10 µs: every trial is infeasible, and says so
        assert not r.feasible and "latency_ms" in r.broken and "params_m" not in r.broken


# --- what the sampler records is what was built (issue: widths repaired after sampling) -------


@pytest.mark.parametrize("name", ["v2", "mixed", "spos", "v1"])
def test_trial_params_decode_to_the_built_architecture(name):
    """200 random samples: rebuilding from trial.params gives the same archid, and every width
    parameter holds the width that was built (before, 82 of 200 v2 samples recorded a width the
    repair had changed, e.g. 92 -> 88 at split 0.375)."""
    space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    n = 0
    for _ in range(200):
        trial = study.ask()
        try:
            arch = space.sample(trial)
        except UserError:
            study.tell(trial, state=TrialState.FAIL)
            continue
        study.tell(trial, 0.0)
        n += 1
        frozen = study.trials[trial.number]
        assert space.sample(optuna.trial.FixedTrial(frozen.params)).archid == arch.archid
        for i, s in enumerate(arch.stages):
            widths = [v for k, v in frozen.params.items() if k.startswith(f"stages.{i}.width")]
            assert widths in ([], [s.channels]), (i, widths, s.channels)
    assert n >= 150  # most samples build (v1 rules out a few group/width combinations)


def test_width_params_offer_only_valid_widths():
    # v2.yaml stage 0: widths 24..256 step 4; split 0.375 of a width is whole only for multiples
    # of 8, so the width is sampled on the step-8 sub-grid; split 0.5 keeps the whole grid.
    space = load_space(ROOT / "search_spaces" / "v2.yaml")
    stem = Arch.from_dict({"stages": [{"family": "v2", "channels": 48, "depth": 2}]}).stem
    from shufflesearch.model.arch import Stage

    for split, step in ((0.375, 8), (0.5, 4)):
        valid = space.valid_widths(0, Stage("v2", 24, 2, split=split), (), stem, 1024)
        assert all(w * split == int(w * split) and w % 2 == 0 for w in valid)
        name, dist = space.width_param(0, valid)
        assert name == "stages.0.width" and dist.step == step and dist.low == valid[0]


# --- the evaluator passes the target down (calibration at the target's threads) --------------


def test_evaluator_finds_the_calibration_made_for_the_targets_threads(tmp_path, monkeypatch):
    """`shufflesearch guidelines bench --threads 2` stores its calibration under the 2-thread
    fingerprint; a space with target.threads 2 must find it (it looked for 1 thread only)."""
    from shufflesearch.guidelines.calibration import calibrate, save
    from shufflesearch.measure.env import fingerprint, fingerprint_id
    from shufflesearch.search.evaluator import Evaluator

    monkeypatch.setenv("SHUFFLESEARCH_CACHE_DIR", str(tmp_path / "cache"))
    points = [(1e6 * i, 2e5 * i, 10.0 * i, 0.01 * i + 0.001 * i * i) for i in range(1, 8)]
    cal = save(calibrate(points, threads=2))
    assert cal.exists()
    two = tmp_path / "two.yaml"
    two.write_text(TINY.read_text().replace("threads: 1", "threads: 2"))
    ev = Evaluator(load_space(two))
    assert ev.calibration is not None
    assert ev.calibration.fingerprint_id == fingerprint_id(fingerprint(2))
    assert Evaluator(load_space(TINY)).calibration is None  # none was made for 1 thread
    rec = ev(Arch.from_dict(load_space(two).sample_random(1)[0].to_dict()), {})
    assert rec.guidelines.overhead_ms is not None  # the calibration reached the report


# --- infeasible trials: never on the front, picked, trained or exported ----------------------


def test_infeasible_trials_never_reach_the_front_training_or_export(tmp_path, capsys):
    """spos.yaml semantics on the tiny space: a macs_m limit below some sampled architectures,
    and the default MACs score, which ranks exactly the over-limit networks best."""
    import json

    from shufflesearch.cli import main
    from shufflesearch.review.pareto import load_records, pick_trial
    from shufflesearch.search.front import knee, pareto_front

    text = TINY.read_text().replace("sampler: {name: tpe, n_startup_trials: 4}", "sampler: random")
    text = text.replace("batch: 16}", "batch: 16, short_train_top_k: 10, short_train_steps: 2}")
    text = text.replace("baselines: []", "constraints: {macs_m: 0.78}\nbaselines: []")
    space = tmp_path / "limit.yaml"
    space.write_text(text)
    run = search(space, 6, runs_root=tmp_path, workers=1, quiet=True)
    _, records = load_records(run.root)
    done = [r for r in records if r.state == "COMPLETE"]
    over = [r for r in done if r.macs / 1e6 > 0.78]
    assert over and len(over) < len(done)  # the limit splits the run
    assert all(not r.feasible and set(r.broken) == {"macs_m"} for r in over)
    assert all(r.feasible for r in done if r not in over)
    assert max(done, key=lambda r: r.proxy) in over  # the bug's precondition: it would top the front
    front = pareto_front(records)
    assert front and all(r.feasible for r in front)
    assert knee(front).feasible
    assert pick_trial(records, use_knee=True).feasible
    assert pick_trial(records, max_latency=1e9).feasible
    with pytest.raises(UserError, match="infeasible, it breaks macs_m"):
        pick_trial(records, trial=over[0].trial)
    trained = {int(k) for k in study_attr(load_run(run.root)[1], "short_train")}
    assert trained == {r.trial for r in front}  # k = 10 > front: all of it, nothing infeasible
    capsys.readouterr()
    assert main(["pareto", str(run.root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["feasible"] for r in rows)
    assert main(["pareto", str(run.root), "--all", "--json"]) == 0
    rows = {r["trial"]: r for r in json.loads(capsys.readouterr().out)}
    for r in over:
        row = rows[r.trial]
        assert not row["feasible"] and not row["on_front"] and not row["knee"]
        assert row["breaks"]["macs_m"] == pytest.approx(r.macs / 1e6 - 0.78)
    assert main(["pareto", str(run.root), "--all"]) == 0
    table = capsys.readouterr().out
    # A row: the mark (front/knee/infeasible, B, then flags such as "~" drifted, "=" tie), the
    # trial number, the 12-hex archid; the flags make the number's position vary.
    rows_text = [(re.search(r"\s(\d+)\s+[0-9a-f]{12}\s", ln), ln) for ln in table.splitlines()
                 if ln[:1] in " x*K"]
    lines = {int(m.group(1)): ln for m, ln in rows_text if m}
    assert all(r.trial in lines and lines[r.trial].startswith("x") and "macs_m +" in lines[r.trial]
               for r in over), table
    assert "x infeasible" in table
    assert main(["export", str(run.root), "--trial", str(over[0].trial), "--out", str(tmp_path / "x")]) == 2
    assert "infeasible" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_run_ends_with_its_front_and_baselines_retimed_side_by_side(tmp_path):
    from shufflesearch.search.front import on_one_reference, pareto_front, shown_front
    from shufflesearch.search.retime import load_retime, records_with_retime

    space = _tiny_with_baseline(tmp_path)
    run = search(space, 3, runs_root=tmp_path / "runs", workers=1, quiet=True)
    _, study = load_run(run.root)
    rt = load_retime(study)
    assert rt is not None and rt["at"] and rt["reference"]["arch"] == "shufflenet_v2_x0_5"
    recs = records_with_retime(study)
    done = [r for r in recs if r.complete]
    # What was re-timed: the search's front (on one reference) and the baseline, every figure
    # from the one window (one reference figure, the same window time).
    front = pareto_front(on_one_reference([dataclasses.replace(r, retimed=None) for r in done]))
    base = next(r for r in done if r.baseline)
    assert {r.trial for r in front} | {base.trial} <= {int(k) for k in rt["trials"]}
    figs = list(rt["trials"].values())
    assert {f["reference"]["ms"] for f in figs} == {rt["reference"]["ms"]}
    assert {f["reference"]["window_ms"] for f in figs} == {rt["reference"]["window_ms"]}
    assert all(f["ratio"] > 0 and f["ratio_ci"][0] <= f["ratio"] <= f["ratio_ci"][1] for f in figs)
    # The front that is shown is the front of the window's own ratios (worked out here from the
    # stored attribute, with the records' proxies), not of the search's stored figures.
    pts = {r.trial: (r.proxy, rt["trials"][str(r.trial)]["ratio"]) for r in done
           if str(r.trial) in rt["trials"] and r.feasible}
    best = {t for t, (p, q) in pts.items()
            if not any(p2 >= p and q2 <= q and (p2, q2) != (p, q) for p2, q2 in pts.values())}
    shown = shown_front(on_one_reference(done))
    assert shown and {r.archid for r in shown} == {r.archid for r in done if r.trial in best}
    for r in on_one_reference(done):
        if r.retimed:
            assert r.latency_ms == pytest.approx(r.retimed.median_ms)
