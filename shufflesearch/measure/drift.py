"""The drift monitor: re-times a fixed reference network on a schedule, and flags figures
taken while the machine ran off its own starting speed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .cache import LatencyCache
from .protocol import measure_arch, measure_model
from .target import REFERENCE_ARCH, Latency, TargetSpec

# --- drift ------------------------------------------------------------------------------------------


@dataclass
class DriftCheck:
    reference_ms: float  # the reference model's median now
    baseline_ms: float  # ... and when the monitor started
    factor: float  # reference_ms / baseline_ms: > 1 means the machine is slower now
    drifted: bool  # |factor - 1| > bound
    time: float = field(default_factory=time.time)


class DriftMonitor:
    """Re-times a fixed reference model during a long search and records the machine's speed
    factor; figures taken while it lies beyond ``bound`` are flagged (and re-timed once when
    ``retime``). Pareto-front figures should come from undrifted measurements."""

    def __init__(self, spec: TargetSpec, reference: Any = REFERENCE_ARCH, *, bound: float = 0.10,
                 every: int = 10, retime: bool = True, max_seconds: float = 1.0) -> None:
        self.spec = spec
        self.reference = reference
        self._model: Any = None  # built on first use: constructing a monitor costs nothing
        self.bound, self.every, self.retime, self.max_seconds = bound, every, retime, max_seconds
        self.baseline: float | None = None
        self.history: list[DriftCheck] = []
        self._since = 0

    @property
    def factor(self) -> float:
        return self.history[-1].factor if self.history else 1.0

    @property
    def model(self) -> Any:
        if self._model is None:
            from ..model.arch import resolve_arch
            from ..model.compile import build

            self._model = build(resolve_arch(self.reference), inference=True)
        return self._model

    def check(self) -> DriftCheck:
        ref = measure_model(self.model, self.spec, max_seconds=self.max_seconds).median_ms
        if self.baseline is None:
            self.baseline = ref
        f = ref / self.baseline
        c = DriftCheck(ref, self.baseline, f, abs(f - 1) > self.bound)
        self.history.append(c)
        self._since = 0
        return c

    def measure_arch(self, arch: Any, *, cache: LatencyCache | None = None,
                     remeasure: bool = False) -> Latency:
        """``measure_arch`` with a drift check every ``every`` fresh measurements."""
        if self.baseline is None or self._since >= self.every:
            self.check()
        lat = measure_arch(arch, self.spec, cache=cache, remeasure=remeasure, max_seconds=self.max_seconds)
        if lat.cached:
            return lat
        self._since += 1
        if abs(self.factor - 1) > self.bound and self.retime:
            if not self.check().drifted:  # the disturbance has passed: take the figure again
                lat = measure_arch(arch, self.spec, cache=cache, remeasure=True, max_seconds=self.max_seconds)
        lat.speed_factor = round(self.factor, 4)
        lat.drifted = abs(self.factor - 1) > self.bound
        if cache is not None:
            from ..model.arch import resolve_arch

            cache.put(resolve_arch(arch).archid, self.spec, lat)
        return lat
