"""Review and export of a run: the pure Pareto/knee/hypervolume/rank maths on hand-made records
with answers worked out by hand, then `pareto`, `report` (rendered in headless Chromium) and
`export` on one small real run (tests/spaces/review.yaml: the tiny space plus one baseline)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from shufflesearch.cli import main
from shufflesearch.review.pareto import (
    format_failed,
    hypervolume_2d,
    hypervolume_history,
    pareto_rows,
    pick_trial,
    rank_correlation,
)
from shufflesearch.search.front import knee, pareto_front, spread_indices
from shufflesearch.search.records import (
    GuidelineSummary,
    RungResult,
    TrialRecord,
    latency_from_dict,
)
from tests.conftest import ROOT, SPACES


def rec(trial: int, proxy: float, lat: float, **kw) -> TrialRecord:
    return TrialRecord(
        trial=trial, archid=f"a{trial}", proxy=proxy, latency_ms=lat,
        latency=latency_from_dict({"median_ms": lat, "iqr_ms": 0.1}), mac=100 + trial, macs=1000 + trial,
        params=10 + trial, guidelines=GuidelineSummary({"G1": 0.5}, 0.1), **kw)


# Front by hand: t1 (1 ms, 0.2), t2 (2 ms, 0.8), t4 (10 ms, 0.9). t3 (3 ms, 0.5) is beaten by t2,
# the baseline t0 (5 ms, 0.4) by t2 as well; t5 repeats t2's architecture.
RECORDS = [
    rec(0, 0.4, 5.0, baseline="shufflenet_v2_x0_5"),
    rec(1, 0.2, 1.0),
    rec(2, 0.8, 2.0),
    rec(3, 0.5, 3.0),
    rec(4, 0.9, 10.0),
    dataclasses.replace(rec(5, 0.8, 2.0), archid="a2", duplicate_of=2),
    TrialRecord(trial=6, state="FAIL", archid="a6", fail_reason="out of memory"),
    TrialRecord(trial=7, state="PRUNED", fail_reason="rejected: stages[1].groups: 3 does not divide 116"),
]
# Trials that break a constraint (constraint value > 0) and would beat everything above.
INFEASIBLE = [
    rec(8, 0.95, 0.5, constraints={"macs_m": 9.06, "latency_ms": -1.0}),  # would dominate t1, t2
    rec(9, 0.99, 1.5, constraints={"guidelines": 0.2}),
    rec(10, 0.3, 0.9, baseline="shufflenet_v1_g3_x1_0", constraints={"params_m": 0.5}),
]


def test_front_knee_and_rows():
    front = pareto_front(RECORDS)
    assert [r.trial for r in front] == [1, 2, 4]  # t5 is t2's duplicate: listed once
    # Scaled to [0, 1]: t1 (0, 0), t2 (1/9, 6/7), t4 (1, 1); t2 is farthest from the diagonal.
    assert knee(front).trial == 2
    rows = pareto_rows(RECORDS)
    assert [r.trial for r in rows] == [1, 2, 0, 4]  # by latency; the dominated baseline is kept
    assert [r.on_front for r in rows] == [True, True, False, True]
    assert [r.knee for r in rows] == [False, True, False, False]
    assert rows[2].baseline == "shufflenet_v2_x0_5"
    assert len(pareto_rows(RECORDS, all_trials=True)) == 6  # every completed trial
    assert "out of memory" in format_failed(RECORDS) and "does not divide 116" in format_failed(RECORDS)


def test_hypervolume_by_hand_and_against_optuna():
    import numpy as np
    from optuna._hypervolume import compute_hypervolume

    # Unit squares dominated by (1,3), (2,2), (3,1) inside (4,4): 3 + 2 + 1.
    assert hypervolume_2d([(1, 3), (2, 2), (3, 1)], (4, 4)) == 6
    assert hypervolume_2d([(1, 3), (2, 2), (3, 1), (3, 3), (5, 0)], (4, 4)) == 6  # dominated, outside
    assert hypervolume_2d([], (4, 4)) == 0
    rng = np.random.default_rng(0)
    pts = rng.random((40, 2))
    assert hypervolume_2d([tuple(p) for p in pts], (1.1, 1.2)) == pytest.approx(
        compute_hypervolume(pts, np.array([1.1, 1.2])))


def test_hypervolume_history():
    h = hypervolume_history(RECORDS)
    assert h.trials == [0, 1, 2, 3, 4, 5]
    # ref: proxy 0.2 - 0.1 * 0.7 = 0.13, latency 10 + 0.1 * 9 = 10.9
    assert h.ref == pytest.approx((0.13, 10.9))
    assert h.values[0] == pytest.approx((0.4 - 0.13) * (10.9 - 5))
    assert all(b >= a for a, b in zip(h.values, h.values[1:]))  # never shrinks
    assert h.values[-1] == h.values[-2]  # a duplicate adds nothing
    full = (0.2 - 0.13) * (10.9 - 1) + (0.8 - 0.2) * (10.9 - 2) + (0.9 - 0.8) * (10.9 - 10)
    assert h.values[-1] == pytest.approx(full)


def test_rank_correlation_by_hand():
    # d = -1, 1, -1, 1, 0: rho = 1 - 6*4/(5*24) = 0.8; 8 concordant, 2 discordant pairs: tau 0.6.
    c = rank_correlation([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert (c.spearman, c.kendall, c.n) == (pytest.approx(0.8), pytest.approx(0.6), 5)
    assert rank_correlation([1, 2], [2, 1]).spearman != rank_correlation([1, 2], [2, 1]).spearman  # nan


def test_pick_trial():
    from shufflesearch.errors import UserError

    assert pick_trial(RECORDS, trial=3).trial == 3
    assert pick_trial(RECORDS, use_knee=True).trial == 2
    assert pick_trial(RECORDS, max_latency=5).trial == 2
    assert pick_trial(RECORDS, max_latency=1.5).trial == 1
    with pytest.raises(UserError, match="no trial on the front is that fast"):
        pick_trial(RECORDS, max_latency=0.5)
    with pytest.raises(UserError, match="out of memory"):
        pick_trial(RECORDS, trial=6)
    with pytest.raises(UserError, match="no such trial"):
        pick_trial(RECORDS, trial=99)


def test_infeasible_records_are_never_on_the_front_or_picked():
    from shufflesearch.errors import UserError
    from shufflesearch.review.pareto import format_pareto

    recs = RECORDS + INFEASIBLE
    # Without the constraints t8 (0.5 ms, 0.95) and t9 would take the whole front and the knee.
    assert [r.trial for r in pareto_front(recs)] == [1, 2, 4]
    assert knee(pareto_front(recs)).trial == 2
    assert pick_trial(recs, use_knee=True).trial == 2
    assert pick_trial(recs, max_latency=1.5).trial == 1  # not t8 at 0.5 ms
    with pytest.raises(UserError, match=r"^trial 8: infeasible, it breaks macs_m \+9\.06"):
        pick_trial(recs, trial=8)
    with pytest.raises(UserError, match="all infeasible"):
        pick_trial(INFEASIBLE, use_knee=True)
    rows = {r.trial: r for r in pareto_rows(recs)}
    assert set(rows) == {0, 1, 2, 4, 10}  # the front and both baselines, infeasible one included
    assert not rows[10].feasible and rows[10].breaks == {"params_m": 0.5} and not rows[10].on_front
    # Issue 21 item 6: off the front because it breaks a constraint, not "within the noise".
    assert rows[10].dominated_by is None and rows[0].dominated_by == [2]
    text = format_pareto(list(rows.values()))
    assert "shufflenet_v1_g3_x1_0: infeasible, it breaks params_m +0.5 (x): never on the front" in text
    assert "shufflenet_v1_g3_x1_0: not dominated" not in text
    rows = {r.trial: r for r in pareto_rows(recs, all_trials=True)}
    assert rows[8].breaks == {"macs_m": 9.06} and not rows[8].on_front and not rows[8].knee
    assert rows[9].breaks == {"guidelines": 0.2}
    assert all(r.feasible for t, r in rows.items() if t not in (8, 9, 10))
    lines = format_pareto(list(rows.values())).splitlines()
    line8 = next(ln for ln in lines if ln.split()[:2] == ["x", "8"])
    assert line8.rstrip().endswith("macs_m +9.06")
    assert any("x infeasible" in ln for ln in lines)
    # the hypervolume counts only what the feasible front dominates
    assert hypervolume_history(recs).values[-1] == pytest.approx(hypervolume_history(RECORDS).values[-1])


def test_spread_indices_cover_the_whole_front():
    # The old rounding trained indices 0, 1, 2 of a 4-point front with k = 5.
    assert spread_indices(4, 5) == [0, 1, 2, 3]
    assert spread_indices(4, 2) == [0, 3] and spread_indices(5, 3) == [0, 2, 4]
    assert spread_indices(7, 1) == [3] and spread_indices(0, 3) == [] and spread_indices(3, 0) == []
    for n in range(1, 13):
        for k in range(1, 16):
            idx = spread_indices(n, k)
            assert len(idx) == min(n, k) and idx == sorted(set(idx)), (n, k, idx)
            if min(n, k) >= 2:
                assert idx[0] == 0 and idx[-1] == n - 1, (n, k, idx)


def test_short_training_picks_the_whole_feasible_front():
    from shufflesearch.search.baselines import short_train_picks

    recs = RECORDS + INFEASIBLE  # front t1, t2, t4; feasible baseline t0, infeasible t10
    assert [r.trial for r in short_train_picks(recs, 5)] == [0, 1, 2, 4]
    assert [r.trial for r in short_train_picks(recs, 2)] == [0, 1, 4]  # both ends
    assert [r.trial for r in short_train_picks(recs, 0)] == [0]


# --- one real run, shared by the CLI tests ----------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["run", str(SPACES / "review.yaml"), "--budget", "3", "--workers", "1", "--runs", str(root),
                 "--quiet"]) == 0
    return root / "review"


def test_pareto_cli_json(run_dir, capsys):
    assert main(["pareto", str(run_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows
    for r in rows:
        assert {"trial", "archid", "proxy", "latency_ms", "params", "macs", "mac", "baseline"} <= r.keys()
    # The baseline is listed whether or not it is on the front, with its preset's size.
    (b,) = [r for r in rows if r["baseline"]]
    assert b["baseline"] == "shufflenet_v2_x0_5"
    assert b["params"] == 341_792 + 1024 * 10 + 10  # features of REFERENCE.md's 1,366,792 + 10 classes
    assert sum(r["knee"] for r in rows) == 1
    assert main(["pareto", str(run_dir), "--all", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4  # 3 trials + the baseline
    assert main(["pareto", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "shufflenet_v2_x0_5" in out and "K" in out and "front on (proxy" in out


def _chromium() -> str | None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "chromium is not installed (apt-get install -y chromium); .ci/run installs it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


# --- the page in a real browser (Playwright driving the system chromium) -------------------------

# Where a trial's point is drawn, in page pixels: its row in the page's own JSON, then the
# axes' data-to-pixel maps. Null when no drawn trace of the figure holds the trial.
_POINT_XY = """([fig, trial]) => {
  const gd = document.getElementById(fig);
  const rows = JSON.parse(document.getElementById('report-data').textContent).rows;
  for (const t of gd.data) {
    if (!Array.isArray(t.customdata) || t.visible === false) continue;
    const k = t.customdata.findIndex((i) => i >= 0 && rows[i].t === trial);
    if (k < 0) continue;
    const L = gd._fullLayout, xa = L['xaxis' + (t.xaxis || 'x').slice(1)], ya = L['yaxis' + (t.yaxis || 'y').slice(1)];
    const box = gd.querySelector('.main-svg').getBoundingClientRect();
    return [box.left + xa._offset + xa.l2p(t.x[k]), box.top + ya._offset + ya.l2p(t.y[k])];
  }
  return null;
}"""


class ReportPage:
    """One report page open in headless Chromium, offline, with every request and script error
    the page makes recorded."""

    def __init__(self, browser, path: Path):
        self.context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
        self.context.grant_permissions(["clipboard-read", "clipboard-write"])
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.url = path.as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-plotted], body[data-plot-error]", timeout=60_000)
        assert self.page.get_attribute("body", "data-plot-error") is None

    def drawn(self, fig: str) -> int:
        """Markers the browser laid out in one figure."""
        return self.page.locator(f"#fig-{fig} .scatterlayer path.point").count()

    def traces(self, fig: str) -> list[dict]:
        return self.page.evaluate("(id) => document.getElementById(id).data.map((t) => "
                                  "({name: t.name, rows: t.customdata || [], visible: t.visible}))", f"fig-{fig}")

    def _xy(self, fig: str, trial: int) -> list[float]:
        self.page.locator(f"#fig-{fig}").scroll_into_view_if_needed()
        xy = self.page.evaluate(_POINT_XY, [f"fig-{fig}", trial])
        assert xy is not None, f"trial {trial} is not drawn in {fig}"
        return xy

    def hover(self, fig: str, trial: int) -> list[str]:
        """Move the mouse onto the trial's point; the lines of the hover label shown."""
        self.page.mouse.move(*self._xy(fig, trial))
        label = f"#fig-{fig} .hoverlayer .hovertext"
        self.page.wait_for_selector(label, timeout=10_000)
        return self.page.locator(f"{label} tspan.line").all_text_contents()

    def click(self, fig: str, trial: int) -> str:
        """Click the trial's point; the details panel's text."""
        self.page.mouse.click(*self._xy(fig, trial))
        self.page.wait_for_selector(f"#details:not([hidden])[data-trial='{trial}']", timeout=10_000)
        return self.page.inner_text("#details")

    def toggle(self, flag: str, on: bool) -> None:
        box = self.page.locator(f"input[data-toggle='{flag}']")
        box.check() if on else box.uncheck()
        self.page.wait_for_function("!document.body.dataset.drawing")

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    # Imported here: only the browser tests need playwright (the test extra). It drives the
    # system chromium; no browser download.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_report_renders_in_chromium(run_dir, tmp_path, capsys, browser):
    out = tmp_path / "rep" / "report.html"
    assert main(["report", str(run_dir), "--out", str(out), "--quiet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert list(out.parent.iterdir()) == [out]  # one file: nothing beside it to carry along
    rows = {r["trial"]: r for r in json.loads(_cli_json(capsys, "pareto", str(run_dir), "--all", "--json"))}
    page = ReportPage(browser, out)
    try:
        assert page.requests == [page.url] and not page.errors  # offline: the page alone
        assert page.page.get_attribute("body", "data-plotted") == "5"
        named = {t["name"]: len(t["rows"]) for t in page.traces("pareto")}
        assert named["non-dominated"] == sum(r["on_front"] and not r["baseline"] for r in rows.values())
        assert named["baseline"] == 1 and named["knee"] == 1
        assert sum(named.get(k, 0) for k in ("non-dominated", "dominated", "baseline")) == len(rows) == 4
        assert page.drawn("macs") == page.drawn("mac") == 4 and page.drawn("hypervolume") == 4
        assert page.drawn("pareto") >= 5  # the four trials and the knee's ring
        k = next(r for r in rows.values() if r["knee"])
        lines = page.hover("pareto", k["trial"])
        assert lines[0] == f"trial {k['trial']} · {k['archid']}" + (f" · baseline {k['baseline']}" if k["baseline"] else "")
        assert f"accuracy: {k['proxy']:.4f} (proxy score, zero-cost)" in lines
        assert any(ln.startswith(f"latency: {k['latency_ms']:.3f} ms") and f"ratio {k['ratio']:.3f}" in ln for ln in lines)
        text = page.click("pareto", k["trial"])
        assert f"shufflesearch export {run_dir} --trial {k['trial']} --out exported/trial-{k['trial']}" in text
        assert "stem" in text and "classifier" in text  # the unit table
        # The command is one `export` takes as it stands, for a trial it will bundle.
        from shufflesearch.cli import build_parser
        from shufflesearch.review.pareto import load_records

        cmd = shlex.split(page.page.inner_text("#details code.cmd"))
        args = build_parser().parse_args(cmd[1:])
        assert (cmd[0], args.command, args.run, args.trial) == ("shufflesearch", "export", str(run_dir), k["trial"])
        assert pick_trial(load_records(run_dir)[1], trial=args.trial).archid == k["archid"]
        assert page.requests == [page.url] and not page.errors
    finally:
        page.close()


def _cli_json(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_export_of_a_trial(run_dir, tmp_path, capsys):
    rows = json.loads(_cli_json(capsys, "pareto", str(run_dir), "--json"))
    k = next(r for r in rows if r["knee"])
    out = tmp_path / "bundle"
    assert main(["export", str(run_dir), "--knee", "--out", str(out), "--quiet"]) == 0
    for f in ("arch.yaml", "model.py", "weights.pt", "model.pt2", "model.onnx", "report.md"):
        assert (out / f).stat().st_size > 0, f
    from shufflesearch.model.arch import load_arch

    assert load_arch(out / "arch.yaml").archid == k["archid"]
    md = (out / "report.md").read_text()
    # The run's own figures, not re-measured ones: median and fingerprint as stored.
    stored = json.loads(_cli_json(capsys, "pareto", str(run_dir), "--json"))
    lat = next(r for r in stored if r["trial"] == k["trial"])["latency_ms"]
    assert f"| median_ms | {lat:.4g} |" in md
    assert f"| trial | {k['trial']} |" in md and "Environment fingerprint" in md


@pytest.mark.parametrize("argv, msg", [
    (["pareto", "{missing}"], "no such run folder"),
    (["report", "{missing}"], "no such run folder"),
    (["export", "{missing}", "--knee", "--out", "{tmp}"], "no such run folder"),
    (["export", "{run}", "--trial", "999", "--out", "{tmp}"], "--trial 999: no such trial"),
    (["export", "{run}", "--max-latency", "0.000001", "--out", "{tmp}"], "no trial on the front is that fast"),
    (["pareto", "{tmp}"], "not a shufflesearch run"),
])
def test_bad_input_is_one_line(run_dir, tmp_path, capsys, argv, msg):
    sub = {"{missing}": str(tmp_path / "nope"), "{tmp}": str(tmp_path), "{run}": str(run_dir)}
    assert main([sub.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and msg in err and "\n" not in err


def test_unit_breakdown_of_picks():
    from shufflesearch.model.arch import PRESETS
    from shufflesearch.review.html import render_html
    from shufflesearch.review.report_data import report_data

    arch = PRESETS["shufflenet_v2_x0_5"]
    recs = [rec(1, 0.2, 1.0, arch=arch), rec(2, 0.8, 2.0, arch=arch)]
    d = report_data(recs, title="t", meta={}, resolution=224,
                    unit_ms=lambda a: {"stem": 0.25}, predictor_note="table x")
    assert [(p.label, p.trial) for p in d.picks] == [("knee, best proxy", 2), ("fastest", 1)]
    units = d.picks[0].units
    # REFERENCE.md: V2 0.5x is 40.48M MACs and 1,366,792 params at 224x224.
    assert sum(u.macs for u in units) / 1e6 == pytest.approx(40.48, abs=0.01)
    assert sum(u.params for u in units) == 1_366_792
    assert [u.predicted_ms for u in units if u.predicted_ms is not None] == [0.25]
    page = render_html(d)
    assert "predicted ms" in page and "table x" in page


def test_the_page_data_of_hand_made_records():
    from shufflesearch.review.html import page_data
    from shufflesearch.review.report_data import report_data

    d = report_data(RECORDS + INFEASIBLE, title="t", meta={}, resolution=32, run="runs/my run")
    data = page_data(d)
    rows = {r["t"]: r for r in data["rows"]}
    assert set(rows) == {0, 1, 2, 3, 4, 5, 8, 9, 10}  # every completed trial, none that failed
    assert rows[10]["f"] == ["baseline", "infeasible"] and rows[0]["f"] == ["baseline"] and rows[2]["f"] == []
    assert "marks: infeasible: breaks macs_m +9.06" in rows[8]["h"]
    assert "Not exportable: infeasible (breaks macs_m +9.06)" in rows[8]["p"]
    assert "shufflesearch export &#x27;runs/my run&#x27; --trial 2 --out exported/trial-2" in rows[2]["p"]
    assert rows[2]["h"].endswith("marks: knee, front") and rows[5]["h"].endswith("marks: repeats trial 2")
    assert "accuracy: 0.8000 (proxy score, zero-cost)" in rows[2]["h"]
    assert "worst guideline finding: G1 penalty 0.500" in rows[1]["h"]  # no architecture stored
    # Every trial is drawn once in the Pareto plot's classes, and each marker names its own row.
    figs = data["figures"]
    drawn = [(d.rows[i].trial, t["name"]) for t in figs["pareto"]["data"]
             if t["name"] in ("non-dominated", "dominated", "infeasible", "baseline") for i in t["customdata"]]
    assert sorted(drawn) == [(0, "baseline"), (1, "non-dominated"), (2, "non-dominated"), (3, "dominated"),
                             (4, "non-dominated"), (5, "dominated"), (8, "infeasible"), (9, "infeasible"),
                             (10, "baseline")]
    (hv,) = figs["hypervolume"]["data"]
    assert [d.rows[i].trial for i in hv["customdata"]] == hv["x"] == hypervolume_history(RECORDS + INFEASIBLE).trials


# --- relative figures: one reference, ties, the drift flag ---------------------------------------


def lrec(trial: int, proxy: float, ratio: float, half: float, ref_ms: float = 10.0, **kw) -> TrialRecord:
    """A protocol-2 record: ratio with a +-half interval, scaled by a reference at ref_ms."""
    lat = {"median_ms": ratio * ref_ms, "iqr_ms": half * ref_ms, "n": 20, "runs_ms": [], "fingerprint": {},
           "spec": {}, "ratio": ratio, "ratio_ci": [ratio - half, ratio + half], "estimator": "median_of_ratios",
           "reference": {"arch": "shufflenet_v2_x0_5", "archid": "ref0", "ms": ref_ms, "spread": 0.01,
                         "n": 5, "window_ms": ref_ms}, "protocol": 2, "drifted": kw.pop("drifted", False)}
    return TrialRecord(trial=trial, archid=f"a{trial}", proxy=proxy, latency_ms=ratio * ref_ms,
                       latency=latency_from_dict(lat),
                       mac=1, macs=1, params=1, **kw)


def test_the_front_ranks_by_the_ratio_on_one_reference():
    from shufflesearch.search.front import on_one_reference, run_reference_ms

    # t1 has the smaller ratio but was scaled by a reference figure measured while the machine
    # was slow (10 ms), t2 by one from a fast phase (8 ms): in stored ms t2 looks faster.
    a, b = lrec(1, 0.5, 1.0, 0.01, ref_ms=10.0), lrec(2, 0.4, 1.1, 0.01, ref_ms=8.0)
    assert b.latency_ms < a.latency_ms and len(pareto_front([a, b])) == 2
    assert run_reference_ms([a, b]) == pytest.approx(9.0)
    one = on_one_reference([a, b])
    assert [r.latency_ms for r in one] == pytest.approx([9.0, 9.9])
    assert [r.measured_ms for r in one] == pytest.approx([10.0, 8.8])
    assert [r.trial for r in pareto_front(one)] == [1]  # t1: faster by ratio and a better proxy
    rows = pareto_rows([a, b])
    assert [(r.trial, r.on_front) for r in rows] == [(1, True)]
    assert rows[0].ratio == 1.0 and rows[0].ratio_ci == [0.99, 1.01] and rows[0].reference_ms == pytest.approx(9.0)


def test_the_latency_limit_is_judged_on_the_yardstick_shown():
    from shufflesearch.review.pareto import format_pareto
    from shufflesearch.search.front import latency_over

    # Issue 21 item 1: a 2.0 ms limit converted at a 5.0 ms reference figure is ratio 0.4.
    # t1 (ratio 0.39) was timed while the reference ran at 5.36 ms: stored 2.09 ms, over the
    # limit in ms, though by ratio it is under it; the run's reference is 4.87 ms, so it shows
    # at 1.90 ms. t2 (ratio 0.41) is over the limit by ratio wherever it is shown.
    t1 = lrec(1, 0.5, 0.39, 0.001, ref_ms=5.36, latency_limit=0.4)
    t2 = lrec(2, 0.9, 0.41, 0.001, ref_ms=4.38, latency_limit=0.4)
    for r in (t1, t2):
        r.constraints = {"latency_ms": latency_over(r, 2.0)}
    assert t1.latency_ms == pytest.approx(2.0904) and t1.constraints["latency_ms"] == pytest.approx(-0.05)
    assert t2.latency_ms == pytest.approx(1.7958) and t2.constraints["latency_ms"] == pytest.approx(0.05)
    rows = {r.trial: r for r in pareto_rows([t1, t2], all_trials=True)}
    assert rows[1].reference_ms == pytest.approx(4.87)
    assert rows[1].latency_ms == pytest.approx(1.8993) and rows[1].feasible and rows[1].on_front
    assert not rows[2].feasible and rows[2].breaks["latency_ms"] == pytest.approx(0.01 * 4.87)
    text = format_pareto(list(rows.values()), reference={
        "arch": "shufflenet_v2_x0_5", "archid": "ref0", "ms": 4.87, "retimed_at": None,
        "limit": {"ms": 2.0, "reference_ms": 5.0, "ratio": 0.4}})
    assert "latency_ms +0.0487" in text
    assert "latency_ms limit 2 ms = ratio 0.4000 (converted at reference 5.000 ms), 1.948 ms on this reference" in text
    assert pick_trial([t1, t2], trial=1).latency_ms == pytest.approx(1.8993)
    # re-timed side by side at 6.0 ms, t1 now at ratio 0.41: over the limit as shown
    window = {"reference": {"arch": "shufflenet_v2_x0_5", "archid": "ref0", "ms": 6.0, "window_ms": 6.0}}
    t1.retimed = dataclasses.replace(t1.latency, **window, ratio=0.41, ratio_ci=[0.409, 0.411])
    row = next(r for r in pareto_rows([t1, t2], all_trials=True) if r.trial == 1)
    assert not row.feasible and row.breaks["latency_ms"] == pytest.approx(0.06)


def test_ties_are_marked_and_a_baseline_inside_the_noise_is_not_dominated():
    from shufflesearch.review.pareto import format_pareto

    recs = [
        lrec(1, 0.50, 1.00, 0.02),
        lrec(2, 0.80, 1.50, 0.02),
        lrec(3, 0.45, 1.01, 0.02, baseline="shufflenet_v2_x1_0"),  # 1% slower than t1: inside the noise
        lrec(4, 0.40, 1.30, 0.01, baseline="shufflenet_v2_x0_5", drifted=True),  # 30% slower: beyond it
    ]
    rows = {r.trial: r for r in pareto_rows(recs)}
    # On plain Pareto rules t1 dominates both baselines; beyond the noise only t4.
    assert not rows[3].on_front and not rows[4].on_front
    assert rows[3].ties == [1] and rows[1].ties == [3] and rows[2].ties == []
    assert rows[3].dominated_by == [] and rows[4].dominated_by == [1]
    assert rows[1].dominated_by is None  # not a baseline
    assert rows[4].drifted and not rows[1].drifted
    text = format_pareto(list(rows.values()), reference={"arch": "shufflenet_v2_x0_5", "archid": "ref0",
                                                         "ms": 10.0, "retimed_at": None})
    line = {ln.split()[1]: ln for ln in text.splitlines()[1:5]}
    assert line["3"].startswith(" B=") and line["4"].startswith(" B~d")
    assert "1.010 [0.990, 1.030]" in line["3"]
    assert "shufflenet_v2_x1_0: not dominated beyond the noise" in text
    assert "shufflenet_v2_x0_5: dominated beyond the noise by trial(s) 1" in text
    assert "= latency tie" in text and "~ drifted" in text
    assert "latency ms = ratio x reference shufflenet_v2_x0_5 (ref0) at 10.000 ms" in text


def test_a_retimed_run_shows_the_front_of_the_side_by_side_figures():
    from shufflesearch.search.front import attach_retime

    recs = [lrec(1, 0.5, 1.0, 0.01), lrec(2, 0.8, 1.5, 0.01), lrec(3, 0.85, 1.6, 0.01)]
    assert len(pareto_front(recs)) == 3  # in the stored figures t2 is on the front
    # The re-timing (one window, reference at 12 ms) finds t2 slower than t3, which has the
    # better proxy: t2 drops off the front that is shown.
    window = {"reference": {"arch": "shufflenet_v2_x0_5", "archid": "ref0", "ms": 12.0, "window_ms": 12.0}}
    retime = {"reference": window["reference"], "trials": {
        "1": {**recs[0].latency.to_dict(), **window, "ratio": 1.0, "ratio_ci": [0.99, 1.01], "median_ms": 12.0},
        "2": {**recs[1].latency.to_dict(), **window, "ratio": 1.7, "ratio_ci": [1.69, 1.71], "median_ms": 20.4},
        "3": {**recs[2].latency.to_dict(), **window, "ratio": 1.6, "ratio_ci": [1.59, 1.61], "median_ms": 19.2}}}
    attach_retime(recs, retime)
    rows = {r.trial: r for r in pareto_rows(recs, all_trials=True)}
    assert rows[3].on_front and not rows[2].on_front and rows[1].retimed
    assert rows[2].latency_ms == pytest.approx(20.4) and rows[2].measured_ms == pytest.approx(15.0)
    assert pick_trial(recs, max_latency=19.5).trial == 3
    # Issue 21 item 4: `latency transfer` re-times the front that is shown, not the stored one.
    from shufflesearch.review.transfer import transfer_points

    assert [r.trial for r in transfer_points(recs)] == [r.trial for r in pareto_rows(recs) if r.on_front] == [1, 3]


def test_pareto_retime_and_reference_in_every_view(run_dir, capsys):
    from shufflesearch.search.runfolder import load_run
    from shufflesearch.search.storage import study_attr

    before = study_attr(load_run(run_dir)[1], "retime")  # the run's own end-of-run re-timing
    assert main(["pareto", str(run_dir), "--retime", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    after = study_attr(load_run(run_dir)[1], "retime")
    assert after["at"] >= before["at"] and after["reference"]["window_ms"] != before["reference"]["window_ms"]
    shown = [r for r in rows if r["on_front"] or r["baseline"]]
    # The front shown is the front of the stored window's ratios, worked out here from the
    # study's attribute (the proxy comes from the rows), and every baseline was in that window.
    figs = after["trials"]
    assert {r["trial"] for r in rows if r["baseline"]} <= {int(t) for t in figs}
    pts = {r["trial"]: (r["proxy"], figs[str(r["trial"])]["ratio"]) for r in rows
           if str(r["trial"]) in figs and r["feasible"]}
    best = {t for t, (p, q) in pts.items()
            if not any(p2 >= p and q2 <= q and (p2, q2) != (p, q) for p2, q2 in pts.values())}
    assert {r["trial"] for r in rows if r["on_front"]} <= best
    assert {r["archid"] for r in rows if r["trial"] in best} == {r["archid"] for r in rows if r["on_front"]}
    for r in shown:
        lo, hi = r["ratio_ci"]
        assert lo <= r["ratio"] <= hi
        assert r["latency_ms"] == pytest.approx(r["ratio"] * after["reference"]["ms"])
        assert r["reference_ms"] == pytest.approx(after["reference"]["ms"])
        assert isinstance(r["drifted"], bool) and isinstance(r["ties"], list)
    assert main(["pareto", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "ratio [95% CI]" in out and f"at {after['reference']['ms']:.3f} ms, re-timed side by side" in out
    assert main(["pareto", str(run_dir), "--csv"]) == 0
    head = capsys.readouterr().out.splitlines()[0].split(",")
    assert {"ratio", "ratio_ci_low", "ratio_ci_high", "reference_ms", "drifted", "ties"} <= set(head)


def test_report_and_export_show_the_ratio_reference_and_drift(run_dir, tmp_path, capsys, monkeypatch):
    from shufflesearch.review import export as ex
    from shufflesearch.review.html import render_html
    from shufflesearch.review.pareto import load_records, load_reference_note
    from shufflesearch.review.report_data import report_data

    _, recs = load_records(run_dir)
    d = report_data(recs, title="t", meta={"latency": "x"}, resolution=32, unit_ms=None, predictor_note="")
    page = render_html(d)
    k = next(r for r in d.rows if r.knee)
    assert "ratio [95% CI]" in page and f"{k.ratio:.3f} [{k.ratio_ci[0]:.3f}, {k.ratio_ci[1]:.3f}]" in page
    note = load_reference_note(run_dir)
    assert note["retimed_at"] and note["arch"] == "shufflenet_v2_x0_5" and isinstance(note["drifted"], bool)
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r.html"), "--quiet"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert f"latency ms = ratio x reference shufflenet_v2_x0_5 ({note['archid']}) at {note['ms']:.3f} ms" in page
    assert "ratio [95% CI]" in page and ("drifted" in page) == any(r.drifted for r in d.rows)
    # Export: the memory format the target timed (the space's default: NHWC), and the figure.
    seen = []
    real = ex.to_inference
    monkeypatch.setattr(ex, "to_inference", lambda m, channels_last=True: seen.append(channels_last) or real(m, channels_last))
    out = tmp_path / "bundle"
    assert main(["export", str(run_dir), "--knee", "--out", str(out), "--no-onnx", "--quiet"]) == 0
    assert seen == [True]
    md = (out / "report.md").read_text()
    assert f"**{k.latency_ms:.3f} ms** = ratio {k.ratio:.4f} (95% CI {k.ratio_ci[0]:.4f}-{k.ratio_ci[1]:.4f})" in md
    assert "x reference shufflenet_v2_x0_5" in md and "Re-timed side by side" in md
    assert ("**Drifted**" in md) == k.drifted and ("Drifted: no." in md) == (not k.drifted)
    assert "NHWC (channels_last) as the target timed" in md
    res = ex.export_arch("shufflenet_v2_x0_5", tmp_path / "nchw", resolution=32, onnx=False, channels_last=False)
    assert seen[-1] is False and res.channels_last is False
    assert "NCHW as the target timed" in (tmp_path / "nchw" / "report.md").read_text()


# --- a synthetic budget-200 ladder run: page size, hover, click and toggles ---------------------

BASELINES = ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5")


def synthetic_records(n: int = 200, n_archs: int = 40) -> list[TrialRecord]:
    """Records as a budget-n ladder run on search_spaces/v2.yaml stores them (three rungs,
    val_acc at the top), without searching: the three V2 baselines first, then random
    architectures of the space; every 17th trial breaks a MACs limit (and so never trains),
    and the second baseline's latency is within the first's noise (a tie)."""
    import random

    from shufflesearch.model.arch import PRESETS
    from shufflesearch.search.space import load_space

    rng = random.Random(0)
    archs = load_space(ROOT / "search_spaces" / "v2.yaml").sample_random(n_archs, seed=0)
    recs = []
    for t in range(n):
        arch = PRESETS[BASELINES[t]] if t < 3 else archs[t % n_archs]
        ratio = 2.5 if t == 0 else 2.51 if t == 1 else rng.uniform(0.3, 3.0)
        lat = {"median_ms": ratio * 10, "iqr_ms": 0.1 * ratio, "ratio": ratio,
               "ratio_ci": [ratio * 0.99, ratio * 1.01], "protocol": 2,
               "reference": {"arch": "shufflenet_v2_x0_5", "archid": "ref0", "ms": 10.0}}
        infeasible = t >= 3 and t % 17 == 0
        rung = 0 if infeasible else 3 if t < 3 or t % 3 == 0 else rng.choice([1, 2])
        rungs = {str(k): {"steps": 8 << k, "sotl": -rng.uniform(1, 2) * (8 << k)} for k in range(1, rung + 1)}
        if rung == 3:
            rungs["3"]["val_acc"] = rng.uniform(0.6, 0.9)
        pen = {g: rng.choice([0.0, rng.uniform(0, 0.02)]) for g in ("G1", "G2", "G3", "G4")}
        recs.append(TrialRecord(
            trial=t, archid=arch.archid, arch=arch, params=rng.randint(10**5, 5 * 10**6),
            macs=rng.randint(10**7, 6 * 10**8), mac=rng.randint(10**6, 5 * 10**7),
            latency=latency_from_dict(lat),
            latency_ms=ratio * 10, proxy=rungs["3"]["val_acc"] if rung == 3 else None,
            guidelines=GuidelineSummary(pen, sum(pen.values()) / 4, sum(v > 0 for v in pen.values())),
            constraints={"macs_m": 12.5 if infeasible else -1.0}, baseline=BASELINES[t] if t < 3 else None,
            rung=rung, top_rung=3, estimator="val_acc",
            rungs={int(k): RungResult.from_dict(v, int(k)) for k, v in rungs.items()} or None,
            stopped=None if rung == 3 else "not promoted"))
    return recs


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from shufflesearch.review.html import render_html
    from shufflesearch.review.report_data import report_data

    recs = synthetic_records()
    d = report_data(recs, title="synthetic", meta={"run": "runs/v2"}, resolution=224, run="runs/v2")
    path = tmp_path_factory.mktemp("synthetic") / "report.html"
    path.write_text(render_html(d), encoding="utf-8")
    return recs, path


def test_a_budget_200_report_stays_under_5_mb(synthetic):
    recs, path = synthetic
    page = path.read_text(encoding="utf-8")
    assert path.stat().st_size < 5_000_000
    assert page.count('id="plotly-gz"') == 1  # plotly.js once, packed
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page).group(1))
    assert [r["t"] for r in data["rows"]] == [r.trial for r in pareto_rows(recs, all_trials=True)]
    assert set(data["figures"]) == {"pareto", "macs", "mac", "guidelines", "hypervolume", "ladder"}


def test_hover_click_and_toggles_in_chromium(synthetic, browser):
    from shufflesearch.guidelines.checks import check
    from shufflesearch.model.cost import costs

    recs, path = synthetic
    by_trial = {r.trial: r for r in recs}
    knee = next(r for r in pareto_rows(recs) if r.knee)
    rec = by_trial[knee.trial]
    arch = rec.arch
    below = [r for r in recs if r.feasible and r.rung < 3]
    infeasible = [r for r in recs if not r.feasible]
    page = ReportPage(browser, path)
    try:
        assert page.requests == [page.url] and not page.errors
        assert page.page.get_attribute("body", "data-plotted") == "6"
        lines = page.hover("pareto", knee.trial)
        assert lines[0] == f"trial {knee.trial} · {rec.archid}"
        assert lines[1] == f"accuracy: {rec.rungs[3].val_acc:.4f} (val_acc, rung 3 of 3)"
        ratio = rec.latency.ratio
        assert lines[2] == (f"latency: {ratio * 10:.3f} ms ± {0.1 * ratio:.3f} IQR · ratio {ratio:.3f} "
                            f"[{ratio * 0.99:.3f}, {ratio * 1.01:.3f}]")
        assert lines[3].startswith(f"MACs {rec.macs / 1e6:.2f}M · MAC {rec.mac / 1e6:.2f}M")
        worst = max(check(arch, 224).findings, key=lambda f: f.penalty)
        assert lines[4] == f"worst guideline finding: {worst.guideline} at {worst.node} (penalty {worst.penalty:.4f})"
        assert worst.message.split(";")[0][:60] in lines[5]
        assert "knee" in lines[-1]
        # A trial below the top rung has no accuracy figure, only its rung's, labelled so.
        b = below[0]
        lines = page.hover("macs", b.trial)
        sotl = b.rungs[b.rung].estimate("sotl")
        assert lines[1] == f"accuracy: none on the front's scale; rung {b.rung} of 3: {sotl:.4f} (sotl)"

        text = page.click("pareto", knee.trial)
        cmd = f"shufflesearch export runs/v2 --trial {knee.trial} --out exported/trial-{knee.trial}"
        assert cmd in text
        units = page.page.locator("#details table tr td:first-child").all_text_contents()
        assert units == list(costs(arch, 224).units)
        page.page.click("#details button[data-copy]")
        page.page.wait_for_function("document.querySelector('#details button[data-copy]').textContent === 'copied'")
        assert page.page.evaluate("navigator.clipboard.readText()") == cmd
        assert "Not exportable: infeasible (breaks macs_m +12.5)" in page.click("macs", infeasible[0].trial)

        # Each toggle hides exactly its trials, in every plot, and brings them back.
        full = page.drawn("macs")
        assert full == len(recs)
        for flag, n in (("baseline", 3), ("below", len(below)), ("infeasible", len(infeasible))):
            page.toggle(flag, False)
            assert page.drawn("macs") == full - n, flag
            page.toggle(flag, True)
            assert page.drawn("macs") == full, flag
        (tie,) = [t for t in page.traces("pareto") if t["name"] == "latency tie"]
        shown = pareto_rows(recs, all_trials=True)  # the page's rows, in its order
        assert sorted(shown[i].trial for i in tie["rows"] if i >= 0) == [0, 1]  # the two baselines
        before = page.drawn("pareto")
        page.toggle("tie", False)
        assert [t["visible"] for t in page.traces("pareto") if t["name"] == "latency tie"] == [False]
        assert page.drawn("pareto") == before - 2  # the two tied baselines' rings
        assert page.requests == [page.url] and not page.errors
    finally:
        page.close()
