"""The worker loop: ask, evaluate, tell, until the study holds the budget; heartbeats, an exact
budget across workers, duplicates, stale and orphaned trials."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import UserError
from ..model.arch import ArchError
from .evaluator import Evaluator
from .faults import fault_point, with_ask_faults
from .ladder import climb, drop_checkpoints
from .objective import (
    _PER_TRIAL_CONSTRAINTS,
    constraint_items,
    latency_limit,
    make_sampler,
    objective_values,
    optuna_constraints,
)
from .records import TrialRecord
from .runfolder import GRACE_S, HEARTBEAT_S, Run, claim, claims, trial_state
from .space import SearchSpace

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
_WORKER_ATTR = "shufflesearch:worker"  # system attr: who runs this trial (never copied by retries)


class TakenOver(optuna.exceptions.UpdateFinishedTrialError):
    """This worker's trial was finished by someone else: a peer failed it as stale."""


def _dead(storage: Any, trial_id: int) -> bool:
    return trial_state(storage, trial_id) in (*_DEAD, None)


def _mark_started(study: optuna.Study, trial_id: int) -> None:
    """Says that a live worker got this trial out of ask(); see Sweeper. Keyed by the trial's
    own id, because a retry copies system attributes from the trial it replaces."""
    study._storage.set_trial_system_attr(
        trial_id, _WORKER_ATTR, {"trial_id": trial_id, "pid": os.getpid(), "host": socket.gethostname()})


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
            if (t.system_attrs.get(_WORKER_ATTR) or {}).get("trial_id") == t._trial_id:
                continue
            running.add(t._trial_id)
            seen = now - self.seen.setdefault(t._trial_id, now)
            # Its start time (the popping worker's clock) spares a fresh worker the full wait on
            # one machine; its own observation keeps it right when clocks disagree.
            age = time.time() - t.datetime_start.timestamp() if t.datetime_start else 0.0
            # (A baseline is created outside ask() and marked right after: only the age rule.)
            if (budget_met and not t.user_attrs.get("baseline")) or max(seen, age) >= ORPHAN_S:
                with contextlib.suppress(Exception):  # another worker may be failing it too
                    self.study._storage.set_trial_user_attr(
                        t._trial_id, "fail_reason", "worker died while the trial was being created")
                    self.study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                    log.warning("trial %d: orphaned inside ask() (no worker after %.0f s); failed",
                                t.number, ORPHAN_S)
        self.seen = {k: v for k, v in self.seen.items() if k in running}


def _slots(study: optuna.Study, budget: int) -> tuple[int, list[str]]:
    """(completed search trials, keys of the budget's slots that are free or whose owner died).

    The slots of budget B are ``slot:B:0`` .. ``slot:B:(B - legacy - 1)``, where legacy counts
    the completed search trials that own none of them (completed under another budget, or before
    claims existed); with every worker given the same budget that count cannot change while they
    run, so the set of slots is fixed and no interleaving can complete more trials than it holds."""
    trials = study.get_trials(deepcopy=False)  # read before the claims: see the docstring above
    owned = claims(study._storage, study._study_id, f"slot:{budget}:")
    owners = set(owned.values())
    state = {t._trial_id: t.state for t in trials}
    done = [t for t in trials if t.state == TrialState.COMPLETE and not t.user_attrs.get("baseline")]
    legacy = sum(1 for t in done if t._trial_id not in owners)
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
    return any((t.system_attrs.get(_WORKER_ATTR) or {}).get("trial_id") == t._trial_id
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if not t.user_attrs.get("baseline"))


def _take_slot(study: optuna.Study, trial_id: int, budget: int) -> bool:
    _, free = _slots(study, budget)
    st = study._storage
    for key in free:
        if claim(st, study._study_id, key, trial_id, lambda o: _dead(st, o)) == trial_id:
            return True
    return False


