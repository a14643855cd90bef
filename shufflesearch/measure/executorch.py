"""The ExecuTorch backend: the inference form lowered to XNNPACK, run by ExecuTorch's runtime.

ExecuTorch is PyTorch's own route to a phone: ``torch.export`` captures the inference form,
``to_edge_transform_and_lower`` hands every op the XNNPACK partitioner accepts to XNNPACK
(the CPU kernels ExecuTorch ships for Arm and x86 phones), and ``to_executorch`` serialises
the program as ``.pte`` bytes that the C++ runtime on the device (and its Python binding here)
loads and runs. Timing the ``.pte`` on this machine ranks candidates by XNNPACK's kernels, not
oneDNN's: the closest this host gets to what the phone will run.

Three things this module owns:

  lowering   ``lower(module, input_shape)``: one fixed input shape, the NCHW (contiguous)
             inference form: XNNPACK's passes reject channels_last inputs ("Expected ... to
             be NCHW") and pick NHWC inside the delegate themselves, so ``spec.channels_last``
             does not enter. Lowering costs tens of seconds per network on a 2-core machine,
             almost all of it in ExecuTorch's graph passes (torch.export itself takes < 1 s).
  the cache  ``cached_program(arch, shape)``: the bytes in ``cache_dir()/executorch`` under
             (archid, which carries the classes; input shape; torch and executorch versions;
             the lowering settings), so an architecture re-timed by a later trial, a re-time
             or a transfer is not lowered again. Weights are ``seeded_model``'s, as for ONNX.
  the call   ``prepare(module, shape, threads, key)``: what ``backends.make_runner`` wraps
             as the ``executorch`` Runner, a zero-argument forward of the loaded program on a
             fixed input. XNNPACK runs on ExecuTorch's process-wide threadpool, sized here to
             the target's threads; with one thread every kernel runs on the calling thread, so
             the thread-CPU clock times it as it times torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.files import atomic_write
from ..errors import UserError, first_line
from .env import cache_dir, compute_lock, package_version
from .target import stable_hash

__all__ = ["INSTALL_HINT", "LOWERING", "require_executorch", "program_tag",
           "lower", "cached_program", "Program", "set_threads", "prepare"]

INSTALL_HINT = 'pip install -e ".[executorch]"'
# What a .pte depends on besides the architecture and the shape; bump "version" when lower()
# changes what it builds (part of the cache key).
LOWERING = {"partitioner": "xnnpack", "form": "inference, NCHW", "dtype": "float32", "version": 1}


# --- the optional package ----------------------------------------------------------------------


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence a block, down to file descriptor 2: ExecuTorch's C++ runtime logs CPU probing
    and threadpool resets, torchao (which it imports) reports kernels it cannot load, and the
    lowering passes warn about deprecations, none of it about the model."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def require_executorch(what: str = "target.backend: executorch") -> SimpleNamespace:
    """The parts of ExecuTorch used here (``lower_fn``, ``partitioner``, ``runtime``), or a
    one-line UserError naming the install command."""
    try:
        with quiet():
            # lazy: ExecuTorch is a heavy optional package, imported only when it is asked for.
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
            from executorch.extension.pybindings import portable_lib
    except ImportError as e:
        name = (getattr(e, "name", None) or "executorch").split(".")[0]
        raise UserError(f"{what} needs the {name} package ({INSTALL_HINT})") from None
    return SimpleNamespace(lower_fn=to_edge_transform_and_lower, partitioner=XnnpackPartitioner,
                           runtime=portable_lib)


def program_tag() -> str:
    return stable_hash({**LOWERING, "torch": torch.__version__, "executorch": package_version("executorch")})


# --- lowering ------------------------------------------------------------------------------------


def lower(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[bytes, dict[str, Any]]:
    """The ``.pte`` bytes of ``module`` (eval, NCHW) for one ``input_shape``, and what the
    lowering did: ``lower_s`` and how many graph nodes XNNPACK took (``delegated_nodes``) and
    left to ExecuTorch's portable kernels (``portable_nodes``)."""
    et = require_executorch()
    module = module.eval().to(memory_format=torch.contiguous_format)
    x = torch.zeros(input_shape)  # an example for the fixed shape: its values do not matter
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), quiet():
            prog = torch.export.export(module, (x,))
            edge = et.lower_fn(prog, partitioner=[et.partitioner()])
            nodes = _delegation(edge.exported_program().graph_module)
            data = edge.to_executorch().buffer
    except Exception as e:
        raise UserError(f"ExecuTorch lowering failed ({first_line(e)})") from None  # graph dumps
    return data, {"lower_s": time.perf_counter() - t0, **nodes, "size_kb": len(data) / 1024}


