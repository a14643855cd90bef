"""shufflesearch: architecture search over ShuffleNet-family CNNs, judged by measured latency.

The public API. Its functions take an ``Arch``, a preset name or an arch file: the name or path
is resolved here, at the edge, and the stages below only ever see an ``Arch``.

Layout (one subpackage per pipeline stage, each exporting its public types in ``__all__``;
imports point down this list, see docs/layout.md):
common < model < measure < guidelines < accuracy < search < review < cli.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch

from .errors import Deprecated, UserError
from .model import compile as _compile
from .model import cost as _cost
from .model.arch import PRESETS, Arch, ArchError, Stage, Stem, load_arch, preset, resolve_arch
from .model.compile import load_torchvision_weights, to_inference
from .model.graph import op_graph

if TYPE_CHECKING:
    from .model.cost import Costs

__all__ = [
    "PRESETS",
    "guideline_report",
    "compute_proxies",
    "export_arch",
    "load_space",
    "measure_arch",
    "run_search",
    "Arch",
    "ArchError",
    "Stage",
    "Stem",
    "UserError",
    "build",
    "costs",
    "load_arch",
    "load_torchvision_weights",
    "op_graph",
    "preset",
    "to_inference",
]
__version__ = "0.1.0"

ArchLike = Arch | str | Path  # an Arch, a preset name, or an arch file (.yaml/.yml/.json)


def costs(arch: ArchLike, resolution: int | tuple[int, int] = 224) -> Costs:
    """Totals and per-node/per-unit figures (params, MACs, MAC, peak activation) of ``arch``."""
    return _cost.costs(resolve_arch(arch), resolution)


def build(arch: ArchLike, inference: bool = False, num_classes: int | None = None) -> torch.nn.Module:
    """The network of ``arch``: training form, or with ``inference=True`` the eval-mode inference
    form; ``num_classes`` overrides the Arch's classifier width."""
    return _compile.build(resolve_arch(arch), inference, num_classes)


def _stage(module: str) -> Any:
    # lazy: the guideline, latency, proxy, search and export stages pull in scipy, Optuna and
    # ONNX; `import shufflesearch` loads only the model stage until one of them is called.
    return importlib.import_module(module, __name__)


def guideline_report(arch_or_graph: Any, resolution: int = 224, settings: Any = None,
                     calibration: Any = None) -> Any:
    """G1-G4 findings and penalties (a GuidelineReport) of an Arch, preset, arch file or OpGraph."""
    g = arch_or_graph if isinstance(arch_or_graph, nx.DiGraph) else resolve_arch(arch_or_graph)
    return _stage(".guidelines.checks").check(g, resolution, settings, calibration)


def measure_arch(arch: ArchLike, spec: Any, **kw: Any) -> Any:
    """Measured latency of ``build(arch, inference=True)`` on ``spec`` (a TargetSpec); keyword
    arguments as ``shufflesearch.measure.protocol.measure_arch``."""
    return _stage(".measure.protocol").measure_arch(resolve_arch(arch), spec, **kw)


def compute_proxies(arch: ArchLike, data: Any, names: Any = None, seed: int = 0) -> dict[str, float]:
    """The zero-cost proxies of one architecture on a proxy task (see accuracy.proxies)."""
    return _stage(".accuracy.proxies").compute_proxies(resolve_arch(arch), data, names, seed)


def export_arch(arch: ArchLike, out_dir: str | Path, **kw: Any) -> Any:
    """Write and verify a deployable bundle of one architecture (see review.export)."""
    return _stage(".review.export").export_arch(resolve_arch(arch), out_dir, **kw)


# Entry points that take no architecture are the stage's own functions, loaded on first use.
# (`run_search` rather than `search`: the subpackage shufflesearch.search owns that name.)
_LAZY = {"run_search": (".search.engine", "search"), "load_space": (".search.space", "load_space")}


def __getattr__(name: str) -> Any:  # PEP 562
    if name == "check":  # the old name of guideline_report ("check" is the run's self-check)
        warnings.warn("shufflesearch.check is now shufflesearch.guideline_report; the old name goes "
                      "in the next release", Deprecated, stacklevel=2)
        return guideline_report
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(_stage(module), attr)
    raise AttributeError(f"module 'shufflesearch' has no attribute {name!r}")
