"""The hand-designed presets that fit a space, evaluated once per study, and the short-training
pass over the front and the baselines at the end of a run."""

from __future__ import annotations

import logging
import sys

import optuna
from optuna.trial import TrialState

from ..accuracy.data import load_data
from ..accuracy.training import short_train
from ..common.threads import torch_threads
from ..measure.env import compute_lock
from ..model.arch import Arch
from .evaluator import Evaluator
from .front import pareto_front, spread_indices
from .objective import _constraint_system_attrs, constraint_items, objective_values
from .records import TrialRecord, completed, trial_records
from .runfolder import Run

log = logging.getLogger("shufflesearch.search")


def evaluate_baselines(run: Run, evaluate: Evaluator | None = None) -> None:
    """Evaluate the presets that fit the space, once, before any search trial; they are stored
    as completed trials marked ``baseline`` and do not count towards the budget."""
    study = run.load_study()
    have = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    todo = [(n, a) for n, a in run.space.baseline_archs().items() if n not in have]
    if not todo:
        return
    evaluate = evaluate or Evaluator(run.space)
    for name, arch in todo:
        log.info("baseline %s (%s)", name, arch.archid)
        timings: dict[str, float] = {}
        rec = evaluate(arch, timings)
        rec.constraints = constraint_items(run.space, rec)
        rec.baseline, rec.timings = name, timings
        # Stored with the params the space would sample it from, so the sampler learns from it.
        params, dists = run.space.encode(arch) if run.space.contains(arch) else ({}, {})
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists,
            values=objective_values(run.space, rec), user_attrs=rec.to_user_attrs(),
            system_attrs=_constraint_system_attrs(rec.constraints),
        ))


def short_train_picks(records: list[TrialRecord], k: int) -> list[TrialRecord]:
    """What the short-training pass trains: the feasible baselines, then ``k`` points of the
    (feasible) front spread evenly by latency, both ends included (``spread_indices``).
    Infeasible trials are never trained."""
    recs = completed(records)
    front = [r for r in pareto_front(recs) if not r.baseline]
    picks = [r for r in recs if r.baseline and r.feasible]
    return picks + [front[i] for i in spread_indices(len(front), k)]


def short_train_front(run: Run, quiet: bool = True) -> dict[str, dict[str, float]]:
    """Multi-fidelity: short-train ``short_train_picks``, seeded, on the proxy task. Results go
    to the study's user attr ``short_train`` (keyed by trial number) one at a time, so an
    interrupted pass resumes."""
    k, steps = run.space.proxy.short_train_top_k, run.space.proxy.short_train_steps
    study = run.load_study()
    done = dict(study.user_attrs.get("short_train") or {})
    if k <= 0:
        return done
    data = None
    for r in short_train_picks(trial_records(study.get_trials(deepcopy=False)), k):
        if str(r.trial) in done:
            continue
        data = data or load_data(run.space.data)
        if not quiet:
            print(f"short-training trial {r.trial} ({steps} steps)", file=sys.stderr, flush=True)
        with compute_lock(), torch_threads(1):
            res = short_train(Arch.from_dict(r.arch), data, steps=steps, seed=run.space.seed)
        done[str(r.trial)] = {k2: float(v) for k2, v in res.items()}
        study.set_user_attr("short_train", done)
        log.info("short-trained trial %d: val_acc %.4f", r.trial, res["val_acc"])
    return done
