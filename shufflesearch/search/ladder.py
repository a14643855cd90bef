"""The fidelity ladder inside a search: which trial trains how far, and the run's self-check.

Per trial (``climb``, called by the trial that holds the architecture's claim, so one
architecture is trained once however many trials sample it):

1. latency, costs and constraints come first (the evaluator); an infeasible architecture
   stops there and never trains (rung 0: not trained);
2. every feasible trial trains rung 1, the first ``fidelity.rungs`` steps. There is no
   zero-cost rung: on held-back data the zero-cost scores ranked architectures below chance,
   while a few training steps' SoTL ranked them well (README, "The fidelity ladder");
3. rung k -> k+1: the trial climbs when it is in the best 1/eta of the search trials that
   finished rung k, by non-dominated sorting over (estimate at rung k, latency ratio), and
   fewer than that many have started rung k+1 (promotion.should_promote: capped successive
   halving, decided once, when the trial finishes the rung). Baselines climb every rung,
   outside the count and outside the field, so they take no search trial's place.

What finished or started rung k is read from the study's storage (the ``rungs`` and
``promoted_to`` user attributes each trial writes as it climbs), so the rule holds across
workers and machines; a trial whose worker died (FAIL) does not count, and one architecture
counts once. Checkpoints live in the run folder (``rungs/ARCHID-sSEED``): a retry after
kill -9 continues from the last finished rung and counts the rungs on disk as promotions
won, so nothing is trained twice.

One scale (DESIGN.md, "one figure, one meaning"): a ladder trial's accuracy figure
(``TrialRecord.proxy``, the first objective Optuna is told) is its estimate at the TOP rung
(``estimate_value``: SoTL per step, the mean negated training loss, or val_acc), in one unit
for every trial that has one. A trial that stopped below the top has no such figure:
``proxy`` is None, Optuna is told -inf with the constraint ``ladder`` = rungs short of the
top (> 0: infeasible, so every sampler ranks it by how far it got, never by a value on another
scale), and its lower rungs' figures stay in ``rungs``, shown only where labelled as such.
"""

from __future__ import annotations

import logging
import shutil
import sys
from typing import Any

import optuna
from optuna.trial import TrialState

from ..accuracy.check import MIN_CHECK, check_estimator, format_check
from ..accuracy.data import ProxyData, load_data
from ..accuracy.fidelity import (
    ESTIMATORS,
    FidelitySettings,
    latest_checkpoint,
    pick_estimate,
    rung_attr,
    rung_dir,
    search_estimator,
    train_to_rung,
)
from ..common.threads import torch_threads, train_threads
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


def drop_checkpoints(run_root: Any, archid: str, seed: int) -> None:
    """Delete one architecture's rung checkpoints (a trial that stopped below the top)."""
    shutil.rmtree(rung_dir(run_root, archid, seed), ignore_errors=True)


def prune_checkpoints(run: Run, keep: set[str]) -> int:
    """At the end of a run: delete the rung checkpoints of every architecture not in ``keep``
    (the shown front and the check's picks keep their top-rung weights). Returns how many
    folders went."""
    root = run.root / "rungs"
    gone = 0
    for d in sorted(root.glob("*-s*")) if root.is_dir() else []:
        if d.is_dir() and d.name.rsplit("-s", 1)[0] not in keep:
            shutil.rmtree(d, ignore_errors=True)
            gone += 1
    return gone


def estimate_value(attr: dict[str, Any], estimator: str) -> float:
    """The figure a top-rung result stands for on the front and for Optuna: val_acc, or SoTL
    divided by the rung's steps (the mean negated training loss, in nats)."""
    if estimator == "sotl":
        return float(attr["sotl"]) / max(1, int(attr["steps"]))
    return float(attr["val_acc"])


def latency_key(rec: TrialRecord) -> float:
    """What promotion ranks latency by: the ratio to the reference network (one yardstick for
    every window), or the stored ms for a figure without a ratio."""
    return float(rec.ratio) if rec.ratio is not None else float(rec.latency_ms)


