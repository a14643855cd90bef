"""Checkers for the four guidelines of the ShuffleNet V2 paper (Ma et al. 2018, Sec. 2).

Pure functions over an OpGraph (schema in graph.py). Every checker returns findings that say
where the network breaks a guideline, by how much, what that costs in memory access (MAC, the
paper's Eq. 1/2 quantity, in elements) and, once the machine is calibrated (calibration.py),
in estimated milliseconds.

Accounting follows the deployed (inference) form that compile.to_inference produces, because
that is what runs: BN is folded into its conv, a channel split is a view, the V2 concat +
shuffle is one interleaving copy (paper Sec. 3) and a shuffle right after an ungrouped conv is
absorbed into its weights. ReLU stays a pass of its own. ``GuidelineSettings`` can switch the
folding off (``fold_bn``, ``merge_copies``) to score a training-form deployment instead.

Penalties. A finding's penalty is the share of the whole network's cost it is responsible for:
G1, G2 and G4 use overhead MAC / total MAC, G3 uses surplus ops / total ops (fragmentation
costs launches and synchronisation, not bytes). A guideline's penalty is the sum over its
findings, clipped to [0, 1]; it reads "this fraction of the memory traffic (or of the kernel
launches) is there only because of the violation". The combined ``total`` is the weighted
mean of the four penalties, sum(w_g * p_g) / sum(w_g), so it also lies in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import networkx as nx

from ..common.settings import check_settings, setting
from ..model.arch import Arch
from ..model.cost import ELEMENTWISE, node_cost
from ..model.graph import op_graph
from .calibration import Calibration, load

GUIDELINES = ("G1", "G2", "G3", "G4")


def _weights_error(weights: dict[str, float]) -> str | None:
    if set(weights) - set(GUIDELINES):
        return f"must map {'/'.join(GUIDELINES)} to numbers"
    return None if sum(weights.values()) > 0 else "at least one weight must be > 0"


@dataclass
class GuidelineSettings:
    """Thresholds and weights of the checkers. The defaults are read off the paper's Tables 1-4
    (see REFERENCE.md) and set so that the paper's own ShuffleNet V2 passes G1-G3."""

    # G1: a 1x1 conv is flagged when its MAC exceeds the balanced bound (Eq. 1, relaxed to the
    # width change its unit must make anyway) by more than this fraction. 0.10 flags ratios
    # beyond ~1:2.4 when weights are negligible: Table 1's 1:2 (Eq. 1 excess 6%) costs only
    # 4% on ARM, while 1:6 (excess 43%) costs 9% on ARM and 41% on GPU.
    g1_max_excess: float = setting(0.10, lo=0, doc="G1: how far a 1x1 conv's MAC may exceed "
                                   "the balanced bound (a fraction)")
    # G2: a grouped (non-depthwise) conv is flagged when its MAC exceeds the same-MACs g=1 conv
    # (Eq. 2, same input) by more than this fraction. Table 2: g=2 already costs 12% (ARM) to
    # 30% (GPU) speed, so anything beyond small noise counts.
    g2_max_excess: float = setting(0.05, lo=0, doc="G2: how far a grouped conv's MAC may exceed "
                                   "the same-MACs ungrouped conv's (a fraction)")
    # G3: the V2 unit is the reference: at most 2 parallel paths between a fork and its merge
    # (identity + branch) and at most 3 convs in series on a path (1x1, DW, 1x1). Table 3:
    # 4 parallel fragments run at 28% (GPU) / 87% (ARM) of one fragment's speed.
    g3_max_paths: int = setting(2, lo=0, doc="G3: parallel paths allowed between a fork and "
                                "its merge")
    g3_max_series: int = setting(3, lo=0, doc="G3: convs allowed in series on one path")
    # G3: ops per stage may exceed a V2 stage of the same depth by this fraction.
    g3_stage_tolerance: float = setting(0.25, lo=0, doc="G3: how far a stage's op count may "
                                        "exceed a V2 stage of the same depth (a fraction)")
    # G4: a unit is flagged when element-wise ops move more than this share of its MAC.
    # Table 4: dropping ReLU and shortcut buys ~20% (GPU) / 15% (ARM) at c=32. The V2 basic
    # unit, the paper's answer to G4, spends up to 57% of its deployed MAC on its two ReLUs
    # and the merged concat+shuffle copy; a unit is flagged when it spends more than that.
    g4_max_share: float = setting(0.60, lo=0, doc="G4: the share of a unit's MAC element-wise "
                                  "ops may move")
    # BN after a conv is folded at deployment (compile.to_inference)
    fold_bn: bool = setting(True, doc="score the deployed form, BN folded into its conv")
    # split is a view, concat+shuffle one copy, shuffle after g=1 folded
    merge_copies: bool = setting(True, doc="score the deployed form, split a view and "
                                 "concat+shuffle one copy")
    weights: dict[str, float] = setting(factory=lambda: dict.fromkeys(GUIDELINES, 1.0), lo=0,
                                        check=_weights_error, doc="each guideline's weight in "
                                        "the combined penalty (a mapping G1..G4 to numbers)")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass
