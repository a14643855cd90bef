"""A latency predictor built from per-unit timings on this machine, checked against measurement.

nn-Meter (REFERENCE.md, "Latency-prediction anchors") reaches 99% of predictions within ±10% by
predicting fused kernels rather than summing single ops, and Once-for-All sums per-block table
entries keyed by block type and shapes. We do both at the unit level: every ShuffleNet unit of
the OpGraph (stem, each V1/V2 unit, head, classifier) is one fused entry keyed by its ops and
shapes, timed in its inference form. A unit missing from the table is estimated by a
non-negative linear model over the unit's costs (fitted on the table), and the sum is scaled by
a factor calibrated on a few whole-model measurements (units timed alone run hotter in cache
than inside a network).

With enough whole-model timings (``JOINT_MIN`` or more) the whole-model prediction instead sums
one non-negative linear unit model fitted *jointly* on those whole-model timings: a unit timed
alone misses how it runs inside the network (the NHWC hand-off of halves between V2 units, cache
state), and fitting the unit model on whole networks removes that bias. The per-unit entries
stay for per-unit breakdowns. The search may use the prediction as a cheap pre-filter;
Pareto-front figures are always measured.

Whole-model figures are relative (protocol.py): each calibration and validation model is timed
interleaved with the reference network, and its ratio is scaled by ONE reference figure (the
median of the reference over the table's calibration windows, stored in the table), so the fit
sees the models' ratios, not the machine's phases between them.
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import nn
from tqdm import tqdm

from ..common.files import atomic_write
from ..errors import UserError
from ..model.arch import Arch, ArchError, Stage, Stem
from ..model.compile import build
from ..model.cost import node_cost
from ..model.graph import op_graph
from .env import cache_dir, fingerprint, fingerprint_id
from .protocol import measure, measure_model
from .target import TargetSpec
from .timing import iqr

KINDS = ("stem", "v1", "v1_down", "v2", "v2_down", "head", "classifier")
JOINT_MIN = 10  # whole-model timings needed to fit the unit model jointly (8 coefficients)
_ATTRS = ("c_in", "c_out", "k", "stride", "groups", "sizes", "in_features", "out_features")


# --- units of the OpGraph -----------------------------------------------------------------------


@dataclass(frozen=True)
class UnitEntry:
    name: str  # "stem", "stages.i.j", "head", "classifier"
    kind: str  # one of KINDS
    key: str  # ops and shapes, canonical: equal keys time the same
    in_shape: tuple[int, int, int]  # (C, H, W) entering the unit
    features: tuple[float, ...]  # for the fallback model (see _features)


def _kind(g: nx.DiGraph, unit: str, nodes: list[str]) -> str:
    if unit in ("stem", "head", "classifier"):
        return unit
    ops = {(g.nodes[n]["op"], g.nodes[n]["branch"]) for n in nodes}
    fam = "v2" if ("shuffle", None) in ops else "v1"  # a v1 unit shuffles inside its main branch
    down = ("concat", None) in ops if fam == "v1" else any(b == "proj" for _, b in ops)
    return f"{fam}_down" if down else fam


def _features(g: nx.DiGraph, nodes: list[str]) -> tuple[float, ...]:
    """Work and traffic of one unit, split by the kinds of op that run at different speeds:
    dense 1x1, grouped 1x1 (G2), depthwise, other convs, and element-wise/data movement (G4)."""
    pw = gpw = dw = other = traffic = weights = 0.0
    n_ops = 0
    for n in nodes:
        a = g.nodes[n]
        if a["op"] in ("input", "bn"):  # BN is folded into the conv in the inference form
            continue
        n_ops += 1
        c = node_cost(a)
        if a["op"] == "conv":
            w = a["c_out"] * (a["c_in"] // a["groups"]) * a["k"] ** 2
            weights += w
            if a["depthwise"]:
                dw += c.macs
            elif a["k"] == 1:
                if a["groups"] == 1:
                    pw += c.macs
                else:
                    gpw += c.macs
            else:
                other += c.macs
            traffic += c.mac - w
        elif a["op"] == "linear":
            other += c.macs
            weights += c.macs
        else:
            traffic += c.mac
    return (float(n_ops), pw / 1e6, gpw / 1e6, dw / 1e6, other / 1e6, traffic / 1e6, weights / 1e6)


def unit_entries(arch: Arch, spec: TargetSpec) -> list[UnitEntry]:
    """The fused units of ``arch``'s OpGraph on ``spec``, in execution order."""
    g = op_graph(arch, spec.resolution)
    order = list(nx.topological_sort(g))
    groups: dict[str, list[str]] = {}
    for n in order:
        groups.setdefault(g.nodes[n]["unit"], []).append(n)
    out = []
    for unit, nodes in groups.items():
        inside = set(nodes)
        first = next(n for n in nodes if g.nodes[n]["op"] != "input")
        preds = [p for p in g.predecessors(first) if p not in inside or g.nodes[p]["op"] == "input"]
        in_shape = tuple(g.nodes[preds[0]]["out_shapes"][0]) if preds else tuple(g.nodes[first]["in_shapes"][0])
        desc = [
            [g.nodes[n]["op"], g.nodes[n]["in_shapes"], g.nodes[n]["branch"],
             [g.nodes[n].get(k) for k in _ATTRS]]
            for n in nodes if g.nodes[n]["op"] != "input"
        ]
        kind = _kind(g, unit, nodes)
        key = json.dumps([kind, spec.batch, desc], separators=(",", ":"), default=list)
        out.append(UnitEntry(unit, kind, key, in_shape, _features(g, nodes)))  # type: ignore[arg-type]
    return out