def _search_trials(study: optuna.Study) -> list[Any]:
    return [t for t in study.get_trials(deepcopy=False, states=_LIVE) if not t.user_attrs.get("baseline")]


def finished_at(study: optuna.Study, k: int, estimator: str, me: int) -> list[tuple[int, float, float]]:
    """(trial number, estimate, latency) of the live search trials that finished rung ``k``,
    one per architecture (trial ``me``'s own entry wins for its architecture). Baselines are
    left out: they climb anyway."""
    by_arch: dict[str, tuple[int, float, float]] = {}
    for t in _search_trials(study):
        r = (t.user_attrs.get("rungs") or {}).get(str(k))
        if r is None or r.get("sotl") is None:
            continue
        p = (t.number, pick_estimate(r, estimator), float(r.get("latency", r.get("latency_ms"))))
        a = t.user_attrs.get("archid", str(t.number))
        if a not in by_arch or t.number == me:
            by_arch[a] = p
    return list(by_arch.values())


def started_at(study: optuna.Study, k: int, me_archid: str) -> int:
    """How many architectures other than ``me_archid`` live search trials have started rung
    ``k`` with (``promoted_to`` >= k)."""
    return len({t.user_attrs.get("archid", str(t.number)) for t in _search_trials(study)
                if int(t.user_attrs.get("promoted_to", 0)) >= k} - {me_archid})


def climb(study: optuna.Study, trial_id: int, rec: TrialRecord, space: SearchSpace,
          data: ProxyData, run_root: Any, baseline: bool = False) -> TrialRecord:
    """Take the trial as far up the ladder as promotion allows; fills the record's ladder
    fields (rung, top_rung, rungs, estimator, stopped, proxy). See the module docstring."""
    fs: FidelitySettings = space.fidelity  # type: ignore[assignment]
    st = study._storage
    number = getattr(st, "_backend", st).get_trial(trial_id).number
    est = search_estimator(fs)
    top = len(fs.rungs)
    rec.top_rung, rec.estimator, rec.rung, rec.proxy = top, est, 0, None
    rec.constraints = constraint_items(space, rec)
    if not rec.feasible:
        rec.stopped = "infeasible: never trained"
        return rec
    rungs: dict[str, Any] = {}
    arch = Arch.from_dict(rec.arch)
    ckpt = rung_dir(run_root, rec.archid, space.seed)
    lat = latency_key(rec)
    # Rungs already on disk (a retry after kill -9) were promotions already won: honoured, not
    # decided again against a field that has grown since, so their training is never wasted.
    on_disk = (latest_checkpoint(ckpt) or (0, None))[0]
    for k in range(1, top + 1):
        if k >= 2 and not baseline and k > on_disk:
            fin = finished_at(study, k - 1, est, number)
            started = started_at(study, k, rec.archid)
            if not should_promote(number, fin, fs.eta, started=started):
                rec.stopped = (f"stopped at rung {k - 1}: not in the best 1/{fs.eta} of {len(fin)} "
                               f"at that rung, or their {started} place(s) at rung {k} already taken")
                break
        if k >= 2:  # counted at once, so that peers deciding meanwhile see the place taken
            st.set_trial_user_attr(trial_id, "promoted_to", k)
        with torch_threads(train_threads()):
            # One thread unless SHUFFLESEARCH_TRAIN_THREADS says otherwise (common.threads).
            # fault point `rung`: a kill -9 right after a rung's checkpoint is on disk, before
            # the trial's storage says so (the retry must find it and train nothing again)
            r = train_to_rung(arch, data, fs, k, ckpt, seed=space.seed, on_rung=lambda _h: fault_point("rung"))
        rungs[str(k)] = {**rung_attr(r), "latency": lat, "latency_ms": float(rec.latency_ms),
                         "trained_seconds": float(r["trained_seconds"]),
                         "resumed_from": int(r["resumed_from"])}
        rec.rung = k
        st.set_trial_user_attr(trial_id, "rungs", rungs)
        st.set_trial_user_attr(trial_id, "rung", k)
        log.info("trial %d: rung %d (%d steps) sotl/step %.4f%s, %.1f s", number, k, r["steps"],
                 r["sotl"] / max(1, r["steps"]),
                 f" val_acc {r['val_acc']:.4f}" if "val_acc" in r else "", r["trained_seconds"])
    rec.rungs = rungs
    if rec.rung == top:
        rec.proxy = estimate_value(rungs[str(top)], est)
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
    with ``check.top: 0``; a report with ``skipped`` when fewer than 3 architectures qualify;
    with 3 to MIN_CHECK - 1 the report's ``too_few`` says there are too few to tell)."""
    fs = run.space.fidelity
    if fs is None or fs.check.top <= 0:
        return None
    study = run.load_study()
    picks = check_picks(trial_records(study.get_trials(deepcopy=False)), fs.check.top)
    if len(picks) < 3:
        rep: dict[str, Any] = {"skipped": f"too few to tell: only {len(picks)} architecture(s) "
                               f"reached the top rung feasibly; a ranking needs 3 (a verdict {MIN_CHECK})"}
        study.set_user_attr("check", rep)
        return rep
    data = data or load_data(run.space.data)
    runs = dict(study.user_attrs.get("check_runs") or {})
    top = str(len(fs.rungs))

    def store(archid: str, res: dict[str, Any]) -> None:
        runs[archid] = res
        study.set_user_attr("check_runs", runs)
        if not quiet:
            print(f"checked {archid}: accuracy {res['val_acc']}", file=sys.stderr, flush=True)

    estimates = {e: [estimate_value(r.rungs[top], e) for r in picks] for e in ESTIMATORS}
    with torch_threads(train_threads()):
        rep = check_estimator([Arch.from_dict(r.arch) for r in picks], estimates, data,
                              fs.check.steps, fs.check.seeds, estimator=fs.estimator,
                              device=fs.device, done=runs, on_trained=store)
    rep["trials"] = [r.trial for r in picks]
    rep["baselines"] = [r.baseline for r in picks if r.baseline]
    study.set_user_attr("check", rep)
    log.info("%s", format_check(rep))
    return rep


