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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..model.arch import Arch, resolve_arch
from ..model.compile import build
from .data import DataSpec, ProxyData, load_data
from ..errors import UserError
from ..review.export import prepare_out_dir


def steps_per_epoch(data: ProxyData) -> int:
    """Batches in one pass over the training split, as ``train_model`` counts them (it skips a
    last batch of one sample, on which BN cannot train)."""
    n, b = len(data.train.y), data.spec.batch
    return n // b + (1 if n % b >= 2 else 0)


def train_arch(
    arch: Arch | str,
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
    from ..measure.latency import compute_lock
    from .proxies import evaluate, train_model

    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise UserError(f"--epochs: {epochs!r} must be an integer >= 1")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr: {lr!r} must be a positive number")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UserError(f"--threads: {threads!r} must be an integer >= 1")
    arch = resolve_arch(arch)
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
        from tqdm import tqdm

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
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with compute_lock():
            h = train_model(model, pd, steps=total, lr=lr, weight_decay=weight_decay, seed=seed,
                            on_step=on_step)
            train_acc = evaluate(model, pd, "train")
        threads_used = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads_before)
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
