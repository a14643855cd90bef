"""The worker loop: ask, evaluate, tell, until the study holds the budget; heartbeats, an exact
budget across workers, duplicates, stale and orphaned trials."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import UserError, first_line
from ..model.arch import ArchError
from .evaluator import Evaluator
from .faults import fault_point, with_ask_faults
from .ladder import climb, drop_checkpoints
from .objective import (
    constraint_items,
    latency_limit,
    make_sampler,
    objective_values,
    optuna_constraints,
)
from .records import TrialRecord
from .runfolder import Run
from .space import SearchSpace
from .storage import (
    GRACE_S,
    PER_TRIAL_CONSTRAINTS,
    archid_of,
    claim,
    claims,
    end_trial,
    heartbeat,
    is_baseline,
    mark_started,
    read_record,
    search_trials,
    started_by_worker,
    store_constraints,
    stored_trial,
    trial_id,
    trial_state,
    write_fields,
)

log = logging.getLogger("shufflesearch.search")

MAX_CONSECUTIVE_FAILURES = 50
ORPHAN_S = 60.0  # a RUNNING trial no worker has marked for this long was orphaned in ask()


# --- the worker loop ---------------------------------------------------------------------------
#
# Two kinds of claims keep the run exact whatever the interleaving of workers, machines, retries
# and kills (see runfolder.claim): ``slot:BUDGET:K`` - a search trial evaluates only while it
# holds one of the budget's slots, so no more trials can complete than the budget holds - and
# ``arch:ARCHID`` - only the trial holding it measures that architecture; every other trial of it
# waits for the holder and copies its record. A claim whose owner ended FAIL/PRUNED (its worker
# died and it went stale, or it raised) is taken over, so a kill -9 never blocks a slot or an
# architecture for longer than the heartbeat grace period.

_DEAD = (TrialState.FAIL, TrialState.PRUNED)


class TakenOver(optuna.exceptions.UpdateFinishedTrialError):
    """This worker's trial was finished by someone else: a peer failed it as stale."""


def _dead(study: optuna.Study, tid: int) -> bool:
    """Trial ``tid`` ended FAIL or PRUNED (or is gone): the claims it held pass on."""
    return trial_state(study, tid) in (*_DEAD, None)


