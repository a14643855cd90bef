"""The fidelity ladder: accuracy estimates from training, spent where the front is.

Rung 0 is the zero-cost scores; rung k (1-based) is ``rungs[k-1]`` SGD steps on the proxy task.
A trial's rungs are prefixes of ONE training run: one cosine learning-rate schedule over the
top rung's steps (``Trainer`` in training.py), so rung k+1 continues rung k's weights,
momentum buffers, scheduler, RNG state and place in the batch order instead of restarting.
Which trials climb is the search's business (search/promotion.py); this module trains one
trial to one rung, keeps its checkpoints, and checks an estimator against longer training.

Estimates at a rung (what ``train_to_rung`` returns):
  val_acc  top-1 accuracy on the proxy task's validation split after the rung's steps
  sotl     the negated sum of the per-step training losses of steps 1..rung steps: each term
           is the mean cross-entropy of that step's mini-batch in the forward pass before the
           update (the "sum over training losses" of Ru et al. 2021, over the whole prefix);
           negated so that, like val_acc, higher is better. Comparable within one rung only.

Checkpoints (``ckpt_dir``, a folder the caller owns, e.g. the run folder's ``rungs/TRIAL``):
``rung{k}.pt`` holds the trainer state after rung k and the estimates of rungs 1..k. It is
written to a temporary file, flushed and renamed, so a kill -9 leaves either the old set or
the new one; an older rung's file is removed only after the newer one is in place. A killed
rung therefore restarts cleanly from the previous rung's checkpoint (or from the seeded
initial weights), and asking again for a rung already reached trains nothing.

Rung and check training hold the shared compute lock (measure/env.py), like `shufflesearch
train`, so that no worker times a candidate's latency while another trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.stats import bootstrap_ci, kendall_tau
from ..errors import UserError
from ..measure.env import compute_lock
from ..model.arch import Arch, resolve_arch
from .data import ProxyData
from .training import Trainer, evaluate, fresh_model, resolve_device, short_train

ESTIMATORS = ("val_acc", "sotl")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class CheckSettings:
    top: int = 5  # front points the run's self-check retrains (plus the baselines)
    steps: int = 810  # steps of each check training (its own schedule): 3x the top rung
    seeds: int = 2  # seeds per check training; >= 2 gives the seed-noise ceiling


@dataclass(frozen=True)
class FidelitySettings:
    rungs: tuple[int, ...] = (30, 90, 270)  # training steps at rungs 1, 2, 3 (rung 0: zero-cost)
    eta: int = 3  # a rung promotes the best 1/eta of the trials that finished it
    estimator: str = "auto"  # val_acc | sotl | auto (what the run's own check ranks best)
    device: str = "auto"  # auto: cuda when torch sees one, else cpu
    check: CheckSettings = field(default_factory=CheckSettings)

    @property
    def top_steps(self) -> int:
        """The length of the one learning-rate schedule every trial's rungs share."""
        return self.rungs[-1]

    @classmethod
    def from_dict(cls, doc: Any, where: str = "fidelity") -> FidelitySettings | None:
        """Settings from a space file's ``fidelity:`` value. ``none`` (or ``false``) means
        disabled and gives None; a missing block (``None``) gives the defaults; a mapping
        overrides them key by key. Bad values raise UserError naming ``where.key`` and the rule."""
        if doc is None:
            return cls()
        if doc is False or (isinstance(doc, str) and doc.strip().lower() == "none"):
            return None
        if isinstance(doc, FidelitySettings):
            return doc
        if not isinstance(doc, Mapping):
            raise UserError(f"{where}: {doc!r} must be a mapping (rungs, eta, estimator, device, "
                            "check) or 'none'")
        _no_unknown(doc, [f.name for f in dataclasses.fields(cls)], where)
        rungs = doc.get("rungs", cls.rungs)
        if (not isinstance(rungs, (list, tuple)) or not rungs
                or not all(_is_int(r) and r >= 1 for r in rungs)):
            raise UserError(f"{where}.rungs: {rungs!r} must be a non-empty list of integers >= 1 "
                            "(training steps per rung)")
        if any(b <= a for a, b in zip(rungs, rungs[1:])):
            raise UserError(f"{where}.rungs: {list(rungs)} must increase strictly (each rung "
                            "continues the one before)")
        eta = doc.get("eta", cls.eta)
        if not _is_int(eta) or eta < 2:
            raise UserError(f"{where}.eta: {eta!r} must be an integer >= 2")
        est = doc.get("estimator", cls.estimator)
        if est not in (*ESTIMATORS, "auto"):
            raise UserError(f"{where}.estimator: {est!r} must be one of val_acc, sotl, auto")
        dev = doc.get("device", cls.device)
        if dev not in DEVICES:
            raise UserError(f"{where}.device: {dev!r} must be one of auto, cpu, cuda")
        ck = doc.get("check") or {}
        if not isinstance(ck, Mapping):
            raise UserError(f"{where}.check: {ck!r} must be a mapping {{top, steps, seeds}}")
        _no_unknown(ck, [f.name for f in dataclasses.fields(CheckSettings)], f"{where}.check")
        d = CheckSettings()
        top, steps, seeds = ck.get("top", d.top), ck.get("steps", d.steps), ck.get("seeds", d.seeds)
        if not _is_int(top) or top < 0:
            raise UserError(f"{where}.check.top: {top!r} must be an integer >= 0 (0: no check)")
        if not _is_int(steps) or steps < 1:
            raise UserError(f"{where}.check.steps: {steps!r} must be an integer >= 1")
        if not _is_int(seeds) or seeds < 1:
            raise UserError(f"{where}.check.seeds: {seeds!r} must be an integer >= 1")
        return cls(rungs=tuple(int(r) for r in rungs), eta=int(eta), estimator=est, device=dev,
                   check=CheckSettings(int(top), int(steps), int(seeds)))

    def to_dict(self) -> dict[str, Any]:
        return {"rungs": list(self.rungs), "eta": self.eta, "estimator": self.estimator,
                "device": self.device, "check": dataclasses.asdict(self.check)}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _no_unknown(doc: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(str(k) for k in doc if k not in allowed)
    if unknown:
        raise UserError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(allowed)})")


