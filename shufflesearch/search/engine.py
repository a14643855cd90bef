"""The search: an Optuna multi-objective study over a SearchSpace, stored in runs/NAME/.

Every trial samples an Arch (define-by-run), computes its costs and guideline report on the
target, measures its latency (one model at a time across processes), scores it with the
accuracy proxies, and stores all of it on the trial so that pareto/report/export never
recompute. Optuna's storage is the run's database: SQLite in runs/NAME/study.db by default,
any RDB URL (PostgreSQL) for many machines. Resuming is re-running the same command.

Budget semantics: ``budget`` counts COMPLETE search trials; baselines (the presets that fit the
space) are evaluated first, once per study, and do not count. Failed/pruned trials (impossible
architectures, build errors, NaN proxies, out-of-memory, interruptions) never count. A search
trial is evaluated only while it holds one of the budget's slots, claimed in the study's
storage (worker.py), so the count is exact under any interleaving of workers, retries and
kills. Crashed workers' trials go stale through Optuna's heartbeat, are failed and retried,
and their slots pass on.

Workers: ``workers`` processes on this machine (``"auto"``: one per usable core) share the
study; one runs in this process, more are spawned (below). They train side by side, and each
latency is timed alone: the timing lock (measure/env.py) pauses the others' training.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..common.threads import Workers, check_workers, resolve_workers, train_threads, usable_cores
from ..errors import UserError
from ..measure.executorch import require_executorch
from ..model.arch import ArchError
from .baselines import evaluate_baselines, short_train_front
from .evaluator import prefilter_table
from .front import on_one_reference, shown_front
from .ladder import apply_estimator, chosen_estimator, prune_checkpoints, run_check
from .progress import Progress
from .records import completed
from .retime import records_with_retime, retime_run
from .runfolder import Run, open_run, setup_log
from .space import SearchSpace, load_space
from .storage import fail_own_running, run_step, search_trials, set_study_attr, study_attr
from .worker import work

log = logging.getLogger("shufflesearch.search")


def check_buildable(space: SearchSpace, path: str | Path, tries: int = 50) -> None:
    """A space in which nothing can be built (groups that divide no width, an odd width to
    split) is bad input, refused before the run folder exists, not 50 failed trials."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=space.seed))
    first: ArchError | None = None
    for _ in range(tries):
        trial = study.ask()
        try:
            space.sample(trial)
            return
        except ArchError as e:
            first = first or e
            study.tell(trial, state=TrialState.FAIL)
    raise UserError(f"{path}: no architecture of this space can be built ({tries} random tries); {first}")


def search(space_path: str | Path, budget: int, name: str | None = None, runs_root: str | Path = "runs",
           storage: str | None = None, workers: Workers = "auto", quiet: bool = False) -> Run:
    """`shufflesearch run`: resume or start the run, and work until the budget is reached.

    ``workers``: worker processes on this machine, an int >= 1 or ``"auto"`` (one per usable
    core, at most one per trial still to run: common.threads.resolve_workers). One worker runs
    in this process; more are spawned, and this process shows their progress."""
    if budget < 0:
        raise UserError(f"must be >= 0, got {budget}", field="budget")
    asked = check_workers(workers)
    space = load_space(space_path)
    check_buildable(space, space_path)
    prefilter_table(space)  # a missing table is refused before any folder is made
    if space.target.backend == "executorch":  # so is a missing package, once, not per trial
        require_executorch()
    run = open_run(space, name, runs_root, storage)
    setup_log(run)
    if space.fidelity is not None and space.guidelines.mode == "penalize":
        msg = ("guidelines.mode: penalize has no effect with a fidelity ladder (the accuracy figure "
               "is the top rung's estimate, never penalised); use constrain to act on the penalty")
        log.warning("%s", msg)
        if not quiet:
            print(f"warning: {msg}", flush=True)
    n = resolve_workers(asked, todo=_todo(run, budget))
    _record_launch(run, budget, asked, n)
    log.info("run %s: budget %d, workers %d (asked %s, %d usable cores), training threads %d, "
             "storage %s", run.name, budget, n, asked, usable_cores(), train_threads(), run.storage_url)
    with Progress(run, budget, quiet=quiet) as progress:
        try:
            evaluate_baselines(run)  # once, before any worker starts
            if n == 1:
                th = threading.Thread(target=progress.poll_forever, daemon=True)
                th.start()
                work(run, budget)
            else:
                _run_workers(run, n, (str(space_path), run.name, str(runs_root), storage, budget),
                             progress)
        except KeyboardInterrupt:
            _fail_interrupted(run)
            raise
        progress.poll()
    say = None if quiet else (lambda m: print(f"run {run.name}: {m}", flush=True))
    # The self-check first: under `estimator: auto` it picks the estimator the front is drawn
    # with, and the re-timing, the short training and every review then follow that front.
    # Its retrainings take as many processes as asked for, also when a resumed run has no
    # trial left to run and so started one worker.
    end_step(run, budget, "check", lambda: _check(run, quiet, resolve_workers(asked)), say)
    # The front that is shown and exported rests on figures taken side by side (retime.py).
    end_step(run, budget, "retime", lambda: retime_run(run, say=say), say)
    end_step(run, budget, "short_train", lambda: short_train_front(run, quiet=quiet), say)
    if run.space.fidelity is not None:
        end_step(run, budget, "prune", lambda: _prune(run), say)
    log.info("run %s finished", run.name)
    return run