class Finding:
    guideline: str  # "G1".."G4"
    node: str  # the op (module path) or, for stage-level G3 findings, "stages.i"
    unit: str  # "stages.i.j", "stem", "head", ...
    measured: float  # the checker's quantity (excess fraction, path count, share, ...)
    threshold: float  # the largest value that passes
    overhead_mac: int  # memory access (elements) the violation adds; 0 for G3
    overhead_ms: float | None  # estimated time on this machine, when calibrated
    penalty: float  # this finding's share of the network's cost, in [0, 1]
    message: str  # one sentence with the guideline's reasoning
    overhead_ops: int = 0  # G3: surplus ops (kernel launches) over the V2 reference

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GuidelineReport:
    findings: list[Finding]
    penalties: dict[str, float]  # "G1".."G4", each in [0, 1]
    total: float  # weighted mean of the penalties, in [0, 1]
    overhead_ms: float | None  # summed estimated time of all findings, when calibrated
    total_mac: int = 0  # MAC of the whole network in deployed form (elements)
    total_ops: int = 0  # ops of the whole network in deployed form
    elementwise_share: float = 0.0  # G4's network-level quantity: element-wise MAC / MAC
    elementwise_time_share: float | None = None  # the same in estimated time, when calibrated
    calibration: str | None = None  # fingerprint id of the calibration used

    def by_guideline(self) -> dict[str, list[Finding]]:
        """Findings per guideline, worst (largest penalty) first."""
        out: dict[str, list[Finding]] = {g: [] for g in GUIDELINES}
        for f in sorted(self.findings, key=lambda f: -f.penalty):
            out[f.guideline].append(f)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.to_dict() for f in self.findings],
            "penalties": dict(self.penalties),
            "total": self.total,
            "overhead_ms": self.overhead_ms,
            "total_mac": self.total_mac,
            "total_ops": self.total_ops,
            "elementwise_share": self.elementwise_share,
            "elementwise_time_share": self.elementwise_time_share,
            "calibration": self.calibration,
        }


# --- deployed-form accounting -------------------------------------------------------------


def _deployed_mac(g: nx.DiGraph, n: str, s: GuidelineSettings) -> int:
    """MAC of node ``n`` as deployed: 0 for ops that vanish (folded BN, views, merged copies)."""
    a = g.nodes[n]
    op = a["op"]
    if op == "input" or (op == "bn" and s.fold_bn):
        return 0
    if s.merge_copies:
        if op == "split":
            return 0  # a view of the input, no copy
        if op == "shuffle":
            preds = [g.nodes[p] for p in g.predecessors(n)]
            # V2: concat + shuffle become one interleaving copy (paper Sec. 3, "merged").
            if any(p["op"] == "concat" for p in preds):
                return 0
            # A shuffle after an ungrouped conv reorders its output channels: folded away.
            convs = [p for p in _producers(g, n) if g.nodes[p]["op"] == "conv"]
            if convs and all(g.nodes[c]["groups"] == 1 for c in convs):
                return 0
    return node_cost(a).mac


def _producers(g: nx.DiGraph, n: str) -> list[str]:
    """The nearest non-BN/ReLU ancestors of ``n`` (what a fold would merge into)."""
    out, todo = [], list(g.predecessors(n))
    while todo:
        p = todo.pop()
        if g.nodes[p]["op"] in ("bn", "relu"):
            todo.extend(g.predecessors(p))
        else:
            out.append(p)
    return out


