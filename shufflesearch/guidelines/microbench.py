"""The ShuffleNet V2 paper's guideline experiments (Sec. 2, Tables 1-4) on this machine.

Every block is built from the project's own ConvBN (units.py) and put in deployed form with
units.fold_conv_bn, so the bench times the same kernels the compiled networks run. Each
network stacks 10 blocks on a 1 x c x 56 x 56 input (the paper's setup). Channel widths are
the paper's ARM column (REFERENCE.md) at x1/x2/x4, because a CPU at batch 1 is what the ARM
column measured; ``GPU`` figures are printed beside them for the same rows.

Not stated by the paper, decided here:
  * Table 2: c is rounded to the nearest multiple of g (ARM g=8: 180 -> 184).
  * Table 3: series fragments are n convs w->w with w = round(c/sqrt(n)) (n·w² = c²);
    parallel fragments are n convs c->c/n whose outputs are concatenated (FLOPs c² exactly).
  * Table 4: a ResNet bottleneck 1x1 c->c/4, 3x3 c/4->c/4, 1x1 c/4->c on a 56x56 input.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.stats import kendall_tau  # tau-b; also part of this module's API
from ..measure.backends import make_module_runner, torch_runner
from ..measure.target import TargetSpec
from ..measure.timing import ESTIMATOR, estimate, iqr, time_rounds
from ..model.units import ConvBN, fold_conv_bn
from .calibration import calibrate

HW = 56  # the paper's input size for Tables 1-3
BLOCKS = 10
SCALES = (1, 2, 4)


@dataclass(frozen=True)
class Row:
    table: str  # "1".."4"
    label: str
    arch: tuple  # table-specific parameters at x1 (see _block)
    paper_gpu: tuple[float, ...]  # speeds at x1/x2/x4 (GPU batches/s)
    paper_arm: tuple[float, ...]  # speeds at x1/x2/x4 (ARM images/s)


# The paper's rows (REFERENCE.md, ShuffleNet V2 Tables 1-4), ARM widths at x1.
TABLES: dict[str, dict[str, Any]] = {
    "1": {"guideline": "G1", "title": "Table 1 (G1): two 1x1 convs c1->c2->c1, c1:c2 varied", "rows": [
        Row("1", "1:1", (32, 32), (1480, 723, 232), (76.2, 21.7, 5.3)),
        Row("1", "1:2", (22, 44), (1296, 586, 206), (72.9, 20.5, 5.1)),
        Row("1", "1:6", (13, 78), (876, 489, 189), (69.1, 17.9, 4.6)),
        Row("1", "1:12", (9, 108), (748, 392, 163), (57.6, 15.1, 4.4)),
    ]},
    "2": {"guideline": "G2", "title": "Table 2 (G2): 1x1 group conv c->c, c²/g fixed", "rows": [
        Row("2", "g=1", (64, 1), (2451, 1289, 437), (40.0, 10.2, 2.3)),
        Row("2", "g=2", (90, 2), (1725, 873, 341), (35.0, 9.5, 2.2)),
        Row("2", "g=4", (128, 4), (1026, 644, 338), (32.9, 8.7, 2.1)),
        Row("2", "g=8", (180, 8), (634, 445, 230), (27.8, 7.5, 1.8)),
    ]},
    "3": {"guideline": "G3", "title": "Table 3 (G3): 1x1 fragments in series/parallel, FLOPs fixed", "rows": [
        Row("3", "1-fragment", (64, 1, "series"), (2446, 1274, 434), (40.2, 10.1, 2.3)),
        Row("3", "2-fragment-series", (64, 2, "series"), (1790, 909, 336), (38.6, 10.1, 2.2)),
        Row("3", "4-fragment-series", (64, 4, "series"), (752, 745, 349), (38.4, 10.1, 2.3)),
        Row("3", "2-fragment-parallel", (64, 2, "parallel"), (1537, 803, 320), (33.4, 9.1, 2.2)),
        Row("3", "4-fragment-parallel", (64, 4, "parallel"), (691, 572, 292), (35.0, 8.4, 2.1)),
    ]},
    "4": {"guideline": "G4", "title": "Table 4 (G4): ResNet bottleneck with/without ReLU and shortcut", "rows": [
        Row("4", "ReLU+shortcut", (32, True, True), (2427, 2066, 1436), (56.7, 16.9, 5.0)),
        Row("4", "ReLU only", (32, True, False), (2647, 2256, 1735), (61.9, 18.8, 5.2)),
        Row("4", "shortcut only", (32, False, True), (2672, 2121, 1458), (57.3, 18.2, 5.1)),
        Row("4", "neither", (32, False, False), (2842, 2376, 1782), (66.3, 20.2, 5.4)),
    ]},
}


def _conv(c_in: int, c_out: int, k: int = 1, groups: int = 1, relu: bool = False) -> nn.Module:
    """A deployed-form conv: the project's ConvBN with its BN folded in."""
    return fold_conv_bn(ConvBN(c_in, c_out, k, 1, groups, relu=relu).eval())


