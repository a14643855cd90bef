"""Fault injection for the reliability tests and bench/fault_injection.py: kill this process at
a named point, as kill -9 or the OOM killer would."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

import optuna

log = logging.getLogger("shufflesearch.search")


FAULT_ENV = "SHUFFLESEARCH_FAULT"  # fault injection for the reliability tests, see fault_point
_fault_hits: dict[str, int] = {}


def fault_point(name: str, hold: Any = None) -> None:
    """``SHUFFLESEARCH_FAULT=NAME:N[,NAME:N...]`` kills this process with SIGKILL (as kill -9 or
    the OOM killer would) the Nth time it reaches point NAME: ``ask`` (inside ``study.ask()``,
    the trial created, nothing of it stored yet), ``retry`` (the same, when the trial popped is
    the retry of a dead one), ``sample``, ``latency`` (holding the timing lock, as a
    measurement does), ``proxies`` (holding the compute lock), ``storage`` (half of a trial's
    results written), ``rung`` (a ladder rung's checkpoint on disk, its result not stored
    yet), and the end-of-run steps ``retime``, ``short_train``, ``check`` (hit 1: the step just
    claimed; hit N >= 2: at its (N-1)th heartbeat, i.e. (N-1) x 2 s into it). A no-op unless the
    variable is set."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    _fault_hits[name] = n = _fault_hits.get(name, 0) + 1
    if f"{name}:{n}" not in spec.replace(" ", "").split(","):
        return
    log.warning("fault injection: SIGKILL at %s #%d", name, n)
    with hold() if hold is not None else contextlib.nullcontext():
        os.kill(os.getpid(), signal.SIGKILL)


class _AskFaults(optuna.samplers.BaseSampler):
    """A sampler that reaches the ``ask``/``retry`` fault points from inside ``study.ask()``
    (Optuna calls ``before_trial`` once the trial exists) and otherwise is the one it wraps."""

    def __init__(self, inner: optuna.samplers.BaseSampler) -> None:
        self.inner = inner

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        fault_point("ask")
        if trial.system_attrs.get("failed_trial") is not None:
            fault_point("retry")
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):  # type: ignore[no-untyped-def]
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def with_ask_faults(sampler: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
    """``sampler`` itself unless SHUFFLESEARCH_FAULT names a point inside ask()."""
    spec = os.environ.get(FAULT_ENV, "")
    if not any(p.strip().startswith(("ask:", "retry:")) for p in spec.split(",")):
        return sampler
    return _AskFaults(sampler)
