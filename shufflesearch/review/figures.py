"""The report's interactive plots as Plotly figures: pure functions from ReportData to
JSON-ready dicts, which the page hands to the embedded plotly.js (html.py, report.js).

Every marker that stands for a trial carries the index of its row (``ReportData.rows``) in
``customdata`` (-1 where a line breaks between trials). The page fills the hover text from that
row, opens the details panel on click, and leaves out the rows a toggle hides (``row_flags``).
Two kinds of trace are exempt: ``meta: {"overlay": FLAG}`` (FLAG in OVERLAYS) shows or hides
whole with that toggle, which hides no row (the latency-ties toggle takes the tie marks off, not
the tied trials), and ``meta: {"fixed": true}`` ignores the toggles (a running total or a count
does not change with what is hidden).
"""

from __future__ import annotations

import math
from typing import Any

from .pareto import GUIDELINES, ParetoRow
from .report_data import ReportData

FRONT, BASE, FADED, KNEE, BAD, BELOW = "#1f6fb4", "#d62728", "#9aa3ad", "#ff9f1c", "#8c564b", "#b8bec6"
G_COLOURS = dict(zip(GUIDELINES, ("#4c78a8", "#f58518", "#54a24b", "#b279a2")))
TOGGLES = {  # flag -> what its checkbox says; the flags a row carries come from row_flags
    "baseline": "baselines",
    "below": "trials below the top rung",
    "infeasible": "infeasible trials",
    "tie": "latency ties",
}
OVERLAYS = frozenset({"tie"})  # toggles that show or hide an overlay trace, not rows
HOVER = "%{hovertext}<extra></extra>"  # the row's text, filled in by the page


def row_flags(r: ParetoRow) -> list[str]:
    """The toggles that concern this row (keys of TOGGLES). An infeasible trial never trains,
    so it counts as infeasible, not as below the top rung."""
    below = r.feasible and r.top_rung is not None and r.rung != r.top_rung
    return [f for f, on in (("baseline", bool(r.baseline)), ("below", below),
                            ("infeasible", not r.feasible), ("tie", bool(r.ties))) if on]


def _points(name: str, idx: list[int], xs: list[Any], ys: list[Any], *, colour: str, symbol: str = "circle",
            size: int = 8, hover: str = HOVER, mode: str = "markers", marker: dict[str, Any] | None = None,
            **kw: Any) -> dict[str, Any]:
    """A scatter trace of rows ``idx`` at (xs, ys); ``kw`` are further trace properties."""
    return {"type": "scatter", "mode": mode, "name": name, "x": xs, "y": ys, "customdata": idx,
            "hovertemplate": hover, "marker": {"color": colour, "symbol": symbol, "size": size, **(marker or {})},
            **kw}


def _layout(title: str, x: str, y: str, **kw: Any) -> dict[str, Any]:
    axis = {"gridcolor": "#e5e5e5", "zeroline": False, "automargin": True}
    return {"title": {"text": title, "font": {"size": 14}}, "template": "none",
            "font": {"family": "system-ui, sans-serif", "size": 12},
            "xaxis": {**axis, "title": {"text": x}}, "yaxis": {**axis, "title": {"text": y}},
            "hovermode": "closest", "hoverlabel": {"align": "left", "bgcolor": "white"},
            "legend": {"orientation": "h", "y": -0.2}, "margin": {"t": 48, "r": 16, "b": 8, "l": 8},
            "height": 420, **kw}


def _classes(d: ReportData, rows: list[int]) -> list[tuple[str, list[int], dict[str, Any]]]:
    """The rows split into the classes every scatter draws alike: (name, row indices, style)."""
    out: dict[str, list[int]] = {k: [] for k in ("below the top rung", "dominated", "infeasible",
                                                 "non-dominated", "baseline")}
    for i in rows:
        r = d.rows[i]
        k = ("baseline" if r.baseline else "infeasible" if not r.feasible
             else "below the top rung" if "below" in row_flags(r)
             else "non-dominated" if r.on_front else "dominated")
        out[k].append(i)
    style = {"below the top rung": {"colour": BELOW, "size": 6, "opacity": 0.6},
             "dominated": {"colour": FADED, "size": 8, "opacity": 0.6},
             "infeasible": {"colour": BAD, "symbol": "x", "size": 7},
             "non-dominated": {"colour": FRONT, "size": 9},
             "baseline": {"colour": BASE, "symbol": "star", "size": 14}}
    return [(k, v, {"symbol": "circle", "opacity": 1.0, **style[k]}) for k, v in out.items() if v]


