"""search/faults.py: a fault point kills only where and when SHUFFLESEARCH_FAULT says. The kill
itself is caught here (os.kill replaced); tests/search/test_reliability.py lets it happen for real."""

from __future__ import annotations

import contextlib
import signal

import optuna
import pytest

from shufflesearch.search import faults


@pytest.fixture
def kills(monkeypatch):
    """The signals this process would have sent itself, with the fault counters reset."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(faults, "_fault_hits", {})
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    return sent


def test_no_variable_no_fault(monkeypatch, kills):
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    for _ in range(3):
        faults.fault_point("latency")
    assert kills == []


def test_the_nth_hit_of_the_named_point_is_killed(monkeypatch, kills):
    monkeypatch.setenv(faults.FAULT_ENV, "latency:2, rung:1")
    faults.fault_point("sample")
    faults.fault_point("latency")
    assert kills == []
    faults.fault_point("latency")
    assert kills == [(faults.os.getpid(), signal.SIGKILL)]
    faults.fault_point("latency")  # the third hit is not named
    faults.fault_point("rung")
    assert len(kills) == 2


def test_the_kill_happens_holding_the_given_lock(monkeypatch, kills):
    held = []

    @contextlib.contextmanager
    def lock():
        held.append("in")
        yield
        held.append("out")

    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: held.append("kill"))
    monkeypatch.setenv(faults.FAULT_ENV, "proxies:1")
    faults.fault_point("proxies", hold=lock)
    assert held == ["in", "kill", "out"]


def test_the_sampler_is_wrapped_only_for_points_inside_ask(monkeypatch, kills):
    inner = optuna.samplers.RandomSampler(seed=0)
    monkeypatch.setenv(faults.FAULT_ENV, "latency:1")
    assert faults.with_ask_faults(inner) is inner
    monkeypatch.setenv(faults.FAULT_ENV, "latency:1,ask:2")
    wrapped = faults.with_ask_faults(inner)
    assert wrapped is not inner
    study = optuna.create_study(sampler=wrapped)
    study.ask()
    assert kills == []
    t = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})  # the 2nd ask is killed
    assert len(kills) == 1
    assert 0.0 <= t.params["x"] <= 1.0  # the wrapped sampler still samples
