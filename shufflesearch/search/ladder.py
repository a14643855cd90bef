"""The fidelity ladder inside a search: which trial trains how far, and the run's self-check.

Per trial (``climb``, called by the trial that holds the architecture's claim, so one
architecture is trained once however many trials sample it):

1. latency, costs and constraints come first (the evaluator); an infeasible architecture
   stops there and never trains (rung 0: not trained);
2. every feasible trial trains rung 1, the first ``fidelity.rungs`` steps. There is no
   zero-cost rung: on held-back data the zero-cost scores ranked architectures below chance,
   while a few training steps' SoTL ranked them well (docs/accuracy.md, "The fidelity ladder");
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
(``RungResult.estimate``: SoTL per step, the mean negated training loss, or val_acc), in one unit
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
    rung_attr,
    rung_dir,
    search_estimator,
    train_to_rung,
)
from ..common.threads import torch_threads, train_threads
from .faults import fault_point
from .front import pareto_front, spread_indices
from .objective import constraint_items
from .promotion import should_promote
from .records import RungResult, TrialRecord, completed
from .runfolder import Run
from .space import SearchSpace
from .storage import (
    read_record,
    search_trials,
    set_study_attr,
    stored_trial,
    study_attr,
    study_records,
    write_fields,
)

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


def latency_key(rec: TrialRecord) -> float:
    """What promotion ranks latency by: the ratio to the reference network (one yardstick for
    every window), or the stored ms for a figure without a ratio."""
    return float(rec.ratio) if rec.ratio is not None else float(rec.latency_ms)


def _live_records(study: optuna.Study) -> list[TrialRecord]:
    """The records of the RUNNING and COMPLETE search trials (a FAIL'd one's worker died)."""
    return [read_record(t) for t in search_trials(study, _LIVE)]


def finished_at(study: optuna.Study, k: int, estimator: str, me: int) -> list[tuple[int, float, float]]:
    """(trial number, estimate, latency) of the live search trials that finished rung ``k``,
    one per architecture (trial ``me``'s own entry wins for its architecture). Baselines are
    left out: they climb anyway."""
    by_arch: dict[str, tuple[int, float, float]] = {}
    for t in _live_records(study):
        r = t.rung_result(k)
        if r is None or r.sotl is None:
            continue
        p = (t.trial, r.estimate(estimator), r.rank_latency)
        a = t.archid or str(t.trial)
        if a not in by_arch or t.trial == me:
            by_arch[a] = p
    return list(by_arch.values())


def started_at(study: optuna.Study, k: int, me_archid: str) -> int:
    """How many architectures other than ``me_archid`` live search trials have started rung
    ``k`` with (``promoted_to`` >= k)."""
    return len({t.archid or str(t.trial) for t in _live_records(study)
                if (t.promoted_to or 0) >= k} - {me_archid})


def climb(study: optuna.Study, tid: int, rec: TrialRecord, space: SearchSpace,
          data: ProxyData, run_root: Any, baseline: bool = False) -> TrialRecord:
    """Take trial ``tid`` (storage id) as far up the ladder as promotion allows; fills the
    record's ladder fields (rung, top_rung, rungs, estimator, stopped, proxy). See the module
    docstring."""
    fs: FidelitySettings = space.fidelity  # type: ignore[assignment]
    me = stored_trial(study, tid)
    assert me is not None, f"trial id {tid} is not in the study"
    number = me.number
    est = search_estimator(fs)
    top = len(fs.rungs)
    rec.top_rung, rec.estimator, rec.rung, rec.proxy = top, est, 0, None
    rec.constraints = constraint_items(space, rec)
    if not rec.feasible:
        rec.stopped = "infeasible: never trained"
        return rec
    rungs: dict[int, RungResult] = {}
    arch = rec.arch
    assert arch is not None, "the evaluator's record holds its Arch"
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
            rec.promoted_to = k
            write_fields(study, tid, promoted_to=k)
        with torch_threads(train_threads()):
            # One thread unless SHUFFLESEARCH_TRAIN_THREADS says otherwise (common.threads).
            # fault point `rung`: a kill -9 right after a rung's checkpoint is on disk, before
            # the trial's storage says so (the retry must find it and train nothing again)
            r = train_to_rung(arch, data, fs, k, ckpt, seed=space.seed, on_rung=lambda _h: fault_point("rung"))
        rungs[k] = RungResult.from_dict({
            **rung_attr(r), "latency": lat, "latency_ms": float(rec.latency_ms),
            "trained_seconds": float(r["trained_seconds"]), "resumed_from": int(r["resumed_from"])})
        rec.rung = k
        write_fields(study, tid, rungs=rungs, rung=k)
        log.info("trial %d: rung %d (%d steps) sotl/step %.4f%s, %.1f s", number, k, r["steps"],
                 r["sotl"] / max(1, r["steps"]),
                 f" val_acc {r['val_acc']:.4f}" if "val_acc" in r else "", r["trained_seconds"])
    rec.rungs = rungs
    if rec.rung == top:
        rec.proxy = rungs[top].estimate(est)
    return rec


# --- the run's self-check ----------------------------------------------------------------------


def check_picks(records: list[TrialRecord], top: int) -> list[TrialRecord]:
    """What the check retrains: ``top`` points spread over the top-rung front (filled up with
    the best other top-rung trials when the front is shorter), plus the feasible baselines."""
    done = [r for r in completed(records) if r.feasible and r.at_top and r.rungs and r.arch]
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


def run_check(run: Run, data: ProxyData | None = None, quiet: bool = True,
              workers: int = 1) -> dict[str, Any] | None:
    """The self-check at the end of a ladder run (accuracy.check.check_estimator, its
    retrainings spread over ``workers`` processes, as many as the search ran): each
    retraining is stored in the study's ``check_runs`` as it finishes, so an interrupted check
    resumes; the report goes to the study's ``check`` and is returned (None without a ladder or
    with ``check.top: 0``; a report with ``skipped`` when fewer than 3 architectures qualify;
    with 3 to MIN_CHECK - 1 the report's ``too_few`` says there are too few to tell)."""
    fs = run.space.fidelity
    if fs is None or fs.check.top <= 0:
        return None
    study = run.load_study()
    picks = check_picks(study_records(study), fs.check.top)
    if len(picks) < 3:
        rep: dict[str, Any] = {"skipped": f"too few to tell: only {len(picks)} architecture(s) "
                               f"reached the top rung feasibly; a ranking needs 3 (a verdict {MIN_CHECK})"}
        set_study_attr(study, "check", rep)
        return rep
    data = data or load_data(run.space.data)
    runs = dict(study_attr(study, "check_runs", {}))
    top = len(fs.rungs)

    def store(archid: str, res: dict[str, Any]) -> None:
        runs[archid] = res
        set_study_attr(study, "check_runs", runs)
        if not quiet:
            print(f"checked {archid}: accuracy {res['val_acc']}", file=sys.stderr, flush=True)

    estimates = {e: [r.rungs[top].estimate(e) for r in picks] for e in ESTIMATORS}  # type: ignore[index]
    with torch_threads(train_threads()):
        rep = check_estimator([r.arch for r in picks], estimates, data,
                              fs.check.steps, fs.check.seeds, estimator=fs.estimator,
                              device=fs.device, done=runs, on_trained=store, workers=workers)
    rep["trials"] = [r.trial for r in picks]
    rep["baselines"] = [r.baseline for r in picks if r.baseline]
    set_study_attr(study, "check", rep)
    log.info("%s", format_check(rep))
    return rep


def chosen_estimator(study: optuna.Study, space: SearchSpace) -> str | None:
    """The estimator a ladder run's front is drawn with: the check's choice once it has made
    one, else the one promotions ranked by (None in a zero-cost run)."""
    if space.fidelity is None:
        return None
    return study_attr(study, "check", {}).get("chosen") or search_estimator(space.fidelity)


def apply_estimator(records: list[TrialRecord], estimator: str) -> None:
    """Redraw the ladder trials' ``proxy`` with ``estimator`` (the one the check chose under
    ``estimator: auto``): the top-rung figure of the trials that reached the top, None for the
    others (one scale: module docstring)."""
    for r in records:
        if r.top_rung is None:
            continue
        res = r.rung_result(r.top_rung)
        r.estimator = estimator
        r.proxy = res.estimate(estimator) if r.at_top and res is not None and res.has(estimator) else None


def rung_estimate(r: TrialRecord) -> tuple[int, str, float] | None:
    """(rung, estimator, figure) of a ladder trial below the top: its highest rung's figure,
    for display where it is labelled as that rung's (never in the accuracy column)."""
    res = r.rung_result()
    if r.top_rung is None or r.at_top or res is None:
        return None
    est = r.estimator if r.estimator in ESTIMATORS and res.has(r.estimator) else "sotl"
    return (r.rung, est, res.estimate(est)) if res.has(est) else None


def describe_check(rep: dict[str, Any] | None) -> str:
    """The stored check in a few lines (``format_check``), or why there is none."""
    if not rep:
        return "self-check: not run yet"
    if rep.get("top") == 0:  # switched off in the space: stored so, not "not run yet"
        return "self-check: off (check.top: 0 in the space; nothing was retrained)"
    if rep.get("skipped"):
        return f"self-check: skipped ({rep['skipped']})"
    return format_check(rep)