def fig_pareto(d: ReportData) -> dict[str, Any]:
    """Accuracy figure vs latency over the rows that have one (the top rung's estimator: one
    scale), with the front's staircase, the knee ringed and latency ties joined."""
    rows = [i for i, r in enumerate(d.rows) if r.proxy is not None]
    lat = [r.latency_ms for r in d.rows]
    acc = [r.proxy for r in d.rows]
    data = []
    on = sorted((i for i in rows if d.rows[i].on_front), key=lambda i: lat[i])
    data.append({"type": "scatter", "mode": "lines", "name": "front", "x": [lat[i] for i in on],
                 "y": [acc[i] for i in on], "line": {"shape": "hv", "color": FRONT, "width": 1},
                 "opacity": 0.6, "hoverinfo": "skip", "meta": {"fixed": True}, "showlegend": False})
    for name, idx, s in _classes(d, rows):
        extra = ({"mode": "markers+text", "text": [d.rows[i].baseline for i in idx],
                  "textposition": "top center", "textfont": {"size": 9}, "cliponaxis": False} if name == "baseline" else {})
        data.append(_points(name, idx, [lat[i] for i in idx], [acc[i] for i in idx], **s, **extra))
    knee = [i for i in rows if d.rows[i].knee]
    data.append(_points("knee", knee, [lat[i] for i in knee], [acc[i] for i in knee], colour="rgba(0,0,0,0)",
                        size=20, marker={"line": {"color": KNEE, "width": 2.5}}))
    data.append(_ties(d, rows, lat, acc))
    est = next((r.estimator for r in d.rows if r.proxy is not None and r.estimator), None)
    y = f"accuracy estimate ({est}, top rung) ↑" if est else "proxy score (penalised) ↑"
    return {"data": data, "layout": _layout("Pareto front: accuracy vs measured latency",
                                            "latency (ms, ratio × one reference) ↓", y)}


def _ties(d: ReportData, rows: list[int], xs: list[float], ys: list[Any]) -> dict[str, Any]:
    """Tied points ringed and joined pairwise by a dotted line (their latencies overlap within
    the measured noise, so neither is faster)."""
    shown = set(rows)
    x: list[Any] = []
    y: list[Any] = []
    idx: list[int] = []
    trial_row = {r.trial: i for i, r in enumerate(d.rows)}
    for i in rows:
        for t in d.rows[i].ties:
            j = trial_row.get(t)
            if j is not None and j in shown and d.rows[i].trial < t:
                x += [xs[i], xs[j], None]
                y += [ys[i], ys[j], None]
                idx += [i, j, -1]
    return _points("latency tie", idx, x, y, colour="rgba(0,0,0,0)", size=14, mode="lines+markers",
                   marker={"line": {"color": "#555", "width": 1.5}},
                   line={"dash": "dot", "color": "#555", "width": 1}, meta={"overlay": "tie"})


def fig_cost(d: ReportData, key: str) -> dict[str, Any]:
    """Latency against MACs or MAC (every completed trial: a count needs no accuracy figure)."""
    corr = d.macs_corr if key == "macs" else d.mac_corr
    name = "MACs (multiply-accumulates, M)" if key == "macs" else "MAC (memory access cost, M elements)"
    xs = [getattr(r, key) / 1e6 for r in d.rows]
    ys = [r.latency_ms for r in d.rows]
    data = [_points(n, idx, [xs[i] for i in idx], [ys[i] for i in idx], **{**s, "size": s["size"] - 2})
            for n, idx, s in _classes(d, list(range(len(d.rows))))]
    title = (f"{'MACs' if key == 'macs' else 'MAC'} vs latency: Spearman {_f(corr.spearman)}, "
             f"Kendall {_f(corr.kendall)}")
    return {"data": data, "layout": _layout(title, name, "measured latency (ms)", height=380)}