def chosen_estimator(study: optuna.Study, space: SearchSpace) -> str | None:
    """The estimator a ladder run's front is drawn with: the check's choice once it has made
    one, else the one promotions ranked by (None in a zero-cost run)."""
    if space.fidelity is None:
        return None
    return (study.user_attrs.get("check") or {}).get("chosen") or search_estimator(space.fidelity)


def apply_estimator(records: list[TrialRecord], estimator: str) -> None:
    """Redraw the ladder trials' ``proxy`` with ``estimator`` (the one the check chose under
    ``estimator: auto``): the top-rung figure of the trials that reached the top, None for the
    others (one scale: module docstring)."""
    for r in records:
        if r.top_rung is None:
            continue
        res = (r.rungs or {}).get(str(r.top_rung))
        r.estimator = estimator
        r.proxy = estimate_value(res, estimator) if r.rung == r.top_rung and res and estimator in res else None


def rung_estimate(r: TrialRecord) -> tuple[int, str, float] | None:
    """(rung, estimator, figure) of a ladder trial below the top: its highest rung's figure,
    for display where it is labelled as that rung's (never in the accuracy column)."""
    if r.top_rung is None or r.rung is None or r.rung < 1 or r.rung == r.top_rung or not r.rungs:
        return None
    res = r.rungs.get(str(r.rung)) or {}
    est = r.estimator if (r.estimator or "") in res else "sotl"
    return (r.rung, est, estimate_value(res, est)) if est in res else None


def describe_check(rep: dict[str, Any] | None) -> str:
    """The stored check in a few lines (``format_check``), or why there is none."""
    if not rep:
        return "self-check: not run yet"
    if rep.get("top") == 0:  # switched off in the space: stored so, not "not run yet"
        return "self-check: off (check.top: 0 in the space; nothing was retrained)"
    if rep.get("skipped"):
        return f"self-check: skipped ({rep['skipped']})"
    return format_check(rep)
