"""Train one picked architecture on a proxy task, so a user can check it before trusting it.

A plain, seeded loop: the very SGD loop of the short-training proxy (``proxies.train_model``:
Nesterov momentum, cosine decay, seeded batch order), run for whole epochs, with the
validation accuracy taken after every epoch. The output folder holds

    weights.pt     state_dict of the training form (its FC sized for the proxy task)
    arch.yaml      the Arch the weights fit: the pick with num_classes set to the task's
    metrics.json   per-epoch loss and accuracy, final figures, the settings that produced them

so that ``shufflesearch export-arch OUT/arch.yaml --weights OUT/weights.pt`` bundles the
trained network. Training holds the shared compute lock (measure/env.py) and steps aside
between steps while a search on the same machine times a candidate, so the two never compete
for the cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..common.files import prepare_out_dir
from ..common.threads import torch_threads
from ..errors import UserError
from ..measure.env import compute_lock, compute_pause
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
    data: DataSpec | str,
    epochs: int,
    out_dir: str | Path,
    *,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    seed: int = 0,
    threads: int | None = None,
    quiet: bool = False,
    device: str | torch.device | None = "auto",
) -> dict[str, Any]:
    """Train ``arch`` for ``epochs`` epochs on the proxy task ``data``; write the weights,
    arch and metrics into ``out_dir`` and return the metrics. ``threads``: torch intra-op
    threads while training (None: leave torch's setting). ``device``: auto (cuda when
    available), cpu or cuda; the weights are saved on the CPU either way."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise UserError(f"{epochs!r} must be an integer >= 1", field="epochs")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise UserError(f"{lr!r} must be a positive number", field="lr")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UserError(f"{threads!r} must be an integer >= 1", field="threads")
    spec = DataSpec(name=data) if isinstance(data, str) else data
    out = prepare_out_dir(Path(out_dir), UserError)
    pd = load_data(spec)
    trained_arch = arch.replace(num_classes=pd.num_classes)  # the FC the proxy task needs
    if spec.resolution < arch.total_stride:
        raise UserError(f"{spec.resolution} is below the network's total stride {arch.total_stride}",
                        field="resolution", owner="DataSpec")

    dev = resolve_device(device)
    spe = steps_per_epoch(pd)
    total = epochs * spe
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights; train_model seeds the batch order
        model = build(trained_arch)
    bar = None
    if not quiet:
        bar = tqdm(total=total, desc=f"train {arch.archid}", unit="step", file=sys.stderr,
                   dynamic_ncols=True)
    on_step, history = _epoch_log(model, pd, spe, bar)
    t0 = time.perf_counter()
    try:
        with torch_threads(threads), compute_lock():
            h = train_model(model, pd, steps=total, lr=lr, weight_decay=weight_decay, seed=seed,
                            on_step=on_step, device=dev)
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
        "environment": {"torch": torch.__version__, "threads": threads_used, "device": str(dev),
                        "python": platform.python_version()},
    }
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / "weights.pt")
    (out / "arch.yaml").write_text(trained_arch.to_yaml())
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _epoch_log(model: nn.Module, pd: ProxyData, spe: int,
               bar: Any) -> tuple[Callable[[int, float], None], list[dict[str, Any]]]:
    """``on_step`` for train_model: validates at the end of each epoch into the history it
    returns (epoch, step, mean train loss, val_acc), and moves the progress bar."""
    history: list[dict[str, Any]] = []
    epoch_losses: list[float] = []

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

    return on_step, history


# --- the training loop ------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): cuda when ``torch.cuda.is_available()``, else cpu. ``cpu``, ``cuda``
    and ``cuda:N`` are taken as given; asking for cuda where there is none is an error, not a
    silent fall-back, because a user who asks for the GPU wants to know it is not used."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or device.startswith("cuda:")):
        raise UserError(f"device: {device!r} must be auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device: {device!r} asked for, but torch sees no CUDA device "
                        "(use device: auto to fall back to the CPU)")
    return torch.device(device)


