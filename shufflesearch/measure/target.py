"""The target a latency figure is taken on (TargetSpec) and the figure itself (Latency)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..common.settings import check_settings, setting
from ..common.stats import bootstrap_ci


def stable_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "executorch")  # measure/backends.py runs each
# Every figure is a ratio to this network, timed in the same window on the same target spec
# (same backend, memory format, threads): a fixed yardstick the machine's slow phases hit alike.
REFERENCE_ARCH = "shufflenet_v2_x0_5"
# Bump when the timing protocol changes what a figure means; it is part of the cache key.
# 1: absolute median of one model timed alone. 2: ratio to REFERENCE_ARCH timed interleaved.
PROTOCOL_VERSION = 2


# --- the target ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """What the deployed model runs as; latency is measured on exactly this."""

    resolution: int = setting(224, lo=8, hi=4096, doc="square input side in pixels")
    batch: int = setting(1, lo=1, hi=4096, doc="images per forward pass")
    threads: int = setting(1, lo=1, hi=256, doc="intra-op threads (torch.set_num_threads, "
                           "onnxruntime's intra_op_num_threads)")
    channels_last: bool = setting(False, doc="NHWC memory format for the input and the weights")
    backend: str = setting("torch", choices=BACKENDS, doc="the runtime latency is measured "
                           "on: torch (the inference form), onnxruntime, onnxruntime-int8 or "
                           "executorch (XNNPACK)")

    def __post_init__(self) -> None:
        check_settings(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        return stable_hash(self.to_dict())

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.resolution, self.resolution)


@dataclass
class Latency:
    """One figure. Since protocol 2 the candidate is timed in rounds interleaved with the
    reference network; ``ratio`` (candidate / reference, by ``estimator`` over the rounds) is
    what ranks, and ``median_ms = ratio x reference["ms"]`` is the latency it reports, where
    the reference's absolute figure comes from the reference schedule (see drift.py)."""

    median_ms: float  # reported per-forward latency: ratio x reference ms (protocol 1: own median)
    iqr_ms: float  # IQR of the per-round ratios x reference ms (protocol 1: of the runs)
    n: int  # timed rounds (protocol 1: timed runs)
    runs_ms: list[float]  # the candidate's own per-round times, in this window only
    fingerprint: dict
    spec: dict
    cached: bool = False
    speed_factor: float | None = None  # the reference's time in this window / its scheduled figure
    drifted: bool = False  # the speed factor lay beyond the drift bound, even after one re-time
    ratio: float | None = None  # candidate / reference in the same rounds (None: protocol 1)
    ratio_ci: list[float] | None = None  # 95% bootstrap interval of ratio over the rounds
    estimator: str | None = None  # how ratio was taken from the rounds (protocol.ESTIMATORS)
    abs_ms: float | None = None  # the candidate's own median in this window (not for ranking)
    reference: dict | None = None  # arch, archid, ms (absolute figure), spread, n, window_ms
    ref_runs_ms: list[float] | None = None  # the reference's per-round times, paired with runs_ms
    protocol: int = 1  # PROTOCOL_VERSION of the protocol that produced it (old records: 1)

    @property
    def rel_iqr(self) -> float:
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else float("inf")

    @property
    def ci_ms(self) -> tuple[float, float] | None:
        """The ratio's interval in ms (x the same reference figure)."""
        if self.ratio_ci is None or not self.reference:
            return None
        return (self.ratio_ci[0] * self.reference["ms"], self.ratio_ci[1] * self.reference["ms"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Latency:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def ties(a: float, a_ci: tuple[float, float] | list[float], b: float, b_ci: tuple[float, float] | list[float]) -> bool:
    """Whether two estimates differ by no more than their measured noise: the difference lies
    inside the combined half-widths of their intervals (each interval's half on the side that
    faces the other figure, combined as independent errors: sqrt(ha^2 + hb^2))."""
    lo, hi = (a, b) if a <= b else (b, a)
    lo_ci, hi_ci = (a_ci, b_ci) if a <= b else (b_ci, a_ci)
    h_lo = max(lo_ci[1] - lo, 0.0)  # how far the smaller figure could be larger
    h_hi = max(hi - hi_ci[0], 0.0)  # how far the larger one could be smaller
    return hi - lo <= (h_lo**2 + h_hi**2) ** 0.5


def paired(a: Latency, b: Latency) -> bool:
    """Whether two figures come from the same rounds of one window (a side-by-side re-timing):
    then both ratios share the reference's per-round denominator and are correlated."""
    return bool(a.ref_runs_ms and a.runs_ms and b.runs_ms and a.ref_runs_ms == b.ref_runs_ms
                and len(a.runs_ms) == len(b.runs_ms) == len(a.ref_runs_ms))


def paired_ratio_ci(a: Latency, b: Latency) -> tuple[float, float]:
    """95% bootstrap interval of a / b from their per-round times in one window: the median of
    a_i / b_i (the reference's time of round i cancels), resampling whole rounds."""
    ci = bootstrap_ci(lambda x, y: float(np.median(x / y)), a.runs_ms, b.runs_ms, n_boot=500)
    return (ci.lo, ci.hi)


def is_tie(a: Latency, b: Latency) -> bool:
    """Whether two figures are a tie, i.e. their difference is inside the measured noise.

    Two figures from the same window are compared paired: a tie when the interval of a / b
    over the rounds holds 1. Their ratios to the reference share each round's reference time,
    so combining their intervals as independent errors would count the reference's noise
    twice and over-call ties. Ratios to the same reference from different windows compare
    directly; otherwise the ms figures compare, with the ratio intervals scaled to ms, or
    +-IQR/2 for protocol-1 figures that have no interval."""
    if paired(a, b):
        lo, hi = paired_ratio_ci(a, b)
        return lo <= 1.0 <= hi
    same_ref = (a.ratio is not None and b.ratio is not None and a.ratio_ci and b.ratio_ci
                and (a.reference or {}).get("archid") == (b.reference or {}).get("archid"))
    if same_ref:
        return ties(a.ratio, a.ratio_ci, b.ratio, b.ratio_ci)  # type: ignore[arg-type]

    def ms_ci(x: Latency) -> tuple[float, float]:
        return x.ci_ms or (x.median_ms - x.iqr_ms / 2, x.median_ms + x.iqr_ms / 2)

    return ties(a.median_ms, ms_ci(a), b.median_ms, ms_ci(b))
