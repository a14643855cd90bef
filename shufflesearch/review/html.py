"""`shufflesearch report`: one self-contained HTML page of a run, and PNGs of its main plots.

``report_data`` is pure (records in, what to draw out, tested on its own); ``render_html`` and
``write_report`` draw it with matplotlib and write files. The SVGs are inlined in the page, so
it opens offline with nothing fetched. Every scatter's points sit in an SVG group with a known
id (``pts-front`` ...); a small inline script counts the points the browser actually laid out
into ``data-drawn`` attributes, which the headless-browser test reads back.
"""

from __future__ import annotations

import html
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..measure.predictor import LatencyTable, table_path
from ..measure.target import TargetSpec
from ..search.records import TrialRecord, measured
from .pareto import (
    GUIDELINES,
    ParetoRow,
    RankCorrelation,
    failed,
    format_breaks,
    format_reference,
    load_records,
    load_reference_note,
    run_check_text,
)
from .report_data import Pick, ReportData, UnitMs, ladder_rows, report_data
from .transfer import load_transfer, transfer_html

# matplotlib is imported inside the drawing functions, not here: it is heavy (about a second)
# and only `shufflesearch report` draws, while report_data and the CLI's other commands that
# import this package do not need it.

# --- drawing ---------------------------------------------------------------------------------------

FRONT, BASE, FADED, KNEE = "#1f6fb4", "#d62728", "#9aa3ad", "#ff9f1c"
G_COLOURS = dict(zip(GUIDELINES, ("#4c78a8", "#f58518", "#54a24b", "#b279a2")))