def _delegation(gm: torch.fx.GraphModule) -> dict[str, int]:
    """Op nodes the XNNPACK delegate runs (inside its lowered submodules) and those left outside."""
    inside = sum(1 for name, sub in gm.named_children() if name.startswith("lowered_module")
                 for n in getattr(sub, "original_module", sub).graph.nodes if n.op == "call_function")
    outside = sum(1 for n in gm.graph.nodes if n.op == "call_function"
                  and "executorch_call_delegate" not in str(n.target) and "getitem" not in str(n.target))
    return {"delegated_nodes": inside, "portable_nodes": outside}


def _program_dir() -> Path:
    d = cache_dir() / "executorch"
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _one_lowering(path: Path | None) -> Iterator[None]:
    """Held while ``path`` is looked up and, if missing, lowered: the workers of a run that
    all start on the same reference lower it once, the others wait and read it."""
    if path is None:
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        yield


def cached_program(module: nn.Module, shape: tuple[int, ...], key: str | None
                   ) -> tuple[bytes, dict[str, Any]]:
    """The program of ``module`` (named by ``key``, e.g. an archid) for ``shape``: read from
    the cache, else lowered and written there (whole: ``atomic_write``). ``key=None``: lowered
    afresh, not cached. Lowering holds the compute lock: its tens of seconds of CPU never
    overlap another process's timing window."""
    info: dict[str, Any] = {"export_cached": False, "path": None}
    path = None
    if key is not None:
        b, _, h, w = shape
        path = _program_dir() / f"{key}_b{b}_{h}x{w}_{program_tag()}.pte"
        info["path"] = str(path)
    with _one_lowering(path):
        if path is not None and path.is_file():
            info.update(export_cached=True, export_s=0.0)
            return path.read_bytes(), info
        t0 = time.perf_counter()
        with compute_lock():
            data, _ = lower(module, shape)
        info["export_s"] = time.perf_counter() - t0
        if path is not None:
            atomic_write(path, data)
    return data, info


# --- the runtime --------------------------------------------------------------------------------


def set_threads(n: int) -> None:
    """Size ExecuTorch's threadpool (process-wide, used by XNNPACK) to ``n`` if it is not.
    Only between forward passes: the runtime's "unsafe" reset must not meet a running one."""
    rt = require_executorch().runtime
    with quiet():  # the pool's first use probes the CPU, loudly
        if rt._threadpool_get_thread_count() != n:
            rt._unsafe_reset_threadpool(n)


class Program:
    """A loaded ``.pte``: ``forward((x,))`` returns the outputs as a list of tensors. It holds
    the bytes it was loaded from: the runtime reads them in place, without a copy."""

    def __init__(self, data: bytes | str | Path, threads: int = 1) -> None:
        rt = require_executorch().runtime
        set_threads(threads)
        self.data = Path(data).read_bytes() if isinstance(data, (str, Path)) else data
        try:
            with quiet():
                self.module = rt._load_for_executorch_from_buffer(self.data)
        except Exception as e:
            raise UserError(f"ExecuTorch could not load the program ({e.__class__.__name__}: {e})") from None
        self.forward = self.module.forward


def prepare(module: nn.Module, x_np: np.ndarray, threads: int, key: str | None
            ) -> tuple[Callable[[], list[torch.Tensor]], np.ndarray, int, dict[str, Any]]:
    """(call, input, threads, info) of ``module`` (eval, NCHW) lowered for the shape of the
    fixed input ``x_np`` (float32, NCHW): the parts of a ``timing.Runner``. ``info``:
    export_s, export_cached, path, session_s."""
    data, info = cached_program(module, tuple(x_np.shape), key)
    t0 = time.perf_counter()
    prog = Program(data, threads)
    info["session_s"] = time.perf_counter() - t0
    x = (torch.from_numpy(x_np.copy()),)
    rt = require_executorch().runtime

    def run() -> list[torch.Tensor]:
        # Something else in this process may have resized the pool: one cheap call to check.
        if rt._threadpool_get_thread_count() != threads:
            set_threads(threads)
        return prog.forward(x)

    return run, x_np, threads, info
