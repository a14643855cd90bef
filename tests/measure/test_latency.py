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

from shufflesearch.cli import main
from shufflesearch.errors import UserError
from shufflesearch.measure import cache as C
from shufflesearch.measure import drift as D
from shufflesearch.measure import env as E
from shufflesearch.measure import protocol as L
from shufflesearch.measure import target as T
from shufflesearch.measure import timing as TM
from shufflesearch.model.arch import Arch, Stage, Stem
from tests.conftest import ROOT

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
    assert lat.n == len(lat.runs_ms) >= TM.MIN_RUNS
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
    assert lat.rel_iqr > 0.03 and lat.n >= TM.MIN_RUNS
    assert sum(lat.runs_ms) / 1e3 < 3.0  # stopped by the cap, not by a runaway loop


def test_target_spec_validates_and_keys() -> None:
    a, b = T.TargetSpec(), T.TargetSpec(resolution=160)
    assert a.key() == T.TargetSpec().key() and a.key() != b.key()
    assert a.to_dict() == {"resolution": 224, "batch": 1, "threads": 1, "channels_last": False, "backend": "torch"}
    with pytest.raises(UserError, match="TargetSpec.backend: must be one of torch"):
        T.TargetSpec(backend="tvm")
    with pytest.raises(UserError, match=r"TargetSpec.threads: 0 is out of range \[1, 256\]"):
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


# --- a fake machine for the bookkeeping tests ---------------------------------------------------


class FakeMachine:
    """Stands in for the timing window: the reference takes 5 ms x speed, a candidate its own
    fixed multiple of that, with a little round-to-round noise. Counts windows."""

    def __init__(self) -> None:
        self.speed = 1.0
        self.windows = 0

    def __call__(self, models: list[nn.Module], spec: T.TargetSpec, **kw) -> list[list[float]]:  # type: ignore[no-untyped-def]
        self.windows += 1
        noise = [1.0, 1.01, 0.99, 1.02, 0.98] * 4
        rounds = [[5.0 * self.speed * e for e in noise]]
        for m in models:
            mult = 1.0 + sum(p.numel() for p in m.parameters()) / 1e5
            rounds.append([5.0 * mult * self.speed * e for e in noise])
        return rounds


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> FakeMachine:
    m = FakeMachine()
    monkeypatch.setattr(L, "window", m)
    return m


# --- the cache ----------------------------------------------------------------------------------


def test_cache_hit_skips_measurement_and_misses_on_changes(monkeypatch: pytest.MonkeyPatch, machine: FakeMachine) -> None:
    cache = C.LatencyCache()
    spec = T.TargetSpec(resolution=32)
    first = L.measure_arch(TINY, spec, cache=cache)
    assert not first.cached and machine.windows == 1
    hit = L.measure_arch(TINY, spec, cache=cache)
    assert hit.cached and machine.windows == 1
    assert hit.median_ms == first.median_ms and hit.ratio == first.ratio and hit.ratio_ci == first.ratio_ci
    assert hit.reference == first.reference and hit.protocol == T.PROTOCOL_VERSION
    assert L.measure_arch(TINY, spec, cache=C.LatencyCache()).cached  # persisted on disk

    L.measure_arch(TINY, T.TargetSpec(resolution=48), cache=cache)  # another spec: miss
    assert machine.windows == 2
    L.measure_arch(TINY, spec, cache=cache, remeasure=True)
    assert machine.windows == 3

    real_fp = E.fingerprint
    monkeypatch.setattr(L, "fingerprint", lambda threads=1, backend="torch": {**real_fp(threads, backend), "cpu": "other"})
    assert not L.measure_arch(TINY, spec, cache=cache).cached  # another machine: miss
    assert machine.windows == 4
    assert len(cache) == 3


