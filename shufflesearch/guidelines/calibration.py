"""Per-machine cost coefficients fitted on the guideline bench (microbench.py).

A deployed op's time is modelled as  t = a·MACs + b·MAC + c·ops : compute (multiply-accumulates),
memory traffic (elements read and written, the paper's MAC) and a fixed cost per kernel launch
(what G3 is about). The bench's blocks vary these three independently enough (Tables 1-4 hold
FLOPs fixed while MAC and op count change) for a non-negative least-squares fit. With the
coefficients, the guideline findings carry estimated milliseconds on this machine.

Stored as JSON under ``$SHUFFLESEARCH_CACHE_DIR`` (else ``~/.cache/shufflesearch``) in
``calibration/<fingerprint_id>.json``, one file per environment fingerprint (latency.py).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from scipy.optimize import nnls

from ..common.files import atomic_write
from ..errors import UserError
from ..measure.env import cache_dir, fingerprint, fingerprint_id
from ..model.cost import ELEMENTWISE, node_cost


@dataclass
class Calibration:
    fingerprint_id: str
    fingerprint: dict
    ms_per_gmac: float  # a: ms per 1e9 multiply-accumulates
    ms_per_melem: float  # b: ms per 1e6 elements moved (memory access cost)
    ms_per_op: float  # c: ms per kernel launch
    median_rel_error: float  # of the fit on the bench's own blocks
    n_points: int
    created: str = ""
    extra: dict = field(default_factory=dict)

    def estimate_ms(self, macs: float, mac: float, ops: float) -> float:
        return macs * self.ms_per_gmac / 1e9 + mac * self.ms_per_melem / 1e6 + ops * self.ms_per_op

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "calibration") -> Calibration:
        try:
            return cls(**d)
        except TypeError as e:
            raise UserError(f"{where}: not a calibration file ({e})") from None

    def annotate(self, findings: Iterable[Any], g: nx.DiGraph, macs: dict[str, int]) -> tuple[float, float | None]:
        """Fill in the estimated milliseconds of each finding (checks.Finding) and return the
        total overhead in ms and the element-wise ops' share of the estimated time."""
        overhead = 0.0
        for f in findings:
            f.overhead_ms = self.estimate_ms(0, f.overhead_mac, f.overhead_ops)
            overhead += f.overhead_ms
        t_all = t_ew = 0.0
        for n, m in macs.items():
            a = g.nodes[n]
            if m == 0 and a["op"] != "conv":
                continue
            t = self.estimate_ms(node_cost(a).macs, m, 1)
            t_all += t
            if a["op"] in ELEMENTWISE:
                t_ew += t
        return overhead, (t_ew / t_all if t_all else None)


def fit(points: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """Non-negative least squares of ms on (MACs, MAC, ops), relative errors weighted equally.

    ``points`` are (macs, mac, ops, ms). Returns (ms_per_gmac, ms_per_melem, ms_per_op,
    median relative error)."""
    a = np.array([[p[0] / 1e9, p[1] / 1e6, p[2]] for p in points], dtype=float)
    y = np.array([p[3] for p in points], dtype=float)
    w = 1.0 / y  # fit relative error, so the small blocks count as much as the big ones
    coef, _ = nnls(a * w[:, None], y * w)
    rel = np.abs(a @ coef - y) / y
    return float(coef[0]), float(coef[1]), float(coef[2]), float(np.median(rel))


def path_for(fid: str) -> Path:
    return cache_dir() / "calibration" / f"{fid}.json"


def save(cal: Calibration) -> Path:
    p = path_for(cal.fingerprint_id)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(p, json.dumps(cal.to_dict(), indent=2))  # a search never reads half


def load(fid: str | None = None, threads: int = 1) -> Calibration | None:
    """The calibration stored for fingerprint id ``fid`` (default: this machine at ``threads``)."""
    p = path_for(fid if fid is not None else fingerprint_id(fingerprint(threads)))
    if not p.exists():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: unreadable calibration ({e.__class__.__name__}); delete it and "
                        "run `shufflesearch guidelines bench` again") from None
    return Calibration.from_dict(d, str(p))


def calibrate(points: list[tuple[float, float, float, float]], threads: int = 1, **extra: Any) -> Calibration:
    """Fit and wrap the coefficients for this machine at ``threads`` (not saved)."""
    a, b, c, err = fit(points)
    fp = fingerprint(threads)
    return Calibration(
        fingerprint_id(fp), fp, a, b, c, err, len(points),
        datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), dict(extra),
    )
