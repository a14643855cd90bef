"""The Pareto front of a run's records, and its knee: pure functions, used by the search (progress,
short training) and by everything that reviews a run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a dominates b when it is no worse everywhere and better somewhere (all minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _key(r: dict[str, Any]) -> tuple[float, float]:
    return (-float(r["proxy"]), float(r["latency_ms"]))  # proxy is maximised


def pareto_front(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records not dominated on (proxy ↑, latency ↓), sorted by latency."""
    pts = [r for r in records if "proxy" in r and "latency_ms" in r
           and math.isfinite(r["proxy"]) and math.isfinite(r["latency_ms"])]
    front = [r for r in pts if not any(dominates(_key(o), _key(r)) for o in pts if o is not r)]
    seen, out = set(), []
    for r in sorted(front, key=lambda r: (r["latency_ms"], -r["proxy"])):
        if r.get("archid") not in seen:
            seen.add(r.get("archid"))
            out.append(r)
    return out


def knee(front: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The front's knee: the point farthest from the line joining its two ends, after scaling
    both objectives to [0, 1] (the usual "best trade-off" pick)."""
    if len(front) <= 2:
        return front[len(front) // 2] if front else None
    xs = [r["latency_ms"] for r in front]
    ys = [r["proxy"] for r in front]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx, sy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    pts = [((x - x0) / sx, (y - y0) / sy) for x, y in zip(xs, ys)]
    (ax, ay), (bx, by) = pts[0], pts[-1]
    norm = math.hypot(bx - ax, by - ay) or 1.0
    dist = [abs((bx - ax) * (ay - py) - (ax - px) * (by - ay)) / norm for px, py in pts]
    return front[max(range(len(front)), key=dist.__getitem__)]
