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
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..common.threads import train_threads
from ..errors import UserError
from ..model.arch import ArchError
from .baselines import evaluate_baselines, short_train_front
from .evaluator import prefilter_table
from .front import on_one_reference, shown_front
from .ladder import apply_estimator, chosen_estimator, prune_checkpoints, run_check
from .progress import Progress
from .records import completed
from .retime import records_with_retime, retime_run
from .runfolder import Run, _setup_log, open_run
from .space import SearchSpace, load_space
from .storage import run_step, set_study_attr, study_attr
from .worker import _worker_main, work

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
           storage: str | None = None, workers: int = 1, quiet: bool = False) -> Run:
    """`shufflesearch run`: resume or start the run, and work until the budget is reached."""
    if budget < 0:
        raise UserError(f"--budget must be >= 0, got {budget}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    space = load_space(space_path)
    check_buildable(space, space_path)
    prefilter_table(space)  # a missing table is refused before any folder is made
    run = open_run(space, name, runs_root, storage)
    _setup_log(run)
    if space.fidelity is not None and space.guidelines.mode == "penalize":
        msg = ("guidelines.mode: penalize has no effect with a fidelity ladder (the accuracy figure "
               "is the top rung's estimate, never penalised); use constrain to act on the penalty")
        log.warning("%s", msg)
        if not quiet:
            print(f"warning: {msg}", flush=True)
    log.info("run %s: budget %d, workers %d, training threads %d, storage %s", run.name, budget,
             workers, train_threads(), run.storage_url)
    with Progress(run, budget, quiet=quiet) as progress:
        evaluate_baselines(run)  # once, before any worker starts
        if workers == 1:
            th = threading.Thread(target=progress.poll_forever, daemon=True)
            th.start()
            work(run, budget)
        else:
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker_main,
                                 args=(str(space_path), run.name, str(runs_root), storage, budget, i))
                     for i in range(workers)]
            for p in procs:
                p.start()
            try:
                while any(p.is_alive() for p in procs):
                    progress.poll()
                    time.sleep(1.0)
            except KeyboardInterrupt:
                for p in procs:
                    p.terminate()
                raise
            bad = [p.exitcode for p in procs if p.exitcode]
            if bad:
                raise UserError(f"{len(bad)} worker(s) exited with an error; see {run.root / 'run.log'}")
        progress.poll()
    say = None if quiet else (lambda m: print(f"run {run.name}: {m}", flush=True))
    # The self-check first: under `estimator: auto` it picks the estimator the front is drawn
    # with, and the re-timing, the short training and every review then follow that front.
    end_step(run, budget, "check", lambda: _check(run, quiet), say)
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


def _check(run: Run, quiet: bool) -> None:
    """The fidelity ladder's self-check (nothing in a zero-cost run); with ``check.top: 0`` the
    study says that it was switched off, so no review reads "not run yet" forever."""
    fs = run.space.fidelity
    if fs is not None and fs.check.top <= 0:
        set_study_attr(run.load_study(), "check", {"skipped": "check.top: 0 in the space", "top": 0})
        return
    run_check(run, quiet=quiet)
