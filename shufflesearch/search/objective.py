"""How a trial record becomes what Optuna sees: objective values, constraint values, and the
sampler that learns from them."""

from __future__ import annotations

import datetime
import logging
import math
from typing import Any

import optuna

from ..measure.cache import LatencyCache
from ..measure.drift import DriftMonitor
from ..measure.target import REFERENCE_ARCH
from .evaluator import calibration_images
from .front import latency_over
from .records import TrialRecord
from .runfolder import Run
from .space import SearchSpace
from .storage import PER_TRIAL_CONSTRAINTS, read_record, run_step, set_study_attr, study_attr

log = logging.getLogger("shufflesearch.search")


def objective_values(space: SearchSpace, rec: TrialRecord) -> list[float]:
    """The values Optuna is told. A ladder trial without a top-rung figure (stopped below the
    top, or infeasible and never trained) is told -inf for ``proxy``: worse than any figure,
    never a figure on another scale; its ``ladder`` constraint (optuna_constraints) makes it
    infeasible, so samplers rank it by how far it climbed, not by that value."""
    acc = -math.inf if rec.proxy is None else rec.proxy
    pick = {"proxy": acc, "latency": rec.latency_ms, "mac": rec.mac, "macs": rec.macs,
            "params": rec.params}
    return [float(pick[n]) for n, _ in space.objectives]


def optuna_constraints(rec: TrialRecord) -> dict[str, float]:
    """What Optuna's samplers see as the trial's constraints: the space's (``constraints``),
    plus in a ladder run ``ladder`` = rungs short of the top (0 at the top)."""
    out = dict(rec.constraints)
    if rec.top_rung is not None:
        out["ladder"] = float(rec.top_rung - (rec.rung or 0))
    return out


def constraint_items(space: SearchSpace, rec: TrialRecord) -> dict[str, float]:
    """The trial's constraint values by name. Optuna convention: a trial is feasible when
    every value is <= 0 (value = measured - limit). Latency is judged by its ratio to the
    reference against the limit's ratio (``latency_over``): one yardstick with the front."""
    have = {"params_m": rec.params / 1e6, "macs_m": rec.macs / 1e6,
            "mac_m": rec.mac / 1e6, "guideline_penalty": rec.guidelines.total}
    out = {k: (latency_over(rec, v) if k == "latency_ms" else float(have[k] - v))
           for k, v in sorted(space.constraints.items())}
    if space.guidelines.mode == "constrain":
        out["guidelines"] = float(rec.guidelines.total - space.guidelines.max_penalty)
    return out


# --- the latency limit on the ratio yardstick -------------------------------------------------

LIMIT_ATTR = "latency_limit"  # study user attr: {"ms", "reference", "reference_ms", "ratio", "at"}


def latency_limit(run: Run) -> dict[str, Any] | None:
    """The space's ``latency_ms`` limit converted once per run to a ratio to the reference:
    limit / the reference schedule's figure when the run first needed it (the reference is
    timed first on a machine with no schedule yet). Stored on the study, so every worker and
    machine judges feasibility against the same ratio, and reviews can state the figure.
    None when the space has no latency limit."""
    limit = run.space.constraints.get("latency_ms")
    if limit is None:
        return None
    study = run.load_study()

    def convert() -> None:
        spec = run.space.target
        mon = DriftMonitor(spec, cache=LatencyCache(), max_seconds=run.space.target_options.max_seconds,
                           calibration=calibration_images(run.space))
        fig = mon.seed()  # a machine with too few timings times the reference first
        set_study_attr(study, LIMIT_ATTR, {
            "ms": float(limit), "reference": REFERENCE_ARCH, "reference_ms": fig["ms"],
            "ratio": float(limit) / fig["ms"],
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        log.info("run %s: latency_ms limit %g ms = ratio %.4f to %s at %.3f ms", run.name, limit,
                 float(limit) / fig["ms"], REFERENCE_ARCH, fig["ms"])

    if not study_attr(study, LIMIT_ATTR):
        run_step(study, LIMIT_ATTR, convert, name="limit")
    return study_attr(run.load_study(), LIMIT_ATTR)


def make_sampler(space: SearchSpace, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The space's sampler; each worker gets its own seed so that workers do not propose the
    same architectures in lockstep."""
    s = space.sampler
    constrained = space.constraints or space.guidelines.mode == "constrain" or space.fidelity is not None
    cf = _constraints_func if constrained and not PER_TRIAL_CONSTRAINTS else None
    seed = space.seed + 7919 * worker
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=seed, constraints_func=cf)
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials, constraints_func=cf)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials,
                                      constraints_func=cf, multivariate=True, group=True)


def _constraints_func(trial: optuna.trial.FrozenTrial) -> list[float]:
    return list(optuna_constraints(read_record(trial)).values())
