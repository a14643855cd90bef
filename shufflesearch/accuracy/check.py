"""The run's self-check: does the ladder's estimate rank architectures as longer training does?

``check_estimator`` retrains architectures from scratch (``check_training``: its own schedule,
seeds 100, 101, ... apart from the ladder's) and scores them on the proxy task's ``check``
split, images the ladder never scores; ``check_report`` is the pure statistics: Kendall τ of
each estimator against the mean accuracy over seeds, with a bootstrap CI, beside the noise
ceiling on the same footing (``oracle_ceiling``). Used by the search (search/ladder.run_check)
and by ``proxies validate`` (validation.py).

The retrainings are independent, seeded and one-threaded, so ``train_checks`` spreads them over
``workers`` spawned processes (one (architecture, seed) each, the largest first) and gives back
exactly what one process would: a search with K workers checks with K processes, not one while
the others' cores sit idle."""

from __future__ import annotations

import math
import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..common.stats import bootstrap_ci, kendall_tau, kendall_tau_rows
from ..common.threads import torch_threads, train_threads
from ..errors import UserError
from ..measure.env import compute_lock
from ..model.arch import Arch, resolve_arch
from ..model.cost import costs
from .data import ProxyData
from .training import evaluate, fresh_model, train_model


def check_training(arch: Arch | str, data: ProxyData, steps: int, seeds: Sequence[int], *,
                   lr: float = 0.05, device: str | torch.device | None = "auto") -> dict[str, Any]:
    """Retrain ``arch`` from scratch for ``steps`` steps (its own schedule) once per seed and
    score it on the ``check`` split, images the ladder never scores (data.py). Returns
    ``val_acc`` (one accuracy per seed, on the check split), ``train_loss_sum`` (per seed),
    ``split``, ``seeds``, ``steps``, ``seconds``. ``train_checks`` calls it per architecture,
    or per (architecture, seed) in spawned processes and merges the seeds (``_merge``)."""
    accs, losses, seconds = [], [], 0.0
    for s in seeds:
        model = fresh_model(resolve_arch(arch), data, s)
        t0 = time.perf_counter()
        with compute_lock():  # never train or score while another worker times a candidate
            h = train_model(model, data, steps=steps, lr=lr, seed=s, device=device)
            seconds += time.perf_counter() - t0
            accs.append(evaluate(model, data, "check"))
        losses.append(h["train_loss_sum"])
    return {"val_acc": accs, "train_loss_sum": losses, "split": "check", "seeds": list(seeds),
            "steps": steps, "seconds": seconds}


# --- the retrainings, in one process or several ------------------------------------------------

_CHILD: dict[str, Any] = {}  # in a spawned check process: the task, sent once per process


def _child_init(data: ProxyData, threads: int) -> None:
    # Ctrl-C is the parent's to handle: it stops these processes at once (Pool.terminate)
    # rather than each printing a traceback from the middle of a training step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _CHILD.update(data=data, threads=threads)


def _child_train(job: tuple[Arch, int, int, float, str | torch.device | None]) -> tuple[str, int, dict[str, Any]]:
    arch, steps, seed, lr, device = job
    with torch_threads(_CHILD["threads"]):
        return arch.archid, seed, check_training(arch, _CHILD["data"], steps, [seed], lr=lr, device=device)


def _merge(parts: Sequence[dict[str, Any]], steps: int) -> dict[str, Any]:
    """One architecture's per-seed results (in seed order) as ``check_training`` returns them."""
    return {"val_acc": [a for p in parts for a in p["val_acc"]],
            "train_loss_sum": [v for p in parts for v in p["train_loss_sum"]], "split": "check",
            "seeds": [s for p in parts for s in p["seeds"]], "steps": steps,
            "seconds": float(sum(p["seconds"] for p in parts))}


def train_checks(archs: Sequence[Arch], data: ProxyData, steps: int, seeds: Sequence[int], *,
                 lr: float = 0.05, device: str | torch.device | None = "auto",
                 workers: int = 1) -> Iterator[tuple[str, dict[str, Any]]]:
    """(archid, ``check_training`` result) for each of ``archs``, as each one finishes.

    ``workers`` > 1 (and more than one retraining to do): the (architecture, seed) pairs go to
    that many spawned processes, each training on ``train_threads()`` threads, the largest
    architectures first so that none is left alone at the end; an architecture is given back
    when all its seeds are in. Each pair is seeded, so the figures are the ones a single process
    trains (tests/accuracy/test_fidelity.py). Ctrl-C stops the processes at once; what was given
    back before it stays given back."""
    jobs = [(a, steps, s, lr, device) for a in archs for s in seeds]
    if workers <= 1 or len(jobs) <= 1:
        for a in archs:
            yield a.archid, check_training(a, data, steps, seeds, lr=lr, device=device)
        return
    macs = {a.archid: costs(a, data.resolution).macs for a in archs}  # once per architecture
    jobs.sort(key=lambda j: -macs[j[0].archid])
    parts: dict[str, dict[int, dict[str, Any]]] = {a.archid: {} for a in archs}
    pool = mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_child_init,
                                        initargs=(data, train_threads()))
    try:
        for archid, seed, r in pool.imap_unordered(_child_train, jobs):
            parts[archid][seed] = r
            if len(parts[archid]) == len(seeds):
                yield archid, _merge([parts[archid][x] for x in seeds], steps)
        pool.close()
    finally:
        pool.terminate()  # after close(): the processes have ended; on an error: stop them now
        pool.join()


