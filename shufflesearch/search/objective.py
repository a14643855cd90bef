"""How a trial record becomes what Optuna sees: objective values, constraint values, and the
sampler that learns from them."""

from __future__ import annotations

import math
from typing import Any

import optuna

from .records import TrialRecord
from .space import SearchSpace


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
    every value is <= 0 (value = measured - limit)."""
    have = {"latency_ms": rec.latency_ms, "params_m": rec.params / 1e6, "macs_m": rec.macs / 1e6,
            "mac_m": rec.mac / 1e6, "guideline_penalty": rec.guidelines.total}
    out = {k: float(have[k] - v) for k, v in sorted(space.constraints.items())}
    if space.guidelines.mode == "constrain":
        out["guidelines"] = float(rec.guidelines.total - space.guidelines.max_penalty)
    return out


# Optuna 5 takes constraints per trial (Trial.set_constraint, read by every sampler) and
# deprecates the samplers' constraints_func; Optuna 4 has only the latter.
_PER_TRIAL_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


def _constraint_system_attrs(items: dict[str, float]) -> dict[str, Any]:
    """How a constraint set is stored on a trial made with create_trial (the baselines)."""
    if _PER_TRIAL_CONSTRAINTS:
        return {f"constraints:{k}": float(v) for k, v in items.items()}
    return {"constraints": list(items.values())}


def make_sampler(space: SearchSpace, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The space's sampler; each worker gets its own seed so that workers do not propose the
    same architectures in lockstep."""
    s = space.sampler
    constrained = space.constraints or space.guidelines.mode == "constrain" or space.fidelity is not None
    cf = _constraints_func if constrained and not _PER_TRIAL_CONSTRAINTS else None
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
    return list(optuna_constraints(TrialRecord.from_trial(trial)).values())
