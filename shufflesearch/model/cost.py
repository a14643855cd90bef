"""Costs from the OpGraph: params, MACs, memory access cost (MAC) and peak activation memory.

Pure functions of the graph; all figures are per input image (batch 1) and counted in elements
(multiply by 4 for float32 bytes).

MAC follows the ShuffleNet V2 paper (Sec. 2, Eq. 1): a 1x1 conv with c1 inputs and c2 outputs
on an h x w map reads hw·c1 activations and c1·c2/g weights and writes hw·c2 outputs, so
MAC = hw(c1 + c2) + c1·c2/g. We generalise to k x k and strided convs as
input elements + output elements + weights. Element-wise ops, split, concat, shuffle and
pooling read their inputs and write their outputs once; this is what G4 counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

import networkx as nx

from .arch import Arch
from .graph import op_graph
from .specs import unit_specs

# Ops that compute per element (no reduction over channels): the G4 family.
ELEMENTWISE = frozenset({"relu", "add", "bn", "split", "concat", "shuffle"})


@dataclass(frozen=True)
class NodeCost:
    params: int = 0
    macs: int = 0  # multiply-accumulates
    mac: int = 0  # memory access cost, elements

    def __add__(self, o: NodeCost) -> NodeCost:
        return NodeCost(self.params + o.params, self.macs + o.macs, self.mac + o.mac)


def node_cost(attrs: dict[str, Any]) -> NodeCost:
    op = attrs["op"]
    ins = sum(prod(s) for s in attrs["in_shapes"])
    outs = sum(prod(s) for s in attrs["out_shapes"])
    if op == "conv":
        w = attrs["c_out"] * (attrs["c_in"] // attrs["groups"]) * attrs["k"] ** 2
        params = w + (attrs["c_out"] if attrs["bias"] else 0)
        return NodeCost(params, outs * (attrs["c_in"] // attrs["groups"]) * attrs["k"] ** 2, ins + outs + w)
    if op == "linear":
        w = attrs["in_features"] * attrs["out_features"]
        params = w + (attrs["out_features"] if attrs["bias"] else 0)
        return NodeCost(params, w, ins + outs + w)
    if op == "bn":
        # Unfolded BN reads x and its 2 affine + 2 running per-channel values and writes y.
        return NodeCost(2 * attrs["channels"], 0, ins + outs + 4 * attrs["channels"])
    if op == "input":
        return NodeCost()
    return NodeCost(0, 0, ins + outs)


@dataclass
class Costs:
    params: int
    macs: int
    mac: int
    peak_activation: int  # elements alive at once at the peak, batch 1
    nodes: dict[str, NodeCost] = field(repr=False)
    units: dict[str, NodeCost] = field(repr=False)
    resolution: tuple[int, int] = (224, 224)

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": list(self.resolution),
            "params": self.params,
            "macs": self.macs,
            "mac": self.mac,
            "peak_activation": self.peak_activation,
            "units": {k: vars(v) for k, v in self.units.items()},
            "nodes": {k: vars(v) for k, v in self.nodes.items()},
        }


def peak_activation(g: nx.DiGraph) -> int:
    """Peak number of activation elements alive when ops run in topological order and every
    tensor is freed after its last consumer (the input image counts)."""
    order = list(nx.topological_sort(g))
    pos = {n: i for i, n in enumerate(order)}
    last_use = {n: max((pos[s] for s in g.successors(n)), default=pos[n]) for n in order}
    live: dict[str, int] = {}
    peak = 0
    for i, n in enumerate(order):
        live[n] = sum(prod(s) for s in g.nodes[n]["out_shapes"])
        peak = max(peak, sum(live.values()))
        for m in [m for m in live if last_use[m] <= i]:
            del live[m]
    return peak


def graph_costs(g: nx.DiGraph) -> Costs:
    nodes = {n: node_cost(a) for n, a in g.nodes(data=True)}
    units: dict[str, NodeCost] = {}
    for n, a in g.nodes(data=True):
        units[a["unit"]] = units.get(a["unit"], NodeCost()) + nodes[n]
    total = sum(nodes.values(), NodeCost())
    return Costs(
        total.params, total.macs, total.mac, peak_activation(g), nodes, units,
        tuple(g.graph.get("resolution", (0, 0))),
    )


def costs(arch: Arch, resolution: int | tuple[int, int] = 224) -> Costs:
    """Totals and per-node/per-unit figures for ``arch`` (the public ``shufflesearch.costs``
    also takes a preset name or an arch file)."""
    return graph_costs(op_graph(arch, resolution))


def _m(x: int) -> str:
    return f"{x / 1e6:8.3f}M"


def format_costs(arch: Arch, c: Costs) -> str:
    """A per-stage, per-unit table with totals (for `shufflesearch show`)."""
    specs = {u.name: u for u in unit_specs(arch)}
    rows = [f"archid {arch.archid}   resolution {c.resolution[0]}x{c.resolution[1]}", ""]
    head = f"{'unit':<14}{'family':<7}{'in':>6}{'out':>6}{'str':>4}{'k':>3}  {'params':>10}{'MACs':>10}{'MAC':>10}"
    rows.append(head)
    rows.append("-" * len(head))
    stage_tot: dict[int, NodeCost] = {}
    for name, nc in c.units.items():
        u = specs.get(name)
        if u is None:
            rows.append(f"{name:<14}{'':<7}{'':>6}{'':>6}{'':>4}{'':>3}  {_m(nc.params):>10}{_m(nc.macs):>10}{_m(nc.mac):>10}")
            continue
        stage_tot[u.stage] = stage_tot.get(u.stage, NodeCost()) + nc
        rows.append(
            f"{name:<14}{u.family:<7}{u.c_in:>6}{u.c_out:>6}{u.stride:>4}{u.kernel:>3}  "
            f"{_m(nc.params):>10}{_m(nc.macs):>10}{_m(nc.mac):>10}"
        )
    rows.append("-" * len(head))
    for i, nc in stage_tot.items():
        s = arch.stages[i]
        label = f"stage {i}"
        rows.append(
            f"{label:<14}{s.family:<7}{'':>6}{s.channels:>6}{'':>4}{'':>3}  "
            f"{_m(nc.params):>10}{_m(nc.macs):>10}{_m(nc.mac):>10}"
        )
    rows.append("-" * len(head))
    rows.append(f"{'total':<40}  {_m(c.params):>10}{_m(c.macs):>10}{_m(c.mac):>10}")
    rows.append(f"peak activation {c.peak_activation / 1e6:.3f}M elements ({c.peak_activation * 4 / 2**20:.2f} MiB fp32)")
    return "\n".join(rows)
