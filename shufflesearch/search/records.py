"""The trial record: the one schema between the search and everything that reads a run.

The evaluator fills a ``TrialRecord``; search/storage.py stores it on the Optuna trial (one user
attribute per field, ``to_user_attrs``) and reads it back (``storage.read_record``, the one
reader of a stored trial), and pareto, report, export, progress and the end-of-run passes work
on the typed record: ``arch`` is an ``Arch``, ``latency`` a ``Latency``, ``rungs`` maps a rung
number to its ``RungResult``. Nothing outside storage.py reads or writes a trial's user
attributes (tests/test_layout.py checks it; faults.py reads one system attribute, the retry
mark Optuna itself sets).

Adding a field is one line in the class below (with a default, so that older runs still load).
Keys a run holds that this version does not know (written by a newer version, or by another
tool) land in ``extra`` and are written back unchanged, so a round trip loses nothing; inside
the latency figure only the fields ``Latency`` knows are kept. The shapes on disk are those of
earlier versions: ``rungs`` is keyed by the rung number as a string ("1", "2", ...), each
figure is a plain dict, so run folders made by earlier versions load, and they can read ours.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..accuracy.fidelity import ESTIMATORS
from ..errors import UserError
from ..measure.target import Latency
from ..model.arch import Arch, ArchError

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


@dataclass(frozen=True)
class RungResult:
    """One rung of a trial's fidelity ladder (search/ladder.py), as the trial stores it.

    ``estimate`` is the one rule for the figure a rung stands for, everywhere: on the front,
    for promotions, in the self-check, in the report."""

    rung: int  # 1-based
    steps: int  # training steps of the one schedule up to this rung
    val_acc: float | None = None  # validation accuracy, where scored (the top rung, or val_acc runs)
    sotl: float | None = None  # the negated sum of the training losses of steps 1..steps
    seconds: float | None = None  # training time of this rung's own steps
    device: str | None = None  # where it trained
    latency: float | None = None  # what promotion ranked latency by: the ratio to the reference
    latency_ms: float | None = None  # the trial's stored latency when it climbed
    trained_seconds: float | None = None  # spent by the call that reached it (0: it was on disk)
    resumed_from: int | None = None  # the rung whose checkpoint that call continued (0: fresh)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # keys this version does not know

    def has(self, estimator: str) -> bool:
        """Whether this rung recorded what ``estimator`` needs (val_acc is not scored everywhere)."""
        return (self.val_acc if _estimator(estimator) == "val_acc" else self.sotl) is not None

    def estimate(self, estimator: str) -> float:
        """The rung's figure under ``estimator`` (higher is better): ``val_acc``, or ``sotl``
        divided by the rung's steps (the mean negated training loss, in nats), so that one
        unit holds at every rung and across trials."""
        if not self.has(estimator):
            raise ValueError(f"rung {self.rung}: no {estimator} recorded")
        if estimator == "sotl":
            return float(self.sotl) / max(1, int(self.steps))  # type: ignore[arg-type]
        return float(self.val_acc)  # type: ignore[arg-type]

    @property
    def rank_latency(self) -> float:
        """The latency promotion ranks this rung by (runs before the ratio stored only ms)."""
        return float(self.latency if self.latency is not None else self.latency_ms)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], rung: int | None = None) -> RungResult:
        """Read a stored rung; ``rung`` is its key in the trial's ``rungs`` (used when the
        dict itself does not say)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in names}
        kw.setdefault("rung", rung)
        kw.setdefault("steps", 0)
        return cls(**kw, extra={k: v for k, v in d.items() if k not in names})


def _estimator(name: str) -> str:
    if name not in ESTIMATORS:
        raise UserError(f"fidelity.estimator: {name!r} must be val_acc or sotl here "
                        "(auto is resolved by the run's check)")
    return name