def end_step(run: Run, budget: int, name: str, fn: Callable[[], Any],
             say: Callable[[str], None] | None = None) -> bool:
    """One end-of-run step, done once for this budget by one of the processes that share the
    study (a claim in its storage, storage.run_step): the others wait for it, and a re-run
    after a kill -9 completes it. True when this process did it."""
    study = run.load_study()
    ran, _ = run_step(study, f"end:{name}:{budget}", fn, name=name, say=say)
    if not ran:
        log.info("run %s: %s for budget %d was done by another process", run.name, name, budget)
        if say:
            say(f"{name.replace('_', ' ')}: done by another process")
    return ran


def _prune(run: Run) -> None:
    """Lean run folder: keep the top-rung checkpoints of the shown front and the check's picks."""
    study = run.load_study()
    records = records_with_retime(study)
    apply_estimator(records, chosen_estimator(study, run.space) or "sotl")
    keep = {r.archid for r in shown_front(on_one_reference(completed(records)))}
    keep |= set(study_attr(study, "check", {}).get("archids") or [])
    gone = prune_checkpoints(run, keep)
    log.info("run %s: kept the checkpoints of %d architectures, deleted %d", run.name, len(keep), gone)


def _check(run: Run, quiet: bool, workers: int) -> None:
    """The fidelity ladder's self-check (nothing in a zero-cost run), its retrainings spread
    over ``workers`` processes; with ``check.top: 0`` the study says that
    it was switched off, so no review reads "not run yet" forever."""
    fs = run.space.fidelity
    if fs is not None and fs.check.top <= 0:
        set_study_attr(run.load_study(), "check", {"skipped": "check.top: 0 in the space", "top": 0})
        return
    run_check(run, quiet=quiet, workers=workers)


# --- worker processes ----------------------------------------------------------------------------
#
# K > 1 workers are spawned processes that share the study; this process shows one progress
# display for all of them and waits. Ctrl-C (SIGINT from the terminal to the whole process group,
# or to this process alone) reaches every worker once: each fails its trial as "interrupted by the
# user" and exits, as a single worker would; workers that do not stop within STOP_GRACE_S are
# terminated (their trials go stale and are retried). A worker whose parent is gone (killed)
# interrupts itself the same way, so no worker outlives the command that started it.

STOP_GRACE_S = 20.0  # how long interrupted workers get to store their trials' ends
LAUNCHES_KEPT = 50  # launches of a run remembered in its study (user attr ``launches``)


def _todo(run: Run, budget: int) -> int:
    """Search trials still to complete before the study holds ``budget``."""
    return max(0, budget - len(search_trials(run.load_study(), (TrialState.COMPLETE,))))


def _record_launch(run: Run, budget: int, asked: Workers, n: int) -> None:
    """What this launch ran with, appended to the study's ``launches`` (the latest last): a
    record for the reader, not a claim, so two machines starting in the same instant may keep
    one entry of the two."""
    study = run.load_study()
    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "host": socket.gethostname(), "pid": os.getpid(), "budget": budget, "workers": n,
             "workers_asked": asked, "usable_cores": usable_cores(), "train_threads": train_threads()}
    set_study_attr(study, "launches", [*(study_attr(study, "launches") or []), entry][-LAUNCHES_KEPT:])


