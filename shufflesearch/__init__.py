"""shufflesearch: architecture search over ShuffleNet-family CNNs, judged by measured latency."""

from __future__ import annotations

from .arch import PRESETS, Arch, ArchError, Stage, Stem, load_arch, preset
from .compile import build, load_torchvision_weights, to_inference
from .cost import costs
from .errors import UserError
from .graph import op_graph

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
_LAZY = {"run_search": (".search", "search"), "load_space": (".space", "load_space"),
         "export_arch": (".export", "export_arch"), "check": (".guidelines", "check"),
         "measure_arch": (".latency", "measure_arch"), "compute_proxies": (".proxies", "compute_proxies")}


def __getattr__(name: str):  # PEP 562
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module, __name__), attr)
    raise AttributeError(f"module 'shufflesearch' has no attribute {name!r}")