class Sweeper:
    """Fails the trials of dead workers: those whose heartbeat went stale (Optuna's sweep, which
    queues a retry), and those orphaned inside ``study.ask()`` - RUNNING, but never marked by a
    worker (no heartbeat either, so Optuna never sees them) for ORPHAN_S."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.seen: dict[int, float] = {}

    def __call__(self, budget_met: bool = False) -> None:
        """``budget_met``: the study holds its budget, so no trial can take a slot any more; an
        unmarked RUNNING trial is then a dead worker's or a peer's about to step back, and is
        failed at once (the peer logs that its trial was taken over) rather than after ORPHAN_S."""
        optuna.storages.fail_stale_trials(self.study)
        now = time.monotonic()
        running = set()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if started_by_worker(t):
                continue
            tid = trial_id(t)
            running.add(tid)
            seen = now - self.seen.setdefault(tid, now)
            # Its start time (the popping worker's clock) spares a fresh worker the full wait on
            # one machine; its own observation keeps it right when clocks disagree.
            age = time.time() - t.datetime_start.timestamp() if t.datetime_start else 0.0
            # (A baseline is created outside ask() and marked right after: only the age rule.)
            if (budget_met and not is_baseline(t)) or max(seen, age) >= ORPHAN_S:
                with contextlib.suppress(Exception):  # another worker may be failing it too
                    end_trial(self.study, tid, TrialState.FAIL,
                              reason="worker died while the trial was being created")
                    log.warning("trial %d: orphaned inside ask() (no worker after %.0f s); failed",
                                t.number, ORPHAN_S)
        self.seen = {k: v for k, v in self.seen.items() if k in running}


def _slots(study: optuna.Study, budget: int) -> tuple[int, list[str]]:
    """(completed search trials, keys of the budget's slots that are free or whose owner died).

    The slots of budget B are ``slot:B:0`` .. ``slot:B:(B - legacy - 1)``, where legacy counts
    the completed search trials that own none of them (completed under another budget, or before
    claims existed); with every worker given the same budget that count cannot change while they
    run, so the set of slots is fixed and no interleaving can complete more trials than it holds."""
    trials = search_trials(study)  # read before the claims: see the docstring above
    owned = claims(study, f"slot:{budget}:")
    owners = set(owned.values())
    state = {trial_id(t): t.state for t in trials}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    legacy = sum(1 for t in done if trial_id(t) not in owners)
    free = []
    for k in range(budget - legacy):
        key = f"slot:{budget}:{k}"
        owner = owned.get(key)
        # An owner missing from the snapshot was created after it: alive.
        if owner is None or state.get(owner, TrialState.RUNNING) in _DEAD:
            free.append(key)
    return len(done), free


def _in_flight(study: optuna.Study) -> bool:
    """Whether a search trial that a worker took out of ask() is still RUNNING (orphans of
    ask() are left to the sweep: they hold nothing and are failed after ORPHAN_S)."""
    return any(started_by_worker(t) for t in search_trials(study, (TrialState.RUNNING,)))


def _take_slot(study: optuna.Study, tid: int, budget: int) -> bool:
    _, free = _slots(study, budget)
    return any(claim(study, key, tid, lambda o: _dead(study, o)) == tid for key in free)


def _copy_record(src: optuna.trial.FrozenTrial) -> TrialRecord:
    rec = read_record(src)
    # A copy points at the trial that measured the architecture, never at another copy.
    return rec.copy_for_duplicate(src.number if rec.duplicate_of is None else rec.duplicate_of)


def evaluate_once(study: optuna.Study, tid: int, arch: Any, evaluate: Evaluator,
                  timings: dict[str, float], sweep: Sweeper) -> TrialRecord:
    """The record of ``arch`` for trial ``tid`` (storage id): evaluated here when this trial
    wins the architecture's claim, otherwise copied from the trial that holds it (waited for
    while it runs; taken over if it dies). One archid, one measurement."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if archid_of(t) == arch.archid and trial_id(t) != tid:
            return _copy_record(t)  # also covers trials measured before claims existed
    key = f"arch:{arch.archid}"
    waiting = False
    while True:
        owner = claim(study, key, tid, lambda o: _dead(study, o))
        if owner == tid:
            rec = evaluate(arch, timings)
            space = getattr(evaluate, "space", None)  # (tests pass a bare function)
            if space is not None and space.fidelity is not None:  # train as far as promotion allows
                if evaluate.run_root is None:
                    raise ValueError("a fidelity ladder needs the run folder: Evaluator(space, run.root)")
                t0 = time.perf_counter()
                me = stored_trial(study, tid)
                climb(study, tid, rec, space, evaluate.data, evaluate.run_root,
                      baseline=me is not None and is_baseline(me))
                timings["ladder"] = time.perf_counter() - t0
            return rec
        src = stored_trial(study, owner)
        if src is None:
            continue  # gone: the claim is dead, taken over on the next try
        if src.state == TrialState.COMPLETE:
            return _copy_record(src)
        if not waiting:
            log.info("trial id %d: %s is being measured by trial %d; waiting for it",
                     tid, arch.archid, src.number)
            waiting = True
        time.sleep(0.5)
        sweep()
        if trial_state(study, tid) != TrialState.RUNNING:
            raise TakenOver(f"trial id {tid} was finished by another worker")


def run_trial(study: optuna.Study, space: SearchSpace, evaluate: Evaluator,
              budget: int | None = None, sweep: Sweeper | None = None) -> optuna.trial.FrozenTrial | None:
    """Ask one trial, evaluate it, tell the result. Exceptions become FAIL with a reason; a trial
    that a peer failed as stale (this worker was suspended past the grace period) is logged and
    left to its retry."""
    sweep = sweep or Sweeper(study)
    t_ask = time.perf_counter()
    trial = study.ask()
    try:
        with heartbeat(study, trial_id(trial)):
            mark_started(study, trial_id(trial))
            return _run_trial(study, trial, space, evaluate, budget, sweep, t_ask)
    except optuna.exceptions.UpdateFinishedTrialError:
        log.warning("trial %d was taken over: another worker failed it as stale (this worker sent "
                    "no heartbeat for over %d s: a suspended process or a paused machine?); its "
                    "retry carries on, and so does this worker", trial.number, int(GRACE_S))
        return None