def _run_workers(run: Run, n: int, args: tuple[Any, ...], progress: Progress) -> None:
    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch or SQLite state
    procs = [ctx.Process(target=_worker_process, args=(*args, i, os.getpid()), name=f"worker {i}")
             for i in range(n)]
    for p in procs:
        p.start()
    interrupt = _Interrupt()
    main_thread = threading.current_thread() is threading.main_thread()  # (signals need it)
    old = signal.signal(signal.SIGINT, interrupt) if main_thread else None
    try:
        while any(p.is_alive() for p in procs):
            if interrupt.requested:  # a KeyboardInterrupt that Python swallowed
                raise KeyboardInterrupt
            progress.poll()
            mp_connection.wait([p.sentinel for p in procs if p.is_alive()], timeout=1.0)
    except KeyboardInterrupt:
        if main_thread:
            signal.signal(signal.SIGINT, old)  # a second Ctrl-C cuts the wait short
        _stop_workers(procs)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, old)
    bad = [f"worker {i} (exit code {p.exitcode})" for i, p in enumerate(procs) if p.exitcode]
    if bad:
        raise UserError(f"{', '.join(bad)} ended with an error; see {run.root / 'run.log'}")


def _stop_workers(procs: list[Any]) -> None:
    """Interrupt every live worker, give them STOP_GRACE_S to end their trials, then terminate."""
    log.info("interrupted: stopping %d workers", sum(p.is_alive() for p in procs))
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(OSError):  # it ended meanwhile
                os.kill(p.pid, signal.SIGINT)  # a worker takes the first SIGINT only
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
        pass
    for p in procs:
        if p.is_alive():
            log.warning("%s did not stop within %.0f s; terminated", p.name, STOP_GRACE_S)
            p.terminate()
            p.join(5.0)


def _fail_interrupted(run: Run) -> None:
    """Fail the trials this process was running when Ctrl-C came. An interrupt inside a trial's
    evaluation fails it there (worker.py); one that lands around it (sampling, taking a slot,
    storing) would leave the trial RUNNING until its heartbeat went stale."""
    with contextlib.suppress(Exception):  # the storage may be what was interrupted
        fail_own_running(run.load_study(), "interrupted by the user")


class _Interrupt:
    """SIGINT in a spawned worker, or in the process that waits for the workers. The first
    raises KeyboardInterrupt and is remembered, so that the loop stops at its next turn also
    when the exception was swallowed (Python ignores one raised inside a garbage-collector
    callback); later ones are ignored, so the clean-up runs to its end."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.requested:
            self.requested = True
            raise KeyboardInterrupt

    def is_set(self) -> bool:  # work()'s stop_event
        return self.requested


def _unraisable(u: Any) -> None:
    """A worker's KeyboardInterrupt swallowed by Python (raised inside a garbage-collector
    callback) is not news on the terminal: _Interrupt remembers it and the worker stops."""
    if not isinstance(u.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(u)


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("the run's main process is gone: this worker stops")
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True, name="parent watch").start()


def _worker_process(space_path: str, name: str, runs_root: str, storage: str | None, budget: int,
                    worker: int, parent: int) -> None:
    """One spawned worker: log lines tagged with its number, nothing on the terminal but an
    error; exit code 0 when the study holds the budget, 130 when interrupted, 2 on bad input."""
    interrupt = _Interrupt()
    signal.signal(signal.SIGINT, interrupt)
    sys.unraisablehook = _unraisable
    _watch_parent(parent)
    run = None
    code = 0
    try:
        space = load_space(space_path)
        run = open_run(space, name, runs_root, storage)
        setup_log(run, worker=worker)
        work(run, budget, stop_event=interrupt, worker=worker)
    except KeyboardInterrupt:
        pass  # below, as when work() saw the request between trials
    except UserError as e:
        log.error("worker %d: %s", worker, e)
        print(f"error: worker {worker}: {e}", file=sys.stderr, flush=True)
        code = 2
    except BaseException:
        log.exception("worker %d failed", worker)
        raise
    if interrupt.requested:
        if run is not None:
            _fail_interrupted(run)
        log.info("worker %d interrupted", worker)
        code = 130
    # Everything is stored (storage commits, checkpoints renamed into place, logs flushed): skip
    # the interpreter's teardown of torch and the rest, seconds on a busy machine, which the
    # parent would wait for before the end-of-run steps.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
