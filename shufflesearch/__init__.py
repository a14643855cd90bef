"""shufflesearch: architecture search over ShuffleNet-family CNNs, judged by measured latency."""

from __future__ import annotations

from .model.arch import PRESETS, Arch, ArchError, Stage, Stem, load_arch, preset
from .model.compile import build, load_torchvision_weights, to_inference
from .model.cost import costs
from .errors import UserError
from .model.graph import op_graph

__all__ = [
    "PRESETS",
    "check",
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

# Heavier entry points (Optuna, ONNX) load on first use, so `import shufflesearch` stays light.
# (`run_search` rather than `search`: the submodule shufflesearch.search owns that name.)
_LAZY = {"run_search": (".search.engine", "search"), "load_space": (".search.space", "load_space"),
         "export_arch": (".review.export", "export_arch"), "check": (".guidelines.checks", "check"),
         "measure_arch": (".measure.protocol", "measure_arch"),
         "compute_proxies": (".accuracy.proxies", "compute_proxies")}


def __getattr__(name: str):  # PEP 562
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module, __name__), attr)
    raise AttributeError(f"module 'shufflesearch' has no attribute {name!r}")