@contextlib.contextmanager
def _heartbeat(storage: optuna.storages.BaseStorage, trial_id: int):
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)

    with contextlib.suppress(Exception):
        storage.record_heartbeat(trial_id)
    th = threading.Thread(target=beat, daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()


def _copy_record(src: optuna.trial.FrozenTrial) -> TrialRecord:
    rec = TrialRecord.from_trial(src)
    # A copy points at the trial that measured the architecture, never at another copy.
    return rec.copy_for_duplicate(src.number if rec.duplicate_of is None else rec.duplicate_of)


def evaluate_once(study: optuna.Study, trial_id: int, arch: Any, evaluate: Evaluator,
                  timings: dict[str, float], sweep: Sweeper) -> TrialRecord:
    """The record of ``arch`` for trial ``trial_id``: evaluated here when this trial wins the
    architecture's claim, otherwise copied from the trial that holds it (waited for while it
    runs; taken over if it dies). One archid, one measurement."""
    st = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("archid") == arch.archid and t._trial_id != trial_id:
            return _copy_record(t)  # also covers trials measured before claims existed
    key = f"arch:{arch.archid}"
    waiting = False
    while True:
        owner = claim(st, study._study_id, key, trial_id, lambda o: _dead(st, o))
        if owner == trial_id:
            rec = evaluate(arch, timings)
            space = getattr(evaluate, "space", None)  # (tests pass a bare function)
            if space is not None and space.fidelity is not None:  # train as far as promotion allows
                if evaluate.run_root is None:
                    raise ValueError("a fidelity ladder needs the run folder: Evaluator(space, run.root)")
                t0 = time.perf_counter()
                baseline = bool(getattr(st, "_backend", st).get_trial(trial_id).user_attrs.get("baseline"))
                climb(study, trial_id, rec, space, evaluate.data,
                      evaluate.run_root, baseline=baseline)
                timings["ladder"] = time.perf_counter() - t0
            return rec
        src = getattr(st, "_backend", st).get_trial(owner)
        if src.state == TrialState.COMPLETE:
            return _copy_record(src)
        if not waiting:
            log.info("trial id %d: %s is being measured by trial %d; waiting for it",
                     trial_id, arch.archid, src.number)
            waiting = True
        time.sleep(0.5)
        sweep()
        if trial_state(st, trial_id) != TrialState.RUNNING:
            raise TakenOver(f"trial id {trial_id} was finished by another worker")


def run_trial(study: optuna.Study, space: SearchSpace, evaluate: Evaluator,
              budget: int | None = None, sweep: Sweeper | None = None) -> optuna.trial.FrozenTrial | None:
    """Ask one trial, evaluate it, tell the result. Exceptions become FAIL with a reason; a trial
    that a peer failed as stale (this worker was suspended past the grace period) is logged and
    left to its retry."""
    sweep = sweep or Sweeper(study)
    t_ask = time.perf_counter()
    trial = study.ask()
    try:
        with _heartbeat(study._storage, trial._trial_id):
            _mark_started(study, trial._trial_id)
            return _run_trial(study, trial, space, evaluate, budget, sweep, t_ask)
    except optuna.exceptions.UpdateFinishedTrialError:
        log.warning("trial %d was taken over: another worker failed it as stale (this worker sent "
                    "no heartbeat for over %d s: a suspended process or a paused machine?); its "
                    "retry carries on, and so does this worker", trial.number, int(GRACE_S))
        return None


def _run_trial(study: optuna.Study, trial: optuna.Trial, space: SearchSpace, evaluate: Evaluator,
               budget: int | None, sweep: Sweeper, t_ask: float) -> optuna.trial.FrozenTrial | None:
    timings: dict[str, float] = {}
    try:
        arch = space.sample(trial)
    except ArchError as e:
        trial.set_user_attr("fail_reason", f"rejected: {e}")
        study.tell(trial, state=TrialState.PRUNED)
        return None
    timings["sample"] = time.perf_counter() - t_ask
    trial.set_user_attr("archid", arch.archid)
    fault_point("sample")
    if budget is not None and not _take_slot(study, trial._trial_id, budget):
        trial.set_user_attr("fail_reason", "over budget: another worker took the last slot")
        study.tell(trial, state=TrialState.FAIL)
        return None
    try:
        rec = evaluate_once(study, trial._trial_id, arch, evaluate, timings, sweep)
    except optuna.exceptions.UpdateFinishedTrialError:
        raise
    except optuna.TrialPruned as e:
        trial.set_user_attr("fail_reason", f"pruned: {e}")
        study.tell(trial, state=TrialState.PRUNED)
        return None
    except KeyboardInterrupt:
        trial.set_user_attr("fail_reason", "interrupted by the user")
        study.tell(trial, state=TrialState.FAIL)
        raise
    except MemoryError:
        trial.set_user_attr("fail_reason", "out of memory")
        study.tell(trial, state=TrialState.FAIL)
        return None
    except Exception as e:
        reason = f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if "out of memory" in str(e).lower() or "can't allocate" in str(e).lower():
            reason = f"out of memory: {reason}"
        log.warning("trial %d failed: %s", trial.number, reason)
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        return None
    t_store = time.perf_counter()
    rec.constraints = constraint_items(space, rec)
    if _PER_TRIAL_CONSTRAINTS:
        for k, v in optuna_constraints(rec).items():
            trial.set_constraint(k, v)
    attrs = rec.to_user_attrs()
    for i, (k, v) in enumerate(attrs.items()):
        if i == len(attrs) // 2:
            fault_point("storage")
        trial.set_user_attr(k, v)
    values = objective_values(space, rec)
    timings["storage"] = time.perf_counter() - t_store
    trial.set_user_attr("timings", timings)
    trial.set_user_attr("worker_pid", os.getpid())
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

