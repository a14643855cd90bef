"""Latency: the protocol, the cross-process locks, the cache, drift and the CLI.

Nothing here asserts a wall-clock figure: the lock tests compare timestamps of two processes
(which must not interleave), the protocol tests check what was recorded, not how fast.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from shufflesearch.measure import cache as C, drift as D, env as E, protocol as L, target as T
from shufflesearch.model.arch import Arch, Stage, Stem
from shufflesearch.cli import main
from shufflesearch.errors import UserError

TINY = Arch(stages=(Stage("v2", 16, 2), Stage("v2", 32, 2)), stem=Stem(channels=8), head=64, num_classes=10)


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHUFFLESEARCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SHUFFLESEARCH_LOCK", str(tmp_path / "cache" / "timing.lock"))
    return tmp_path


class Recorder(nn.Module):
    """Records the thread count, grad mode and training flag seen in every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen: list[tuple[int, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled(), self.training))
        return self.conv(x)


# --- the protocol -----------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_protocol_reports_median_iqr_n_and_fixes_threads(threads: int) -> None:
    before = torch.get_num_threads()
    m = Recorder().train()
    lat = L.measure(m, (1, 3, 16, 16), threads=threads, max_seconds=0.2, lock=False)
    assert lat.n == len(lat.runs_ms) >= L.MIN_RUNS
    assert lat.median_ms == pytest.approx(statistics.median(lat.runs_ms), rel=1e-3)
    q = statistics.quantiles(lat.runs_ms, n=4, method="inclusive")
    assert lat.iqr_ms == pytest.approx(q[2] - q[0], rel=1e-3, abs=1e-5)
    assert lat.fingerprint["threads"] == threads and lat.spec["threads"] == threads
    assert {s[0] for s in m.seen} == {threads}  # every forward ran on the fixed thread count
    assert all(s[1] and not s[2] for s in m.seen)  # inference_mode, eval()
    assert torch.get_num_threads() == before  # restored


def test_protocol_stops_at_the_cap_when_noise_never_settles(monkeypatch) -> None:
    # sleep() uses no CPU, so time it with the wall clock (the 1-thread default is CPU time)
    monkeypatch.setenv("SHUFFLESEARCH_CLOCK", "wall")
    calls = []

    class Noisy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            time.sleep(0.001 * (1 + len(calls) % 5))  # IQR/median ≈ 0.5, never below 3%
            return x

    lat = L.measure(Noisy(), (1, 1, 1, 1), max_seconds=0.3, lock=False)
    assert lat.rel_iqr > 0.03 and lat.n >= L.MIN_RUNS
    assert sum(lat.runs_ms) / 1e3 < 3.0  # stopped by the cap, not by a runaway loop


def test_target_spec_validates_and_keys() -> None:
    a, b = T.TargetSpec(), T.TargetSpec(resolution=160)
    assert a.key() == T.TargetSpec().key() and a.key() != b.key()
    assert a.to_dict() == {"resolution": 224, "batch": 1, "threads": 1, "channels_last": False, "backend": "torch"}
    with pytest.raises(UserError, match="target.backend"):
        T.TargetSpec(backend="tvm")
    with pytest.raises(UserError, match="target.threads"):
        T.TargetSpec(threads=0)


def test_fingerprint_names_the_environment() -> None:
    fp = E.fingerprint(threads=2)
    assert fp["threads"] == 2 and fp["backend"] == "torch" and fp["torch"] == torch.__version__
    assert fp["cores"] >= 1 and fp["cpu"]
    assert E.fingerprint_id(fp) == E.fingerprint_id(dict(reversed(fp.items())))  # order-free
    assert E.fingerprint_id(fp) != E.fingerprint_id({**fp, "threads": 1})