# --- one trial's rungs -----------------------------------------------------------------------


def rung_estimates(trainer: Trainer, data: ProxyData) -> dict[str, float]:
    """The estimates at the trainer's current step (see the module docstring)."""
    return {"val_acc": evaluate(trainer.model, data, "val"), "sotl": -float(sum(trainer.losses))}


def ladder_run(arch: Arch | str, data: ProxyData, rungs: Sequence[int], seed: int = 0, *,
               lr: float = 0.05, device: str | torch.device | None = "auto") -> list[dict[str, Any]]:
    """All rungs of one trial in one go, no checkpoints (``proxies validate`` uses it): the
    same run ``train_to_rung`` makes rung by rung. One dict per rung: rung, steps, val_acc,
    sotl, seconds (of that rung's training)."""
    trainer = Trainer(fresh_model(arch, data, seed), data, total_steps=rungs[-1], lr=lr,
                      seed=seed, device=device)
    out = []
    for k, steps in enumerate(rungs, 1):
        t0 = time.perf_counter()
        trainer.run(steps)
        out.append({"rung": k, "steps": steps, **rung_estimates(trainer, data),
                    "seconds": time.perf_counter() - t0})
    return out


def rung_dir(run_root: str | Path, archid: str, seed: int) -> Path:
    """Where a search keeps one trial's rung checkpoints: ``RUN/rungs/ARCHID-sSEED``. Keyed by
    the architecture, not the trial number, so that a trial re-run after its worker died (or a
    duplicate of an architecture) continues the same checkpoints instead of training again."""
    return Path(run_root) / "rungs" / f"{archid}-s{seed}"


