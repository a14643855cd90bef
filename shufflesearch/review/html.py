"""`shufflesearch report`: one self-contained HTML page of a run, with interactive plots.

``report_data`` says what the page shows (every record read happens there), ``figures`` turns
it into Plotly figures, and this module lays out the page and writes it. The page carries
everything it needs: plotly.js (gzip-compressed and base64-encoded, unpacked by the browser's
DecompressionStream: the plain bundle alone is about 4.8 MB), the figures and one entry per
trial (hover text, details panel, toggle flags) as JSON, and a small script (report.js). It
opens offline and fetches nothing.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from .figures import OVERLAYS, TOGGLES, figures, row_flags
from .pareto import GUIDELINES, ParetoRow, RankCorrelation, format_breaks
from .report_data import Pick, ReportData, RungStats, TrialDetail, UnitRow, load_report_data

SCRIPT = Path(__file__).with_name("report.js")  # the page's script, shipped as package data

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;font-size:14px;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{padding:2px 7px;text-align:right;border-bottom:1px solid #eee}
td.l,th.l{text-align:left}tr.front td{background:#eef5fc}tr.base td{background:#fdeeee}tr.knee td{font-weight:bold}
tr[data-row]{cursor:pointer}tr[data-row]:hover td{background:#fff7e0}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid>.plot{flex:1 1 420px}.note{color:#555;font-size:12px}
code{background:#f4f4f4;padding:0 3px}
#toolbar{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid #ddd;padding:6px 0;font-size:13px}
#toolbar label{margin-right:1em;white-space:nowrap}
#details{position:fixed;top:0;right:0;width:min(460px,95vw);height:100vh;overflow:auto;background:#fff;
box-shadow:-2px 0 8px rgba(0,0,0,.2);padding:12px 16px;box-sizing:border-box;z-index:10;font-size:13px}
#details .close{float:right;font-size:18px;border:none;background:none;cursor:pointer}
#details .facts{line-height:1.5;margin:.5em 0}#details .cmd{display:block;margin:.3em 0;padding:4px;word-break:break-all}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _n(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k"


def _noise_marks(r: ParetoRow) -> list[tuple[str, bool]]:
    """The drift flag, latency ties and (for a baseline off the front) whether it is dominated
    beyond the measured noise."""
    return [("drifted", r.drifted),
            (f"latency tie with {', '.join(map(str, r.ties))}", bool(r.ties)),
            (f"dominated beyond the noise by {', '.join(map(str, r.dominated_by or []))}", bool(r.dominated_by)),
            ("not dominated beyond the noise", r.dominated_by == [])]


def _marks(r: ParetoRow) -> str:
    return ", ".join(m for m, on in (("knee", r.knee), ("front", r.on_front),
                                     (f"baseline {r.baseline}", bool(r.baseline)),
                                     (f"infeasible: breaks {format_breaks(r.breaks)}", not r.feasible),
                                     (f"repeats trial {r.duplicate_of}", r.duplicate_of is not None),
                                     *_noise_marks(r)) if on)


def _ratio(r: ParetoRow) -> str:
    return ("—" if r.ratio is None else f"{r.ratio:.3f}"
            + (f" [{r.ratio_ci[0]:.3f}, {r.ratio_ci[1]:.3f}]" if r.ratio_ci else ""))


def _accuracy(r: ParetoRow) -> str:
    """The accuracy figure with its estimator and rung; below the top, the rung's own figure,
    labelled as such (it is not on the front's scale)."""
    if r.proxy is not None:
        where = f"rung {r.rung} of {r.top_rung}" if r.top_rung is not None else "zero-cost"
        return f"{r.proxy:.4f} ({r.estimator or 'proxy score'}, {where})"
    if r.rung_estimate is not None:
        return (f"none on the front's scale; rung {r.rung} of {r.top_rung}: "
                f"{r.rung_estimate:.4f} ({r.rung_estimator})")
    return "none (never trained)" if r.top_rung is not None else "none"


def _worst(r: ParetoRow, det: TrialDetail | None) -> tuple[str, str]:
    """The worst guideline finding: (which, where and its penalty; its message)."""
    w = det.worst if det else None
    if w is None:
        if det is not None and det.units:
            return "none", ""
        g = max(GUIDELINES, key=lambda g: r.penalties[g])  # no architecture stored: the penalties
        return (f"{g} penalty {r.penalties[g]:.3f}" if r.penalties[g] > 0 else "none"), ""
    return f"{w.guideline} at {w.node} (penalty {w.penalty:.4f})", w.message


def _clip(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def hover_text(r: ParetoRow, det: TrialDetail | None) -> str:
    """What hovering over a trial shows (Plotly hover labels take <b> and <br>)."""
    head = f"<b>trial {r.trial}</b> · {_e(r.archid)}" + (f" · baseline {_e(r.baseline)}" if r.baseline else "")
    which, why = _worst(r, det)
    lines = [head, f"accuracy: {_e(_accuracy(r))}",
             f"latency: {r.latency_ms:.3f} ms ± {r.iqr_ms:.3f} IQR · ratio {_ratio(r)}",
             f"MACs {_n(r.macs)} · MAC {_n(r.mac)} · params {_n(r.params)}",
             f"worst guideline finding: {_e(which)}", *([f"  {_e(_clip(why.split(';')[0]))}"] if why else [])]
    marks = _marks(r)
    return "<br>".join(lines + ([f"marks: {_e(marks)}"] if marks else []))


def _unit_table(units: list[UnitRow]) -> str:
    pred = any(u.predicted_ms is not None for u in units)
    head = ["unit", "params", "MACs", "MAC"] + (["predicted ms"] if pred else [])
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for u in units:
        cells = [u.unit, f"{u.params:,}", f"{u.macs:,}", f"{u.mac:,}"]
        if pred:
            cells.append("—" if u.predicted_ms is None else f"{u.predicted_ms:.4f}")
        out.append("<tr>" + "".join(f'<td{" class=l" if i == 0 else ""}>{_e(c)}</td>'
                                    for i, c in enumerate(cells)) + "</tr>")
    return "".join(out) + "</table>"


def export_command(run: str, trial: int) -> str:
    return f"shufflesearch export {shlex.quote(run or 'RUN')} --trial {trial} --out exported/trial-{trial}"


def details_html(r: ParetoRow, det: TrialDetail | None, run: str) -> str:
    """The details panel below the hover text: the export command (or why export refuses the
    trial), the worst finding in full, and the unit table."""
    if not r.feasible:
        why = f"infeasible (breaks {format_breaks(r.breaks)}), so `export` refuses it"
    elif r.proxy is None:
        why = f"stopped at rung {r.rung} of {r.top_rung}, so `export` refuses it"
    else:
        why = ""
    cmd = (f'<p class=note>Not exportable: {_e(why)}.</p>' if why else
           f'<p>Export it:<code class=cmd>{_e(export_command(run, r.trial))}</code>'
           '<button type=button data-copy>copy</button></p>')
    units = (f"<h4>Units at the target resolution</h4>{_unit_table(det.units)}" if det and det.units
             else "<p class=note>No architecture stored with this trial.</p>")
    which, why = _worst(r, det)
    worst = f"<p><b>Worst guideline finding:</b> {_e(which)}{'. ' + _e(why) if why else ''}</p>"
    return cmd + worst + units


def _rows_table(rows: list[ParetoRow], index: dict[int, int]) -> str:
    head = ["trial", "archid", "accuracy", "latency ms (± IQR)", "ratio [95% CI]", "MAC", "MACs", "params", *GUIDELINES, "mark"]
    out = ["<table><tr>" + "".join(f"<th{' class=l' if h in ('archid', 'mark') else ''}>{h}</th>"
                                   for h in head) + "</tr>"]
    for r in rows:
        cls = " ".join(c for c, on in (("front", r.on_front), ("base", bool(r.baseline)), ("knee", r.knee)) if on)
        acc = ("—" if r.proxy is None else f"{r.proxy:.4f}") + (
            f" (rung {r.rung}: {r.rung_estimate:.4f} {r.rung_estimator})" if r.rung_estimate is not None else "")
        cells = [r.trial, r.archid, acc, f"{r.latency_ms:.3f} ± {r.iqr_ms:.3f}", _ratio(r), _n(r.mac),
                 _n(r.macs), _n(r.params), *(f"{r.penalties[g]:.2f}" for g in GUIDELINES)]
        out.append(f'<tr class="{cls}" data-row="{index[r.trial]}">' + "".join(f"<td>{_e(c)}</td>" for c in cells)
                   + f'<td class="l">{_e(_marks(r))}</td></tr>')
    return "\n".join(out) + "</table>"


def _pick_table(p: Pick) -> str:
    return (f"<h3>{_e(p.label)}: trial {p.trial} ({_e(p.archid)}), measured {p.latency_ms:.3f} ms</h3>"
            + _unit_table(p.units))


def _stat(xs: list[float]) -> str:
    if not xs:
        return "-"
    ys = sorted(xs)
    return f"{ys[len(ys) // 2]:.3f} [{ys[0]:.3f}, {ys[-1]:.3f}]"


def ladder_html(rungs: list[RungStats], never: int, check_text: str | None) -> str:
    """The ladder's table: trials reaching each rung and the estimates there, and the self-check."""
    if not rungs and check_text is None:
        return ""
    body = "".join(f"<tr><td>{s.rung}</td><td>{s.reached}</td><td>{s.stopped}</td>"
                   f"<td>{'-' if s.steps is None else s.steps}</td><td>{_stat(s.val_acc)}</td>"
                   f"<td>{_stat(s.sotl_per_step)}</td></tr>" for s in rungs)
    return ("<h2>Fidelity ladder</h2><p class=note>Trials reaching each rung (every feasible "
            f"trial trains rung 1; {never} infeasible trial(s) never trained) and the estimates "
            "there: median [min, max] over the trials that reached the rung (val_acc is scored at "
            "the top rung only). Only trials at the top rung are on the front.</p><table><tr>"
            "<th>rung</th><th>reached</th><th>stopped there</th>"
            "<th>steps</th><th>val_acc</th><th>sotl per step</th></tr>" + body + "</table>"
            + (f"<h3>Self-check</h3><pre>{_e(check_text)}</pre>" if check_text else ""))


def _json_script(id_: str, obj: Any) -> str:
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return f'<script type="application/json" id="{id_}">{text}</script>'


def _plotly_gz() -> str:
    from plotly.offline import get_plotlyjs  # lazy: plotly is needed only when a page is written

    packed = gzip.compress(get_plotlyjs().encode(), compresslevel=9, mtime=0)
    return f'<script type="application/octet-stream" id="plotly-gz">{base64.b64encode(packed).decode()}</script>'


def _finite(x: Any) -> Any:
    """JSON has no NaN: a missing figure (an IQR never measured, ...) becomes null."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def page_data(d: ReportData) -> dict[str, Any]:
    """The page's JSON: per row (in ReportData.rows order) its trial, hover text, details panel
    and the flags whose toggle hides it, and the figures."""
    rows = [{"t": r.trial, "h": hover_text(r, d.details.get(r.trial)),
             "p": details_html(r, d.details.get(r.trial), d.run),
             "f": [f for f in row_flags(r) if f not in OVERLAYS]} for r in d.rows]
    return _finite({"rows": rows, "figures": figures(d)})


def _toolbar(d: ReportData) -> str:
    count = {f: sum(f in row_flags(r) for r in d.rows) for f in TOGGLES}
    boxes = "".join(f'<label><input type=checkbox data-toggle="{f}" checked> {_e(t)} ({count[f]})</label>'
                    for f, t in TOGGLES.items())
    return (f'<div id=toolbar>Show: {boxes}<span class=note>Hover a point for its figures; click it '
            "(or a table row) for its units and the export command.</span>"
            '<div id=plot-status class=note>Drawing the plots…</div></div>')


def render_html(d: ReportData) -> str:
    """The whole page."""
    meta = "".join(f"<tr><th class=l>{_e(k)}</th><td class=l>{_e(v)}</td></tr>" for k, v in d.meta.items())
    index = {r.trial: i for i, r in enumerate(d.rows)}
    front = [r for r in d.rows if r.on_front or r.baseline]

    def corr(c: RankCorrelation) -> str:
        return f"Spearman ρ = {c.spearman:.2f}, Kendall τ = {c.kendall:.2f} over {c.n} trials"

    def plot(name: str) -> str:
        return f'<div class="plot" id="fig-{name}"></div>'

    fails = "".join(f"<li>trial {t}: {_e(why)}</li>" for t, why in d.failures[:50])
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(d.title)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(d.title)}</h1><table>{meta}</table>", _toolbar(d),
        "<h2>Pareto front: accuracy vs measured latency</h2>",
        "<p class=note>The 2-D front on (accuracy ↑, latency ↓); baselines (red stars) are shown "
        "even when dominated, dominated trials are faded, infeasible ones crossed, the knee is ringed "
        "and latency ties are joined by a dotted line. If the search had more objectives (see "
        "above), trials off this front may still be optimal there.</p>",
        plot("pareto"), _rows_table(front, index), d.transfer,
        ladder_html(d.ladder_rungs, d.never_trained, d.check_text),
        plot("ladder") if d.ladder_curves else "",
        "<h2>Do FLOPs predict speed here?</h2>",
        f"<p>MACs vs measured latency: <b>{corr(d.macs_corr)}</b>. MAC (memory access cost) vs measured "
        f"latency: <b>{corr(d.mac_corr)}</b>. Rank correlations: 1 means the cheaper network by that "
        "count is always the faster one here.</p>",
        f'<div class="grid">{plot("macs")}{plot("mac")}</div>',
        "<h2>Guideline penalties per trial</h2>", plot("guidelines"),
        "<h2>Per-unit breakdown of the front's picks</h2>",
        f"<p class=note>{_e(d.predictor_note)}</p>", *(_pick_table(p) for p in d.picks),
        "<h2>Hypervolume history</h2>",
        "<p class=note>Area dominated by the feasible completed trials so far on (accuracy, latency), "
        "from a reference point fixed for the whole run (worst accuracy and latency, pushed out by "
        "10% of their ranges). A running total: the toggles leave it as it is.</p>",
        plot("hypervolume"),
        f"<h2>All completed trials ({len(d.rows)})</h2>", _rows_table(d.rows, index),
        f"<h2>Failed or pruned trials ({d.n_failed})</h2>",
        f"<ul>{fails}</ul>" if fails else "<p>none</p>",
        '<aside id=details hidden><button type=button class=close title=close>×</button>'
        "<div id=details-body></div></aside>",
        _json_script("report-data", page_data(d)), _plotly_gz(),
        f"<script>{SCRIPT.read_text(encoding='utf-8')}</script></body></html>",
    ]
    return "\n".join(parts)


def write_report(run_path: str | Path, out: str | Path, log: Callable[[str], None] | None = None) -> Path:
    """Write OUT, the report page of the run at RUN_PATH."""
    say = log or (lambda _m: None)
    out = Path(out)
    if out.is_dir():
        raise UserError("is a directory; give a file name such as report.html", field="out", value=out)
    d = load_report_data(run_path, say)
    say("writing")
    page = render_html(d)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # self-contained: nothing fetched
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write ({e.strerror or e.__class__.__name__})", field="out",
                        value=out) from None
    return out


__all__ = ["ReportData", "render_html", "write_report", "page_data", "hover_text", "details_html",
           "export_command"]