# --- the lock -----------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from torch import nn
    from shufflesearch.measure import cache as C, drift as D, env as E, protocol as L, target as T

    role = sys.argv[1]
    stamps = []

    class Slow(nn.Module):
        def forward(self, x):
            stamps.append(time.time())
            time.sleep(0.02)
            return x

    print("ready", flush=True)
    sys.stdin.readline()  # wait for the go, so that both children contend for the lock
    if role == "compute":
        with E.compute_lock():
            t0 = time.time(); time.sleep(0.4); t1 = time.time()
    else:
        L.measure(Slow(), (1, 1, 1, 1), max_seconds=0.3, lock=role == "measure")
        t0, t1 = stamps[0], stamps[-1] + 0.02
    print(json.dumps([t0, t1]), flush=True)
    """
)


def _race(roles: tuple[str, str]) -> list[tuple[float, float]]:
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, r], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=os.environ.copy())
        for r in roles
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=60)
        out.append(tuple(json.loads(stdout.strip().splitlines()[-1])))
    return out


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_two_measurements_are_serialised() -> None:
    a, b = _race(("measure", "measure"))
    assert not _overlap(a, b), (a, b)


def test_measurement_and_compute_are_serialised() -> None:
    a, b = _race(("measure", "compute"))
    assert not _overlap(a, b), (a, b)


def test_without_the_lock_they_do_overlap() -> None:
    # The control: the race above is real, so the two tests before it can fail.
    a, b = _race(("nolock", "nolock"))
    assert _overlap(a, b), (a, b)


PROBE = "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n" \
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n" \
        "except BlockingIOError:\n    print('held')"


def _lock_seen_by_another_process() -> str:
    return subprocess.run([sys.executable, "-c", PROBE, str(E.lock_path())], capture_output=True,
                          text=True, timeout=60).stdout.strip()


def test_locks_are_reentrant_in_one_process() -> None:
    # A hang here (a nested lock reopening the file) is caught by the suite's per-test timeout.
    with E.compute_lock(), E.timing_lock(), E.compute_lock():
        assert _lock_seen_by_another_process() == "held"  # nesting kept the exclusive lock
    assert _lock_seen_by_another_process() == "free"  # ... and leaving released it
    rec = Recorder()
    with E.timing_lock():
        lat = L.measure(rec, (1, 3, 8, 8), max_seconds=0.05)  # takes the lock again inside
        assert _lock_seen_by_another_process() == "held"  # its exit did not drop the outer hold
    assert lat.n > 0 and len(rec.seen) >= lat.n
    assert _lock_seen_by_another_process() == "free"


# --- the cache ----------------------------------------------------------------------------------


def test_cache_hit_skips_measurement_and_misses_on_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[T.TargetSpec] = []
    real = L.measure_model

    def counting(model: nn.Module, spec: T.TargetSpec, **kw):  # type: ignore[no-untyped-def]
        calls.append(spec)
        return real(model, spec, max_seconds=0.05)

    monkeypatch.setattr(L, "measure_model", counting)
    cache = C.LatencyCache()
    spec = T.TargetSpec(resolution=32)
    first = L.measure_arch(TINY, spec, cache=cache)
    assert not first.cached and len(calls) == 1
    hit = L.measure_arch(TINY, spec, cache=cache)
    assert hit.cached and len(calls) == 1
    assert hit.median_ms == first.median_ms and hit.runs_ms == first.runs_ms
    assert L.measure_arch(TINY, spec, cache=C.LatencyCache()).cached  # persisted on disk

    L.measure_arch(TINY, T.TargetSpec(resolution=48), cache=cache)  # another spec: miss
    assert len(calls) == 2
    L.measure_arch(TINY, spec, cache=cache, remeasure=True)
    assert len(calls) == 3

    real_fp = E.fingerprint
    monkeypatch.setattr(L, "fingerprint", lambda threads=1, backend="torch": {**real_fp(threads, backend), "cpu": "other"})
    assert not L.measure_arch(TINY, spec, cache=cache).cached  # another machine: miss
    assert len(calls) == 4
    assert len(cache) == 3


def test_cache_is_shared_by_processes() -> None:
    cache = C.LatencyCache()
    L.measure_arch(TINY, T.TargetSpec(resolution=32), cache=cache, max_seconds=0.05)
    code = (
        "from shufflesearch.measure import cache as C, protocol as L, target as T; from tests.test_latency import TINY; "
        "print(L.measure_arch(TINY, T.TargetSpec(resolution=32), cache=C.LatencyCache()).cached)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], env=os.environ.copy())
    assert out.stdout.strip() == "True", out.stderr


# --- drift --------------------------------------------------------------------------------------


def test_drift_monitor_flags_a_slowed_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    speed = {"f": 1.0}

    def fake(model: nn.Module, spec: T.TargetSpec, **kw):  # type: ignore[no-untyped-def]
        return T.Latency(10.0 * speed["f"], 0.1, 10, [10.0] * 10, E.fingerprint(), spec.to_dict())

    monkeypatch.setattr(L, "measure_model", fake)
    monkeypatch.setattr(D, "measure_model", fake)
    mon = D.DriftMonitor(T.TargetSpec(resolution=32), reference=TINY, bound=0.10, every=1)
    assert not mon.measure_arch(TINY).drifted
    speed["f"] = 1.5  # e.g. another heavy job started
    lat = mon.measure_arch(TINY)
    assert lat.drifted and lat.speed_factor == pytest.approx(1.5)
    speed["f"] = 1.05
    lat = mon.measure_arch(TINY)
    assert not lat.drifted and mon.history[-1].factor == pytest.approx(1.05)


# --- backends and CLI ---------------------------------------------------------------------------


def test_onnxruntime_backend_in_its_own_process() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    lat = L.measure_arch(TINY, T.TargetSpec(resolution=32, backend="onnxruntime"), max_seconds=0.2)
    assert lat.n >= L.MIN_RUNS and lat.median_ms > 0
    assert lat.fingerprint["backend"] == "onnxruntime" and "onnxruntime" in lat.fingerprint


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "tiny.json"
    f.write_text(TINY.to_json())
    assert main(["latency", str(f), "--resolution", "32", "--max-seconds", "0.1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"median_ms", "iqr_ms", "n", "fingerprint"} <= set(d) and d["n"] >= L.MIN_RUNS
    assert d["spec"]["resolution"] == 32 and not d["cached"]
    assert main(["latency", str(f), "--resolution", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cached"]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["latency", "missing.yaml"], "missing.yaml"),
        (["latency", "shufflenet_v2_x0_5", "--threads", "0"], "target.threads"),
        (["latency", "shufflenet_v2_x0_5", "--max-seconds", "0"], "--max-seconds"),
    ],
)
def test_cli_bad_input_is_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err


# --- the predictor ------------------------------------------------------------------------------


def test_unit_entries_key_fused_units_by_shapes() -> None:
    from shufflesearch.model.arch import preset
    from shufflesearch.measure.predictor import unit_entries

    es = unit_entries(preset("shufflenet_v2_x1_0"), T.TargetSpec(resolution=64))
    assert [e.name for e in es][:3] == ["stem", "stages.0.0", "stages.0.1"]
    assert len(es) == 1 + 16 + 1 + 1  # stem, 4+8+4 units (paper Table 5), conv5, classifier
    kinds = [e.kind for e in es]
    assert kinds.count("v2_down") == 3 and kinds.count("v2") == 13
    by_name = {e.name: e for e in es}
    # Units 1..3 of stage 2 have the same ops and shapes: one table entry serves them all.
    assert len({by_name[f"stages.0.{j}"].key for j in (1, 2, 3)}) == 1
    assert by_name["stages.0.1"].key != by_name["stages.1.1"].key
    assert by_name["stages.1.0"].in_shape == (116, 8, 8)  # 64 px / 4 (stem) / 2 (stage 2)
    v1 = unit_entries(preset("shufflenet_v1_g3_x1_0"), T.TargetSpec(resolution=64))
    assert [e.kind for e in v1][1:3] == ["v1_down", "v1"]


def test_predictor_sums_table_entries_and_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    from shufflesearch.measure import predictor as P

    spec = T.TargetSpec(resolution=32)
    archs = P.random_archs(2, seed=3)
    fake_ms = {"stem": 1.0, "v1": 2.0, "v1_down": 3.0, "v2": 2.0, "v2_down": 3.0, "head": 0.5, "classifier": 0.25}
    units = {a.archid: P.unit_entries(a, spec) for a in archs}

    def fake_model(model: nn.Module, s: T.TargetSpec, **kw):  # type: ignore[no-untyped-def]
        # the "measured" model is 2x its units, so the calibrated scale must come out as 2
        total = 2 * sum(fake_ms[e.kind] for e in units[model.arch.archid])
        return T.Latency(total, 0.0, 10, [total] * 10, E.fingerprint(), s.to_dict())

    monkeypatch.setattr(P, "_time_module", lambda m, shape, s, sec: fake_ms[_kind_of(m)])
    monkeypatch.setattr(P, "measure_model", fake_model)
    t = P.build_table(archs, spec, calibrate=2, progress=False)
    assert t.scale == pytest.approx(2.0)
    expect = 2 * sum(fake_ms[e.kind] for e in units[archs[0].archid])
    assert t.predict(archs[0]) == pytest.approx(expect) and t.hit_rate(archs[0]) == 1.0
    v = P.validate(t, archs, progress=False)
    assert v.within_10 == 1.0 and v.median_abs_err_pct == pytest.approx(0, abs=1e-9)
    t.save(E.cache_dir() / "t.json")
    assert P.LatencyTable.load(E.cache_dir() / "t.json").predict(archs[1]) == pytest.approx(t.predict(archs[1]))


def _kind_of(m: nn.Module) -> str:
    from shufflesearch.measure.predictor import _Classifier
    from shufflesearch.model.units import V1UnitInference, V2UnitInference

    if isinstance(m, _Classifier):
        return "classifier"
    if isinstance(m, V2UnitInference):
        return "v2_down" if m.proj is not None else "v2"
    if isinstance(m, V1UnitInference):
        return "v1_down" if m.down else "v1"
    return "stem" if isinstance(m, nn.Sequential) else "head"


def test_random_archs_are_valid_and_seeded() -> None:
    from shufflesearch.measure.predictor import random_archs

    a, b = random_archs(6, seed=1), random_archs(6, seed=1)
    assert [x.archid for x in a] == [x.archid for x in b]
    assert len({x.archid for x in a}) == 6 and {"v1", "v2"} <= {x.families[0] for x in random_archs(20, 2)}


def test_joint_unit_model_recovers_a_linear_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """With >= JOINT_MIN whole-model timings the unit model is fitted on whole networks: on a
    machine whose unit time is exactly linear in the unit's features, it predicts unseen
    architectures exactly, whatever the units timed alone said."""
    from shufflesearch.measure import predictor as P

    spec = T.TargetSpec(resolution=32)
    archs = P.random_archs(P.JOINT_MIN + 4, seed=5)
    w = [0.05, 0.01, 0.3, 0.5, 0.8, 0.2, 0.4, 0.1]  # per unit: 1, n_ops, pw, gpw, dw, other, traffic, weights

    def true_ms(a):  # type: ignore[no-untyped-def]
        return sum(w[0] + sum(x * y for x, y in zip(w[1:], e.features)) for e in P.unit_entries(a, spec))

    by_id = {a.archid: a for a in archs}

    def fake_model(model: nn.Module, s: T.TargetSpec, **kw):  # type: ignore[no-untyped-def]
        ms = true_ms(by_id[model.arch.archid])
        return T.Latency(ms, 0.0, 10, [ms] * 10, E.fingerprint(), s.to_dict())

    monkeypatch.setattr(P, "_time_module", lambda m, shape, s, sec: 1.0)  # biased isolated timings
    monkeypatch.setattr(P, "measure_model", fake_model)
    t = P.build_table(archs[: P.JOINT_MIN], spec, calibrate=P.JOINT_MIN, progress=False)
    assert len(t.joint) == 8
    for a in archs[P.JOINT_MIN:]:
        assert t.predict(a) == pytest.approx(true_ms(a), rel=1e-3)
        parts = t.unit_breakdown(a)  # what the report's per-unit column shows
        assert set(parts) == {e.name for e in P.unit_entries(a, spec)}
        assert sum(parts.values()) == pytest.approx(t.predict(a))
