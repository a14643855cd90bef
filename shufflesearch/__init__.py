"""shufflesearch: architecture search over ShuffleNet-family CNNs, judged by measured latency."""

from __future__ import annotations

from .arch import PRESETS, Arch, ArchError, Stage, Stem, load_arch, preset
from .compile import build, load_torchvision_weights, to_inference
from .cost import costs
from .errors import UserError
from .graph import op_graph

__all__ = [
    "PRESETS",
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