def _f(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def fig_guidelines(d: ReportData) -> dict[str, Any]:
    """G1-G4 penalties per trial, stacked."""
    idx = sorted(range(len(d.rows)), key=lambda i: d.rows[i].trial)
    xs = [d.rows[i].trial for i in idx]
    data = [{"type": "bar", "name": g, "x": xs, "y": [d.rows[i].penalties[g] for i in idx],
             "customdata": idx, "marker": {"color": G_COLOURS[g]},
             "hovertemplate": f"{g} penalty %{{y:.3f}}<br>{HOVER}"} for g in GUIDELINES]
    return {"data": data, "layout": _layout("Guideline penalties per trial (stacked G1–G4)", "trial",
                                            "penalty (each in [0, 1])", barmode="stack", height=320)}


def fig_hv(d: ReportData) -> dict[str, Any]:
    """The hypervolume after every feasible top-rung trial (fixed: a running total)."""
    row = {r.trial: i for i, r in enumerate(d.rows)}
    ref = d.hv.ref
    data = [_points("hypervolume", [row.get(t, -1) for t in d.hv.trials], d.hv.trials, d.hv.values,
                    colour=FRONT, size=6, mode="lines+markers", line={"shape": "hv", "color": FRONT},
                    hover=f"hypervolume %{{y:.4g}}<br>{HOVER}", meta={"fixed": True})]
    title = f"Hypervolume history (reference: accuracy {ref[0]:.3g}, {ref[1]:.3g} ms)"
    return {"data": data, "layout": _layout(title, "trial", "hypervolume (accuracy × ms)", height=340,
                                            showlegend=False)}


def fig_ladder(d: ReportData) -> dict[str, Any]:
    """Trials reaching each rung (left) and each trained trial's SoTL per step by rung (right)."""
    row = {r.trial: i for i, r in enumerate(d.rows)}
    data: list[dict[str, Any]] = [{
        "type": "bar", "name": "trials reaching the rung", "x": list(range(len(d.ladder_reached))),
        "y": d.ladder_reached, "marker": {"color": "#4c78a8"}, "meta": {"fixed": True},
        "hovertemplate": "rung %{x}: %{y} trials<extra></extra>", "showlegend": False}]
    for baseline in (False, True):
        x: list[Any] = []
        y: list[Any] = []
        idx: list[int] = []
        for trial, b, pts in d.ladder_curves:
            if b == baseline:
                x += [k for k, _ in pts] + [None]
                y += [v for _, v in pts] + [None]
                idx += [row.get(trial, -1)] * len(pts) + [-1]
        if x:
            data.append(_points("baseline" if baseline else "trial", idx, x, y,
                                colour=BASE if baseline else FRONT, symbol="star" if baseline else "circle",
                                size=10 if baseline else 5, mode="lines+markers", xaxis="x2", yaxis="y2",
                                opacity=1.0 if baseline else 0.5,
                                line={"width": 1.5 if baseline else 0.7},
                                hover=f"rung %{{x}}: %{{y:.4f}} SoTL per step<br>{HOVER}"))
    lay = _layout("Fidelity ladder: trials reaching each rung, and SoTL per step by rung",
                  "rung (0: zero-cost)", "trials reaching it", height=360)
    lay["xaxis"].update(domain=[0, 0.4], dtick=1)
    lay["xaxis2"] = {**lay["xaxis"], "domain": [0.5, 1], "anchor": "y2", "title": {"text": "rung"}}
    lay["yaxis2"] = {**lay["yaxis"], "anchor": "x2", "title": {"text": "SoTL per step at the rung"}}
    return {"data": data, "layout": lay}


def figures(d: ReportData) -> dict[str, dict[str, Any]]:
    """Every plot of the page by its id (fig-NAME): Plotly figure dicts, checked against
    Plotly's schema."""
    import plotly.graph_objects as go  # lazy: plotly loads ~100 ms of modules; only `report` draws

    figs = {"pareto": fig_pareto(d), "macs": fig_cost(d, "macs"), "mac": fig_cost(d, "mac"),
            "guidelines": fig_guidelines(d), "hypervolume": fig_hv(d)}
    if d.ladder_curves:
        figs["ladder"] = fig_ladder(d)
    for f in figs.values():
        go.Figure(f)  # raises on a property plotly.js would silently ignore (a typo, a bad value)
    return figs


__all__ = ["figures", "row_flags", "TOGGLES", "fig_pareto", "fig_cost", "fig_guidelines", "fig_hv",
           "fig_ladder"]