def _tell_failed(study: optuna.Study, trial: optuna.Trial, state: TrialState, reason: str) -> None:
    write_fields(study, trial_id(trial), fail_reason=reason)
    study.tell(trial, state=state)


def _run_trial(study: optuna.Study, trial: optuna.Trial, space: SearchSpace, evaluate: Evaluator,
               budget: int | None, sweep: Sweeper, t_ask: float) -> optuna.trial.FrozenTrial | None:
    timings: dict[str, float] = {}
    tid = trial_id(trial)
    try:
        arch = space.sample(trial)
    except ArchError as e:
        _tell_failed(study, trial, TrialState.PRUNED, f"rejected: {e}")
        return None
    timings["sample"] = time.perf_counter() - t_ask
    write_fields(study, tid, archid=arch.archid)
    fault_point("sample")
    if budget is not None and not _take_slot(study, tid, budget):
        _tell_failed(study, trial, TrialState.FAIL, "over budget: another worker took the last slot")
        return None
    try:
        rec = evaluate_once(study, tid, arch, evaluate, timings, sweep)
    except optuna.exceptions.UpdateFinishedTrialError:
        raise
    except optuna.TrialPruned as e:
        _tell_failed(study, trial, TrialState.PRUNED, f"pruned: {e}")
        return None
    except KeyboardInterrupt:
        _tell_failed(study, trial, TrialState.FAIL, "interrupted by the user")
        raise
    except MemoryError:
        _tell_failed(study, trial, TrialState.FAIL, "out of memory")
        return None
    except Exception as e:
        reason = first_line(e)
        if "out of memory" in str(e).lower() or "can't allocate" in str(e).lower():
            reason = f"out of memory: {reason}"
        log.warning("trial %d failed: %s", trial.number, reason)
        _tell_failed(study, trial, TrialState.FAIL, reason)
        return None
    t_store = time.perf_counter()
    rec.constraints = constraint_items(space, rec)
    if PER_TRIAL_CONSTRAINTS:  # (Optuna 4: the sampler's constraints_func stores them)
        store_constraints(study, tid, optuna_constraints(rec))
    write_fields(study, tid, rec)  # fault point `storage` half-way
    values = objective_values(space, rec)
    timings["storage"] = time.perf_counter() - t_store
    write_fields(study, tid, timings=timings, worker_pid=os.getpid())
    done = study.tell(trial, values)
    run_root = getattr(evaluate, "run_root", None)
    if run_root is not None and rec.duplicate_of is None and rec.stopped and rec.rung:
        # Stopped below the top: decided once, so its checkpoints can never be used again. Only
        # after the tell: a kill -9 before it retries the trial, which finds them on disk.
        drop_checkpoints(run_root, rec.archid, space.seed)
    return done


def work(run: Run, budget: int, stop_event: Any = None, worker: int = 0) -> int:
    """One worker: run trials until the study holds ``budget`` completed search trials."""
    study = optuna.load_study(study_name=run.name, storage=run.storage(),
                              sampler=with_ask_faults(make_sampler(run.space, worker)))
    evaluate = Evaluator(run.space, run.root, limit=latency_limit(run))
    sweep = Sweeper(study)
    failures = 0
    while stop_event is None or not stop_event.is_set():
        sweep()
        done, free = _slots(study, budget)
        if done >= budget:
            if _in_flight(study):
                # A trial still RUNNING holds no slot here: a peer's, about to step back, or a
                # dead worker's, failed (and queued for retry) once its heartbeat is stale.
                # Waiting for it means a finished run leaves no RUNNING trial behind.
                time.sleep(0.5)
                continue
            sweep(budget_met=True)  # orphans of ask() left by killed workers
            return 0
        if not free:
            time.sleep(0.5)  # every slot is held: wait for them to finish or go stale
            continue
        t = run_trial(study, run.space, evaluate, budget=budget, sweep=sweep)
        if t is None:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise UserError(
                    f"{failures} trials in a row failed or were rejected; see `shufflesearch pareto "
                    f"{run.root} --failed` and the log {run.root / 'run.log'}"
                )
        else:
            failures = 0
    return 0