def check_seeds(n: int) -> list[int]:
    """The check's seeds: 100, 101, ... kept apart from the ladder's (a trial's seed is small),
    so that a shared initialisation or batch order cannot make the check agree with the
    estimate it checks."""
    return [100 + i for i in range(n)]


def noise_ceiling(per_seed: np.ndarray) -> float:
    """Mean Kendall τ between every pair of seeds; ``per_seed`` is (seeds, archs). This is
    how well one seed's ranking predicts another's: the seed-to-seed agreement of the task."""
    pairs = [kendall_tau(per_seed[i], per_seed[j])
             for i in range(len(per_seed)) for j in range(i + 1, len(per_seed))]
    pairs = [p for p in pairs if math.isfinite(p)]
    return float(np.mean(pairs)) if pairs else float("nan")


MIN_CHECK = 8  # architectures a check needs before its τ can tell anything (CI width ~±0.5 at 8)
CEILING_QUANTILE = 0.9


def oracle_ceiling(acc: np.ndarray, n_sim: int = 2000, quantile: float = CEILING_QUANTILE,
                   seed: int = 0) -> float:
    """The τ an estimator that knew every architecture's true accuracy would reach against the
    check's truth (the mean over seeds), at most, in ``quantile`` of cases: the ceiling on the
    same footing as the τ it bounds (both are τ against the mean of the seeds).

    ``acc`` is (archs, seeds). Parametric bootstrap: the seed noise of one training is the
    pooled within-architecture variance s²; the truth's noise is s² / seeds. Each draw adds
    that noise to the observed means and takes τ between the two. The observed means are
    themselves spread by noise, so this errs high (a ceiling an oracle seldom beats: in
    tests/test_fidelity.py, test_oracle_does_not_beat_the_noise_ceiling, it is beaten in under
    10% of simulated checks)."""
    acc = np.asarray(acc, dtype=float)
    n, seeds = acc.shape
    if seeds < 2 or n < 3:
        return float("nan")
    means = acc.mean(axis=1)
    se = math.sqrt(float(acc.var(axis=1, ddof=1).mean()) / seeds)
    if se == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    taus = kendall_tau_rows(means, means + rng.normal(0.0, se, (n_sim, n)))
    taus = taus[np.isfinite(taus)]
    return float(np.quantile(taus, quantile)) if len(taus) else float("nan")


def _halves(n: int) -> tuple[list[int], list[int]]:
    """Alternate positions: the picks come ordered along the front, so each half spans it."""
    return list(range(0, n, 2)), list(range(1, n, 2))