@torch.no_grad()
def evaluate(model: nn.Module, data: ProxyData, which: str = "val") -> float:
    """Top-1 accuracy of ``model`` (eval mode: BN running statistics) on one split, on the
    device the model's weights are on."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = total = 0
    for b in data.batches(which, shuffle=False, n=256):
        correct += int((model(b.x.to(dev)).argmax(1) == b.y.to(dev)).sum())
        total += len(b.y)
    model.train(was)
    return correct / max(total, 1)


# --- depthwise weight gradients on small maps ----------------------------------------------------

# oneDNN's weight gradient of a depthwise conv is pathological on the maps a 32 px proxy task
# leaves in stages 3-4 (2x2 and 1x1): 2.5-8 ms per call for a few hundred thousand MACs, 20-50x
# its forward pass, and about a third of a V2 1x training step (bench/train_step.py --profile).
# Up to this many output x input positions per image the gradient is taken as below instead:
SMALL_MAP = 16 * 16  # NCHW: one batched matmul; 4x4 -> 4x4 at stride 1 is 256
SMALL_MAP_NHWC = 4 * 4  # NHWC: products summed over the batch; 2x2 -> 2x2 is 16 (beyond it,
# oneDNN's own NHWC gradient is as fast, and the batched matmul on NHWC strides is slow)


@functools.lru_cache(maxsize=64)
def _tap_map(h: int, w: int, oh: int, ow: int, k: int, s: int, p: int) -> torch.Tensor:
    """(oh·ow·h·w, k·k) 0/1 matrix: which kernel tap joins output (a, b) to input (i, j)."""
    m = torch.zeros(oh * ow, h * w, k * k)
    for a, b, di, dj in itertools.product(range(oh), range(ow), range(k), range(k)):
        i, j = a * s + di - p, b * s + dj - p
        if 0 <= i < h and 0 <= j < w:
            m[a * ow + b, i * w + j, di * k + dj] = 1.0
    return m.view(-1, k * k)


class _SmallMapDepthwise(torch.autograd.Function):
    """A depthwise conv whose forward and input gradient are torch's own, and whose weight
    gradient is Σ_n go[n, c, a] · x[n, c, i] for every (output a, input i) pair of a channel
    (NCHW: one batched matmul over channels; NHWC: elementwise products along the channels,
    summed over the batch), summed onto the kernel taps by a fixed 0/1 map."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                conv: nn.Conv2d) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.conv = conv
        return F.conv2d(x, w, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx: Any, go: torch.Tensor):  # type: ignore[override]
        x, w = ctx.saved_tensors
        c = ctx.conv
        gi = gw = gb = None
        if ctx.needs_input_grad[0]:
            gi = torch.ops.aten.convolution_backward(
                go, x, w, None, c.stride, c.padding, c.dilation, False, [0, 0], c.groups,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            (n, ch, h, wd), (oh, ow) = x.shape, go.shape[-2:]
            tap = _tap_map(h, wd, oh, ow, c.kernel_size[0], c.stride[0], c.padding[0]).to(go)
            if x.is_contiguous():  # NCHW
                pairs = torch.bmm(go.reshape(n, ch, oh * ow).permute(1, 2, 0),  # (C, oh·ow, N)
                                  x.reshape(n, ch, h * wd).transpose(0, 1))  # (C, N, h·w)
            else:  # NHWC: channels innermost, so products over whole rows, summed over N
                g = go.permute(0, 2, 3, 1).reshape(n, oh * ow, 1, ch)
                pairs = (g * x.permute(0, 2, 3, 1).reshape(n, 1, h * wd, ch)).sum(0).permute(2, 0, 1)
            gw = (pairs.reshape(ch, -1) @ tap).view_as(w)  # (C, 1, k, k)
        if ctx.needs_input_grad[2]:
            gb = go.sum((0, 2, 3))
        return gi, gw, gb, None


def _is_plain_depthwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels
            and m.padding_mode == "zeros" and m.kernel_size[0] == m.kernel_size[1]
            and m.stride[0] == m.stride[1] and isinstance(m.padding, tuple)
            and m.padding[0] == m.padding[1] and m.dilation == (1, 1))