def _is_op(g: nx.DiGraph, n: str, s: GuidelineSettings) -> bool:
    """Whether ``n`` is a kernel of its own in deployed form (what G3 counts)."""
    op = g.nodes[n]["op"]
    if op == "input":
        return False
    if op == "conv":
        return True
    return _deployed_mac(g, n, s) > 0


# --- G1 and G2: per 1x1 / grouped conv (Eq. 1 and Eq. 2) -----------------------------------


def _unit_ratio(g: nx.DiGraph, unit: str) -> float:
    """The width change (>= 1) a unit must make anyway: max(c_out/c_in, c_in/c_out) of the
    unit's input and output. G1 does not blame a conv for an expansion the unit is there for."""
    nodes = [n for n, a in g.nodes(data=True) if a["unit"] == unit]
    ins = [g.nodes[n]["in_shapes"][0][0] for n in nodes if g.nodes[n]["in_shapes"]
           and any(g.nodes[p]["unit"] != unit for p in g.predecessors(n))]
    outs = [g.nodes[n]["out_shapes"][0][0] for n in nodes
            if not any(g.nodes[q]["unit"] == unit for q in g.successors(n))]
    if not ins or not outs:
        return 1.0
    c1, c2 = max(ins), max(outs)
    return max(c1 / c2, c2 / c1)


def _check_g1_g2(g: nx.DiGraph, s: GuidelineSettings, total_mac: int) -> list[Finding]:
    out: list[Finding] = []
    ratios: dict[str, float] = {}
    for n, a in g.nodes(data=True):
        if a["op"] != "conv" or a["k"] != 1 or a["depthwise"]:
            continue
        c1, c2, grp = a["c_in"], a["c_out"], a["groups"]
        _, h, w = a["out_shapes"][0]
        hw = h * w
        cost = node_cost(a)
        mac, b = cost.mac, cost.macs
        # G1, Eq. 1: at fixed B = hw*c1*c2/g, hw(c1 + c2) >= 2*sqrt(hw*B*g), equal when c1 = c2;
        # if the unit must change width by r anyway, the bound is sqrt(hw*B*g)(sqrt r + 1/sqrt r).
        r = ratios.setdefault(a["unit"], _unit_ratio(g, a["unit"]))
        bound = math.sqrt(hw * b * grp) * (math.sqrt(r) + 1 / math.sqrt(r)) + b / hw
        excess = max(0, mac - bound)
        if bound > 0 and excess / bound > s.g1_max_excess:
            x = excess / bound
            out.append(Finding(
                "G1", n, a["unit"], x, s.g1_max_excess, round(excess), None, excess / total_mac,
                f"1x1 conv {c1}->{c2} ({max(c1, c2) / min(c1, c2):.1f}:1) moves {x:.0%} more "
                "memory than equal widths would at the same MACs; G1: equal channel width "
                "minimises memory access cost (Eq. 1).",
            ))
        if grp > 1:
            # G2, Eq. 2: MAC = hw*c1 + B*g/c1 + B/hw; the same B at g=1 saves B(g-1)/c1.
            over = b * (grp - 1) / c1
            base = mac - over
            x = over / base
            if x > s.g2_max_excess:
                out.append(Finding(
                    "G2", n, a["unit"], x, s.g2_max_excess, round(over), None, over / total_mac,
                    f"1x1 conv with {grp} groups moves {x:.0%} more memory than an ungrouped "
                    "conv of the same MACs; G2: at fixed FLOPs, MAC grows with the number of "
                    "groups (Eq. 2).",
                ))
    return out


# --- G3: fragmentation ---------------------------------------------------------------------


def _fork_of(g: nx.DiGraph, m: str, order: dict[str, int]) -> str | None:
    """The latest node every input of merge ``m`` descends from (its fork)."""
    common: set[str] | None = None
    for p in g.predecessors(m):
        anc = nx.ancestors(g, p) | {p}
        common = anc if common is None else common & anc
    return max(common, key=order.__getitem__) if common else None


