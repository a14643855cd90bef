"""Cost model against REFERENCE.md's figures and against torch's own counters."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from shufflesearch import PRESETS, build, costs, op_graph, preset
from shufflesearch.model.cost import node_cost


def torch_macs(model: torch.nn.Module, res: int) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(torch.zeros(1, 3, res, res))
    return fc.get_total_flops() / 2  # torch counts a multiply-accumulate as 2 FLOPs


# REFERENCE.md: torchvision layout, sum(p.numel()) and FlopCounterMode at 224x224
TORCHVISION = {
    "shufflenet_v2_x0_5": (1_366_792, 40.48e6),
    "shufflenet_v2_x1_0": (2_278_604, 144.91e6),
    "shufflenet_v2_x1_5": (3_503_624, 295.76e6),
    "shufflenet_v2_x2_0": (7_393_996, 583.25e6),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_v2_torchvision_layout_params_exact_and_macs(name):
    params, macs = TORCHVISION[name]
    c = costs(name, 224)
    assert c.params == params
    assert abs(c.macs - macs) < 0.005e6  # REFERENCE gives two decimals in millions


# REFERENCE.md: Megvii layout reproduces the paper's 41/146/299/591M; params (FC without bias)
MEGVII = {
    "shufflenet_v2_megvii_x0_5": (1_365_792, 41e6, 40.48e6),
    "shufflenet_v2_megvii_x1_0": (2_278_760, 146e6, 145.81e6),
    "shufflenet_v2_megvii_x1_5": (3_506_720, 299e6, 298.97e6),
    "shufflenet_v2_megvii_x2_0": (7_402_600, 591e6, 590.78e6),
}


@pytest.mark.parametrize("name", list(MEGVII))
def test_v2_megvii_layout_matches_the_paper(name):
    params, paper, megvii = MEGVII[name]
    c = costs(name, 224)
    assert c.params == params
    assert abs(c.macs - megvii) < 0.005e6
    # The paper prints 41M for 0.5x, which Megvii's own code computes as 40.48M (REFERENCE.md):
    # 1.3% off, a rounding of the paper's; the other three are within 1%.
    assert abs(c.macs - paper) / paper < (0.013 if paper == 41e6 else 0.01)


# REFERENCE.md: V1 paper Table 1/2 (MACs without FC) and Megvii-layout params at 1x
V1 = {1: (143e6, 1_530_936), 2: (140e6, 1_732_848), 3: (137e6, 1_864_728),
      4: (133e6, 1_967_344), 8: (137e6, 2_433_768)}


@pytest.mark.parametrize("g", list(V1))
def test_v1_1x_within_1pct_of_the_paper(g):
    paper, params = V1[g]
    a = preset(f"shufflenet_v1_g{g}_x1_0")
    c = costs(a, 224)
    fc = a.stages[-1].channels * 1000
    assert abs((c.macs - fc) - paper) / paper < 0.01
    assert c.params == params


def test_v1_g3_other_widths_match_megvii_calculated_macs():
    # REFERENCE.md: Megvii g=3 calculated MACs incl. FC: 0.5x 37.59M, 1.5x 292.44M, 2x 524.05M
    for w, m in {"0_5": 37.59e6, "1_5": 292.44e6, "2_0": 524.05e6}.items():
        assert abs(costs(f"shufflenet_v1_g3_x{w}", 224).macs - m) < 0.005e6


@pytest.mark.parametrize("name", list(PRESETS))
def test_analytic_macs_equal_torch_flop_counter_on_presets(name):
    res = 224 if "x0_5" in name or "x1_0" in name else 96  # keep the suite quick
    assert costs(name, res).macs == torch_macs(build(name), res)


def test_analytic_macs_equal_torch_flop_counter_on_50_random_archs(random_archs):
    assert len(random_archs) == 50
    for i, a in enumerate(random_archs):
        res = (40, 48, 56, 64)[i % 4]
        assert costs(a, res).macs == torch_macs(build(a), res), a.to_dict()


def _module_params(model: torch.nn.Module, path: str) -> int:
    return sum(p.numel() for p in model.get_submodule(path).parameters(recurse=False))


@pytest.mark.parametrize("name", ["shufflenet_v2_x1_0", "shufflenet_v2_megvii_x0_5", "shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x0_5"])
def test_every_node_params_equal_its_module(name):
    model = build(name)
    g = op_graph(preset(name), 224)
    for n, attrs in g.nodes(data=True):
        if attrs["op"] in ("conv", "bn", "linear"):
            assert node_cost(attrs).params == _module_params(model, n), n
        elif attrs["op"] in ("relu", "maxpool", "avgpool", "shuffle", "gap"):
            model.get_submodule(n)  # a module of that very name (raises if absent)
        elif attrs["op"] in ("split", "concat", "add"):
            model.get_submodule(n.rsplit(".", 1)[0])  # a tensor op inside that unit's forward
    assert sum(node_cost(a).params for _, a in g.nodes(data=True)) == sum(p.numel() for p in model.parameters())


def test_node_params_equal_modules_on_random_archs(random_archs):
    for a in random_archs[:20]:
        model = build(a)
        for n, attrs in op_graph(a, 32).nodes(data=True):
            if attrs["op"] in ("conv", "bn", "linear"):
                assert node_cost(attrs).params == _module_params(model, n), n


def test_graph_shapes_match_the_module_at_odd_resolution():
    a = preset("shufflenet_v2_x0_5")
    g = op_graph(a, 97)
    feats = build(a).eval().forward_features(torch.zeros(1, 3, 97, 97))
    assert tuple(feats.shape[1:]) == g.nodes["head.relu"]["out_shapes"][0]


def test_parallel_branches_are_parallel_paths():
    import networkx as nx

    g = op_graph(preset("shufflenet_v2_x1_0"), 224)
    # basic unit: split forks into the identity edge and the 3-conv branch, concat joins them
    paths = list(nx.all_simple_paths(g, "stages.0.1.split", "stages.0.1.concat"))
    assert len(paths) == 2
    assert sorted(len(p) for p in paths) == [2, 10]  # direct edge; pw1(3)+dw(2)+pw2(3) nodes
    # downsampling unit: two branches from the previous node
    paths = list(nx.all_simple_paths(g, "stem.pool", "stages.0.0.concat"))
    assert len(paths) == 2


# --- MAC: the V2 paper's Eq. 1 and Eq. 2 ----------------------------------------------------


def conv1x1_mac(h, w, c1, c2, g=1):
    a = preset("shufflenet_v2_x0_5")  # any graph; we only need node_cost on a hand-made node
    del a
    return node_cost({"op": "conv", "in_shapes": [(c1, h, w)], "out_shapes": [(c2, h, w)],
                      "c_in": c1, "c_out": c2, "k": 1, "stride": 1, "groups": g, "bias": False})


@pytest.mark.parametrize("hw, c1, c2", [(56, 128, 128), (56, 90, 180), (28, 52, 312), (14, 36, 432), (7, 9, 108)])
def test_mac_follows_eq1_and_its_lower_bound(hw, c1, c2):
    nc = conv1x1_mac(hw, hw, c1, c2)
    h = w = hw
    B = h * w * c1 * c2
    assert nc.macs == B
    assert nc.mac == h * w * (c1 + c2) + c1 * c2
    bound = 2 * math.sqrt(h * w * B) + B / (h * w)
    assert nc.mac >= bound - 1e-6
    if c1 == c2:
        assert nc.mac == pytest.approx(bound)


def test_mac_lower_bound_is_reached_only_at_equal_widths():
    # Table 1's fixed-FLOPs configurations (GPU column): 1:1 has the lowest MAC.
    macs = [conv1x1_mac(56, 56, c1, c2).mac for c1, c2 in [(128, 128), (90, 180), (52, 312), (36, 432)]]
    assert macs == sorted(macs)


@pytest.mark.parametrize("g", [1, 2, 4, 8])
def test_group_conv_mac_follows_eq2(g):
    h = w = 56
    c = {1: 128, 2: 180, 4: 256, 8: 360}[g]  # Table 2: c^2/g fixed
    nc = conv1x1_mac(h, w, c, c, g)
    B = h * w * c * c // g
    assert nc.macs == B
    assert nc.mac == h * w * c + B * g / c + B / (h * w)


def test_group_conv_mac_grows_with_groups_at_fixed_macs():
    macs = [conv1x1_mac(56, 56, c, c, g).mac for g, c in [(1, 128), (2, 180), (4, 256), (8, 360)]]
    assert macs == sorted(macs) and len(set(macs)) == 4


def test_peak_activation_counts_live_tensors():
    # A V2 basic unit holds its input's identity half while the branch runs: the peak is
    # at least input + one branch tensor, and never more than all tensors together.
    g = op_graph(preset("shufflenet_v2_x1_0"), 224)
    c = costs("shufflenet_v2_x1_0", 224)
    biggest = max(math.prod(a["out_shapes"][0]) for _, a in g.nodes(data=True))
    assert biggest < c.peak_activation < sum(math.prod(s) for _, a in g.nodes(data=True) for s in a["out_shapes"])
    assert c.peak_activation >= 3 * 224 * 224 + 24 * 112 * 112  # input + stem conv output