def _depthwise_forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    oh = (x.shape[-2] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    ow = (x.shape[-1] + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
    limit = SMALL_MAP if x.is_contiguous() else SMALL_MAP_NHWC
    if (torch.is_grad_enabled() and conv.weight.requires_grad and x.device.type == "cpu"
            and oh * ow * x.shape[-2] * x.shape[-1] <= limit):
        return _SmallMapDepthwise.apply(x, conv.weight, conv.bias, conv)
    return conv._conv_forward(x, conv.weight, conv.bias)


@contextlib.contextmanager
def small_map_depthwise(model: nn.Module) -> Iterator[None]:
    """While inside, the model's depthwise convs take their weight gradient on small maps as
    ``_SmallMapDepthwise`` does (same forward, same input gradient; the weight gradient equal
    up to float summation order). The modules, their parameters and state_dict are untouched;
    on exit the convs are plain ``nn.Conv2d`` again."""
    convs = [m for m in model.modules() if _is_plain_depthwise(m) and "forward" not in vars(m)]
    for m in convs:
        m.forward = functools.partial(_depthwise_forward, m)
    try:
        yield
    finally:
        for m in convs:
            vars(m).pop("forward", None)


# --- the trainer ----------------------------------------------------------------------------------


class Trainer:
    """One seeded SGD run of ``total_steps`` steps that can stop after any step and continue
    later, in this process or another, as if it had never stopped.

    SGD with Nesterov momentum 0.9 and weight decay; ONE cosine schedule from ``lr`` to 0 over
    ``total_steps``, so stopping at step s and continuing gives the same run as not stopping.
    Batches come in a seeded order (``data.batches`` seeded by ``seed * 1000 + epoch``); the
    position in that order (epoch, batch index) travels in ``state_dict`` with the weights, the
    momentum buffers, the scheduler and torch's CPU RNG state.

    ``losses`` holds one training loss per optimiser step: the mean cross-entropy of that
    step's mini-batch, computed in the forward pass before the update (train-mode BN).

    What a step does and does not do (a step is the proxy's whole cost, bench/train_step.py):
    the training split is put on the device once, not copied per batch; without ``on_step``
    the losses stay on the device until ``run`` returns (one synchronisation per call, not
    one per step); the optimiser and schedule are built once; and on the CPU the depthwise
    convs take their weight gradient on small maps by ``small_map_depthwise``.

    ``channels_last`` (None: on the CPU) trains in NHWC memory format: with the depthwise
    gradient above, oneDNN's NHWC convs and BN were faster at the proxy's sizes. The weights
    are back in NCHW whenever ``run`` returns, so callers and checkpoints see what they gave.
    """

    def __init__(self, model: nn.Module, data: ProxyData, *, total_steps: int, lr: float = 0.05,
                 weight_decay: float = 5e-4, seed: int = 0,
                 device: str | torch.device | None = "auto",
                 channels_last: bool | None = None) -> None:
        if not isinstance(total_steps, int) or total_steps < 1:
            raise UserError(f"steps: {total_steps!r} must be an integer >= 1")
        self.device = resolve_device(device)
        self.channels_last = self.device.type == "cpu" if channels_last is None else channels_last
        self.model = model.to(self.device)
        self.data = data
        # The training split on the device, once: batches are gathered there, not copied over.
        train = data.train
        self._data = dataclasses.replace(data, train=type(train)(train.x.to(self.device),
                                                                 train.y.to(self.device)))
        self.total_steps = total_steps
        self.seed = seed
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                   weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, total_steps)
        self.losses: list[float] = []
        self.epoch = 0  # epochs begun
        self.batch = 0  # batches of the current epoch consumed (skipped ones included)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.rng = torch.get_rng_state()

    @property
    def step(self) -> int:
        return len(self.losses)

    def run(self, until: int, on_step: Callable[[int, float], None] | None = None) -> None:
        """Train up to step ``until`` (capped at ``total_steps``). ``on_step(step, loss)``."""
        until = min(until, self.total_steps)
        self.model.train()
        step = self.step
        pending: list[torch.Tensor] = []  # losses not yet read back (on_step is None)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        try:
            with torch.random.fork_rng(devices=[]), small_map_depthwise(self.model):
                torch.set_rng_state(self.rng)
                while step < until:
                    order = self._data.batches("train", seed=self.seed * 1000 + self.epoch)
                    for b in itertools.islice(order, self.batch, None):
                        self.batch += 1
                        if len(b.y) < 2:  # BN cannot train on a single sample
                            continue
                        loss = F.cross_entropy(self.model(b.x), b.y)
                        self.opt.zero_grad(set_to_none=True)
                        loss.backward()
                        self.opt.step()
                        self.sched.step()
                        step += 1
                        compute_pause()  # a latency timing waiting elsewhere goes first
                        if on_step is None:
                            pending.append(loss.detach())
                        else:
                            self.losses.append(loss.item())
                            on_step(step, self.losses[-1])
                        if step >= until:
                            break
                    else:  # the epoch ran out: the next one has a new order
                        self.epoch += 1
                        self.batch = 0
                self.rng = torch.get_rng_state()
        finally:
            if self.channels_last:
                self.model.to(memory_format=torch.contiguous_format)
            if pending:
                self.losses.extend(torch.stack(pending).tolist())

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(), "losses": list(self.losses),
                "epoch": self.epoch, "batch": self.batch, "rng": self.rng,
                "seed": self.seed, "total_steps": self.total_steps}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        if (sd["seed"], sd["total_steps"]) != (self.seed, self.total_steps):
            raise ValueError(f"a checkpoint of seed {sd['seed']}, {sd['total_steps']} steps cannot "
                             f"continue a run of seed {self.seed}, {self.total_steps} steps")
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["opt"])
        self.sched.load_state_dict(sd["sched"])
        self.losses = list(sd["losses"])
        self.epoch, self.batch = int(sd["epoch"]), int(sd["batch"])
        self.rng = sd["rng"].cpu() if isinstance(sd["rng"], torch.Tensor) else torch.as_tensor(sd["rng"])


