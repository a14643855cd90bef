"""The bundle's model.pte: the inference form as an ExecuTorch program, lowered to XNNPACK.

``export_pte`` lowers a model as the ``executorch`` backend does (``measure/executorch.py``:
the NCHW inference form, one fixed input shape), writes the program, loads it back from the
file into ExecuTorch's runtime, runs it on a seeded batch, and times it beside the torch
inference form. The caller (export.py) compares the outputs with the training form's.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from ..measure import backends as B
from ..measure import executorch as ET
from ..measure.env import package_version
from ..measure.timing import time_rounds
from ..model.compile import to_inference

PTE = "model.pte"


def export_pte(model: torch.nn.Module, path: Path, res: int, batch: int, threads: int,
               channels_last: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(program outputs, training-form outputs, what to report) for ``model`` (the training
    form, eval, with its weights) on a seeded batch of (``batch``, C, ``res``, ``res``).
    ``channels_last``: the memory format of the torch inference form it is timed beside (the
    target's). Raises UserError when ExecuTorch is missing or the lowering fails."""
    ET.require_executorch(PTE)
    shape = (batch, model.arch.in_channels, res, res)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    data, low = ET.lower(to_inference(model, channels_last=False), shape)
    path.write_bytes(data)
    prog = ET.Program(path, threads)  # read back from the file: what ships is what is checked
    y = prog.forward((x,))[0]

    inf = to_inference(model, channels_last=channels_last)
    x_t = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    runners = [B.torch_runner(inf, x_t, threads),
               B.Runner("executorch", lambda: prog.forward((x,)), x.numpy(), threads, {})]
    t_torch, t_et = time_rounds(runners, max_seconds=1.0, target_rel_ci=None)
    return y, ref, {
        "batch": batch, "resolution": res, "threads": threads, "lower_s": low["lower_s"],
        "delegated_nodes": low["delegated_nodes"], "portable_nodes": low["portable_nodes"],
        "size_kb": low["size_kb"], "executorch": package_version("executorch"),
        "torch_ms": statistics.median(t_torch), "executorch_ms": statistics.median(t_et),
        "latency_ratio": statistics.median(e / t for t, e in zip(t_torch, t_et)),  # executorch / torch
        "torch_form": "NHWC" if channels_last else "NCHW",
    }
