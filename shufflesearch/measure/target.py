"""The target a latency figure is taken on (TargetSpec) and the figure itself (Latency)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..errors import UserError


def stable_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")  # measure/backends.py runs each
REFERENCE_ARCH = "shufflenet_v2_x0_5"  # the drift monitor's fixed yardstick


# --- the target ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """What the deployed model runs as; latency is measured on exactly this."""

    resolution: int = 224  # square input side in pixels
    batch: int = 1  # images per forward pass
    threads: int = 1  # intra-op threads (torch.set_num_threads / ORT intra_op_num_threads)
    channels_last: bool = False  # NHWC memory format for input and weights
    backend: str = "torch"  # "torch" (inference form), "onnxruntime" or "onnxruntime-int8"

    def __post_init__(self) -> None:
        for name in ("resolution", "batch", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UserError(f"target.{name}: must be an integer >= 1, got {v!r}")
        if self.backend not in BACKENDS:
            raise UserError(f"target.backend: must be one of {', '.join(BACKENDS)}, got {self.backend!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        return stable_hash(self.to_dict())

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.resolution, self.resolution)


@dataclass
class Latency:
    """One measured figure: per-forward median and IQR in ms over ``n`` timed runs."""

    median_ms: float
    iqr_ms: float
    n: int
    runs_ms: list[float]
    fingerprint: dict
    spec: dict
    cached: bool = False
    speed_factor: float | None = None  # machine speed vs the drift baseline when measured
    drifted: bool = False  # the speed factor lay beyond the drift monitor's bound

    @property
    def rel_iqr(self) -> float:
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Latency:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