def rung_attr(result: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a ``train_to_rung`` result a search stores on its trial."""
    return {k: result[k] for k in ("rung", "steps", "val_acc", "sotl", "seconds", "device") if k in result}


def checkpoint_path(ckpt_dir: str | Path, rung: int) -> Path:
    return Path(ckpt_dir) / f"rung{rung}.pt"


def latest_checkpoint(ckpt_dir: str | Path) -> tuple[int, Path] | None:
    """The highest rung with a checkpoint in ``ckpt_dir`` (temporary files ignored)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return None
    found = []
    for p in d.glob("rung*.pt"):
        k = p.stem[len("rung"):]
        if k.isdigit():
            found.append((int(k), p))
    return max(found) if found else None


def _save_atomic(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def train_to_rung(arch: Arch | str, data: ProxyData, settings: FidelitySettings, rung: int,
                  ckpt_dir: str | Path, seed: int = 0, *, lr: float = 0.05,
                  weight_decay: float = 5e-4,
                  on_rung: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``arch`` on the proxy task up to rung ``rung`` (1..len(settings.rungs)),
    continuing from the highest checkpoint in ``ckpt_dir``; write a checkpoint at every rung
    passed. Returns the estimates at ``rung``:

        rung, steps, val_acc, sotl   (module docstring)
        seconds          training time of that rung's own steps (stored with the checkpoint)
        trained_seconds  training time spent by THIS call (0.0 when the rung was already there)
        resumed_from     the rung whose checkpoint this call continued (0: fresh weights)
        device           where it trained
        history          the estimates of rungs 1..rung, in order

    A checkpoint of another architecture, seed, schedule or data is an error (UserError naming
    the file): give every (architecture, seed) its own folder. Calls on one folder are
    serialised by an flock on ``ckpt_dir/.lock``.
    """
    if not _is_int(rung) or not 1 <= rung <= len(settings.rungs):
        raise UserError(f"rung: {rung!r} must be in 1..{len(settings.rungs)} (rungs {list(settings.rungs)})")
    a = resolve_arch(arch)
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # One trainer per folder at a time: a second worker given the same folder (a duplicate
    # architecture, a re-run orphan) waits, then finds the rung there and trains nothing.
    with open(ckpt_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _train_to_rung(a, data, settings, rung, ckpt_dir, seed, lr, weight_decay, on_rung)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _train_to_rung(a: Arch, data: ProxyData, settings: FidelitySettings, rung: int, ckpt_dir: Path,
                   seed: int, lr: float, weight_decay: float,
                   on_rung: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    ident = {"archid": a.archid, "seed": seed, "rungs": list(settings.rungs), "lr": lr,
             "weight_decay": weight_decay, "data": repr(data.spec), "num_classes": data.num_classes}
    device = resolve_device(settings.device)
    trainer = Trainer(fresh_model(a, data, seed), data, total_steps=settings.top_steps, lr=lr,
                      weight_decay=weight_decay, seed=seed, device=device)
    history: list[dict[str, Any]] = []
    start = 0
    found = latest_checkpoint(ckpt_dir)
    ck = None
    while found is not None:
        k, path = found
        try:
            ck = torch.load(path, map_location=device, weights_only=True)
            break
        except Exception:  # noqa: BLE001 - unreadable (damaged on disk): set it aside, go back a rung
            os.replace(path, path.with_name(path.name + ".bad"))
            found = latest_checkpoint(ckpt_dir)
    if found is not None and ck is not None:
        if ck.get("ident") != ident:
            raise UserError(f"{path}: checkpoint of another trial or setting "
                            f"({ck.get('ident')} != {ident}); give each trial its own folder")
        history = list(ck["history"])
        if k >= rung:  # already there: nothing is trained twice
            return {**history[rung - 1], "trained_seconds": 0.0, "resumed_from": k,
                    "device": str(device), "history": history[:rung]}
        trainer.load_state_dict(ck["trainer"])
        start = k
    spent = 0.0
    for k in range(start + 1, rung + 1):
        t0 = time.perf_counter()
        with compute_lock():  # never train while another worker times a candidate
            trainer.run(settings.rungs[k - 1])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        spent += dt
        history.append({"rung": k, "steps": settings.rungs[k - 1],
                        **rung_estimates(trainer, data), "seconds": dt})
        _save_atomic({"ident": ident, "trainer": trainer.state_dict(), "history": history},
                     checkpoint_path(ckpt_dir, k))
        for old in range(1, k):  # the newer checkpoint is in place: the older ones can go
            with contextlib.suppress(OSError):
                checkpoint_path(ckpt_dir, old).unlink(missing_ok=True)
        if on_rung is not None:
            on_rung(history[-1])
    return {**history[rung - 1], "trained_seconds": spent, "resumed_from": start,
            "device": str(device), "history": list(history)}


# What promotions rank by while a run with `estimator: auto` has not checked itself yet.
# SoTL, because it integrates the whole learning curve so far and so is steadier than one
# validation pass of a network 30 steps into a 270-step schedule (Ru et al. 2021 found it
# ranks better than early validation accuracy); the check at the end then picks the
# estimator the front is drawn with, which may be the other one.
AUTO_DURING_SEARCH = "sotl"


def search_estimator(settings: FidelitySettings) -> str:
    """The estimator promotions rank by during the run (``estimator``, or under auto
    ``AUTO_DURING_SEARCH``)."""
    return AUTO_DURING_SEARCH if settings.estimator == "auto" else settings.estimator


def pick_estimate(result: Mapping[str, Any], estimator: str) -> float:
    """The number the search ranks by at a rung (``val_acc`` or ``sotl``; higher is better)."""
    if estimator not in ESTIMATORS:
        raise UserError(f"fidelity.estimator: {estimator!r} must be val_acc or sotl here "
                        "(auto is resolved by the run's check)")
    return float(result[estimator])


# --- the self-check --------------------------------------------------------------------------


def check_training(arch: Arch | str, data: ProxyData, steps: int, seeds: Sequence[int], *,
                   lr: float = 0.05, device: str | torch.device | None = "auto") -> dict[str, Any]:
    """Retrain ``arch`` from scratch for ``steps`` steps (its own schedule) once per seed.
    Returns ``val_acc`` (one per seed), ``seeds``, ``steps``, ``seconds``. The search calls it
    one architecture at a time and stores each result, so an interrupted check resumes."""
    runs = []
    for s in seeds:
        with compute_lock():  # never train while another worker times a candidate
            runs.append(short_train(arch, data, steps=steps, lr=lr, seed=s, device=device))
    return {"val_acc": [r["val_acc"] for r in runs], "seeds": list(seeds), "steps": steps,
            "seconds": float(sum(r["seconds"] for r in runs))}


def check_seeds(n: int) -> list[int]:
    """The check's seeds: 100, 101, ... kept apart from the ladder's (a trial's seed is small),
    so that a shared initialisation or batch order cannot make the check agree with the
    estimate it checks."""
    return [100 + i for i in range(n)]


def noise_ceiling(per_seed: np.ndarray) -> float:
    """Mean Kendall τ between every pair of seeds; ``per_seed`` is (seeds, archs)."""
    pairs = [kendall_tau(per_seed[i], per_seed[j])
             for i in range(len(per_seed)) for j in range(i + 1, len(per_seed))]
    pairs = [p for p in pairs if math.isfinite(p)]
    return float(np.mean(pairs)) if pairs else float("nan")


def check_report(estimates: Mapping[str, Sequence[float]], check_acc: Sequence[Sequence[float]],
                 estimator: str = "auto", n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Pure statistics of a check. ``estimates[name]`` holds the search's estimate per
    architecture (``val_acc`` and/or ``sotl``); ``check_acc`` is per architecture the check's
    validation accuracy per seed. For each estimator: Kendall τ against the check's mean
    accuracy with a percentile bootstrap CI; the noise ceiling (τ between check seeds);
    ``chosen``: the given estimator, or under ``auto`` the one with the higher τ (val_acc on a
    tie or when neither is defined); ``warning``: a plain sentence when the chosen estimator's
    CI includes 0 (or lies below it, or is undefined), else None."""
    acc = np.asarray([list(a) for a in check_acc], dtype=float)  # (archs, seeds)
    truth = acc.mean(axis=1)
    per = {}
    for name, est in estimates.items():
        e = np.asarray(est, dtype=float)
        if len(e) != len(truth):
            raise ValueError(f"estimates[{name}] has {len(e)} values for {len(truth)} architectures")
        ci = bootstrap_ci(kendall_tau, e, truth, n_boot=n_boot, seed=seed)
        per[name] = {"tau": kendall_tau(e, truth), "tau_ci": [ci.lo, ci.hi]}
    if estimator == "auto":
        finite = {k: v["tau"] for k, v in per.items() if math.isfinite(v["tau"])}
        chosen = max(finite, key=lambda k: (finite[k], k == "val_acc")) if finite else (
            "val_acc" if "val_acc" in per else next(iter(per)))
        how = "auto: the estimator whose ranking agrees best with the check"
    else:
        if estimator not in per:
            raise ValueError(f"no estimates for estimator {estimator!r}")
        chosen, how = estimator, "set in the space file"
    tau, (lo, hi) = per[chosen]["tau"], per[chosen]["tau_ci"]
    warning = None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0:
        # A CI reaching 0 (or below it) means the ranking is not shown to beat chance.
        warning = (f"the check cannot tell the search's {chosen} ranking from chance: Kendall τ "
                   f"{tau:.2f}, 95% CI [{lo:+.2f}, {hi:+.2f}] is not above 0 - do not trust the "
                   "accuracy axis of this front; train the picks before choosing")
    return {"n": len(truth), "seeds": acc.shape[1], "estimators": per, "chosen": chosen,
            "chosen_how": how, "tau": tau, "tau_ci": [lo, hi],
            "noise_ceiling_tau": noise_ceiling(acc.T) if acc.shape[1] >= 2 else float("nan"),
            "check_acc_mean": truth.tolist(), "warning": warning}


def check_estimator(archs: Sequence[Arch | str], estimates: Mapping[str, Sequence[float]] | Sequence[float],
                    data: ProxyData, steps: int, seeds: int, *, estimator: str = "auto",
                    lr: float = 0.05, device: str | torch.device | None = "auto",
                    done: Mapping[str, Mapping[str, Any]] | None = None,
                    on_trained: Callable[[str, dict[str, Any]], None] | None = None,
                    n_boot: int = 1000) -> dict[str, Any]:
    """The run's self-check: retrain ``archs`` at ``steps`` with ``seeds`` seeds
    (``check_seeds``) and compare with the search's ``estimates`` (``check_report``).

    ``estimates``: a sequence (one estimator, named by ``estimator``) or a mapping
    ``{"val_acc": [...], "sotl": [...]}``, one value per arch. ``done`` (archid -> a
    ``check_training`` result) skips architectures already retrained; ``on_trained(archid,
    result)`` is called after each new one, for the caller to store it."""
    archs = [resolve_arch(a) for a in archs]
    if len(archs) < 3:
        raise UserError(f"check: needs at least 3 architectures to rank, got {len(archs)}")
    if not isinstance(estimates, Mapping):
        if estimator == "auto":
            raise UserError("check: estimator auto needs both val_acc and sotl estimates")
        estimates = {estimator: list(estimates)}
    done = dict(done or {})
    results = []
    for a in archs:
        r = done.get(a.archid)
        if r is None or r.get("steps") != steps or len(r.get("val_acc", [])) != seeds:
            r = check_training(a, data, steps, check_seeds(seeds), lr=lr, device=device)
            done[a.archid] = r
            if on_trained is not None:
                on_trained(a.archid, r)
        results.append(r)
    rep = check_report(estimates, [r["val_acc"] for r in results], estimator, n_boot=n_boot)
    rep.update({"steps": steps, "archids": [a.archid for a in archs],
                "seconds": float(sum(r["seconds"] for r in results))})
    return rep


def format_check(rep: Mapping[str, Any]) -> str:
    """The check in two or three lines, for the end of a run and `pareto`."""
    lo, hi = rep["tau_ci"]
    lines = [f"self-check: {rep['n']} architectures retrained {rep['steps']} steps x {rep['seeds']} "
             f"seed(s); estimator {rep['chosen']} ({rep['chosen_how']})",
             f"  Kendall τ vs check {rep['tau']:.2f} [95% CI {lo:+.2f}, {hi:+.2f}], seed-noise "
             f"ceiling {rep['noise_ceiling_tau']:.2f}"
             + "".join(f"; {k} τ {v['tau']:.2f}" for k, v in rep["estimators"].items() if k != rep["chosen"])]
    if rep.get("warning"):
        lines.append(f"  warning: {rep['warning']}")
    return "\n".join(lines)