def _fig_pareto(d: ReportData):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    # One scale: only rows with a top-rung figure are drawn (rows below the top have none).
    rows = [r for r in d.rows if r.proxy is not None]
    dom = [r for r in rows if not r.on_front and not r.baseline]
    front = [r for r in rows if r.on_front and not r.baseline]
    base = [r for r in rows if r.baseline]
    ax.scatter([r.latency_ms for r in dom], [r.proxy for r in dom], s=22, c=FADED, alpha=0.35,
               label="dominated", gid="pts-dominated")
    on = sorted((r for r in d.rows if r.on_front), key=lambda r: r.latency_ms)
    ax.step([r.latency_ms for r in on], [r.proxy for r in on], where="post", c=FRONT, lw=1, alpha=0.6)
    ax.scatter([r.latency_ms for r in front], [r.proxy for r in front], s=34, c=FRONT,
               label="non-dominated", gid="pts-front", zorder=3)
    ax.scatter([r.latency_ms for r in base], [r.proxy for r in base], s=90, c=BASE, marker="*",
               label="baseline", gid="pts-baseline", zorder=4)
    for r in base:
        ax.annotate(r.baseline, (r.latency_ms, r.proxy), fontsize=7, xytext=(4, 4), textcoords="offset points")
    k = [r for r in d.rows if r.knee]
    ax.scatter([r.latency_ms for r in k], [r.proxy for r in k], s=160, facecolors="none",
               edgecolors=KNEE, linewidths=2, label="knee", gid="pts-knee", zorder=5)
    ax.set_xlabel("measured latency, median (ms)")
    ax.set_ylabel("proxy score (penalised) ↑")
    ax.set_title("Pareto front: proxy vs measured latency")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _fig_cost(d: ReportData, key: str):
    import matplotlib.pyplot as plt

    corr = d.macs_corr if key == "macs" else d.mac_corr
    name = "MACs (multiply-accumulates, M)" if key == "macs" else "MAC (memory access cost, M elements)"
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    ax.scatter([getattr(r, key) / 1e6 for r in d.rows], [r.latency_ms for r in d.rows], s=20,
               c=[BASE if r.baseline else FRONT if r.on_front else FADED for r in d.rows],
               gid=f"pts-{key}")
    ax.set_xlabel(name)
    ax.set_ylabel("measured latency (ms)")
    ax.set_title(f"{'MACs' if key == 'macs' else 'MAC'} vs latency: Spearman {corr.spearman:.2f}, "
                 f"Kendall {corr.kendall:.2f}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _fig_guidelines(d: ReportData):
    import matplotlib.pyplot as plt

    rows = sorted(d.rows, key=lambda r: r.trial)
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    xs = list(range(len(rows)))
    bottom = [0.0] * len(rows)
    for g in GUIDELINES:
        v = [r.penalties[g] for r in rows]
        bars = ax.bar(xs, v, bottom=bottom, color=G_COLOURS[g], label=g, width=0.8)
        for r, b in zip(rows, bars):  # unique ids: one group per (guideline, trial)
            b.set_gid(f"bar-{g}-{r.trial}")
        bottom = [a + b for a, b in zip(bottom, v)]
    step = max(1, len(rows) // 25)
    ax.set_xticks(xs[::step], [str(r.trial) for r in rows][::step], fontsize=7)
    ax.set_xlabel("trial")
    ax.set_ylabel("penalty (each in [0, 1])")
    ax.set_title("Guideline penalties per trial (stacked G1–G4)", fontsize=9)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    return fig


def _fig_hv(d: ReportData):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.step(d.hv.trials, d.hv.values, where="post", c=FRONT)
    ax.scatter(d.hv.trials, d.hv.values, s=10, c=FRONT, gid="pts-hv")
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume (proxy × ms)")
    ax.set_title(f"Hypervolume history (ref: proxy {d.hv.ref[0]:.3g}, {d.hv.ref[1]:.3g} ms)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _fig_ladder(d: ReportData):
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    a.bar(range(len(d.ladder_reached)), d.ladder_reached, color="#4c78a8")
    a.set_xlabel("rung (0: zero-cost)")
    a.set_ylabel("trials reaching it")
    a.set_xticks(range(len(d.ladder_reached)))
    for trial, baseline, pts in d.ladder_curves:
        xs, ys = zip(*pts)
        b.plot(xs, ys, marker="*" if baseline else ".", lw=1.5 if baseline else 0.6,
               color="#e45756" if baseline else "#4c78a8", alpha=1.0 if baseline else 0.4)
    b.set_xlabel("rung")
    b.set_ylabel("estimate at the rung")
    b.set_xticks(range(1, len(d.ladder_reached)))
    fig.tight_layout()
    return fig


FIGURES = {"pareto": _fig_pareto, "macs_latency": lambda d: _fig_cost(d, "macs"),
           "mac_latency": lambda d: _fig_cost(d, "mac"), "guidelines": _fig_guidelines,
           "hypervolume": _fig_hv}


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    s = buf.getvalue()
    return s[s.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline SVG needs neither


_SCRIPT = """
// Count what the browser actually laid out, for tests and curious readers.
window.addEventListener('load', () => {
  document.querySelectorAll('g[id^="pts-"], g[id^="bar-"]').forEach(g => {
    const n = [...g.querySelectorAll('use, path')].filter(e => {
      if (e.closest('defs')) return false;
      const b = e.getBoundingClientRect(); return b.width > 0 && b.height >= 0 && b.width < 500;
    }).length;
    g.setAttribute('data-drawn', String(n));
  });
  document.body.setAttribute('data-rendered', String(document.querySelectorAll('svg').length));
});
"""

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;font-size:14px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{padding:2px 7px;text-align:right;border-bottom:1px solid #eee}
td.l,th.l{text-align:left}tr.front td{background:#eef5fc}tr.base td{background:#fdeeee}tr.knee td{font-weight:bold}
.grid{display:flex;flex-wrap:wrap;gap:12px}.fig svg{max-width:100%;height:auto}.note{color:#555;font-size:12px}
code{background:#f4f4f4;padding:0 3px}
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


def _rows_table(rows: list[ParetoRow]) -> str:
    head = ["trial", "archid", "proxy", "latency ms (± IQR)", "ratio [95% CI]", "MAC", "MACs", "params", *GUIDELINES, "mark"]
    out = ["<table><tr>" + "".join(f"<th{' class=l' if h in ('archid', 'mark') else ''}>{h}</th>"
                                   for h in head) + "</tr>"]
    for r in rows:
        cls = " ".join(c for c, on in (("front", r.on_front), ("base", bool(r.baseline)), ("knee", r.knee)) if on)
        mark = ", ".join(m for m, on in (("knee", r.knee), ("front", r.on_front),
                                         (f"baseline {r.baseline}", bool(r.baseline)),
                                         (f"infeasible: breaks {format_breaks(r.breaks)}", not r.feasible),
                                         *_noise_marks(r)) if on)
        ratio = ("—" if r.ratio is None else f"{r.ratio:.3f}"
                 + (f" [{r.ratio_ci[0]:.3f}, {r.ratio_ci[1]:.3f}]" if r.ratio_ci else ""))
        acc = ("—" if r.proxy is None else f"{r.proxy:.4f}") + (
            f" (rung {r.rung}: {r.rung_estimate:.4f} {r.rung_estimator})" if r.rung_estimate is not None else "")
        cells = [r.trial, r.archid, acc, f"{r.latency_ms:.3f} ± {r.iqr_ms:.3f}", ratio, _n(r.mac),
                 _n(r.macs), _n(r.params), *(f"{r.penalties[g]:.2f}" for g in GUIDELINES)]
        out.append(f'<tr class="{cls}">' + "".join(f"<td>{_e(c)}</td>" for c in cells)
                   + f'<td class="l">{_e(mark)}</td></tr>')
    return "\n".join(out) + "</table>"


def _pick_table(p: Pick) -> str:
    pred = any(u.predicted_ms is not None for u in p.units)
    head = ["unit", "params", "MACs", "MAC"] + (["predicted ms"] if pred else [])
    out = [f"<h3>{_e(p.label)}: trial {p.trial} ({_e(p.archid)}), measured {p.latency_ms:.3f} ms</h3>",
           "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for u in p.units:
        cells = [u.unit, f"{u.params:,}", f"{u.macs:,}", f"{u.mac:,}"]
        if pred:
            cells.append("—" if u.predicted_ms is None else f"{u.predicted_ms:.4f}")
        out.append("<tr>" + "".join(f'<td{" class=l" if i == 0 else ""}>{_e(c)}</td>'
                                    for i, c in enumerate(cells)) + "</tr>")
    return "\n".join(out) + "</table>"


def render_html(d: ReportData, svgs: dict[str, str]) -> str:
    """The page, given the inline SVG of each figure in FIGURES."""
    meta = "".join(f"<tr><th class=l>{_e(k)}</th><td class=l>{_e(v)}</td></tr>" for k, v in d.meta.items())
    front = [r for r in d.rows if r.on_front or r.baseline]

    def corr(c: RankCorrelation) -> str:
        return f"Spearman ρ = {c.spearman:.2f}, Kendall τ = {c.kendall:.2f} over {c.n} trials"

    fails = "".join(f"<li>trial {t}: {_e(why)}</li>" for t, why in d.failures[:50])
    parts = [
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(d.title)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(d.title)}</h1><table>{meta}</table>",
        "<h2>Pareto front: proxy vs measured latency</h2>",
        "<p class=note>The 2-D front on (proxy ↑, latency median ↓); baselines (red stars) are shown "
        "even when dominated, dominated trials are faded, the knee is ringed. If the search had more "
        "objectives (see above), trials off this front may still be optimal there.</p>",
        f'<div class="fig" id="fig-pareto">{svgs["pareto"]}</div>',
        _rows_table(front),
        d.transfer,
        d.ladder,
        f'<div class="fig" id="fig-ladder">{svgs["ladder"]}</div>' if "ladder" in svgs else "",
        "<h2>Do FLOPs predict speed here?</h2>",
        f"<p>MACs vs measured latency: <b>{corr(d.macs_corr)}</b>. MAC (memory access cost) vs measured "
        f"latency: <b>{corr(d.mac_corr)}</b>. Rank correlations: 1 means the cheaper network by that "
        "count is always the faster one here.</p>",
        f'<div class="grid"><div class="fig" id="fig-macs">{svgs["macs_latency"]}</div>'
        f'<div class="fig" id="fig-mac">{svgs["mac_latency"]}</div></div>',
        "<h2>Guideline penalties per trial</h2>",
        f'<div class="fig" id="fig-guidelines">{svgs["guidelines"]}</div>',
        "<h2>Per-unit breakdown of the front's picks</h2>",
        f"<p class=note>{_e(d.predictor_note)}</p>",
        *(_pick_table(p) for p in d.picks),
        "<h2>Hypervolume history</h2>",
        "<p class=note>Area dominated by the feasible completed trials so far on (proxy, latency), from a "
        "reference point fixed for the whole run (worst proxy and latency, pushed out by 10% of "
        "their ranges).</p>",
        f'<div class="fig" id="fig-hv">{svgs["hypervolume"]}</div>',
        f"<h2>All completed trials ({len(d.rows)})</h2>", _rows_table(d.rows),
        f"<h2>Failed or pruned trials ({d.n_failed})</h2>",
        f"<ul>{fails}</ul>" if fails else "<p>none</p>",
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)


def ladder_section(records: list[TrialRecord], check_text: str | None) -> str:
    """The ladder in a ladder run: how many trials reached each rung, the estimates at each rung
    (median and range over the trials that reached it: estimate vs rung), and the self-check."""
    table, never = ladder_rows(records)
    if not table and check_text is None:
        return ""
    rows = []
    for x in table:
        cells = [str(x.steps) if x.steps is not None else "-", _stat(x.val_acc) if x.val_acc else "-",
                 _stat(x.sotl_per_step)]
        rows.append(f"<tr><td>{x.rung}</td><td>{x.reached}</td><td>{x.stopped}</td>"
                    + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return ("<h2>Fidelity ladder</h2><p class=note>Trials reaching each rung (every feasible "
            f"trial trains rung 1; {never} infeasible trial(s) never trained) and the estimates "
            "there: median [min, max] over the trials that reached the rung (val_acc is scored at "
            "the top rung only). Only trials at the top rung are on the front.</p><table><tr>"
            "<th>rung</th><th>reached</th><th>stopped there</th>"
            "<th>steps</th><th>val_acc</th><th>sotl per step</th></tr>" + "".join(rows) + "</table>"
            + (f"<h3>Self-check</h3><pre>{_e(check_text)}</pre>" if check_text else ""))


def _stat(xs: list[float]) -> str:
    if not xs:
        return "-"
    ys = sorted(float(x) for x in xs)
    return f"{ys[len(ys) // 2]:.3f} [{ys[0]:.3f}, {ys[-1]:.3f}]"


# --- files ---------------------------------------------------------------------------------------


@dataclass
class ReportFiles:
    html: Path
    pngs: list[Path]


def _unit_ms_from_table(spec: TargetSpec) -> tuple[UnitMs | None, str]:
    """Predicted per-unit ms from this machine's latency table for the run's target, if any."""
    path = table_path(spec)
    if not path.exists():
        return None, ("Cost only: no latency table for this target on this machine "
                      "(build one with `shufflesearch latency build-table`). The latency above "
                      "each table is the measured whole-model median.")
    table = LatencyTable.load(path)
    how = ("its unit model fitted on whole-model timings" if table.joint
           else f"its unit entries scaled by the whole-model factor {table.scale:.2f}")
    return table.unit_breakdown, (f"Predicted per-unit latency from the table {path.name} ({how}); "
                                  "the heading shows the measured total.")


def _infeasible_note(records: list[TrialRecord]) -> str:
    n = sum(not r.feasible for r in measured(records))
    return f" ({n} infeasible: off the front, listed in the table)" if n else ""


def write_report(run_path: str | Path, out: str | Path, log: Callable[[str], None] | None = None) -> ReportFiles:
    """Write OUT (the HTML page) and OUT's stem + _<figure>.png beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    say = log or (lambda _m: None)
    run, records = load_records(run_path)
    if not measured(records):
        raise UserError(f"{run.root}: no completed trials to report yet")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; give a file name such as report.html")
    t = run.space.target
    unit_ms, note = _unit_ms_from_table(t)
    fp = next((r.latency.fingerprint for r in measured(records) if r.latency), None) or {}
    meta = {
        "run": str(run.root), "space": str(run.space.path or "-"),
        "objectives": ", ".join(f"{n} ({d})" for n, d in run.space.objectives),
        "target": f"{t.resolution}x{t.resolution}, batch {t.batch}, {t.threads} thread(s), {t.backend}",
        "trials": f"{len(measured(records))} completed{_infeasible_note(records)}, "
                  f"{len(failed(records))} failed/pruned",
        "latency": format_reference(load_reference_note(run_path)),
        "measured on": str(fp.get("cpu", "?")), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    say("computing")
    d = report_data(records, title=f"shufflesearch report: {run.name}", meta=meta,
                    resolution=t.resolution, unit_ms=unit_ms, predictor_note=note)
    d.transfer = transfer_html(load_transfer(run.root))
    d.ladder = ladder_section(records, run_check_text(run_path))
    say("drawing")
    svgs, pngs = {}, []
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "shufflesearch"}):
            for name, draw in FIGURES.items():
                fig = draw(d)
                svgs[name] = _svg(fig)
                png = out.with_name(f"{out.stem}_{name}.png")
                fig.savefig(png, dpi=90)
                pngs.append(png)
                plt.close(fig)
            if d.ladder_curves:  # a ladder run: how many trials reached each rung, estimate vs rung
                fig = _fig_ladder(d)
                svgs["ladder"] = _svg(fig)
                png = out.with_name(f"{out.stem}_ladder.png")
                fig.savefig(png, dpi=90)
                pngs.append(png)
                plt.close(fig)
        page = render_html(d, svgs)
        assert not re.search(r"""(src|href)=["']https?:""", page)  # self-contained: nothing fetched
        out.write_text(page, encoding="utf-8")
    except OSError as e:
        raise UserError(f"--out {out}: cannot write ({e.strerror or e.__class__.__name__})") from None
    return ReportFiles(out, pngs)


__all__ = ["ReportData", "report_data", "render_html", "write_report", "FIGURES"]
