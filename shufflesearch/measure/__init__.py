"""Latency on this machine: what is timed, how, and what is remembered.

Owns: the target spec and Latency record (target), the environment fingerprint, cache folder
and cross-process locks (env), the one timing loop, its Runner and estimators (timing), the
timing protocol relative to a reference (protocol), the latency cache (cache), the drift
monitor (drift), the per-unit latency predictor (predictor), the runtimes and the int8
calibration rule (backends), the torch backend's compiled form (compiled) and the ExecuTorch
backend's lowering and program cache (executorch).
May import: common, model and errors.
"""

from __future__ import annotations

from .cache import LatencyCache
from .predictor import LatencyTable
from .protocol import measure_arch
from .target import BACKENDS, Latency, TargetSpec

__all__ = ["BACKENDS", "Latency", "LatencyCache", "LatencyTable", "TargetSpec", "measure_arch"]
