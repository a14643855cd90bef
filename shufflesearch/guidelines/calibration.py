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

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    import networkx as nx

    from .checks import GuidelineReport


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

    def annotate(self, report: GuidelineReport, g: nx.DiGraph, macs: dict[str, int]) -> None:
        """Fill in the estimated milliseconds of a report's findings (guidelines.check)."""
        from ..model.cost import ELEMENTWISE, node_cost

        for f in report.findings:
            f.overhead_ms = self.estimate_ms(0, f.overhead_mac, f.overhead_ops)
        report.overhead_ms = sum(f.overhead_ms or 0.0 for f in report.findings)
        t_all = t_ew = 0.0
        for n, m in macs.items():
            a = g.nodes[n]
            if m == 0 and a["op"] != "conv":
                continue
            t = self.estimate_ms(node_cost(a).macs, m, 1)
            t_all += t
            if a["op"] in ELEMENTWISE:
                t_ew += t
        report.elementwise_time_share = t_ew / t_all if t_all else None
        report.calibration = self.fingerprint_id


def fit(points: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """Non-negative least squares of ms on (MACs, MAC, ops), relative errors weighted equally.

    ``points`` are (macs, mac, ops, ms). Returns (ms_per_gmac, ms_per_melem, ms_per_op,
    median relative error)."""
    import numpy as np
    from scipy.optimize import nnls

    a = np.array([[p[0] / 1e9, p[1] / 1e6, p[2]] for p in points], dtype=float)
    y = np.array([p[3] for p in points], dtype=float)
    w = 1.0 / y  # fit relative error, so the small blocks count as much as the big ones
    coef, _ = nnls(a * w[:, None], y * w)
    rel = np.abs(a @ coef - y) / y
    return float(coef[0]), float(coef[1]), float(coef[2]), float(np.median(rel))


def path_for(fingerprint_id: str) -> Path:
    from ..measure.env import cache_dir

    return cache_dir() / "calibration" / f"{fingerprint_id}.json"


def save(cal: Calibration) -> Path:
    p = path_for(cal.fingerprint_id)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(cal.to_dict(), indent=2))
    tmp.replace(p)  # atomic: a search reading it never sees half a file
    return p


def load(fingerprint_id: str | None = None, threads: int = 1) -> Calibration | None:
    """The calibration stored for ``fingerprint_id`` (default: this machine at ``threads``)."""
    if fingerprint_id is None:
        from ..measure.env import fingerprint
        from ..measure.env import fingerprint_id as fid

        fingerprint_id = fid(fingerprint(threads))
    p = path_for(fingerprint_id)
    if not p.exists():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: unreadable calibration ({e.__class__.__name__}); delete it and "
                        "run `shufflesearch guidelines` again") from None
    return Calibration.from_dict(d, str(p))


def calibrate(points: list[tuple[float, float, float, float]], threads: int = 1, **extra: Any) -> Calibration:
    """Fit and wrap the coefficients for this machine at ``threads`` (not saved)."""
    import datetime

    from ..measure.env import fingerprint, fingerprint_id

    a, b, c, err = fit(points)
    fp = fingerprint(threads)
    return Calibration(
        fingerprint_id(fp), fp, a, b, c, err, len(points),
        datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), dict(extra),
    )