class _Classifier(nn.Module):
    def __init__(self, fc: nn.Module) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))  # as ShuffleNetInference.forward


def _unit_module(model: nn.Module, name: str) -> nn.Module:
    if name == "classifier":
        return _Classifier(model.fc)
    if name.startswith("stages."):
        _, i, j = name.split(".")
        return model.stages[int(i)][int(j)]
    return getattr(model, name)


# --- the table ------------------------------------------------------------------------------------


def table_path(spec: TargetSpec, fp: dict | None = None) -> Path:
    fp = fp or fingerprint(spec.threads, spec.backend)
    return cache_dir() / f"latency-table-{spec.key()}-{fingerprint_id(fp)}.json"


@dataclass
class LatencyTable:
    spec: dict
    fingerprint: dict
    entries: dict[str, float] = field(default_factory=dict)  # unit key → ms
    kinds: dict[str, str] = field(default_factory=dict)  # unit key → kind
    features: dict[str, list[float]] = field(default_factory=dict)  # unit key → features
    scale: float = 1.0  # measured whole model / sum of its units (median over calibration)
    coef: dict[str, list[float]] = field(default_factory=dict)  # kind → fallback weights
    joint: list[float] = field(default_factory=list)  # unit model fitted on whole models
    reference_ms: float = 0.0  # the reference's figure the whole-model ratios are scaled by
    reference: dict = field(default_factory=dict)  # arch, archid, spread, n of that figure

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(self.__dict__))  # a reader never sees half a table

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise UserError(f"{path}: no latency table; run `shufflesearch latency table build` first") from None
        except (json.JSONDecodeError, TypeError) as e:
            raise UserError(f"{path}: not a latency table ({e.__class__.__name__})") from None

    def fit(self) -> None:
        """Fit the per-kind fallback: ms ≈ w · [1, features], w ≥ 0, relative error weighted."""
        from sklearn.linear_model import LinearRegression

        by_kind: dict[str, list[str]] = {}
        for k, kind in self.kinds.items():
            by_kind.setdefault(kind, []).append(k)
        pooled = list(self.entries)
        for kind in KINDS:
            keys = by_kind.get(kind, [])
            if len(keys) < 8:  # too few of this kind: share the pooled fit
                keys = pooled
            x = [self.features[k] for k in keys]
            y = [self.entries[k] for k in keys]
            reg = LinearRegression(positive=True).fit(x, y, sample_weight=[1 / v**2 for v in y])
            self.coef[kind] = [float(reg.intercept_), *map(float, reg.coef_)]

    def unit_ms(self, e: UnitEntry) -> tuple[float, bool]:
        """The entry's time and whether it came from the table (else from the fallback)."""
        if e.key in self.entries:
            return self.entries[e.key], True
        w = self.coef.get(e.kind) or self.coef.get("v2")
        if not w:
            raise UserError("the latency table has no fitted fallback; rebuild it")
        return w[0] + sum(a * b for a, b in zip(w[1:], e.features)), False

    def unit_breakdown(self, arch: Arch) -> dict[str, float]:
        """Predicted ms per unit (stem, stages.i.j, head, classifier): the joint unit model
        when the table has one, else the table entries (or fallback) times the scale. The
        whole-model prediction is their sum, so breakdowns and totals always agree."""
        es = unit_entries(arch, TargetSpec(**self.spec))
        if self.joint:
            w = self.joint
            return {e.name: w[0] + sum(a * b for a, b in zip(w[1:], e.features)) for e in es}
        return {e.name: self.scale * self.unit_ms(e)[0] for e in es}

    def predict(self, arch: Arch) -> float:
        """Predicted whole-model latency in ms on the table's spec."""
        return sum(self.unit_breakdown(arch).values())

    def predict_ratio(self, arch: Arch) -> float:
        """Predicted latency relative to the reference network (what fronts rank by)."""
        if not self.reference_ms:
            raise UserError("this latency table predates relative timing; rebuild it")
        return self.predict(arch) / self.reference_ms

    def hit_rate(self, arch: Arch) -> float:
        es = unit_entries(arch, TargetSpec(**self.spec))
        return sum(e.key in self.entries for e in es) / len(es)