def latency_from_dict(d: Mapping[str, Any] | None) -> Latency | None:
    """A stored latency figure (Latency.to_dict(), or a re-timing's entry, which leaves the
    window's fingerprint to the window) as a Latency; None for none."""
    if not d:
        return None
    full = {"median_ms": math.nan, "iqr_ms": 0.0, "n": 0, "runs_ms": [], "fingerprint": {}, "spec": {}}
    return Latency.from_dict({**full, **d})


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
    arch: Arch | None = None  # None before sampling, or when the stored one cannot be read
    params: int | None = None
    macs: int | None = None  # multiply-accumulates at the target resolution
    mac: int | None = None  # memory access cost, elements
    peak_activation: int | None = None
    latency: Latency | None = None  # the search's own measurement
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
    # ``retime``, search/retime.py): this trial's figure from that window, if re-timed.
    retimed: Latency | None = None
    # latency_ms as stored (the objective Optuna saw) when a reviewer put the record on one
    # reference (front.on_one_reference); None when latency_ms is the stored figure.
    measured_ms: float | None = None
    # The fidelity ladder (search/ladder.py); None in a zero-cost run. rung: the highest rung
    # reached (0: never trained); rungs: each rung's result by rung number; estimator: what
    # ``proxy`` is; proxy: the TOP rung's figure, None below it; stopped: why it climbed no
    # further; promoted_to: the highest rung it was promoted to (counted as it starts).
    rung: int | None = None
    top_rung: int | None = None
    rungs: dict[int, RungResult] | None = None
    estimator: str | None = None
    stopped: str | None = None
    promoted_to: int | None = None
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
    def figure(self) -> Latency | None:
        """The figure that counts: the side-by-side re-timing if there is one, else the
        search's own measurement."""
        return self.retimed or self.latency

    @property
    def ratio(self) -> float | None:
        """Latency / the reference network's, in the same window (None for protocol-1 figures)."""
        f = self.figure
        return float(f.ratio) if f is not None and f.ratio is not None else None

    @property
    def ratio_ci(self) -> list[float] | None:
        f = self.figure
        return [float(x) for x in f.ratio_ci] if f is not None and f.ratio_ci else None

    @property
    def drifted(self) -> bool:
        """The figure's window ran beyond the drift bound off the reference's scheduled figure."""
        return bool(self.figure is not None and self.figure.drifted)

    @property
    def reference_ms(self) -> float | None:
        """The reference network's absolute figure the ratio was scaled by."""
        ref = (self.figure.reference if self.figure is not None else None) or {}
        return float(ref["ms"]) if ref.get("ms") is not None else None

    @property
    def at_top(self) -> bool:
        """Reached the top rung of its ladder (always, in a zero-cost run): only such trials
        are on the front, the knee, or picked."""
        return self.top_rung is None or self.rung == self.top_rung

    def rung_result(self, k: int | None = None) -> RungResult | None:
        """Rung ``k``'s result (default: the highest rung reached), if it trained that far."""
        k = self.rung if k is None else k
        return (self.rungs or {}).get(k) if k else None

    # --- storage shape -------------------------------------------------------------------------
    def to_user_attrs(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """The trial's user attributes: every stored field that is set, plus ``extra`` (or
        only the fields in ``names``, set or not), in the shapes on disk (module docstring)."""
        out: dict[str, Any] = {}
        only = None if names is None else set(names)
        for name in only or STORED:
            if name not in STORED:
                raise ValueError(f"{name!r} is not a stored field of a trial record")
        for f in dataclasses.fields(self):
            if f.name not in STORED or (only is not None and f.name not in only):
                continue
            v = getattr(self, f.name)
            if only is None and (v is None or (f.name in _OMIT_EMPTY and not v)):
                continue
            out[f.name] = _to_json(f.name, v)
        if only is None:
            out.update(self.extra)
        return out

    @classmethod
    def from_user_attrs(cls, attrs: Mapping[str, Any], *, trial: int = -1, state: str = "COMPLETE",
                        named_constraints: dict[str, float] | None = None) -> TrialRecord:
        """Read stored attributes back, in the shapes of this and every earlier version. Runs
        made before constraints were stored by name hold a list; ``named_constraints``
        (Optuna's per-trial constraints, from the trial's system attributes) then gives the
        names."""
        kw: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for k, v in attrs.items():
            (kw if k in STORED else extra)[k] = v
        if "guidelines" in kw:
            kw["guidelines"] = GuidelineSummary.from_dict(kw["guidelines"])
        kw["latency"] = latency_from_dict(kw.get("latency"))
        if kw.get("rungs") is not None:
            kw["rungs"] = {int(k): RungResult.from_dict(v, rung=int(k)) for k, v in kw["rungs"].items()}
        if kw.get("arch") is not None:
            try:
                kw["arch"] = Arch.from_dict(kw["arch"], where=f"trial {trial}")
            except ArchError:  # kept as stored (a later version's form?), written back unchanged
                extra["arch"] = kw.pop("arch")
        c = kw.get("constraints")
        if isinstance(c, list):
            named = named_constraints or {}
            kw["constraints"] = ({k: float(v) for k, v in named.items()} if len(named) == len(c)
                                 else {f"#{i}": float(x) for i, x in enumerate(c)})
        rec = cls(trial=trial, state=state, extra=extra, **kw)
        if rec.state in ("FAIL", "PRUNED") and rec.fail_reason is None:
            rec.fail_reason = "no reason recorded (the worker died?)"
        return rec

    def copy_for_duplicate(self, number: int) -> TrialRecord:
        """The record a repeat of this architecture stores: the same figures, none of this
        trial's bookkeeping."""
        return dataclasses.replace(self, trial=-1, baseline=None, timings={}, worker_pid=None,
                                   duplicate_of=number, short_train=None, retimed=None,
                                   measured_ms=None, extra=dict(self.extra))


def _to_json(name: str, v: Any) -> Any:
    """A field's value in its shape on disk."""
    if v is None:
        return None
    if name == "rungs":
        return {str(k): r.to_dict() for k, r in sorted(v.items())}
    if isinstance(v, (Arch, Latency, GuidelineSummary)):
        return v.to_dict()
    return v


_NOT_STORED = frozenset({"trial", "state", "short_train", "extra", "retimed", "measured_ms"})
_OMIT_EMPTY = frozenset({"latency", "proxies", "constraints", "timings"})
STORED = frozenset(f.name for f in dataclasses.fields(TrialRecord)) - _NOT_STORED  # user attr names


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