def train_model(model: nn.Module, data: ProxyData, *, steps: int = 150, lr: float = 0.05,
                weight_decay: float = 5e-4, seed: int = 0,
                on_step: Callable[[int, float], None] | None = None,
                device: str | torch.device | None = "auto") -> dict[str, Any]:
    """Train ``model`` in place for ``steps`` SGD steps (``Trainer``: Nesterov momentum 0.9,
    cosine decay from ``lr`` over ``steps``, batches of ``data.spec.batch`` in a seeded order).
    Shared with the `train` command and the fidelity ladder.

    Returns ``train_loss_sum`` (Σ of the per-step training losses: the training-speed proxy of
    Ru et al. 2021) and ``losses`` (one per step). ``on_step(step, loss)`` reports progress.
    """
    t = Trainer(model, data, total_steps=steps, lr=lr, weight_decay=weight_decay, seed=seed,
                device=device)
    t.run(steps, on_step)
    return {"train_loss_sum": float(sum(t.losses)), "losses": t.losses}


def fresh_model(arch: Arch, data: ProxyData, seed: int) -> nn.Module:
    """The training form of ``arch`` with the task's classifier width, initialised from
    ``seed`` (torch's global RNG is left as it was)."""
    a = arch.replace(num_classes=data.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(a)


def short_train(arch: Arch | str, data: ProxyData, *, steps: int = 150, lr: float = 0.05,
                seed: int = 0, device: str | torch.device | None = "auto") -> dict[str, Any]:
    """The short-training proxy: a seeded fresh network trained ``steps`` steps on the proxy
    task. Returns ``val_acc``, ``train_loss_sum`` (lower is better), ``steps``, ``seconds``."""
    model = fresh_model(arch, data, seed)
    t0 = time.perf_counter()
    h = train_model(model, data, steps=steps, lr=lr, seed=seed, device=device)
    return {
        "val_acc": evaluate(model, data, "val"),
        "train_loss_sum": h["train_loss_sum"],
        "steps": steps,
        "seconds": time.perf_counter() - t0,
    }