def test_cache_key_follows_the_inference_code_protocol_and_reference(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: FakeMachine) -> None:
    """Issue 11 item 4: an edit to the inference form (units.py / compile.py), a new protocol
    version or another reference never serves the old figure."""
    import shufflesearch.model.compile as compile_mod

    code = tmp_path / "compile_copy.py"
    code.write_text(Path(compile_mod.__file__).read_text())
    monkeypatch.setattr(C, "TIMED_CODE", (*C.TIMED_CODE, str(code)))
    cache, spec = C.LatencyCache(), T.TargetSpec(resolution=32)
    L.measure_arch(TINY, spec, cache=cache)
    assert L.measure_arch(TINY, spec, cache=cache).cached
    code.write_text(code.read_text().replace("channels_last: bool = True", "channels_last: bool = False"))
    assert not L.measure_arch(TINY, spec, cache=cache).cached  # to_inference changed: timed again
    assert L.measure_arch(TINY, spec, cache=cache).cached
    monkeypatch.setattr(C, "PROTOCOL_VERSION", T.PROTOCOL_VERSION + 1)
    assert not L.measure_arch(TINY, spec, cache=cache).cached
    monkeypatch.setattr(C, "REFERENCE_ARCH", "shufflenet_v2_x1_0")
    assert not L.measure_arch(TINY, spec, cache=cache).cached
    assert machine.windows == 4


