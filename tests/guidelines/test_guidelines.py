"""G1-G4 checkers, the micro-bench's analytic costs and the calibration.

Expected numbers are worked out here from the paper's Eq. 1/2 (REFERENCE.md) or taken from
torch's FlopCounterMode, never from the code under test."""

from __future__ import annotations

import json
import math

import networkx as nx
import pytest
import torch

from shufflesearch import guideline_report
from shufflesearch.cli import main
from shufflesearch.errors import UserError
from shufflesearch.guidelines.calibration import Calibration, fit, load, save
from shufflesearch.guidelines.checks import GUIDELINES, GuidelineSettings
from shufflesearch.guidelines.microbench import (
    TABLES,
    block_costs,
    build_stack,
    compare,
    kendall_tau,
)
from shufflesearch.model.arch import PRESETS, Arch, Stage
from shufflesearch.model.graph import op_graph
from shufflesearch.search.reader import read_section

V1 = [n for n in PRESETS if n.startswith("shufflenet_v1")]
V2 = [n for n in PRESETS if n.startswith("shufflenet_v2")]


def _of(report, g):
    return [f for f in report.findings if f.guideline == g]


@pytest.mark.parametrize("name", V1)
def test_v1_presets_break_g1_and_g2(name):
    r = guideline_report(name)
    g = op_graph(PRESETS[name], 224)
    g1 = _of(r, "G1")
    assert g1, "the 1:4 bottleneck must be flagged"
    for f in g1:  # every G1 finding is a 1x1 conv whose widths differ by 4x (bottleneck 1/4)
        a = g.nodes[f.node]
        assert a["op"] == "conv" and a["k"] == 1
        assert max(a["c_in"], a["c_out"]) == 4 * min(a["c_in"], a["c_out"])
    groups = PRESETS[name].stages[0].groups
    g2 = _of(r, "G2")
    if groups == 1:
        assert not g2
    else:
        assert g2
        assert all(g.nodes[f.node]["groups"] == groups and not g.nodes[f.node]["depthwise"] for f in g2)


@pytest.mark.parametrize("name", V2)
def test_v2_presets_pass_g1_to_g3(name):
    r = guideline_report(name)
    assert not _of(r, "G1") and not _of(r, "G2") and not _of(r, "G3")
    assert r.penalties["G1"] == r.penalties["G2"] == r.penalties["G3"] == 0


def test_v1_add_counts_under_g4():
    # Unit stages.0.1 of V1 g=3 1x: 240 channels on 28x28, mid 60, 3 groups. Deployed MAC by
    # hand (BN folded; the shuffle after a grouped conv stays a copy):
    hw, c, m = 28 * 28, 240, 60
    pw = hw * (c + m) + c * m // 3  # Eq. 2, each grouped 1x1
    dw = hw * 2 * m + m * 9
    relu_mid, shuffle = 2 * hw * m, 2 * hw * m
    add, relu_out = 3 * hw * c, 2 * hw * c  # add reads two tensors, writes one
    ew = relu_mid + shuffle + add + relu_out
    share = ew / (2 * pw + dw + ew)
    r = guideline_report("shufflenet_v1_g3_x1_0")
    (f,) = [f for f in _of(r, "G4") if f.unit == "stages.0.1"]
    assert f.measured == pytest.approx(share, rel=1e-9)
    assert f.node == "stages.0.1.add" and "add" in f.message
    # Without the add the same unit would pass the default threshold.
    assert (ew - add) / (2 * pw + dw + ew - add) < GuidelineSettings().g4_max_share < share


