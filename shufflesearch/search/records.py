"""The trial record: the one schema between the search and everything that reads a run.

The evaluator fills a ``TrialRecord``; the worker stores it on the Optuna trial with
``to_user_attrs()`` (one user attribute per field); pareto, report, export, progress and the
short-training pass read it back with ``TrialRecord.from_trial(frozen_trial)``. Nothing else
reads or writes a trial's user attributes by key.

Adding a field is one line in the class below (with a default, so that older runs still load).
Keys a run holds that this version does not know (written by a newer version, or by another
tool) land in ``extra`` and are written back unchanged, so a round trip loses nothing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

GUIDELINES = ("G1", "G2", "G3", "G4")
STATES = ("COMPLETE", "FAIL", "PRUNED")  # finished trials; RUNNING/WAITING are not records yet


@dataclass
class GuidelineSummary:
    """What a run keeps of a trial's guideline report (guidelines.checks.GuidelineReport)."""

    penalties: dict[str, float] = field(default_factory=dict)  # G1..G4
    total: float = 0.0  # combined penalty
    n_findings: int = 0
    overhead_ms: float | None = None  # calibrated estimate, when this machine has a calibration

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GuidelineSummary:
        d = d or {}
        return cls(penalties=dict(d.get("penalties") or {}), total=float(d.get("total", 0.0)),
                   n_findings=int(d.get("n_findings", 0)), overhead_ms=d.get("overhead_ms"))