def build_table(
    archs: Iterable[Arch], spec: TargetSpec, *, calibrate: int = 30, unit_seconds: float = 0.15,
    model_seconds: float = 1.0, table: LatencyTable | None = None, progress: bool = True,
) -> LatencyTable:
    """Time every distinct unit of ``archs`` (skipping those already in ``table``), then time the
    first ``calibrate`` whole models to fit the scale."""
    archs = list(archs)
    fp = fingerprint(spec.threads, spec.backend)
    t = table or LatencyTable(spec.to_dict(), fp)
    todo: list[tuple[Arch, UnitEntry]] = []
    seen = set(t.entries)
    for a in archs:
        for e in unit_entries(a, spec):
            if e.key not in seen:
                seen.add(e.key)
                todo.append((a, e))
    bar = tqdm(total=len(todo) + min(calibrate, len(archs)), disable=not progress, desc="latency table")
    models: dict[str, nn.Module] = {}
    for a, e in todo:
        m = models.get(a.archid)
        if m is None:
            models.clear()  # one model alive at a time
            m = models[a.archid] = build(a, inference=True, channels_last=spec.channels_last)
        lat = _time_module(_unit_module(m, e.name), (spec.batch, *e.in_shape), spec, unit_seconds)
        t.entries[e.key], t.kinds[e.key], t.features[e.key] = lat, e.kind, list(e.features)
        bar.update()
    t.fit()
    cal = archs[:calibrate]
    lats = []
    for a in cal:
        lats.append(measure_model(build(a, inference=True, channels_last=spec.channels_last), spec,
                                  max_seconds=model_seconds))
        bar.update()
    bar.close()
    if lats:
        # One reference figure for every calibration model: the median of the reference over
        # all their windows; each model's figure is its ratio times it (see the docstring).
        refs = [lat.reference["window_ms"] for lat in lats]  # type: ignore[index]
        t.reference_ms = statistics.median(refs)
        first = lats[0].reference or {}
        t.reference = {"arch": first.get("arch"), "archid": first.get("archid"),
                       "spread": iqr(refs) / t.reference_ms, "n": len(refs)}
    ratios, rows, ys = [], [], []
    for a, lat in zip(cal, lats):
        es = unit_entries(a, spec)
        ms = _relative_ms(lat, t.reference_ms)
        ratios.append(ms / sum(t.unit_ms(e)[0] for e in es))
        rows.append([sum(col) for col in zip(*([1.0, *e.features] for e in es))])
        ys.append(ms)
    t.scale = statistics.median(ratios) if ratios else 1.0
    if len(ys) >= JOINT_MIN:
        from sklearn.linear_model import LinearRegression

        # Whole model = sum of units, so a linear unit model fits on summed unit features.
        reg = LinearRegression(positive=True, fit_intercept=False).fit(rows, ys, sample_weight=[1 / y**2 for y in ys])
        t.joint = [float(c) for c in reg.coef_]
    return t


