"""The hand-designed presets that fit a space, evaluated once per study, and the short-training
pass over the front and the baselines at the end of a run."""

from __future__ import annotations

import logging
import sys
from typing import Any

import optuna
from optuna.trial import TrialState

from ..common.threads import torch_threads
from ..model.arch import Arch
from .evaluator import Evaluator
from .objective import _constraint_system_attrs, constraint_items, objective_values
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
        items = constraint_items(run.space, rec)
        rec["constraints"] = list(items.values())
        rec.update(baseline=name, timings=timings)
        # Stored with the params the space would sample it from, so the sampler learns from it.
        params, dists = run.space.encode(arch) if run.space.contains(arch) else ({}, {})
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists,
            values=objective_values(run.space, rec), user_attrs=rec,
            system_attrs=_constraint_system_attrs(items),
        ))


def short_train_front(run: Run, quiet: bool = True) -> dict[str, Any]:
    """Multi-fidelity: short-train the baselines and ``short_train_top_k`` front points spread
    evenly by latency, seeded, on the proxy task. Results go to the study's user attr
    ``short_train`` (keyed by trial number) one at a time, so an interrupted pass resumes."""
    from ..accuracy.data import DataSpec, load_data
    from ..accuracy.training import short_train
    from ..measure.env import compute_lock
    from .front import pareto_front
    from .records import completed, trial_records

    k, steps = run.space.proxy["short_train_top_k"], run.space.proxy["short_train_steps"]
    study = run.load_study()
    done = dict(study.user_attrs.get("short_train") or {})
    if k <= 0:
        return done
    recs = completed(trial_records(study.get_trials(deepcopy=False)))
    front = [r for r in pareto_front(recs) if not r.get("baseline")]
    picks = [r for r in recs if r.get("baseline")]
    if front:
        idx = sorted({round(i * (len(front) - 1) / max(k - 1, 1)) for i in range(min(k, len(front)))})
        picks += [front[i] for i in idx]
    p = run.space.proxy
    data = None
    for r in picks:
        if str(r["trial"]) in done:
            continue
        data = data or load_data(DataSpec(name=p["dataset"], resolution=p["resolution"],
                                          batch=p["batch"], seed=run.space.seed))
        if not quiet:
            print(f"short-training trial {r['trial']} ({steps} steps)", file=sys.stderr, flush=True)
        with compute_lock(), torch_threads(1):
            res = short_train(Arch.from_dict(r["arch"]), data, steps=steps, seed=run.space.seed)
        done[str(r["trial"])] = {k2: float(v) for k2, v in res.items()}
        study.set_user_attr("short_train", done)
        log.info("short-trained trial %d: val_acc %.4f", r["trial"], res["val_acc"])
    return done
