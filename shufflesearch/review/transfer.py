"""How far a run's front transfers between runtimes (``shufflesearch latency transfer``).

A front found by timing one runtime is not the front for another: ONNX Runtime fuses and
schedules ops differently from PyTorch, and int8 changes which ops cost most. This re-times a
run's front and its baselines on each runtime asked for, side by side (``protocol.retime``:
all points and that runtime's own reference interleaved in one window), and reports per
runtime each point's ratio to the reference and its ms, the Kendall tau between runtimes'
rankings of the points, and which points stay non-dominated on (proxy, latency) there. The
proxy score is the run's: only latency changes with the runtime. ExecuTorch (XNNPACK) lowers
each point before its window (tens of seconds each, cached by archid for the next time).
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from ..accuracy.data import load_data
from ..common.stats import kendall_tau
from ..errors import UserError
from ..measure.backends import calibration_images
from ..measure.protocol import retime
from ..measure.target import BACKENDS
from ..model.arch import Arch
from ..search.front import on_one_reference, pareto_front, shown_front
from ..search.records import TrialRecord
from .pareto import load_records

FILE = "transfer.json"


def parse_backends(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS]
    if bad or len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"at least two distinct of {', '.join(BACKENDS)}, comma-separated; got {text!r}",
                        field="backends")
    return names


def transfer_points(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The front that `pareto` shows (on one reference, re-timed points only when the run was
    re-timed) and the run's baselines, one per architecture, front first."""
    records = on_one_reference(list(records))
    front = shown_front(records)
    seen = {r.archid for r in front}
    base = []
    for r in records:
        if r.baseline and r.complete and r.archid not in seen:
            seen.add(r.archid)
            base.append(r)
    return front + base


def transfer(run_path: str | Path, backends: Sequence[str], *, seconds_per_point: float = 1.0,
             progress: Any = None) -> dict[str, Any]:
    """Re-time the run's front and baselines on every backend, each window capped at
    ``seconds_per_point`` x (points + reference); the result is also written to RUN/transfer.json."""
    run, records = load_records(run_path)
    points = transfer_points(records)
    if len(points) < 2:
        raise UserError(f"{run_path}: needs at least two completed front points or baselines to compare runtimes")
    front_ids = {r.archid for r in shown_front(on_one_reference(records))}
    unread = [r.trial for r in points if r.arch is None]
    if unread:
        raise UserError(f"trial {unread[0]}: this version cannot read its stored architecture")
    archs: list[Arch] = [r.arch for r in points]  # type: ignore[misc]
    target = run.space.target
    lat: dict[str, list[Any]] = {}
    for b in backends:
        if progress is not None:
            progress(f"timing {len(points)} points on {b}" + (" (lowering the uncached ones to XNNPACK "
                     "first: tens of seconds each)" if b == "executorch" else ""))
        cal = calibration_images(load_data(run.space.data)) if b == "onnxruntime-int8" else None
        lat[b] = retime(archs, dataclasses.replace(target, backend=b), calibration=cal,
                        max_seconds=seconds_per_point * (len(archs) + 1))
    on_front: dict[str, set[str]] = {}
    for b in backends:
        moved = [dataclasses.replace(r, latency_ms=la.median_ms) for r, la in zip(points, lat[b])]
        on_front[b] = {r.archid for r in pareto_front(moved)}
    rows = []
    for i, r in enumerate(points):
        rows.append({
            "trial": r.trial, "archid": r.archid, "baseline": r.baseline, "proxy": r.proxy,
            "run_latency_ms": r.latency_ms, "run_front": r.archid in front_ids,
            "latency": {b: {"ms": lat[b][i].median_ms, "ratio": lat[b][i].ratio, "ratio_ci": lat[b][i].ratio_ci}
                        for b in backends},
            "front": {b: r.archid in on_front[b] for b in backends},
        })
    taus = {f"{a}~{b}": kendall_tau([x["latency"][a]["ratio"] for x in rows], [x["latency"][b]["ratio"] for x in rows])
            for a, b in combinations(backends, 2)}
    n_front = len(front_ids)
    out = {
        "run": run.name, "target": target.to_dict(), "backends": list(backends), "points": rows,
        "kendall_tau": taus,
        "front_size": {b: len(on_front[b]) for b in backends},
        "run_front_surviving": {b: sum(1 for x in rows if x["run_front"] and x["front"][b]) for b in backends},
        "run_front_points": n_front,
        "reference_ms": {b: (lat[b][0].reference or {}).get("ms") for b in backends},
        "fingerprint": {b: lat[b][0].fingerprint for b in backends},
    }
    (run.root / FILE).write_text(json.dumps(out, indent=2))
    return out


def load_transfer(run_root: str | Path) -> dict[str, Any] | None:
    p = Path(run_root) / FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None  # a report never fails on a damaged side file; re-run `latency transfer`


def format_transfer(d: dict[str, Any]) -> str:
    bs = d["backends"]
    head = f"{'trial':>6} {'archid':<13} {'proxy':>8} " + " ".join(f"{b + ' ratio':>22}" for b in bs)
    lines = [f"run {d['run']}: front and baselines re-timed side by side on each runtime "
             f"(ratio to V2 0.5x on the same runtime; * = non-dominated there)", head]
    for x in d["points"]:
        tag = x["baseline"] or ("front" if x["run_front"] else "")
        cells = " ".join(f"{x['latency'][b]['ratio']:>8.3f} {x['latency'][b]['ms']:>8.3f}ms{'*' if x['front'][b] else ' '} "
                         for b in bs)
        lines.append(f"{x['trial']:>6} {x['archid'][:12]:<13} {x['proxy']:>8.3f} {cells} {tag}")
    for k, t in d["kendall_tau"].items():
        lines.append(f"Kendall tau {k.replace('~', ' vs ')}: {t:.2f}")
    for b in bs:
        lines.append(f"{b}: {d['run_front_surviving'][b]} of the run's {d['run_front_points']} front points "
                     f"stay non-dominated ({d['front_size'][b]} points non-dominated in all)")
    return "\n".join(lines)


def transfer_html(d: dict[str, Any] | None) -> str:
    """The report's section for a run that carries transfer.json ("" otherwise)."""
    if not d:
        return ""
    bs = d["backends"]
    e = html.escape
    head = "".join(f"<th>{e(b)} ratio</th><th>{e(b)} ms</th>" for b in bs)
    body = []
    for x in d["points"]:
        cells = "".join(f"<td>{x['latency'][b]['ratio']:.3f}{' ★' if x['front'][b] else ''}</td>"
                        f"<td>{x['latency'][b]['ms']:.3f}</td>" for b in bs)
        tag = e(x["baseline"] or ("front" if x["run_front"] else ""))
        body.append(f"<tr><td>{x['trial']}</td><td><code>{e(x['archid'][:12])}</code></td><td>{tag}</td>"
                    f"<td>{x['proxy']:.3f}</td>{cells}</tr>")
    taus = "; ".join(f"{e(k.replace('~', ' vs '))} {t:.2f}" for k, t in d["kendall_tau"].items())
    surv = "; ".join(f"{e(b)} {d['run_front_surviving'][b]}/{d['run_front_points']}" for b in bs)
    return (f"<h2>Runtimes</h2><p class=note>The front and baselines re-timed side by side on each runtime "
            f"(<code>shufflesearch latency transfer</code>); ratio to V2 0.5x on the same runtime, ★ = "
            f"non-dominated there. Kendall τ: {taus}. Front points still non-dominated: {surv}.</p>"
            f"<table><tr><th>trial</th><th>archid</th><th></th><th>proxy</th>{head}</tr>{''.join(body)}</table>")