def test_cache_is_shared_by_processes() -> None:
    cache = C.LatencyCache()
    L.measure_arch(TINY, T.TargetSpec(resolution=32), cache=cache, max_seconds=0.05)
    code = (
        "from shufflesearch.measure import cache as C, protocol as L, target as T; from tests.measure.test_latency import TINY; "
        "print(L.measure_arch(TINY, T.TargetSpec(resolution=32), cache=C.LatencyCache()).cached)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=os.environ.copy())
    assert out.stdout.strip() == "True", out.stderr


# --- relative timing ----------------------------------------------------------------------------

TINY2 = Arch(stages=(Stage("v2", 32, 2), Stage("v2", 64, 3)), stem=Stem(channels=8), head=128, num_classes=10)


def test_a_slowdown_for_part_of_a_measurement_moves_the_ratio_far_less_than_the_median() -> None:
    """A busy loop in the timed thread makes every forward (of the candidate and of the
    reference alike) 3x slower for 3/4 of the rounds: the absolute median moves by about 3x,
    the ratio to the reference, taken round by round, by a small fraction of that (what it
    does move comes from the busy loop evicting caches, a fixed cost per forward that weighs
    more on the smaller model, as a real neighbour's load does)."""
    spec = T.TargetSpec(resolution=32)
    cand, ref = L.inference_model(TINY2, spec), L.reference_model(spec)
    slow = {"on": False}
    t0: list[float] = []

    def pre(m, inp):  # type: ignore[no-untyped-def]
        t0.append(time.thread_time())

    def post(m, inp, out):  # type: ignore[no-untyped-def]
        took = time.thread_time() - t0.pop()
        if slow["on"]:
            end = time.thread_time() + 2 * took
            while time.thread_time() < end:  # the busy loop: twice as long as the forward
                pass

    hooks = [h for m in (cand, ref) for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        quiet = L.window([cand], spec, max_seconds=5, lock=False, max_rounds=40)
        loaded = L.window([cand], spec, max_seconds=5, lock=False, max_rounds=40,
                                 on_round=lambda i: slow.update(on=i >= 10))
    finally:
        for h in hooks:
            h.remove()
    abs_q, abs_l = statistics.median(quiet[1]), statistics.median(loaded[1])
    r_q, r_l = TM.estimate(quiet[1], quiet[0]), TM.estimate(loaded[1], loaded[0])
    abs_move, ratio_move = abs(abs_l / abs_q - 1), abs(r_l / r_q - 1)
    assert abs_move > 1.0, (abs_q, abs_l)  # the slowdown really happened
    assert ratio_move < abs_move / 5, (r_q, r_l, abs_q, abs_l)


def test_estimators_on_paired_rounds() -> None:
    # The machine runs at 1x for 12 rounds, then 1.5x for 8: every estimator sees ratio 2 when
    # the slowdown hits both alike; only the ratio of medians is thrown by the phase when the
    # candidate's and the reference's medians fall in different phases (unequal counts).
    r = [5.0] * 12 + [7.5] * 8
    c = [10.0] * 12 + [15.0] * 8
    assert set(TM.ESTIMATORS) == {"median_of_ratios", "ratio_of_minima", "ratio_of_medians"}
    for name in TM.ESTIMATORS:
        assert TM.estimate(c, r, name) == pytest.approx(2.0)
    assert TM.ESTIMATOR in TM.ESTIMATORS
    lo, hi = TM.estimate_ci(c, r)
    assert lo <= 2.0 <= hi
    noisy_c = [v * (1 + 0.03 * ((i % 5) - 2)) for i, v in enumerate(c)]
    lo, hi = TM.estimate_ci(noisy_c, r)
    assert lo < 2.0 < hi and hi - lo < 0.2


def test_measure_arch_is_relative_and_records_the_reference() -> None:
    spec = T.TargetSpec(resolution=32)
    lat = L.measure_arch(TINY, spec, max_seconds=0.2)
    assert lat.protocol == T.PROTOCOL_VERSION and lat.estimator == TM.ESTIMATOR
    ref = lat.reference
    assert ref["arch"] == T.REFERENCE_ARCH and ref["archid"] == L.reference_archid()
    assert lat.median_ms == pytest.approx(lat.ratio * ref["ms"])
    assert lat.ratio_ci[0] <= lat.ratio <= lat.ratio_ci[1]
    assert len(lat.runs_ms) == len(lat.ref_runs_ms) == lat.n >= TM.MIN_RUNS
    # the ratio is the chosen estimator over the recorded rounds, nothing else
    assert lat.ratio == pytest.approx(TM.estimate(lat.runs_ms, lat.ref_runs_ms), rel=1e-3)


def test_retime_times_a_set_in_one_window() -> None:
    spec = T.TargetSpec(resolution=32)
    lats = L.retime([TINY, TINY2, TINY], spec, max_seconds=0.5)
    assert len(lats) == 3
    assert len({lat.n for lat in lats}) == 1 and len({lat.reference["ms"] for lat in lats}) == 1
    assert all(lat.ref_runs_ms == lats[0].ref_runs_ms for lat in lats)  # one reference, one window
    assert lats[1].ratio > lats[0].ratio  # TINY2 is wider and deeper: more work per forward
    assert not T.is_tie(lats[0], lats[1])


def test_retime_times_a_repeated_architecture_once(monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[int] = []
    real = L.window

    def spy(models, spec, **kw):  # type: ignore[no-untyped-def]
        timed.append(len(models))
        return real(models, spec, **kw)

    monkeypatch.setattr(L, "window", spy)
    lats = L.retime([TINY, TINY2, TINY], T.TargetSpec(resolution=32), max_seconds=0.3)
    assert timed == [2]  # one window, two distinct networks besides the reference
    assert lats[0] is not lats[2] and lats[0].to_dict() == lats[2].to_dict() != lats[1].to_dict()


def _window_figs(ref: list[float], *cands: list[float]) -> list[T.Latency]:
    spec = T.TargetSpec(resolution=32)
    return L.window_latencies([ref, *cands], spec, reference_ms=5.0)


def test_ties_in_one_window_are_paired_rounds() -> None:
    # Issue 21 item 3. One window: the reference's per-round time is noisy (+-6%, its own
    # rhythm), the two candidates run steadily, b exactly 3% slower than a (+-0.3%). Each ratio
    # to the reference inherits the reference's noise, so independent intervals overlap and
    # would call a tie; the rounds' a_i / b_i show the 3% plainly.
    n = 40
    ref = [5.0 * (1 + 0.06 * ((7 * i) % 5 - 2) / 2) for i in range(n)]
    a = [4.0 * (1 + 0.003 * ((3 * i) % 3 - 1)) for i in range(n)]
    b = [4.12 * (1 + 0.003 * ((5 * i) % 3 - 1)) for i in range(n)]
    fa, fb = _window_figs(ref, a, b)
    assert T.ties(fa.ratio, fa.ratio_ci, fb.ratio, fb.ratio_ci)  # the old, unpaired rule: a tie
    assert T.paired(fa, fb)
    lo, hi = T.paired_ratio_ci(fb, fa)
    assert lo > 1.02 and hi < 1.04  # 1.03, the slowdown put in
    assert not T.is_tie(fa, fb)
    # the same network in two slots of one window (per-round times differ by +-0.3%): a tie
    fa2 = _window_figs(ref, a, [x * (1 + 0.003 * ((i % 2) * 2 - 1)) for i, x in enumerate(a)])
    assert T.is_tie(*fa2)
    # figures from different windows keep the independent rule
    (fc,) = _window_figs([x * 1.01 for x in ref], b)
    assert not T.paired(fa, fc)


def test_ties_are_decided_by_the_intervals() -> None:
    def lat(ratio: float, lo: float, hi: float, archid: str = "r") -> T.Latency:
        return T.Latency(ratio * 5, 0.1, 20, [], {}, {}, ratio=ratio, ratio_ci=[lo, hi],
                         reference={"archid": archid, "ms": 5.0}, protocol=2)

    assert T.is_tie(lat(1.50, 1.48, 1.52), lat(1.52, 1.50, 1.54))
    assert not T.is_tie(lat(1.50, 1.49, 1.51), lat(1.60, 1.59, 1.61))
    assert T.is_tie(lat(1.60, 1.59, 1.61), lat(1.50, 1.49, 1.51)) is False  # symmetric
    # different references: compared in ms with the intervals scaled (1.5 x 5 vs 1.0 x 7.5)
    a = lat(1.50, 1.48, 1.52)
    b = T.Latency(7.5, 0.1, 20, [], {}, {}, ratio=1.0, ratio_ci=[0.99, 1.01], reference={"archid": "o", "ms": 7.5})
    assert T.is_tie(a, b)  # 7.5 ms both
    assert T.ties(1.0, (0.85, 1.15), 1.2, (1.05, 1.35)) and not T.ties(1.0, (0.99, 1.01), 1.2, (1.19, 1.21))


# --- the memory format (issue 11 item 6) --------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_target_decides_the_memory_format_that_is_timed(channels_last: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []  # per conv input: NHWC (True) or NCHW (False)
    real = nn.Conv2d._conv_forward

    def spy(self, x, w, b):  # type: ignore[no-untyped-def]
        nhwc, nchw = x.is_contiguous(memory_format=torch.channels_last), x.is_contiguous()
        if nhwc != nchw:  # tensors with 1x1 or 1-channel planes are both: they tell nothing
            seen.append(nhwc)
        return real(self, x, w, b)

    monkeypatch.setattr(nn.Conv2d, "_conv_forward", spy)
    L.measure_arch(TINY, T.TargetSpec(resolution=32, channels_last=channels_last), max_seconds=0.05)
    assert seen
    if channels_last:
        assert all(seen)  # NHWC from the input on
    else:
        assert not any(seen)  # no NHWC tensor anywhere in what was timed


# --- drift: the reference schedule --------------------------------------------------------------


def test_drift_monitor_flags_a_slowed_machine(machine: FakeMachine) -> None:
    mon = D.DriftMonitor(T.TargetSpec(resolution=32), bound=0.10, every=100)
    monkey_check(mon, machine)
    for _ in range(3):
        assert not mon.measure_arch(TINY, remeasure=True).drifted
    machine.speed = 1.5  # e.g. another heavy job started
    lat = mon.measure_arch(TINY)
    assert lat.drifted and lat.speed_factor == pytest.approx(1.5)
    assert lat.ratio == pytest.approx(1 + sum(p.numel() for p in L.inference_model(TINY, mon.spec).parameters()) / 1e5)
    machine.speed = 1.05
    lat = mon.measure_arch(TINY)
    assert not lat.drifted and mon.history[-1].factor == pytest.approx(1.05, rel=0.02)
    fig = mon.reference_figure
    assert fig["n"] >= 5 and fig["ms"] == pytest.approx(5.0 * 1.05, rel=0.06)


def monkey_check(mon: D.DriftMonitor, machine: FakeMachine) -> None:
    """The monitor's own reference check on the fake machine."""
    def check() -> D.DriftCheck:
        before = mon.schedule.figure()
        ms = 5.0 * machine.speed
        mon.schedule.add(ms)
        mon._since = 0
        return mon._record(ms, before)

    mon.check = check  # type: ignore[method-assign]


def test_a_figure_still_drifted_after_its_retime_is_not_cached(machine: FakeMachine) -> None:
    """Issue 11 item 5: a drifted figure is re-timed once; still drifted, it keeps the flag and
    is not cached (a later run measures it again); once the machine is back, it is cached."""
    cache, spec = C.LatencyCache(), T.TargetSpec(resolution=32)
    mon = D.DriftMonitor(spec, every=100)
    monkey_check(mon, machine)
    for _ in range(3):
        mon.measure_arch(TINY2, cache=cache, remeasure=True)
    machine.speed = 1.4
    before = machine.windows
    lat = mon.measure_arch(TINY, cache=cache)
    assert machine.windows == before + 2  # measured, drifted, re-timed once
    assert lat.drifted and T.Latency.from_dict(lat.to_dict()).drifted  # the flag is in the record
    assert C.LatencyCache().get(TINY.archid, spec, E.fingerprint()) is None  # not cached
    machine.speed = 1.0
    lat = mon.measure_arch(TINY, cache=cache)
    assert not lat.cached and not lat.drifted
    assert mon.measure_arch(TINY, cache=cache).cached


# --- backends and CLI ---------------------------------------------------------------------------


def test_onnxruntime_backend_in_process() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    lat = L.measure_arch(TINY, T.TargetSpec(resolution=32, backend="onnxruntime"), max_seconds=0.2)
    assert lat.n >= TM.MIN_RUNS and lat.median_ms > 0
    assert lat.fingerprint["backend"] == "onnxruntime" and "onnxruntime" in lat.fingerprint
    # timed against the reference exported the same way, in this thread, in rounds
    assert lat.ratio is not None and lat.reference["arch"] == T.REFERENCE_ARCH
    assert len(lat.ref_runs_ms) == lat.n and lat.spec["backend"] == "onnxruntime"


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "tiny.json"
    f.write_text(TINY.to_json())
    assert main(["latency", str(f), "--resolution", "32", "--max-seconds", "0.1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {"median_ms", "iqr_ms", "n", "fingerprint", "ratio", "ratio_ci", "reference", "protocol"} <= set(d)
    assert d["n"] >= TM.MIN_RUNS and d["protocol"] == T.PROTOCOL_VERSION
    assert d["reference"]["arch"] == T.REFERENCE_ARCH and d["reference"]["ms"] > 0
    assert d["ratio_ci"][0] <= d["ratio"] <= d["ratio_ci"][1]
    assert d["median_ms"] == pytest.approx(d["ratio"] * d["reference"]["ms"])
    assert d["spec"]["resolution"] == 32 and not d["cached"]
    assert main(["latency", str(f), "--resolution", "32", "--json"]) == 0
    # The second call reads the cache, unless the first figure was taken while the machine ran
    # beyond the drift bound off the reference's schedule: such a figure is flagged, never
    # cached, and measured again (protocol.measure_arch), which a loaded CI machine can cause.
    assert json.loads(capsys.readouterr().out)["cached"] == (not d["drifted"])


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["latency", "missing.yaml"], "missing.yaml"),
        (["latency", "shufflenet_v2_x0_5", "--threads", "0"], "--threads: 0 is out of range"),
        (["latency", "shufflenet_v2_x0_5", "--max-seconds", "0"], "--max-seconds"),
    ],
)
def test_cli_bad_input_is_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err


# --- the predictor ------------------------------------------------------------------------------


def test_unit_entries_key_fused_units_by_shapes() -> None:
    from shufflesearch.measure.predictor import unit_entries
    from shufflesearch.model.arch import preset

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
        return _relative(total, s)

    monkeypatch.setattr(P, "_time_module", lambda m, shape, s, sec: fake_ms[_kind_of(m)])
    monkeypatch.setattr(P, "measure_model", fake_model)
    t = P.build_table(archs, spec, calibrate=2, progress=False)
    assert t.scale == pytest.approx(2.0)
    assert t.reference_ms == pytest.approx(4.0)  # fitted on ratios x one reference figure
    expect = 2 * sum(fake_ms[e.kind] for e in units[archs[0].archid])
    assert t.predict(archs[0]) == pytest.approx(expect) and t.hit_rate(archs[0]) == 1.0
    v = P.validate(t, archs, progress=False)
    assert v.within_10 == 1.0 and v.median_abs_err_pct == pytest.approx(0, abs=1e-9)
    t.save(E.cache_dir() / "t.json")
    assert P.LatencyTable.load(E.cache_dir() / "t.json").predict(archs[1]) == pytest.approx(t.predict(archs[1]))


def _relative(ms: float, s: T.TargetSpec, ref_ms: float = 4.0) -> T.Latency:
    """A protocol-2 figure of ``ms`` against a reference that took ``ref_ms`` in its window.
    The window's own reference time varies (x1.3 here); the table's figure does not."""
    window = ref_ms * (1.3 if int(ms * 1000) % 2 else 1.0)
    return T.Latency(ms, 0.0, 10, [ms] * 10, E.fingerprint(), s.to_dict(), ratio=ms / ref_ms,
                     ratio_ci=[ms / ref_ms] * 2, reference={"arch": T.REFERENCE_ARCH, "archid": "x", "ms": window,
                                                            "window_ms": ref_ms}, protocol=2)


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
        return _relative(true_ms(by_id[model.arch.archid]), s)

    monkeypatch.setattr(P, "_time_module", lambda m, shape, s, sec: 1.0)  # biased isolated timings
    monkeypatch.setattr(P, "measure_model", fake_model)
    t = P.build_table(archs[: P.JOINT_MIN], spec, calibrate=P.JOINT_MIN, progress=False)
    assert len(t.joint) == 8
    for a in archs[P.JOINT_MIN:]:
        assert t.predict(a) == pytest.approx(true_ms(a), rel=1e-3)
        assert t.predict_ratio(a) == pytest.approx(true_ms(a) / 4.0, rel=1e-3)
        parts = t.unit_breakdown(a)  # what the report's per-unit column shows
        assert set(parts) == {e.name for e in P.unit_entries(a, spec)}
        assert sum(parts.values()) == pytest.approx(t.predict(a))


# --- the guideline bench ------------------------------------------------------------------------


def test_guideline_bench_rows_are_ratios_to_the_first_row_in_one_window() -> None:
    from shufflesearch.guidelines.microbench import TABLES, run

    res = run(scales=(1,), rounds=1, max_seconds=0.05, tables=("2",))
    assert [m.label for m in res] == [r.label for r in TABLES["2"]["rows"]]
    assert res[0].ratio == pytest.approx(1.0)
    base = res[0].ms
    for m in res:
        assert m.ms == pytest.approx(m.ratio * base) and m.rel_iqr >= 0


# --- the shared cache across studies (issue 21 item 9) ------------------------------------------


def test_two_studies_sharing_the_cache_time_an_architecture_once(tmp_path, monkeypatch) -> None:
    import threading

    from shufflesearch.measure.cache import LatencyCache

    spec = T.TargetSpec(resolution=32)
    timed: list[int] = []
    real = L._measure_scheduled

    def spy(*a, **kw):  # type: ignore[no-untyped-def]
        timed.append(threading.get_ident())
        return real(*a, **kw)

    monkeypatch.setattr(L, "_measure_scheduled", spy)
    out: list[T.Latency] = []
    go = threading.Barrier(2)

    def study() -> None:  # each study opens the one cache file on its own
        go.wait()
        out.append(L.measure_arch(TINY, spec, cache=LatencyCache(tmp_path / "c.sqlite"), max_seconds=0.3,
                                  retime_drifted=False))

    ts = [threading.Thread(target=study) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    # (a fresh cache's schedule has fewer than 3 entries: no drift verdict, every figure cached)
    assert len(timed) == 1 and len(out) == 2 and sorted(x.cached for x in out) == [False, True]
    assert out[0].runs_ms == out[1].runs_ms  # the waiter got the timer's figure


def test_a_late_write_never_replaces_a_newer_figure(tmp_path) -> None:
    from shufflesearch.measure.cache import LatencyCache

    spec = T.TargetSpec(resolution=32)
    cache = LatencyCache(tmp_path / "c.sqlite")
    fp = {"cpu": "x"}
    old = T.Latency(1.0, 0.1, 10, [1.0], fp, spec.to_dict(), ratio=0.5)
    new = T.Latency(2.0, 0.1, 10, [2.0], fp, spec.to_dict(), ratio=0.6)
    cache.put("a", spec, new, measured_at=200.0)
    cache.put("a", spec, old, measured_at=100.0)  # a worker suspended mid-measurement, writing late
    assert cache.get("a", spec, fp).ratio == 0.6
    cache.put("a", spec, old, measured_at=300.0)  # a measurement begun later does replace it
    assert cache.get("a", spec, fp).ratio == 0.5
    assert cache.claim("a", spec, fp, "p1") and not cache.claim("a", spec, fp, "p2")
    assert cache.claim("a", spec, fp, "p2", stale_s=0.0)  # a stale claim is taken over
    cache.release("a", spec, fp, "p2")
    assert cache.claim("a", spec, fp, "p3")


# --- the reference schedule follows the machine's usual speed (issue 21 item 2) ---------------


def test_a_slow_minute_does_not_carry_the_reference_figure(tmp_path) -> None:
    from shufflesearch.measure.cache import LatencyCache

    sched = L.ReferenceSchedule(T.TargetSpec(resolution=32), LatencyCache(tmp_path / "c.sqlite"))
    for _ in range(40):
        sched.add(5.0)  # the machine's usual speed over a run
    for _ in range(25):
        sched.add(7.1)  # then a slow phase of 25 windows (the old figure's whole horizon)
    assert sched.figure()["ms"] == 5.0 and sched.figure()["n"] == 65


def test_a_latency_call_on_a_fresh_machine_seeds_the_schedule(tmp_path) -> None:
    from shufflesearch.measure.cache import LatencyCache
    from shufflesearch.measure.drift import measure_seeded

    cache = LatencyCache(tmp_path / "c.sqlite")
    spec = T.TargetSpec(resolution=32)
    lat = measure_seeded(TINY, spec, cache=cache, max_seconds=0.2)
    # five timings of the reference alone, then the window's own (two when the window ran
    # beyond the drift bound and was re-timed): not one window's figure
    hist = cache.reference_history(spec, lat.fingerprint, 100)
    assert lat.reference["n"] == len(hist) and L.REFERENCE_SEED + 1 <= len(hist) <= L.REFERENCE_SEED + 2
    assert lat.reference["ms"] == pytest.approx(statistics.median(hist))
    if not lat.drifted:  # a cached figure times nothing more
        assert measure_seeded(TINY, spec, cache=cache).cached
        assert len(cache.reference_history(spec, lat.fingerprint, 100)) == len(hist)