class Parallel(nn.Module):
    """n branches on one input, concatenated (Table 3's parallel fragments)."""

    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


class Bottleneck(nn.Module):
    """Table 4's ResNet bottleneck; ReLU and the identity shortcut can be switched off."""

    def __init__(self, c: int, relu: bool, shortcut: bool) -> None:
        super().__init__()
        m = max(1, c // 4)
        self.body = nn.Sequential(_conv(c, m, relu=relu), _conv(m, m, 3, relu=relu), _conv(m, c))
        self.relu, self.shortcut = relu, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.shortcut:
            y = y + x
        return torch.relu(y) if self.relu else y


def scaled(row: Row, scale: int) -> tuple:
    """The row's parameters at width x``scale``."""
    p = row.arch
    if row.table == "1":
        return (p[0] * scale, p[1] * scale)
    if row.table == "2":
        c, g = p[0] * scale, p[1]
        return (max(g, g * round(c / g)), g)
    return (p[0] * scale, *p[1:])


@dataclass
class Costs:
    macs: int  # multiply-accumulates of the whole stack
    mac: int  # memory access cost (elements), as cost.py counts it
    ops: int  # kernels launched
    in_channels: int = 0
    detail: dict = field(default_factory=dict)


def block_costs(row: Row, scale: int, hw: int = HW, blocks: int = BLOCKS) -> Costs:
    """Analytic MACs / MAC / ops of ``blocks`` blocks (batch 1), by Eq. 1/2 of the paper:
    a 1x1 conv c1->c2 with g groups has B = hw·c1·c2/g and MAC = hw(c1 + c2) + c1·c2/g."""
    a = hw * hw

    def conv(c1: int, c2: int, k: int = 1, g: int = 1) -> tuple[int, int]:
        w = c1 * c2 // g * k * k
        return a * w, a * (c1 + c2) + w

    p = scaled(row, scale)
    parts: list[tuple[int, int]] = []
    ops = 0
    if row.table == "1":
        c1, c2 = p
        parts, ops, c_in = [conv(c1, c2), conv(c2, c1)], 2, c1
    elif row.table == "2":
        c, g = p
        parts, ops, c_in = [conv(c, c, 1, g)], 1, c
    elif row.table == "3":
        c, n, kind = p
        if kind == "series":
            w = round(c / math.sqrt(n))
            parts, ops, c_in = [conv(w, w)] * n, n, w
        else:
            parts = [conv(c, c // n)] * n
            ops, c_in = n, c
            if n > 1:
                parts.append((0, 2 * a * c))  # concat: read the n pieces, write c channels
                ops += 1
    else:
        c, relu, shortcut = p
        m = max(1, c // 4)
        parts, ops, c_in = [conv(c, m), conv(m, m, 3), conv(m, c)], 3, c
        if relu:
            parts += [(0, 2 * a * m), (0, 2 * a * m), (0, 2 * a * c)]
            ops += 3
        if shortcut:
            parts.append((0, 3 * a * c))  # read two tensors, write one
            ops += 1
    return Costs(blocks * sum(x[0] for x in parts), blocks * sum(x[1] for x in parts),
                 blocks * ops, c_in)


def build_block(row: Row, scale: int) -> nn.Module:
    p = scaled(row, scale)
    if row.table == "1":
        c1, c2 = p
        return nn.Sequential(_conv(c1, c2), _conv(c2, c1))
    if row.table == "2":
        c, g = p
        return _conv(c, c, 1, g)
    if row.table == "3":
        c, n, kind = p
        if kind == "series":
            w = round(c / math.sqrt(n))
            return nn.Sequential(*[_conv(w, w) for _ in range(n)])
        return _conv(c, c) if n == 1 else Parallel([_conv(c, c // n) for _ in range(n)])
    c, relu, shortcut = p
    return Bottleneck(c, relu, shortcut)


def build_stack(row: Row, scale: int, blocks: int = BLOCKS) -> nn.Module:
    """``blocks`` blocks in series, eval mode (the paper stacks each block 10 times)."""
    return nn.Sequential(*[build_block(row, scale) for _ in range(blocks)]).eval()


@dataclass
class Measured:
    table: str
    label: str
    scale: int
    params: tuple
    macs: int
    mac: int
    ops: int
    ms: float  # ratio to the table's first row x that row's own median, in one window
    rel_iqr: float  # IQR/median of this row's per-round ratios to the first row
    paper_gpu: float
    paper_arm: float
    ratio: float = 1.0  # this row / the table's first row, in the same rounds

    @property
    def per_second(self) -> float:
        return 1000.0 / self.ms


def _order(xs: list[float]) -> list[int]:
    return sorted(range(len(xs)), key=lambda i: -xs[i])


def run(
    scales: tuple[int, ...] = SCALES,
    threads: int = 1,
    rounds: int = 3,
    max_seconds: float = 0.5,
    tables: tuple[str, ...] = tuple(TABLES),
    progress: Any = None,
    backend: str = "torch",
) -> list[Measured]:
    """Time every row of every table at every scale. The rows of one table and scale are
    timed in one window, interleaved in rounds (row 1, 2, ..., then again, order rotating),
    so a burst of load from elsewhere hits all rows of a comparison alike. Each row's figure
    is its ratio to the table's first row, by the latency protocol's estimator (the one that
    ranked most stably in bench/latency_stability.py), times the first row's own median in
    that window. The window is capped at ``rounds x rows x max_seconds``. ``backend`` is the
    runtime (measure.target.BACKENDS): the ONNX ones export each stack and time it with ONNX
    Runtime (int8: calibrated on random images, which sets ranges but not the timed graph)."""
    torch.manual_seed(0)
    out: list[Measured] = []
    for t in tables:
        for s in scales:
            rows = TABLES[t]["rows"]
            models = [build_stack(r, s) for r in rows]
            costs = [block_costs(r, s) for r in rows]
            runners = [_runner(m, c.in_channels, threads, backend) for m, c in zip(models, costs)]
            times = time_rounds(runners, max_seconds=rounds * len(rows) * max_seconds, lock=True)
            base = statistics.median(times[0])
            if progress is not None:
                for _ in range(rounds * len(rows)):  # the bar counts rows x rounds, as before
                    progress()
            k = SCALES.index(s)
            for r, c, ts in zip(rows, costs, times):
                q = [a / b for a, b in zip(ts, times[0])]
                ratio = estimate(ts, times[0], ESTIMATOR)
                out.append(Measured(t, r.label, s, scaled(r, s), c.macs, c.mac, c.ops, ratio * base,
                                    iqr(q) / statistics.median(q), r.paper_gpu[k], r.paper_arm[k], ratio))
    return out


def _runner(model: nn.Module, c_in: int, threads: int, backend: str) -> Any:
    if backend == "torch":
        return torch_runner(model, torch.randn(1, c_in, HW, HW), threads)
    cal = np.random.default_rng(0).standard_normal((8, c_in, HW, HW)).astype(np.float32) \
        if backend == "onnxruntime-int8" else None
    return make_module_runner(model, (1, c_in, HW, HW), TargetSpec(threads=threads, backend=backend),
                              calibration=cal)


def n_measurements(scales: tuple[int, ...], rounds: int, tables: tuple[str, ...] = tuple(TABLES)) -> int:
    return sum(len(TABLES[t]["rows"]) for t in tables) * len(scales) * rounds


@dataclass
class Comparison:
    table: str
    scale: int
    tau_arm: float  # Kendall tau of this machine's speeds vs the paper's ARM column
    tau_gpu: float
    same_as_arm: bool
    same_as_gpu: bool


def compare(results: list[Measured]) -> list[Comparison]:
    """Does this machine rank each table's rows (at each scale) as the paper's devices did?"""
    out = []
    keys = sorted({(m.table, m.scale) for m in results})
    for t, s in keys:
        ms = [m for m in results if (m.table, m.scale) == (t, s)]
        here = [m.per_second for m in ms]
        arm = [m.paper_arm for m in ms]
        gpu = [m.paper_gpu for m in ms]
        out.append(Comparison(t, s, kendall_tau(here, arm), kendall_tau(here, gpu),
                              _order(here) == _order(arm), _order(here) == _order(gpu)))
    return out


def format_tables(results: list[Measured], comps: list[Comparison]) -> str:
    lines: list[str] = []
    for t, spec in TABLES.items():
        rs = [m for m in results if m.table == t]
        if not rs:
            continue
        lines.append(spec["title"])
        head = (f"  {'row':<20}{'x':>2} {'params':<16}{'MMACs':>8}{'MMAC':>8}{'ops':>5}"
                f"{'ms':>9}{'img/s':>9}{'rel':>6} | {'ARM':>6}{'rel':>6}{'GPU':>7}{'rel':>6}")
        lines.append(head)
        for s in sorted({m.scale for m in rs}):
            grp = [m for m in rs if m.scale == s]
            b = grp[0]
            for m in grp:
                params = ",".join(str(x) for x in m.params)
                lines.append(
                    f"  {m.label:<20}{m.scale:>2} {params:<16}{m.macs / 1e6:>8.1f}{m.mac / 1e6:>8.2f}"
                    f"{m.ops:>5}{m.ms:>9.2f}{m.per_second:>9.1f}{m.per_second / b.per_second:>6.2f} | "
                    f"{m.paper_arm:>6.1f}{m.paper_arm / b.paper_arm:>6.2f}"
                    f"{m.paper_gpu:>7.0f}{m.paper_gpu / b.paper_gpu:>6.2f}"
                )
            c = next(c for c in comps if (c.table, c.scale) == (t, s))
            lines.append(
                f"  x{s}: ordering {'SAME as' if c.same_as_arm else 'differs from'} ARM "
                f"(tau {c.tau_arm:+.2f}), {'SAME as' if c.same_as_gpu else 'differs from'} GPU "
                f"(tau {c.tau_gpu:+.2f})"
            )
        lines.append("")
    return "\n".join(lines)


QUICK = {"scales": (1, 2), "rounds": 3, "max_seconds": 0.3}
FULL = {"scales": SCALES, "rounds": 3, "max_seconds": 0.5}


@dataclass
class BenchResult:
    results: list[Measured]
    comparisons: list[Comparison]
    calibration: Any  # calibration.Calibration fitted on ``results``
    quick: bool
    threads: int
    backend: str = "torch"

    def to_dict(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "threads": self.threads,
            "backend": self.backend,
            "input": [1, "c", HW, HW],
            "blocks": BLOCKS,
            "fingerprint": self.calibration.fingerprint,
            "results": [{**asdict(m), "per_second": m.per_second} for m in self.results],
            "comparisons": [asdict(c) for c in self.comparisons],
            "calibration": self.calibration.to_dict(),
        }


def bench(quick: bool = False, threads: int = 1, progress: Any = None, backend: str = "torch") -> BenchResult:
    """Run the four tables, compare with the paper and fit this machine's calibration
    (not saved; calibration.save does that)."""
    cfg = QUICK if quick else FULL
    results = run(cfg["scales"], threads, cfg["rounds"], cfg["max_seconds"], progress=progress, backend=backend)
    cal = calibrate([(m.macs, m.mac, m.ops, m.ms) for m in results], threads,
                    source="shufflesearch guidelines bench" + (" --quick" if quick else ""), backend=backend)
    return BenchResult(results, compare(results), cal, quick, threads, backend)
