"""The worker loop: ask, evaluate, tell, until the study holds the budget; heartbeats, an exact
budget across workers, duplicates, stale and orphaned trials."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import UserError
from ..model.arch import ArchError
from .evaluator import Evaluator
from .faults import fault_point
from .objective import _PER_TRIAL_CONSTRAINTS, constraint_items, make_sampler, objective_values
from .records import TrialRecord
from .runfolder import HEARTBEAT_S, Run, _setup_log, open_run
from .space import SearchSpace, load_space

log = logging.getLogger("shufflesearch.search")

MAX_CONSECUTIVE_FAILURES = 50
ORPHAN_S = 60.0  # a RUNNING trial this old that never got a heartbeat was orphaned in ask()


# --- the worker loop ---------------------------------------------------------------------------


def _search_state(study: optuna.Study) -> tuple[int, list[int]]:
    """(completed search trials, numbers of running search trials) — baselines excluded."""
    done, running = 0, []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if t.user_attrs.get("baseline"):
            continue
        if t.state == TrialState.COMPLETE:
            done += 1
        else:
            running.append(t.number)
    return done, sorted(running)


def _over_budget(study: optuna.Study, number: int, budget: int) -> bool:
    """Exact budget with concurrent workers: when more search trials run than the budget
    leaves room for, the highest-numbered ones step back."""
    done, running = _search_state(study)
    return number in running[max(budget - done, 0):]


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


def _find_duplicate(study: optuna.Study, archid: str, number: int) -> optuna.trial.FrozenTrial | None:
    """A completed trial of the same architecture; if an earlier trial of it is still running
    (another worker), wait for it rather than measure the same network twice."""
    while True:
        running = False
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.user_attrs.get("archid") != archid or t.number == number:
                continue
            if t.state == TrialState.COMPLETE:
                return t
            running = running or t.number < number
        if not running:
            return None
        time.sleep(0.5)
        optuna.storages.fail_stale_trials(study)


def run_trial(study: optuna.Study, space: SearchSpace, evaluate: Evaluator,
              budget: int | None = None) -> optuna.trial.FrozenTrial | None:
    """Ask one trial, evaluate it, tell the result. Exceptions become FAIL with a reason."""
    t_ask = time.perf_counter()
    trial = study.ask()
    timings: dict[str, float] = {}
    with _heartbeat(study._storage, trial._trial_id):
        try:
            arch = space.sample(trial)
        except ArchError as e:
            trial.set_user_attr("fail_reason", f"rejected: {e}")
            study.tell(trial, state=TrialState.PRUNED)
            return None
        timings["sample"] = time.perf_counter() - t_ask
        trial.set_user_attr("archid", arch.archid)
        fault_point("sample")
        if budget is not None and _over_budget(study, trial.number, budget):
            trial.set_user_attr("fail_reason", "over budget: another worker took the last slot")
            study.tell(trial, state=TrialState.FAIL)
            return None
        dup = _find_duplicate(study, arch.archid, trial.number)
        try:
            if dup is not None:
                rec = TrialRecord.from_trial(dup).copy_for_duplicate(dup.number)
            else:
                rec = evaluate(arch, timings)
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
            for k, v in rec.constraints.items():
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
        frozen = study.tell(trial, values)
        timings["storage"] = time.perf_counter() - t_store
    return frozen


def fail_orphans(study: optuna.Study) -> None:
    """A worker killed inside ``study.ask()`` (the sampler runs there) leaves a RUNNING trial
    with no heartbeat, which Optuna never sees as stale; it would hold a budget slot forever.
    Every live trial gets its heartbeat and archid seconds after ask, so an old one without an
    archid is dead."""
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "archid" in t.user_attrs or t.datetime_start is None:
            continue
        if now - t.datetime_start.timestamp() > ORPHAN_S:
            with contextlib.suppress(Exception):  # another worker may be failing it too
                study._storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                                   "worker died while the trial was being created")
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)


def work(run: Run, budget: int, stop_event: Any = None, worker: int = 0) -> int:
    """One worker: run trials until the study holds ``budget`` completed search trials."""
    study = optuna.load_study(study_name=run.name, storage=run.storage(),
                              sampler=make_sampler(run.space, worker))
    evaluate = Evaluator(run.space)
    failures = 0
    while stop_event is None or not stop_event.is_set():
        optuna.storages.fail_stale_trials(study)
        fail_orphans(study)
        done, running = _search_state(study)
        if done >= budget:
            return 0
        if done + len(running) >= budget:
            time.sleep(0.5)  # the last slots are taken: wait for them to finish or go stale
            continue
        t = run_trial(study, run.space, evaluate, budget=budget)
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


def _worker_main(space_path: str, name: str, runs_root: str, storage: str | None, budget: int,
                 worker: int) -> int:
    space = load_space(space_path)
    run = open_run(space, name, runs_root, storage)
    _setup_log(run)
    return work(run, budget, worker=worker)
