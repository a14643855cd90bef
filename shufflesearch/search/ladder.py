"""The fidelity ladder inside a search: which trial trains how far, and the run's self-check.

Per trial (``climb``, called by the trial that holds the architecture's claim, so one
architecture is trained once however many trials sample it):

1. latency, constraints and zero-cost scores come first (the evaluator); an infeasible
   architecture stops there and never trains;
2. rung 0 -> 1: the trial is promoted when it is in the best 1/eta of the feasible trials that
   finished rung 0, by non-dominated sorting over (zero-cost score, latency) and crowding
   distance (promotion.should_promote, decided once, when the trial finishes the rung);
3. rung k -> k+1 likewise over (estimate at rung k, latency) of the trials that finished rung k,
   until the top rung or a rung where it is not promoted. Baselines climb every rung.

What finished rung k is read from the study's storage (the ``rungs`` user attribute each trial
writes as it climbs), so the rule holds across workers and machines; a trial whose worker died
(FAIL) does not count, and one architecture counts once. Checkpoints live in the run folder
(``rungs/ARCHID-sSEED``): a retry after kill -9 continues from the last finished rung and
counts the rungs on disk as promotions won, so nothing is trained twice.

The number a ladder trial tells Optuna as its ``proxy`` objective (``TrialRecord.proxy``) is
its estimate at the highest rung it reached (``estimate_value``): val_acc, or SoTL per step
(the mean negated training loss, so that trials that stopped at different rungs stay on one
scale); a trial stopped at rung 0 gets the worst rung-1 estimate seen so far (the sampler
reads it as no better than the trials that trained). The front is drawn from the trials that
reached the top rung (``TrialRecord.at_top``).
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

import optuna
from optuna.trial import TrialState

from ..accuracy.data import ProxyData, load_data
from ..accuracy.fidelity import (
    FidelitySettings,
    check_estimator,
    format_check,
    latest_checkpoint,
    pick_estimate,
    rung_attr,
    rung_dir,
    search_estimator,
    train_to_rung,
)
from ..common.threads import torch_threads
from ..model.arch import Arch
from .faults import fault_point
from .front import pareto_front, spread_indices
from .objective import constraint_items
from .promotion import should_promote
from .records import TrialRecord, completed, trial_records
from .runfolder import Run
from .space import SearchSpace

log = logging.getLogger("shufflesearch.search")

_LIVE = (TrialState.RUNNING, TrialState.COMPLETE)


def estimate_value(attr: dict[str, Any], estimator: str) -> float:
    """The figure a rung's result stands for on the front and for Optuna: val_acc, or SoTL
    divided by the rung's steps (see the module docstring)."""
    if estimator == "sotl":
        return float(attr["sotl"]) / max(1, int(attr["steps"]))
    return float(attr["val_acc"])


def finished_at(study: optuna.Study, k: int, estimator: str, me: int) -> list[tuple[int, float, float]]:
    """(trial number, estimate, latency) of the live trials that finished rung ``k``, one per
    architecture (trial ``me``'s own entry wins for its architecture)."""
    by_arch: dict[str, tuple[int, float, float]] = {}
    for t in study.get_trials(deepcopy=False, states=_LIVE):
        r = (t.user_attrs.get("rungs") or {}).get(str(k))
        if r is None:
            continue
        est = float(r["estimate"]) if k == 0 else pick_estimate(r, estimator)
        # One yardstick: the ratio to the reference (rung entries of older runs: their ms).
        p = (t.number, est, float(r.get("ratio", r["latency_ms"])))
        a = t.user_attrs.get("archid", str(t.number))
        if a not in by_arch or t.number == me:
            by_arch[a] = p
    return list(by_arch.values())


def climb(study: optuna.Study, trial_id: int, rec: TrialRecord, space: SearchSpace,
          data: ProxyData, run_root: Any, baseline: bool = False) -> TrialRecord:
    """Take the trial as far up the ladder as promotion allows; fills the record's ladder
    fields (rung, top_rung, rungs, estimator, stopped, proxy). See the module docstring."""
    fs: FidelitySettings = space.fidelity  # type: ignore[assignment]
    st = study._storage
    number = getattr(st, "_backend", st).get_trial(trial_id).number
    est = search_estimator(fs)
    rec.top_rung, rec.estimator, rec.rung = len(fs.rungs), est, 0
    rec.constraints = constraint_items(space, rec)
    if not rec.feasible:
        rec.stopped = "infeasible: never trained"
        return rec
    lat = {"latency_ms": float(rec.latency_ms), **({"ratio": rec.ratio} if rec.ratio is not None else {})}
    rungs: dict[str, Any] = {"0": {"estimate": float(rec.proxy), **lat}}
    st.set_trial_user_attr(trial_id, "rungs", rungs)
    st.set_trial_user_attr(trial_id, "rung", 0)
    arch = Arch.from_dict(rec.arch)
    ckpt = rung_dir(run_root, rec.archid, space.seed)
    # Rungs already on disk (a retry after kill -9) were promotions already won: honoured, not
    # decided again against a field that has grown since, so their training is never wasted.
    on_disk = (latest_checkpoint(ckpt) or (0, None))[0]
    for k in range(0, len(fs.rungs)):
        if not baseline and k >= on_disk:
            fin = finished_at(study, k, est, number)
            if not should_promote(number, fin, fs.eta):
                rec.stopped = f"stopped at rung {k}: not in the best 1/{fs.eta} of {len(fin)} at that rung"
                break
        with torch_threads(1):
            # One thread, like the proxies: workers share the cores, and a second thread buys
            # little on the proxy task's tiny inputs.
            # fault point `rung`: a kill -9 right after a rung's checkpoint is on disk, before
            # the trial's storage says so (the retry must find it and train nothing again)
            r = train_to_rung(arch, data, fs, k + 1, ckpt, seed=space.seed, on_rung=lambda _h: fault_point("rung"))
        rungs[str(k + 1)] = {**rung_attr(r), **lat,
                             "trained_seconds": float(r["trained_seconds"]),
                             "resumed_from": int(r["resumed_from"])}
        rec.rung = k + 1
        st.set_trial_user_attr(trial_id, "rungs", rungs)
        st.set_trial_user_attr(trial_id, "rung", k + 1)
        log.info("trial %d: rung %d (%d steps) val_acc %.4f sotl %.1f, %.1f s", number, k + 1,
                 r["steps"], r["val_acc"], r["sotl"], r["trained_seconds"])
    rec.rungs = rungs
    if rec.rung >= 1:
        rec.proxy = estimate_value(rungs[str(rec.rung)], est)
    else:  # stopped at rung 0: no worse-looking than the trials that trained (module docstring)
        r1 = [estimate_value((t.user_attrs.get("rungs") or {})["1"], est)
              for t in study.get_trials(deepcopy=False, states=_LIVE)
              if "1" in (t.user_attrs.get("rungs") or {})]
        rec.proxy = min(r1) if r1 else (0.0 if est == "val_acc" else -math.log(data.num_classes))
    return rec


