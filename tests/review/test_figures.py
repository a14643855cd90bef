"""review/figures.py: what each plot of the report draws, from hand-made records (the page that
embeds them is tested in tests/review/test_report.py)."""

from __future__ import annotations

import pytest

from shufflesearch.review.figures import (
    GUIDELINES,
    TOGGLES,
    fig_cost,
    fig_guidelines,
    fig_pareto,
    figures,
    row_flags,
)
from shufflesearch.review.report_data import report_data
from shufflesearch.search.records import GuidelineSummary, TrialRecord, latency_from_dict


def rec(trial: int, proxy: float, ms: float, macs: int, **kw) -> TrialRecord:
    pen = {g: 0.1 * trial for g in ("G1", "G2", "G3", "G4")}
    return TrialRecord(trial=trial, archid=f"a{trial}", proxy=proxy, latency_ms=ms,
                       latency=latency_from_dict({"median_ms": ms, "iqr_ms": 0.01}), mac=2 * macs,
                       macs=macs, params=10, guidelines=GuidelineSummary(pen, 0.1), **kw)


# Front: t1 (1 ms, 0.3), t2 (2 ms, 0.7), t4 (4 ms, 0.9); t3 is beaten by t2; the baseline t0
# by t4; t5 breaks a constraint. MACs grow with latency but t5 has the fewest at the highest
# latency: 5 of the 15 pairs are discordant, so Kendall's tau is (10 - 5) / 15, and the rank
# differences (1, 1, 1, 1, 1, -5) give Spearman's rho = 1 - 6 * 30 / (6 * 35).
RECORDS = [rec(0, 0.6, 5.0, 500, baseline="shufflenet_v2_x0_5"), rec(1, 0.3, 1.0, 100),
           rec(2, 0.7, 2.0, 200), rec(3, 0.5, 3.0, 300), rec(4, 0.9, 4.0, 400),
           rec(5, 0.95, 6.0, 50, constraints={"macs_m": 1.0})]


@pytest.fixture(scope="module")
def data():
    return report_data(RECORDS, title="t", meta={}, resolution=32)


def test_row_flags_follow_the_toggles(data):
    flags = {r.trial: row_flags(r) for r in data.rows}
    assert flags == {0: ["baseline"], 1: [], 2: [], 3: [], 4: [], 5: ["infeasible"]}
    assert {f for fs in flags.values() for f in fs} <= set(TOGGLES)


def test_the_pareto_plot_draws_every_row_once_in_its_class(data):
    fig = fig_pareto(data)
    by_name = {t["name"]: t for t in fig["data"]}
    drawn = {data.rows[i].trial: name for name in ("non-dominated", "dominated", "infeasible", "baseline")
             if name in by_name for i in by_name[name]["customdata"]}
    assert drawn == {0: "baseline", 1: "non-dominated", 2: "non-dominated", 3: "dominated",
                     4: "non-dominated", 5: "infeasible"}
    assert by_name["front"]["x"] == [1.0, 2.0, 4.0] and by_name["front"]["y"] == [0.3, 0.7, 0.9]
    (k,) = by_name["knee"]["customdata"]
    assert data.rows[k].trial == 2  # farthest from the line joining the front's ends
    for name in ("non-dominated", "dominated", "infeasible", "baseline"):
        t = by_name[name]
        assert t["x"] == [data.rows[i].latency_ms for i in t["customdata"]]


def test_the_cost_plots_state_the_rank_correlation(data):
    fig = fig_cost(data, "macs")
    assert fig["layout"]["title"]["text"] == "MACs vs latency: Spearman 0.14, Kendall 0.33"
    xs = sorted(x for t in fig["data"] for x in t["x"])
    assert xs == [r.macs / 1e6 for r in sorted(RECORDS, key=lambda r: r.macs)]
    assert fig_cost(data, "mac")["layout"]["title"]["text"].startswith("MAC vs latency")


def test_the_guideline_bars_stack_each_guidelines_penalty(data):
    fig = fig_guidelines(data)
    assert [t["name"] for t in fig["data"]] == list(GUIDELINES)
    for t in fig["data"]:
        assert t["x"] == [0, 1, 2, 3, 4, 5]
        assert t["y"] == pytest.approx([0.1 * i for i in range(6)])


def test_figures_pass_plotlys_schema_and_skip_the_ladder_of_a_zero_cost_run(data):
    assert set(figures(data)) == {"pareto", "macs", "mac", "guidelines", "hypervolume"}