def _paths_and_series(g: nx.DiGraph, f: str, m: str, order: dict[str, int]) -> tuple[int, int]:
    """Number of paths f -> m, and the most convs on one of them (DP over the DAG)."""
    inside = (nx.descendants(g, f) & nx.ancestors(g, m)) | {f, m}
    paths = {f: 1}
    convs = {f: 0}
    for n in sorted(inside - {f}, key=order.__getitem__):
        preds = [p for p in g.predecessors(n) if p in inside]
        paths[n] = sum(paths.get(p, 0) for p in preds)
        own = 1 if g.nodes[n]["op"] == "conv" else 0
        convs[n] = max((convs.get(p, 0) for p in preds), default=0) + own
    return paths[m], convs[m]


def _check_g3(g: nx.DiGraph, s: GuidelineSettings, total_ops: int) -> list[Finding]:
    out: list[Finding] = []
    order = {n: i for i, n in enumerate(nx.topological_sort(g))}
    for m in sorted(g, key=order.__getitem__):
        if g.in_degree(m) < 2:
            continue
        f = _fork_of(g, m, order)
        if f is None:
            continue
        unit = g.nodes[m]["unit"]
        paths, series = _paths_and_series(g, f, m, order)
        if paths > s.g3_max_paths:
            k = paths - s.g3_max_paths
            out.append(Finding(
                "G3", m, unit, paths, s.g3_max_paths, 0, None, k / total_ops,
                f"{paths} parallel paths between {f} and {m} (the V2 unit has 2); G3: "
                "fragmented parallel ops launch and synchronise separately and use the device "
                "poorly (Table 3).", overhead_ops=k,
            ))
        if series > s.g3_max_series:
            k = series - s.g3_max_series
            out.append(Finding(
                "G3", m, unit, series, s.g3_max_series, 0, None, k / total_ops,
                f"{series} convs in series between {f} and {m} (the V2 branch has 3); G3: "
                "many small serial ops add launch overhead and reduce parallelism (Table 3).",
                overhead_ops=k,
            ))
    # Ops per stage against a V2 stage of the same depth: 8 ops in the downsampling unit
    # (5 convs, 2 ReLU, 1 merged copy) and 6 in each basic unit (3 convs, 2 ReLU, 1 copy).
    stages: dict[int, list[str]] = {}
    units: dict[int, set[str]] = {}
    for n, a in g.nodes(data=True):
        if a.get("stage") is not None and _is_op(g, n, s):
            stages.setdefault(a["stage"], []).append(n)
            units.setdefault(a["stage"], set()).add(a["unit"])
    for i, ops in sorted(stages.items()):
        d = len(units[i])
        allowed = math.floor((8 + 6 * (d - 1)) * (1 + s.g3_stage_tolerance))
        if len(ops) > allowed:
            k = len(ops) - allowed
            out.append(Finding(
                "G3", f"stages.{i}", f"stages.{i}", len(ops), allowed, 0, None, k / total_ops,
                f"stage {i} runs {len(ops)} ops in {d} units, more than a V2 stage of the "
                f"same depth ({8 + 6 * (d - 1)}) plus {s.g3_stage_tolerance:.0%}; G3: every "
                "extra kernel costs launch and synchronisation time.", overhead_ops=k,
            ))
    return out


# --- G4: element-wise ops ------------------------------------------------------------------


def _check_g4(g: nx.DiGraph, s: GuidelineSettings, macs: dict[str, int], total_mac: int) -> list[Finding]:
    out: list[Finding] = []
    per_unit: dict[str, list[str]] = {}
    for n, a in g.nodes(data=True):
        per_unit.setdefault(a["unit"], []).append(n)
    for unit, nodes in per_unit.items():
        if unit == "classifier":
            continue
        unit_mac = sum(macs[n] for n in nodes)
        ew = [n for n in nodes if g.nodes[n]["op"] in ELEMENTWISE and macs[n] > 0]
        ew_mac = sum(macs[n] for n in ew)
        if unit_mac == 0 or ew_mac / unit_mac <= s.g4_max_share:
            continue
        share = ew_mac / unit_mac
        over = ew_mac - s.g4_max_share * unit_mac
        kinds: dict[str, int] = {}
        for n in ew:
            kinds[g.nodes[n]["op"]] = kinds.get(g.nodes[n]["op"], 0) + 1
        what = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(kinds.items()))
        worst = max(ew, key=macs.__getitem__)
        out.append(Finding(
            "G4", worst, unit, share, s.g4_max_share, round(over), None, over / total_mac,
            f"element-wise ops ({what}) move {share:.0%} of the unit's memory traffic; G4: "
            "they have few FLOPs but high MAC, so they cost time out of proportion (Table 4).",
        ))
    return out


