"""The architecture and everything derived from it without running it.

Owns: Arch and the presets (arch), per-unit channel arithmetic (specs), the OpGraph (graph),
params/MACs/MAC (cost), the nn units (units), compile to training/inference form (compile) and
the standalone model.py generated from those units (codegen).
May import: common and errors. Takes an Arch, never a preset name or a path: those are resolved
at the edges (the cli package, the public API) with ``model.arch.resolve_arch``.
"""

from __future__ import annotations

from .arch import PRESETS, Arch, ArchError, Stage, Stem, load_arch, preset, resolve_arch
from .compile import build, to_inference
from .cost import Costs, costs
from .graph import op_graph

__all__ = ["PRESETS", "Arch", "ArchError", "Costs", "Stage", "Stem", "build", "costs", "load_arch",
           "op_graph", "preset", "resolve_arch", "to_inference"]
