"""Train one picked architecture on a proxy task, so a user can check it before trusting it.

A plain, seeded loop: the very SGD loop of the short-training proxy (``proxies.train_model``:
Nesterov momentum, cosine decay, seeded batch order), run for whole epochs, with the
validation accuracy taken after every epoch. The output folder holds

    weights.pt     state_dict of the training form (its FC sized for the proxy task)
    arch.yaml      the Arch the weights fit: the pick with num_classes set to the task's
    metrics.json   per-epoch loss and accuracy, final figures, the settings that produced them

so that ``shufflesearch export-arch OUT/arch.yaml --weights OUT/weights.pt`` bundles the
trained network. Training holds the shared compute lock (latency.py) for its whole duration,
so a search on the same machine never times a candidate while this competes for the cores.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..common.files import prepare_out_dir
from ..common.threads import torch_threads
from ..errors import UserError
from ..measure.env import compute_lock
from ..model.arch import Arch
from ..model.compile import build
from .data import DataSpec, ProxyData, load_data


def steps_per_epoch(data: ProxyData) -> int:
    """Batches in one pass over the training split, as ``train_model`` counts them (it skips a
    last batch of one sample, on which BN cannot train)."""
    n, b = len(data.train.y), data.spec.batch
    return n // b + (1 if n % b >= 2 else 0)


def train_arch(
    arch: Arch,
    data: DataSpec | Mapping[str, Any] | str,
    epochs: int,
    out_dir: str | Path,
    *,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    seed: int = 0,
    threads: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train ``arch`` for ``epochs`` epochs on the proxy task ``data``; write the weights,
    arch and metrics into ``out_dir`` and return the metrics. ``threads``: torch intra-op
    threads while training (None: leave torch's setting)."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise UserError(f"--epochs: {epochs!r} must be an integer >= 1")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr: {lr!r} must be a positive number")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UserError(f"--threads: {threads!r} must be an integer >= 1")
    spec = DataSpec(name=data) if isinstance(data, str) else DataSpec.from_dict(data, "--data")
    out = prepare_out_dir(Path(out_dir), UserError)
    pd = load_data(spec)
    trained_arch = arch.replace(num_classes=pd.num_classes)  # the FC the proxy task needs
    if spec.resolution < arch.total_stride:
        raise UserError(
            f"--resolution: {spec.resolution} is below the network's total stride {arch.total_stride}"
        )

    spe = steps_per_epoch(pd)
    total = epochs * spe
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights; train_model seeds the batch order
        model = build(trained_arch)
    history: list[dict[str, Any]] = []
    epoch_losses: list[float] = []
    bar = None
    if not quiet:
        bar = tqdm(total=total, desc=f"train {arch.archid}", unit="step", file=sys.stderr,
                   dynamic_ncols=True)

    def on_step(step: int, loss: float) -> None:
        epoch_losses.append(loss)
        if step % spe == 0:  # the end of an epoch: validate (evaluate() restores train mode)
            val = evaluate(model, pd, "val")
            history.append({"epoch": step // spe, "step": step,
                            "train_loss": sum(epoch_losses) / len(epoch_losses), "val_acc": val})
            epoch_losses.clear()
        if bar is not None:
            bar.update(1)
            if step % 10 == 0 or step % spe == 0:
                val = f", val_acc {history[-1]['val_acc']:.3f}" if history else ""
                bar.set_postfix_str(f"epoch {(step - 1) // spe + 1}, loss {loss:.3f}{val}", refresh=False)

    t0 = time.perf_counter()
    try:
        with torch_threads(threads), compute_lock():
            h = train_model(model, pd, steps=total, lr=lr, weight_decay=weight_decay, seed=seed,
                            on_step=on_step)
            train_acc = evaluate(model, pd, "train")
            threads_used = torch.get_num_threads()
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0

    metrics = {
        "archid": arch.archid,  # the pick as given
        "trained_archid": trained_arch.archid,  # what arch.yaml holds (num_classes of the task)
        "data": {**vars(spec), "num_classes": pd.num_classes, "train_size": len(pd.train.y),
                 "val_size": len(pd.val.y)},
        "settings": {"epochs": epochs, "steps": total, "steps_per_epoch": spe, "lr": lr,
                     "weight_decay": weight_decay, "seed": seed, "optimizer": "SGD nesterov 0.9",
                     "schedule": "cosine"},
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": history,
        "final": {"val_acc": history[-1]["val_acc"], "best_val_acc": max(e["val_acc"] for e in history),
                  "train_acc": train_acc, "train_loss_sum": h["train_loss_sum"]},
        "seconds": seconds,
        "environment": {"torch": torch.__version__, "threads": threads_used,
                        "python": platform.python_version()},
    }
    torch.save(model.state_dict(), out / "weights.pt")
    (out / "arch.yaml").write_text(trained_arch.to_yaml())
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


# --- short training ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, data: ProxyData, which: str = "val") -> float:
    """Top-1 accuracy of ``model`` (eval mode: BN running statistics) on one split."""
    was = model.training
    model.eval()
    correct = total = 0
    for b in data.batches(which, shuffle=False, n=256):
        correct += int((model(b.x).argmax(1) == b.y).sum())
        total += len(b.y)
    model.train(was)
    return correct / max(total, 1)


def train_model(model: nn.Module, data: ProxyData, *, steps: int = 150, lr: float = 0.05,
                weight_decay: float = 5e-4, seed: int = 0,
                on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train ``model`` in place for ``steps`` SGD steps (Nesterov momentum 0.9, cosine decay from
    ``lr``, batches of ``data.spec.batch`` in a seeded order). Shared with the `train` command.

    Returns ``train_loss_sum`` (Σ of the per-step training losses: the training-speed proxy of
    Ru et al. 2021) and ``losses`` (one per step). ``on_step(step, loss)`` reports progress.
    """
    if steps < 1:
        raise UserError(f"steps: {steps} must be >= 1")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    losses: list[float] = []
    epoch = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while len(losses) < steps:
            for b in data.batches("train", seed=seed * 1000 + epoch):
                if len(b.y) < 2:  # BN cannot train on a single sample
                    continue
                loss = F.cross_entropy(model(b.x), b.y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                if on_step is not None:
                    on_step(len(losses), losses[-1])
                if len(losses) >= steps:
                    break
            epoch += 1
    return {"train_loss_sum": float(sum(losses)), "losses": losses}


def short_train(arch: Arch, data: ProxyData, *, steps: int = 150, lr: float = 0.05,
                seed: int = 0) -> dict[str, Any]:
    """The short-training proxy: a seeded fresh network trained ``steps`` steps on the proxy
    task. Returns ``val_acc``, ``train_loss_sum`` (lower is better), ``steps``, ``seconds``."""
    a = arch.replace(num_classes=data.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(a)
    t0 = time.perf_counter()
    h = train_model(model, data, steps=steps, lr=lr, seed=seed)
    return {
        "val_acc": evaluate(model, data, "val"),
        "train_loss_sum": h["train_loss_sum"],
        "steps": steps,
        "seconds": time.perf_counter() - t0,
    }