# --- entry point ---------------------------------------------------------------------------


def check(
    arch_or_graph: Arch | nx.DiGraph,
    resolution: int = 224,
    settings: GuidelineSettings | None = None,
    calibration: Calibration | None = None,
) -> GuidelineReport:
    """G1-G4 findings and penalties for an Arch or an OpGraph (the public
    ``shufflesearch.check`` also takes a preset name or an arch file)."""
    s = settings or GuidelineSettings()
    g = arch_or_graph if isinstance(arch_or_graph, nx.DiGraph) else op_graph(arch_or_graph, resolution)
    macs = {n: _deployed_mac(g, n, s) for n in g}
    total_mac = max(1, sum(macs.values()))
    total_ops = max(1, sum(_is_op(g, n, s) for n in g))
    findings = _check_g1_g2(g, s, total_mac) + _check_g3(g, s, total_ops) + _check_g4(g, s, macs, total_mac)
    penalties = dict.fromkeys(GUIDELINES, 0.0)
    for f in findings:
        penalties[f.guideline] += f.penalty
    penalties = {k: min(1.0, v) for k, v in penalties.items()}
    wsum = sum(s.weights.get(k, 0.0) for k in GUIDELINES) or 1.0
    total = sum(s.weights.get(k, 0.0) * penalties[k] for k in GUIDELINES) / wsum
    ew_mac = sum(m for n, m in macs.items() if g.nodes[n]["op"] in ELEMENTWISE)
    report = GuidelineReport(
        findings, penalties, total, None, total_mac, total_ops, ew_mac / total_mac,
    )
    if calibration is not None:
        report.overhead_ms, report.elementwise_time_share = calibration.annotate(report.findings, g, macs)
        report.calibration = calibration.fingerprint_id
    return report


def load_calibration(fingerprint_id: str | None = None) -> Calibration | None:
    """The stored calibration for this machine (or for ``fingerprint_id``), or None."""
    return load(fingerprint_id)


def format_report(name: str, r: GuidelineReport, limit: int = 8) -> str:
    """The report grouped by guideline, worst first, with totals (for `shufflesearch guidelines ARCH`)."""
    titles = {
        "G1": "G1 equal channel width minimises MAC",
        "G2": "G2 excessive group convolution increases MAC",
        "G3": "G3 network fragmentation reduces parallelism",
        "G4": "G4 element-wise operations are non-negligible",
    }
    ms = r.overhead_ms is not None
    lines = [f"{name}: {len(r.findings)} findings, total penalty {r.total:.4f}"
             + (f", estimated overhead {r.overhead_ms:.3f} ms" if ms else ""), ""]
    for gname, fs in r.by_guideline().items():
        over = sum(f.overhead_mac for f in fs)
        lines.append(f"{titles[gname]}: penalty {r.penalties[gname]:.4f}, {len(fs)} findings"
                     + (f", +{over / 1e6:.3f}M MAC" if over else ""))
        for f in fs[:limit]:
            t = f" ~{f.overhead_ms:.3f} ms" if f.overhead_ms is not None else ""
            lines.append(f"  {f.node:<28} {f.measured:>8.3g} > {f.threshold:<6g} "
                         f"+{f.overhead_mac / 1e3:9.1f}k MAC{t}  penalty {f.penalty:.4f}")
            lines.append(f"      {f.message}")
        if len(fs) > limit:
            lines.append(f"  ... and {len(fs) - limit} more (--all shows them)")
    lines.append("")
    lines.append(f"element-wise share of MAC {r.elementwise_share:.1%}"
                 + (f", of estimated time {r.elementwise_time_share:.1%}"
                    if r.elementwise_time_share is not None else ""))
    lines.append(f"deployed MAC {r.total_mac / 1e6:.3f}M elements, {r.total_ops} ops"
                 + (f"; calibration {r.calibration}" if r.calibration else "; not calibrated "
                    "(run `shufflesearch guidelines bench` to calibrate this machine)"))
    return "\n".join(lines)