def check_report(estimates: Mapping[str, Sequence[float]], check_acc: Sequence[Sequence[float]],
                 estimator: str = "sotl", n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Pure statistics of a check. ``estimates[name]`` holds the search's estimate per
    architecture (``val_acc`` and/or ``sotl``); ``check_acc`` is per architecture the check's
    accuracy per seed (on the check split). For each estimator: Kendall τ against the check's
    mean accuracy with a percentile bootstrap CI.

    ``noise_ceiling_tau``: ``oracle_ceiling``, on the same footing as τ; ``seed_tau``: τ
    between single seeds, for reference. ``chosen``: the given estimator, graded on every
    point; under ``auto``, the one with the higher τ on one half of the points (alternate
    positions), graded on the other half only, so that it is not graded on the points it
    was chosen on (``graded_on`` says which). Fewer than MIN_CHECK architectures: ``too_few``
    says so and no verdict is drawn. ``warning``: a plain sentence when the chosen estimator's
    CI reaches 0 (or lies below it, or is undefined), else None."""
    acc = np.asarray([list(a) for a in check_acc], dtype=float)  # (archs, seeds)
    truth = acc.mean(axis=1)
    n = len(truth)
    ests = {name: np.asarray(est, dtype=float) for name, est in estimates.items()}
    for name, e in ests.items():
        if len(e) != n:
            raise ValueError(f"estimates[{name}] has {len(e)} values for {n} architectures")

    def grade(e: np.ndarray, idx: list[int]) -> dict[str, Any]:
        ci = bootstrap_ci(kendall_tau, e[idx], truth[idx], n_boot=n_boot, seed=seed)
        return {"tau": kendall_tau(e[idx], truth[idx]), "tau_ci": [ci.lo, ci.hi], "n": len(idx)}

    every = list(range(n))
    per = {name: grade(e, every) for name, e in ests.items()}
    graded_on = "all"
    if estimator == "auto":
        pick, hold = _halves(n)
        on_pick = {k: kendall_tau(e[pick], truth[pick]) for k, e in ests.items()}
        finite = {k: v for k, v in on_pick.items() if math.isfinite(v)}
        chosen = max(finite, key=lambda k: (finite[k], k == "sotl")) if finite else (
            "sotl" if "sotl" in ests else next(iter(ests)))
        how = (f"auto: the better τ on {len(pick)} of the {n} architectures, graded on the other "
               f"{len(hold)} only")
        res, graded_on = grade(ests[chosen], hold), "other half"
    else:
        if estimator not in per:
            raise ValueError(f"no estimates for estimator {estimator!r}")
        chosen, how, res = estimator, "set in the space file", per[estimator]
    tau, (lo, hi) = res["tau"], res["tau_ci"]
    too_few = (f"too few to tell: {n} architectures checked, the check needs {MIN_CHECK}"
               if n < MIN_CHECK else None)
    warning = None
    if too_few is None and (not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0):
        # A CI reaching 0 (or below it) means the ranking is not shown to beat chance.
        warning = (f"the check cannot tell the search's {chosen} ranking from chance: Kendall τ "
                   f"{tau:.2f}, 95% CI [{lo:+.2f}, {hi:+.2f}] is not above 0 - do not trust the "
                   "accuracy axis of this front; train the picks before choosing")
    return {"n": n, "seeds": acc.shape[1], "estimators": per, "chosen": chosen,
            "chosen_how": how, "graded_on": graded_on, "graded_n": res["n"], "tau": tau,
            "tau_ci": [lo, hi], "too_few": too_few,
            "noise_ceiling_tau": oracle_ceiling(acc, seed=seed),
            "seed_tau": noise_ceiling(acc.T) if acc.shape[1] >= 2 else float("nan"),
            "check_acc_mean": truth.tolist(), "warning": warning}


def check_estimator(archs: Sequence[Arch | str], estimates: Mapping[str, Sequence[float]] | Sequence[float],
                    data: ProxyData, steps: int, seeds: int, *, estimator: str = "sotl",
                    lr: float = 0.05, device: str | torch.device | None = "auto",
                    done: Mapping[str, Mapping[str, Any]] | None = None,
                    on_trained: Callable[[str, dict[str, Any]], None] | None = None,
                    n_boot: int = 1000, workers: int = 1) -> dict[str, Any]:
    """The run's self-check: retrain ``archs`` at ``steps`` with ``seeds`` seeds
    (``check_seeds``) and compare with the search's ``estimates`` (``check_report``).

    ``estimates``: a sequence (one estimator, named by ``estimator``) or a mapping
    ``{"val_acc": [...], "sotl": [...]}``, one value per arch. ``done`` (archid -> a
    ``check_training`` result) skips architectures already retrained; ``on_trained(archid,
    result)`` is called after each new one, for the caller to store it. ``workers``: processes
    the retrainings are spread over (``train_checks``)."""
    archs = [resolve_arch(a) for a in archs]
    if len(archs) < 3:
        raise UserError(f"check: needs at least 3 architectures to rank, got {len(archs)}")
    if not isinstance(estimates, Mapping):
        if estimator == "auto":
            raise UserError("check: estimator auto needs both val_acc and sotl estimates")
        estimates = {estimator: list(estimates)}
    done = dict(done or {})

    def usable(r: Mapping[str, Any] | None) -> bool:
        return r is not None and r.get("steps") == steps and len(r.get("val_acc", [])) == seeds

    todo = list({a.archid: a for a in archs if not usable(done.get(a.archid))}.values())
    for archid, r in train_checks(todo, data, steps, check_seeds(seeds), lr=lr, device=device,
                                  workers=workers):
        done[archid] = r
        if on_trained is not None:
            on_trained(archid, r)
    results = [done[a.archid] for a in archs]
    rep = check_report(estimates, [r["val_acc"] for r in results], estimator, n_boot=n_boot)
    rep.update({"steps": steps, "archids": [a.archid for a in archs],
                "seconds": float(sum(r["seconds"] for r in results))})
    return rep


def format_check(rep: Mapping[str, Any]) -> str:
    """The check in two or three lines, for the end of a run and `pareto`."""
    lo, hi = rep["tau_ci"]
    graded = "" if rep.get("graded_on", "all") == "all" else f" on {rep.get('graded_n')} held-out architectures"
    lines = [f"self-check: {rep['n']} architectures retrained {rep['steps']} steps x {rep['seeds']} "
             f"seed(s), scored on images the ladder never saw; estimator {rep['chosen']} ({rep['chosen_how']})"]
    if rep.get("too_few"):
        lines.append(f"  {rep['too_few']}: no verdict (τ {rep['tau']:.2f} [{lo:+.2f}, {hi:+.2f}])")
    else:
        lines.append(f"  Kendall τ vs check {rep['tau']:.2f}{graded} [95% CI {lo:+.2f}, {hi:+.2f}], "
                     f"noise ceiling {rep['noise_ceiling_tau']:.2f} (what an oracle reaches at most, "
                     f"9 times in 10)"
                     + "".join(f"; {k} τ {v['tau']:.2f}" for k, v in rep["estimators"].items()
                               if k != rep["chosen"]))
    if rep.get("warning"):
        lines.append(f"  warning: {rep['warning']}")
    return "\n".join(lines)
