"""The reference schedule (formerly the drift monitor): keeps the reference network's absolute
figure current, and flags figures taken while the machine ran off its usual speed.

Every measurement window times the reference anyway (protocol.py), and adds its median to the
schedule; the monitor also times the reference on its own every ``every`` fresh measurements,
so a run whose figures all come from the cache still tracks the machine. The reference figure
is the median of the schedule's recent entries, recorded with its spread in every Latency."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from .cache import LatencyCache
from .protocol import DRIFT_BOUND, REFERENCE_SEED, ReferenceSchedule, measure_arch, window
from .target import REFERENCE_ARCH, Latency, TargetSpec

CHECK_REL_IQR = 0.03  # a check of the reference alone stops once its IQR is within 3% of its median

# --- drift ------------------------------------------------------------------------------------------


@dataclass
class DriftCheck:
    reference_ms: float  # the reference's time in this check or window
    baseline_ms: float  # ... and its scheduled figure before it
    factor: float  # reference_ms / baseline_ms: > 1 means the machine is slower now
    drifted: bool  # |factor - 1| > bound
    time: float = field(default_factory=time.time)


class DriftMonitor:
    """The reference schedule of one target during a search. ``measure_arch`` measures
    relative to the reference with the schedule's figure; a window whose reference ran beyond
    ``bound`` off that figure is re-timed once (``retime``), and a figure still drifted is
    flagged and not cached. ``history`` lists every check and window with its speed factor."""

    def __init__(self, spec: TargetSpec, reference: Any = REFERENCE_ARCH, *, bound: float = DRIFT_BOUND,
                 every: int = 10, retime: bool = True, max_seconds: float = 1.0,
                 cache: LatencyCache | None = None, calibration: Any = None) -> None:
        if reference != REFERENCE_ARCH:
            raise ValueError(f"reference: figures are relative to {REFERENCE_ARCH}, got {reference!r}")
        self.spec = spec
        self.bound, self.every, self.retime, self.max_seconds = bound, every, retime, max_seconds
        self.calibration = calibration  # images for onnxruntime-int8 (the proxy task's training split)
        self.schedule = ReferenceSchedule(spec, cache)
        self.history: list[DriftCheck] = []
        self._since: int | None = None  # fresh measurements since the last check (None: never)

    @property
    def factor(self) -> float:
        return self.history[-1].factor if self.history else 1.0

    @property
    def reference_figure(self) -> dict[str, Any] | None:
        """{"ms", "spread", "n"} of the schedule now."""
        return self.schedule.figure()

    def _record(self, ms: float, before: dict[str, Any] | None) -> DriftCheck:
        base = before["ms"] if before else ms
        f = ms / base
        c = DriftCheck(ms, base, f, bool(before and before["n"] >= 3 and abs(f - 1) > self.bound))
        self.history.append(c)
        return c

    def check(self) -> DriftCheck:
        """Time the reference alone (its own median) and add it to the schedule."""
        before = self.schedule.figure()
        runs = window([], self.spec, max_seconds=self.max_seconds, lock=True, calibration=self.calibration,
                      target_rel_ci=CHECK_REL_IQR)[0]
        ms = statistics.median(runs)
        self.schedule.add(ms)
        self._since = 0
        return self._record(ms, before)

    def seed(self, n: int = REFERENCE_SEED) -> dict[str, Any]:
        """Time the reference alone until the schedule holds ``n`` timings (a fresh machine's
        first call, so that its figure is not one window's), and return its figure."""
        while (fig := self.schedule.figure()) is None or fig["n"] < n:
            self.check()
        return fig

    def measure_arch(self, arch: Any, *, cache: LatencyCache | None = None,
                     remeasure: bool = False) -> Latency:
        """``protocol.measure_arch`` on this schedule, with a dedicated reference check every
        ``every`` fresh measurements."""
        if cache is not None and self.schedule.cache is None:
            self.schedule.cache = cache  # share the reference log with every other process
        if self._since is None or self._since >= self.every:
            self.check()
        lat = measure_arch(arch, self.spec, cache=cache, remeasure=remeasure, max_seconds=self.max_seconds,
                           schedule=self.schedule, bound=self.bound, retime_drifted=self.retime,
                           calibration=self.calibration)
        if lat.cached:
            return lat
        self._since = (self._since or 0) + 1
        ref = lat.reference or {}
        f = lat.speed_factor if lat.speed_factor is not None else 1.0
        self.history.append(DriftCheck(ref.get("window_ms", float("nan")), ref.get("window_ms", 1.0) / f,
                                       f, lat.drifted))
        return lat


def measure_seeded(arch: Any, spec: TargetSpec, *, cache: LatencyCache, remeasure: bool = False,
                   max_seconds: float = 1.0, calibration: Any = None) -> Latency:
    """``protocol.measure_arch`` for one call (`shufflesearch latency`): a machine whose
    schedule holds fewer than REFERENCE_SEED timings times the reference alone first, so that
    the ms reported is ratio x the reference's usual figure, not this one window's."""
    mon = DriftMonitor(spec, cache=cache, max_seconds=max_seconds, calibration=calibration)
    if remeasure or cache.get(arch.archid, spec, mon.schedule.fp) is None:
        mon.seed()
    return measure_arch(arch, spec, cache=cache, remeasure=remeasure, max_seconds=max_seconds,
                        schedule=mon.schedule, calibration=calibration)