@dataclass
class TrialRecord:
    """One trial of a run. Units: params/macs/mac/peak_activation are counts, latency in ms.

    ``constraints`` holds Optuna's constraint values by name (``latency_ms``, ``macs_m``, ...,
    ``guidelines`` in guideline-constrain mode): value = measured - limit, so a value > 0 is a
    broken constraint. ``trial``, ``state`` and ``short_train`` come from the study, not from
    the trial's user attributes, and are not written by ``to_user_attrs``.
    """

    trial: int = -1  # Optuna trial number
    state: str = "COMPLETE"  # COMPLETE, FAIL or PRUNED
    archid: str = ""
    arch: dict[str, Any] | None = None  # Arch.to_dict()
    params: int | None = None
    macs: int | None = None  # multiply-accumulates at the target resolution
    mac: int | None = None  # memory access cost, elements
    peak_activation: int | None = None
    latency: dict[str, Any] = field(default_factory=dict)  # measure.target.Latency.to_dict() (+ additions)
    latency_ms: float | None = None  # the measured median, the objective
    proxies: dict[str, float] = field(default_factory=dict)  # zero-cost proxy values by name
    proxy_raw: float | None = None  # the proxy score before the guideline penalty
    proxy: float | None = None  # the proxy objective (after the penalty in penalize mode)
    guidelines: GuidelineSummary = field(default_factory=GuidelineSummary)
    constraints: dict[str, float] = field(default_factory=dict)  # by name; > 0 is broken
    # The space's latency_ms limit as a ratio to the reference (converted once per run:
    # objective.latency_limit); latency feasibility is judged on the ratio against it.
    latency_limit: float | None = None
    baseline: str | None = None  # the preset's name for a baseline trial
    duplicate_of: int | None = None  # the trial whose figures this repeat copies
    fail_reason: str | None = None  # FAIL/PRUNED: why
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    worker_pid: int | None = None
    short_train: dict[str, float] | None = None  # short-training results (val_acc, steps, ...)
    # The end-of-run re-timing of the front and baselines side by side (study user attr
    # ``retime``, search/retime.py): this trial's Latency dict from that window, if re-timed.
    retimed: dict[str, Any] | None = None
    # latency_ms as stored (the objective Optuna saw) when a reviewer put the record on one
    # reference (front.on_one_reference); None when latency_ms is the stored figure.
    measured_ms: float | None = None
    # The fidelity ladder (search/ladder.py); None in a zero-cost run. rung: the highest rung
    # reached (0: never trained); rungs: per rung ("1", "2", ...) its figures (steps, sotl,
    # val_acc where scored, latency, seconds, device, ...); estimator: what ``proxy`` is;
    # proxy: the TOP rung's figure, None below it; stopped: why it climbed no further.
    rung: int | None = None
    top_rung: int | None = None
    rungs: dict[str, Any] | None = None
    estimator: str | None = None
    stopped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    # --- feasibility ---------------------------------------------------------------------------
    @property
    def feasible(self) -> bool:
        """Every constraint holds (Optuna's rule: each value <= 0). A trial without
        constraints is feasible."""
        return not self.broken

    @property
    def broken(self) -> dict[str, float]:
        """The constraints this trial breaks, by name, with how far over the limit it is."""
        return {k: v for k, v in self.constraints.items() if not (isinstance(v, (int, float)) and v <= 0)}

    @property
    def complete(self) -> bool:
        """A completed trial with the figures the front needs (finite proxy and latency)."""
        return (self.state == "COMPLETE" and self.proxy is not None and self.latency_ms is not None
                and math.isfinite(self.proxy) and math.isfinite(self.latency_ms))

    # --- the latency figure (protocol 2: a ratio to the reference network) ------------------------
    @property
    def figure(self) -> dict[str, Any]:
        """The Latency dict that counts: the side-by-side re-timing if there is one, else the
        search's own measurement."""
        return self.retimed or self.latency

    @property
    def ratio(self) -> float | None:
        """Latency / the reference network's, in the same window (None for protocol-1 figures)."""
        v = self.figure.get("ratio")
        return float(v) if v is not None else None

    @property
    def ratio_ci(self) -> list[float] | None:
        v = self.figure.get("ratio_ci")
        return [float(x) for x in v] if v else None

    @property
    def drifted(self) -> bool:
        """The figure's window ran beyond the drift bound off the reference's scheduled figure."""
        return bool(self.figure.get("drifted", False))

    @property
    def reference_ms(self) -> float | None:
        """The reference network's absolute figure the ratio was scaled by."""
        ref = self.figure.get("reference") or {}
        return float(ref["ms"]) if ref.get("ms") is not None else None
    @property
    def at_top(self) -> bool:
        """Reached the top rung of its ladder (always, in a zero-cost run): only such trials
        are on the front, the knee, or picked."""
        return self.top_rung is None or self.rung == self.top_rung

    # --- storage -------------------------------------------------------------------------------
    def to_user_attrs(self) -> dict[str, Any]:
        """The trial's user attributes: every stored field that is set, plus ``extra``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in _NOT_STORED:
                continue
            v = getattr(self, f.name)
            if v is None or (f.name in _OMIT_EMPTY and not v):
                continue
            out[f.name] = v.to_dict() if isinstance(v, GuidelineSummary) else v
        out.update(self.extra)
        return out

    @classmethod
    def from_user_attrs(cls, attrs: dict[str, Any], *, trial: int = -1, state: str = "COMPLETE",
                        named_constraints: dict[str, float] | None = None) -> TrialRecord:
        """Read stored attributes back. Runs made before constraints were stored by name hold a
        list; ``named_constraints`` (Optuna's per-trial constraints, from the trial's system
        attributes) then gives the names."""
        kw: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for k, v in attrs.items():
            if k in _STORED:
                kw[k] = v
            else:
                extra[k] = v
        if "guidelines" in kw:
            kw["guidelines"] = GuidelineSummary.from_dict(kw["guidelines"])
        c = kw.get("constraints")
        if isinstance(c, list):
            named = named_constraints or {}
            kw["constraints"] = ({k: float(v) for k, v in named.items()} if len(named) == len(c)
                                 else {f"#{i}": float(x) for i, x in enumerate(c)})
        return cls(trial=trial, state=state, extra=extra, **kw)

    @classmethod
    def from_trial(cls, t: Any) -> TrialRecord:
        """The record of an Optuna FrozenTrial."""
        named = {k.split(":", 1)[1]: v for k, v in t.system_attrs.items() if k.startswith("constraints:")}
        rec = cls.from_user_attrs(dict(t.user_attrs), trial=t.number, state=t.state.name,
                                  named_constraints=named)
        if rec.state in ("FAIL", "PRUNED") and rec.fail_reason is None:
            rec.fail_reason = "no reason recorded (the worker died?)"
        return rec

    def copy_for_duplicate(self, number: int) -> TrialRecord:
        """The record a repeat of this architecture stores: the same figures, none of this
        trial's bookkeeping."""
        return dataclasses.replace(self, trial=-1, baseline=None, timings={}, worker_pid=None,
                                   duplicate_of=number, short_train=None, retimed=None,
                                   measured_ms=None, extra=dict(self.extra))


_NOT_STORED = frozenset({"trial", "state", "short_train", "extra", "retimed", "measured_ms"})
_OMIT_EMPTY = frozenset({"latency", "proxies", "constraints", "timings"})
_STORED = frozenset(f.name for f in dataclasses.fields(TrialRecord)) - _NOT_STORED


def trial_records(trials: Iterable[Any]) -> list[TrialRecord]:
    """One record per finished trial (Optuna FrozenTrials), sorted by trial number.

    RUNNING and WAITING trials are left out: nothing about them is known yet."""
    return [TrialRecord.from_trial(t) for t in sorted(trials, key=lambda t: t.number)
            if t.state.name in STATES]


def completed(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Completed trials with finite proxy and latency (feasible or not)."""
    return [r for r in records if r.complete]


def measured(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """Completed trials with a finite latency, whether or not they have an accuracy figure (a
    ladder trial below the top rung, or an infeasible one, has none)."""
    return [r for r in records if r.state == "COMPLETE" and r.latency_ms is not None
            and math.isfinite(r.latency_ms)]


def failed(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    return [r for r in records if r.state in ("FAIL", "PRUNED")]
