"""The fidelity ladder: accuracy estimates from training, spent where the front is.

Rung k (1-based) is ``rungs[k-1]`` SGD steps on the proxy task; every feasible trial of a
search trains rung 1 (there is no zero-cost rung: on held-back data the zero-cost scores
ranked architectures below chance; docs/accuracy.md, "The fidelity ladder").
A trial's rungs are prefixes of ONE training run: one cosine learning-rate schedule over the
top rung's steps (``Trainer`` in training.py), so rung k+1 continues rung k's weights,
momentum buffers, scheduler, RNG state and place in the batch order instead of restarting.
Which trials climb is the search's business (search/promotion.py); this module trains one
trial to one rung, keeps its checkpoints, and checks an estimator against longer training.

Estimates at a rung (what ``train_to_rung`` returns):
  val_acc  top-1 accuracy on the proxy task's validation split after the rung's steps (scored
           at the top rung, and at every rung when promotions rank by it)
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
import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..common.files import atomic_write
from ..common.settings import check_settings, setting
from ..errors import UserError
from ..measure.env import compute_lock
from ..model.arch import Arch, resolve_arch
from .data import ProxyData
from .training import Trainer, evaluate, fresh_model, resolve_device

ESTIMATORS = ("val_acc", "sotl")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class CheckSettings:
    """The run's own check of its estimator against longer training."""

    top: int = setting(8, lo=0, doc="front points the check retrains, plus the baselines "
                       "(0: no check)")
    steps: int = setting(128, lo=1, doc="steps of each check training (its own schedule; "
                         "2x the top rung)")
    seeds: int = setting(2, lo=1, doc="seeds per check training (>= 2 gives the noise ceiling)")

    def __post_init__(self) -> None:
        check_settings(self)


def _rungs_error(rungs: tuple[int, ...]) -> str | None:
    if not rungs:
        return "must be a non-empty list of training steps"
    if any(b <= a for a, b in zip(rungs, rungs[1:])):
        return f"{list(rungs)} must increase strictly (each rung continues the one before)"
    return None


@dataclass(frozen=True)
class FidelitySettings:
    """The fidelity ladder: the rungs' training steps, how many climb, what ranks them."""

    rungs: tuple[int, ...] = setting((8, 16, 64), lo=1, check=_rungs_error, doc="training steps "
                                     "at rungs 1, 2, 3, ...; every feasible trial takes rung 1")
    eta: int = setting(3, lo=2, doc="a rung promotes the best 1/eta of the trials that finished it")
    estimator: str = setting("sotl", choices=(*ESTIMATORS, "auto"), doc="what ranks a rung: "
                             "sotl, val_acc, or auto (chosen by the check on half its points)")
    device: str = setting("auto", choices=DEVICES, doc="where rungs train (auto: cuda when torch "
                          "sees one, else cpu)")
    check: CheckSettings = setting(factory=CheckSettings, doc="the run's check of its estimator")

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def top_steps(self) -> int:
        """The length of the one learning-rate schedule every trial's rungs share."""
        return self.rungs[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"rungs": list(self.rungs), "eta": self.eta, "estimator": self.estimator,
                "device": self.device, "check": dataclasses.asdict(self.check)}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --- one trial's rungs -----------------------------------------------------------------------


def rung_estimates(trainer: Trainer, data: ProxyData, val: bool = True) -> dict[str, float]:
    """The estimates at the trainer's current step (see the module docstring); ``val=False``
    leaves out val_acc (a pass over the validation split costs as much as a dozen steps)."""
    out = {"sotl": -float(sum(trainer.losses))}
    if val:
        out["val_acc"] = evaluate(trainer.model, data, "val")
    return out


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
        with compute_lock():  # never train or score while a search on this machine times
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
        with compute_lock():  # never train or score while another worker times a candidate
            trainer.run(settings.rungs[k - 1])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t0
            # val_acc where something reads it: the top rung (the front, the check's comparison)
            # and every rung when promotions rank by it.
            val = k == len(settings.rungs) or settings.estimator == "val_acc"
            estimates = rung_estimates(trainer, data, val=val)
        spent += dt
        history.append({"rung": k, "steps": settings.rungs[k - 1], **estimates, "seconds": dt})
        atomic_write(checkpoint_path(ckpt_dir, k), functools.partial(
            torch.save, {"ident": ident, "trainer": trainer.state_dict(), "history": history}))
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