# --- the run's self-check ----------------------------------------------------------------------


def check_picks(records: list[TrialRecord], top: int) -> list[TrialRecord]:
    """What the check retrains: ``top`` points spread over the top-rung front (filled up with
    the best other top-rung trials when the front is shorter), plus the feasible baselines."""
    done = [r for r in completed(records) if r.feasible and r.at_top and r.rungs]
    front = [r for r in pareto_front(done) if not r.baseline]
    picks = [front[i] for i in spread_indices(len(front), top)]
    seen = {r.archid for r in picks}
    for r in sorted((r for r in done if not r.baseline), key=lambda r: -float(r.proxy)):
        if len(picks) >= top:
            break
        if r.archid not in seen:
            picks.append(r)
            seen.add(r.archid)
    for r in done:
        if r.baseline and r.archid not in seen:
            picks.append(r)
            seen.add(r.archid)
    return picks


def run_check(run: Run, data: ProxyData | None = None, quiet: bool = True) -> dict[str, Any] | None:
    """The self-check at the end of a ladder run (accuracy.fidelity.check_estimator): each
    retraining is stored in the study's ``check_runs`` as it finishes, so an interrupted check
    resumes; the report goes to the study's ``check`` and is returned (None without a ladder or
    with ``check.top: 0``; a report with ``skipped`` when fewer than 3 architectures qualify)."""
    fs = run.space.fidelity
    if fs is None or fs.check.top <= 0:
        return None
    study = run.load_study()
    picks = check_picks(trial_records(study.get_trials(deepcopy=False)), fs.check.top)
    if len(picks) < 3:
        rep: dict[str, Any] = {"skipped": f"only {len(picks)} architecture(s) reached the top rung "
                               "feasibly; the check needs 3"}
        study.set_user_attr("check", rep)
        return rep
    data = data or load_data(run.space.data)
    runs = dict(study.user_attrs.get("check_runs") or {})
    top = str(len(fs.rungs))

    def store(archid: str, res: dict[str, Any]) -> None:
        runs[archid] = res
        study.set_user_attr("check_runs", runs)
        if not quiet:
            print(f"checked {archid}: val_acc {res['val_acc']}", file=sys.stderr, flush=True)

    estimates = {"val_acc": [float(r.rungs[top]["val_acc"]) for r in picks],
                 "sotl": [float(r.rungs[top]["sotl"]) for r in picks]}
    with torch_threads(1):
        rep = check_estimator([Arch.from_dict(r.arch) for r in picks], estimates, data,
                              fs.check.steps, fs.check.seeds, estimator=fs.estimator,
                              device=fs.device, done=runs, on_trained=store)
    rep["trials"] = [r.trial for r in picks]
    rep["baselines"] = [r.baseline for r in picks if r.baseline]
    study.set_user_attr("check", rep)
    log.info("%s", format_check(rep))
    return rep


def apply_estimator(records: list[TrialRecord], estimator: str) -> None:
    """Redraw the ladder trials' ``proxy`` with ``estimator`` (the one the check chose under
    ``estimator: auto``), at the highest rung each reached; rung-0 trials keep theirs."""
    for r in records:
        if r.rungs and r.rung and str(r.rung) in r.rungs:
            r.proxy, r.estimator = estimate_value(r.rungs[str(r.rung)], estimator), estimator


def describe_check(rep: dict[str, Any] | None) -> str:
    """The stored check in a few lines (``format_check``), or why there is none."""
    if not rep:
        return "self-check: not run yet"
    if rep.get("top") == 0:  # switched off in the space: stored so, not "not run yet"
        return "self-check: off (check.top: 0 in the space; nothing was retrained)"
    if rep.get("skipped"):
        return f"self-check: skipped ({rep['skipped']})"
    return format_check(rep)
