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
from ..errors import first_line
from ..measure.env import compute_lock
from ..model.arch import Arch
from .evaluator import Evaluator
from .front import pareto_front, spread_indices
from .objective import constraint_items, latency_limit, objective_values, optuna_constraints
from .records import TrialRecord, completed
from .runfolder import Run
from .storage import (
    claim,
    claims,
    create_trial,
    end_trial,
    heartbeat,
    is_final,
    mark_started,
    set_study_attr,
    store_constraints,
    stored_trial,
    study_attr,
    study_records,
    write_fields,
)
from .worker import Sweeper, evaluate_once

log = logging.getLogger("shufflesearch.search")


def _baseline_settled(study: optuna.Study, tid: int) -> bool:
    """A baseline claim stays with its trial once that trial completed, was rejected by the
    pre-filter or raised (the same error would come back); it passes on only when its worker
    died or was interrupted."""
    t = stored_trial(study, tid)
    return t is not None and (t.state != TrialState.FAIL or is_final(t))


def evaluate_baselines(run: Run, evaluate: Evaluator | None = None) -> None:
    """Evaluate the presets that fit the space, once per study, before this worker's search
    trials; they are stored as trials marked ``baseline`` and do not count towards the budget.

    Several machines starting one study together share the work: each baseline is claimed in
    the study's storage by the trial that evaluates it (see storage.claim), so it is evaluated
    once; the others skip it. A baseline the latency pre-filter rejects is a PRUNED trial with
    its reason, one that raises a FAIL with its reason; neither is evaluated again on re-runs.
    A baseline whose worker died (its trial went stale) is taken over by the next run."""
    study = run.load_study()
    done = {r.baseline for r in study_records(study) if r.state == "COMPLETE"}
    owned = claims(study, "baseline:")
    todo = [(n, a) for n, a in run.space.baseline_archs().items()
            if n not in done and not (f"baseline:{n}" in owned and _baseline_settled(study, owned[f"baseline:{n}"]))]
    if not todo:
        return
    evaluate = evaluate or Evaluator(run.space, run.root, limit=latency_limit(run))
    sweep = Sweeper(study)
    for name, arch in todo:
        sweep()
        # Stored with the params the space would sample it from, so the sampler learns from it.
        params, dists = run.space.encode(arch) if run.space.contains(arch) else ({}, {})
        tid, number = create_trial(study, params, dists, baseline=name, archid=arch.archid)
        with heartbeat(study, tid):
            mark_started(study, tid)
            owner = claim(study, f"baseline:{name}", tid, lambda o: not _baseline_settled(study, o))
            if owner != tid:
                log.info("baseline %s: trial %d evaluates it; skipped here", name, owner)
                end_trial(study, tid, TrialState.PRUNED, final=True, reason=(
                    f"not evaluated: baseline {name} is evaluated by another trial (trial id {owner})"))
                continue
            try:
                _evaluate_baseline(run, study, tid, number, name, arch, evaluate, sweep)
            except optuna.exceptions.UpdateFinishedTrialError:
                log.warning("baseline %s (trial %d) was taken over: another worker failed it as "
                            "stale; going on", name, number)


def _evaluate_baseline(run: Run, study: optuna.Study, tid: int, number: int, name: str,
                       arch: Arch, evaluate: Evaluator, sweep: Sweeper) -> None:
    log.info("baseline %s (%s), trial %d", name, arch.archid, number)
    timings: dict[str, float] = {}
    try:
        rec = evaluate_once(study, tid, arch, evaluate, timings, sweep)
    except optuna.exceptions.UpdateFinishedTrialError:
        raise
    except optuna.TrialPruned as e:
        log.warning("baseline %s rejected: %s", name, e)
        end_trial(study, tid, TrialState.PRUNED, reason=f"pruned: {e}", final=True)
        return
    except KeyboardInterrupt:
        end_trial(study, tid, TrialState.FAIL, reason="interrupted by the user")
        raise
    except Exception as e:
        reason = first_line(e)
        log.warning("baseline %s failed: %s", name, reason)
        end_trial(study, tid, TrialState.FAIL, reason=reason, final=True)
        return
    rec.constraints = constraint_items(run.space, rec)
    rec.baseline, rec.timings = name, timings
    write_fields(study, tid, rec)
    store_constraints(study, tid, optuna_constraints(rec))
    end_trial(study, tid, TrialState.COMPLETE, objective_values(run.space, rec), final=True)


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
    done = dict(study_attr(study, "short_train", {}))
    if k <= 0:
        return done
    data = None
    for r in short_train_picks(study_records(study), k):
        if str(r.trial) in done or r.arch is None:  # (None: stored in a form this version cannot read)
            continue
        data = data or load_data(run.space.data)
        if not quiet:
            print(f"short-training trial {r.trial} ({steps} steps)", file=sys.stderr, flush=True)
        with compute_lock(), torch_threads(1):
            res = short_train(r.arch, data, steps=steps, seed=run.space.seed)
        done[str(r.trial)] = {k2: float(v) for k2, v in res.items()}
        set_study_attr(study, "short_train", done)
        log.info("short-trained trial %d: val_acc %.4f", r.trial, res["val_acc"])
    return done