def _branchy(n: int) -> nx.DiGraph:
    """A hand-made unit in the OpGraph schema: n parallel 1x1 convs 16 -> 16/n, concatenated."""
    g = nx.DiGraph()
    ctx = {"unit": "stages.0.0", "stage": 0, "branch": None}
    g.add_node("input", op="input", in_shapes=[], out_shapes=[(16, 8, 8)], **{**ctx, "unit": "stem", "stage": None})
    for i in range(n):
        g.add_node(f"stages.0.0.b{i}.conv", op="conv", in_shapes=[(16, 8, 8)], out_shapes=[(16 // n, 8, 8)],
                   c_in=16, c_out=16 // n, k=1, stride=1, groups=1, depthwise=False, bias=False, **ctx)
        g.add_edge("input", f"stages.0.0.b{i}.conv", src_port=0, dst_port=0)
    g.add_node("stages.0.0.concat", op="concat", in_shapes=[(16 // n, 8, 8)] * n,
               out_shapes=[(16, 8, 8)], **ctx)
    for i in range(n):
        g.add_edge(f"stages.0.0.b{i}.conv", "stages.0.0.concat", src_port=0, dst_port=i)
    return g


def test_four_branch_unit_is_flagged_under_g3():
    r = guideline_report(_branchy(4))
    g3 = _of(r, "G3")
    assert [(f.node, f.measured, f.overhead_ops) for f in g3] == [("stages.0.0.concat", 4, 2)]
    assert r.penalties["G3"] > 0
    assert not _of(guideline_report(_branchy(2)), "G3")  # two paths, like the V2 unit: fine


def test_long_series_is_flagged_under_g3():
    g = _branchy(2)  # make branch 0 a chain of 5 convs
    prev = "stages.0.0.b0.conv"
    g.remove_edge(prev, "stages.0.0.concat")
    for i in range(4):
        n = f"stages.0.0.s{i}.conv"
        g.add_node(n, **{**g.nodes[prev], "c_in": 8, "in_shapes": [(8, 8, 8)]})
        g.add_edge(prev, n, src_port=0, dst_port=0)
        prev = n
    g.add_edge(prev, "stages.0.0.concat", src_port=0, dst_port=0)
    assert [f.measured for f in _of(guideline_report(g), "G3")] == [5]


def _v1(groups: int) -> Arch:
    return Arch(stages=tuple(Stage("v1", c, d, groups=groups) for c, d in ((240, 4), (480, 8), (960, 4))),
                head=0, fc_bias=False)


def test_g2_penalty_grows_with_groups():
    p = [guideline_report(_v1(g)).penalties["G2"] for g in (1, 2, 3, 4)]
    assert p[0] == 0
    assert p[0] < p[1] < p[2] < p[3] <= 1


def test_g1_penalty_grows_with_imbalance():
    p = [guideline_report(_v1(1).replace(stages=tuple(
        Stage("v1", c, d, bottleneck=b) for c, d in ((240, 4), (480, 8), (960, 4))
    ))).penalties["G1"] for b in (0.5, 0.25, 0.125)]
    assert p[0] < p[1] < p[2]


@pytest.mark.parametrize("name", ["shufflenet_v1_g8_x1_0", "shufflenet_v2_x1_0"])
def test_penalties_bounded_and_total_is_weighted_mean(name):
    s = read_section("guidelines.settings", {"weights": {"G1": 2, "G4": 0}})
    r = guideline_report(name, settings=s)
    assert all(0 <= r.penalties[g] <= 1 for g in GUIDELINES)
    w = {"G1": 2, "G2": 1, "G3": 1, "G4": 0}
    assert r.total == pytest.approx(sum(w[g] * r.penalties[g] for g in GUIDELINES) / 4)
    d = json.loads(json.dumps(r.to_dict()))
    assert set(d["penalties"]) == set(GUIDELINES)
    assert all({"guideline", "node", "penalty"} <= set(f) for f in d["findings"])


def test_settings_reject_unknown_and_bad_values():
    with pytest.raises(UserError, match=r"guidelines.settings.g5_max: unknown key \(allowed: g1_max"):
        read_section("guidelines.settings", {"g5_max": 1})
    with pytest.raises(UserError, match="guidelines.settings.g1_max_excess: must be a number, got 'big'"):
        read_section("guidelines.settings", {"g1_max_excess": "big"})
    with pytest.raises(UserError, match=r"guidelines.settings.weights.G9: unknown key \(allowed: G1"):
        read_section("guidelines.settings", {"weights": {"G9": 1}})
    with pytest.raises(UserError, match="GuidelineSettings.weights: at least one weight must be > 0"):
        GuidelineSettings(weights=dict.fromkeys(GUIDELINES, 0))
    assert read_section("guidelines.settings", {"g3_max_paths": 4}).g3_max_paths == 4
    assert not _of(guideline_report(_branchy(4), settings=GuidelineSettings(g3_max_paths=4)), "G3")


# --- the micro-bench's analytic costs (paper Eq. 1 and 2) ---------------------------------


def test_table1_mac_orders_as_eq1():
    hw = 56 * 56
    rows = TABLES["1"]["rows"]
    mac = [block_costs(r, 1).mac for r in rows]
    for r, m in zip(rows, mac):  # 10 blocks of two 1x1 convs c1->c2->c1 (Eq. 1)
        c1, c2 = r.arch
        assert m == 10 * 2 * (hw * (c1 + c2) + c1 * c2)
    assert mac == sorted(mac) and len(set(mac)) == 4  # 1:1 < 1:2 < 1:6 < 1:12
    # FLOPs held nearly fixed, as in the paper: c1·c2 = 1024, 968, 1014, 972 (within 6%)
    macs = [block_costs(r, 1).macs for r in rows]
    assert macs == [10 * 2 * hw * r.arch[0] * r.arch[1] for r in rows]
    assert max(macs) / min(macs) < 1.06


def test_table2_mac_orders_as_eq2():
    hw = 56 * 56
    rows = TABLES["2"]["rows"]
    mac = [block_costs(r, 1).mac for r in rows]
    for r, m in zip(rows, mac):
        c, g = block_costs(r, 1).in_channels, r.arch[1]
        b = hw * c * c / g
        assert m == pytest.approx(10 * (hw * c + b * g / c + b / hw))  # Eq. 2 with c1 = c2 = c
    assert mac == sorted(mac) and len(set(mac)) == 4  # g = 1 < 2 < 4 < 8


@pytest.mark.parametrize("table", list(TABLES))
def test_bench_blocks_match_torch_flop_counter(table):
    from torch.utils.flop_counter import FlopCounterMode

    for row in TABLES[table]["rows"]:
        c = block_costs(row, 1, hw=8)
        model = build_stack(row, 1)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.randn(1, c.in_channels, 8, 8))
        assert fc.get_total_flops() // 2 == c.macs, row.label


def test_compare_orderings():
    assert kendall_tau([3, 2, 1], [30, 20, 10]) == 1
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == -1


# --- calibration ---------------------------------------------------------------------------


def test_fit_recovers_known_coefficients():
    a, b, c = 0.5, 2.0, 0.01  # ms per GMAC, ms per M elements, ms per op
    pts = [(m, e, o, a * m / 1e9 + b * e / 1e6 + c * o)
           for m, e, o in [(1e8, 1e6, 10), (4e8, 3e6, 10), (1e8, 5e6, 40), (2e9, 2e6, 20), (5e7, 8e6, 50)]]
    fa, fb, fc, err = fit(pts)
    assert (fa, fb, fc) == pytest.approx((a, b, c), rel=1e-6)
    assert err < 1e-9


def test_calibration_roundtrip_and_estimated_ms(tmp_path, monkeypatch):
    monkeypatch.setenv("SHUFFLESEARCH_CACHE_DIR", str(tmp_path))
    cal = Calibration("abc123", {"cpu": "test"}, 0.5, 2.0, 0.01, 0.1, 5)
    p = save(cal)
    assert p == tmp_path / "calibration" / "abc123.json"
    assert load("abc123") == cal
    assert load("nothere") is None
    r = guideline_report("shufflenet_v1_g3_x1_0", calibration=load("abc123"))
    for f in r.findings:
        assert f.overhead_ms == pytest.approx(f.overhead_mac * 2.0 / 1e6 + f.overhead_ops * 0.01)
    assert r.overhead_ms == pytest.approx(sum(f.overhead_ms for f in r.findings))
    assert 0 < r.elementwise_time_share < 1
    p.write_text("{not json")
    with pytest.raises(UserError, match="abc123"):
        load("abc123")


# --- CLI -----------------------------------------------------------------------------------


def test_cli_check_json(capsys):
    assert main(["guidelines", "shufflenet_v1_g2_x1_0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {f["guideline"] for f in d["findings"]} >= {"G1", "G2"}
    assert set(d["penalties"]) == set(GUIDELINES)


def test_cli_check_text_and_errors(capsys, tmp_path):
    assert main(["guidelines", "shufflenet_v2_x0_5"]) == 0
    out = capsys.readouterr().out
    assert "G1 equal channel width" in out and "total penalty" in out
    assert main(["guidelines", "no_such_net"]) == 2
    bad = tmp_path / "s.yaml"
    bad.write_text("g1_max: 0.2\n")
    assert main(["guidelines", "shufflenet_v2_x0_5", "--settings", str(bad)]) == 2
    assert "g1_max" in capsys.readouterr().err


def test_comparison_structure():
    from shufflesearch.guidelines.microbench import Measured

    rows = TABLES["2"]["rows"]
    ms = [Measured("2", r.label, 1, r.arch, 0, 0, 0, 1000 / r.paper_arm[0], 0.0, r.paper_gpu[0], r.paper_arm[0])
          for r in rows]
    (c,) = compare(ms)
    assert c.same_as_arm and c.same_as_gpu and math.isclose(c.tau_arm, 1)