def _relative_ms(lat: Any, reference_ms: float) -> float:
    """A whole-model figure on the table's reference figure (its own when it has no ratio)."""
    return lat.ratio * reference_ms if lat.ratio is not None and reference_ms else lat.median_ms


def _time_module(m: nn.Module, shape: tuple[int, ...], spec: TargetSpec, seconds: float) -> float:
    return measure(m, shape, threads=spec.threads, channels_last=spec.channels_last,  # type: ignore[arg-type]
                   max_seconds=seconds).median_ms


# --- validation -------------------------------------------------------------------------------------


@dataclass
class Validation:
    n: int
    within_10: float  # share of predictions within ±10% of the measured median
    median_abs_err_pct: float
    table_hit_rate: float  # share of units found in the table (rest: fallback model)
    rows: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def validate(table: LatencyTable, archs: Iterable[Arch], *, max_seconds: float = 1.0,
             progress: bool = True) -> Validation:
    spec = TargetSpec(**table.spec)
    rows = []
    for a in tqdm(list(archs), disable=not progress, desc="validate"):
        pred = table.predict(a)
        meas = measure_model(build(a, inference=True, channels_last=spec.channels_last), spec,
                             max_seconds=max_seconds)
        ms = _relative_ms(meas, table.reference_ms)  # both on the table's reference figure
        rows.append({"archid": a.archid, "predicted_ms": pred, "measured_ms": ms, "ratio": meas.ratio,
                     "rel_iqr": meas.rel_iqr, "err_pct": 100 * (pred - ms) / ms,
                     "hit_rate": table.hit_rate(a)})
    errs = [abs(r["err_pct"]) for r in rows]
    return Validation(
        len(rows), sum(e <= 10 for e in errs) / len(errs), statistics.median(errs),
        statistics.mean(r["hit_rate"] for r in rows), rows,
    )


# --- random architectures ----------------------------------------------------------------------------


def random_archs(n: int, seed: int = 0) -> list[Arch]:
    """``n`` random valid V1/V2 Archs from a small built-in space (3 stages, widths on a grid of
    16/32, depths 2-6, kernels 3/5). To sample a search space instead, the caller asks the
    space (``SearchSpace.sample_random``) and passes the Archs in."""
    rng = random.Random(seed)
    out: list[Arch] = []
    while len(out) < n:
        fam = rng.choice(("v1", "v2"))
        stem = rng.choice((16, 24))
        grid = 16 if fam == "v2" else 32
        widths = [grid * rng.randint(lo, hi) for lo, hi in ((3, 16), (6, 32), (12, 64))]
        widths = sorted(widths) if fam == "v1" else widths  # v1 downsampling needs growth
        stages = []
        for c in widths:
            d, k = rng.choice((2, 3, 4, 6)), rng.choice((3, 5))
            if fam == "v2":
                stages.append(Stage("v2", c, d, kernel=k, split=rng.choice((0.375, 0.5, 0.625))))
            else:
                stages.append(Stage("v1", c, d, kernel=k, groups=rng.choice((1, 2, 4))))
        head = rng.choice((0, 1024)) if fam == "v2" else 0
        try:
            out.append(Arch(stages=tuple(stages), stem=Stem(channels=stem), head=head))
        except ArchError:
            continue  # e.g. widths that do not grow across a v1 stage: draw again
    return out
