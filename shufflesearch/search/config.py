"""A search-space file's sections as typed models, and what only the file knows about them.

Every key of a space file is declared once: as a field of the model its section fills, with
its type (the annotation), default, rule (range, allowed values, error text) and a one-line
description (``setting``, common/settings.py). The models a lower stage uses live with it
(TargetSpec, DataSpec, GuidelineSettings, FidelitySettings); the search's own are here. What
only the YAML knows sits in the tables below and nowhere else: a key spelled apart from its
field (``proxy.dataset``), a default a space sets apart from its model's
(``target.channels_last``), short spellings (``sampler: nsga2``, ``fidelity: none``), and the
keys the resolved config always lists. reader.py reads a file into these models by those
tables, writes the resolved config back from them, and ``yaml_reference`` documents them.
(Why dataclass field metadata rather than Pydantic: common/settings.py.)

Adding a key takes two places: its field (with rule and description) on its section's model,
and the code that uses it. The reader, the error text, the resolved config and the run's
fingerprint (which lists a key the file leaves out only when LISTED names it, so a new key
changes no existing run's fingerprint) and the YAML reference follow from the field.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from ..accuracy.data import DataSpec
from ..accuracy.fidelity import FidelitySettings
from ..accuracy.proxies import PROXIES, SCORES, needed_for
from ..common.settings import (
    SettingError,
    allowed_text,
    check_settings,
    field_types,
    optional,
    rule_of,
    setting,
    type_name,
)
from ..guidelines.checks import GuidelineSettings
from ..measure.target import TargetSpec
from ..model.arch import FAMILIES, KERNELS, LAYOUTS, PRESETS

SAMPLERS = ("tpe", "nsga2", "random", "gp")
GUIDELINE_MODES = ("penalize", "constrain", "report")
OBJECTIVES = {"proxy": "maximize", "latency": "minimize", "mac": "minimize", "macs": "minimize",
              "params": "minimize"}  # name → direction
T = TypeVar("T")


@dataclass(frozen=True)
class Dim(Generic[T]):
    """One searchable value: fixed, a list of choices, or an int range with a step."""

    choices: tuple[Any, ...]  # every value it can take, in order
    is_range: bool = False  # sampled with suggest_int (ordered) rather than categorically
    written: Any = dataclasses.field(default=None, compare=False, repr=False)  # as the file had it

    @property
    def fixed(self) -> bool:
        return len(self.choices) == 1

    def distribution(self) -> BaseDistribution | None:
        """The Optuna distribution ``suggest`` uses (None when fixed: nothing is suggested)."""
        if self.fixed:
            return None
        if self.is_range:
            return IntDistribution(self.choices[0], self.choices[-1], step=self.choices[1] - self.choices[0])
        return CategoricalDistribution(list(self.choices))

    def suggest(self, trial: Any, name: str) -> Any:
        if self.fixed:
            return self.choices[0]
        if self.is_range:
            lo, hi = self.choices[0], self.choices[-1]
            return trial.suggest_int(name, lo, hi, step=self.choices[1] - self.choices[0])
        return trial.suggest_categorical(name, list(self.choices))


def fixed(value: Any) -> Dim:
    """A Dim that holds one value (a searchable key's default)."""
    return Dim((value,), written=value)


# --- the search's own section models ------------------------------------------------------


@dataclass(frozen=True)
class TargetOptions:
    """`target:` what the deployed model runs as (TargetSpec, the keys latency is measured
    on), its classifier size, the time cap and the latency pre-filter."""

    spec: TargetSpec = setting(factory=TargetSpec, flat=True, doc="what latency is measured on")
    num_classes: int = setting(1000, lo=1, hi=1_000_000, doc="classes of the deployed classifier")
    max_seconds: float = setting(1.0, lo=0.05, hi=600, doc="time cap per latency measurement")
    prefilter: float = setting(0.0, lo=0.0, hi=10.0, doc="> 0: skip measuring architectures the "
                               "latency predictor puts above the latency_ms constraint by more "
                               "than this fraction (needs `shufflesearch latency table build`)")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class ProxySettings:
    """`proxy:` the proxy task (DataSpec) and how an architecture is scored on it."""

    data: DataSpec = setting(factory=DataSpec, flat=True, doc="the proxy task")
    proxies: tuple[str, ...] | None = setting(None, choices=tuple(PROXIES), doc="the zero-cost "
                                              "proxies computed (null: the default set)",
                                              says="unknown proxy {value!r}; choose from {choices}")
    score: str = setting("macs", choices=SCORES, doc="the figure the search maximises")
    short_train_top_k: int = setting(0, lo=0, hi=100, doc="at the end of a run, short-train the "
                                     "baselines and this many points spread along the front")
    short_train_steps: int = setting(150, lo=1, hi=100_000, doc="steps of each of those trainings")

    def __post_init__(self) -> None:
        check_settings(self)
        missing = [n for n in needed_for(self.score) if self.proxies is not None and n not in self.proxies]
        if missing:
            raise SettingError("proxies", f"score {self.score!r} needs {', '.join(missing)}")


@dataclass(frozen=True)
class GuidelineConfig:
    """`guidelines:` how guideline penalties enter the search."""

    mode: str = setting("penalize", choices=GUIDELINE_MODES, doc="penalize: subtract from the "
                        "score; constrain: infeasible over max_penalty; report: only record")
    weight: float = setting(30.0, lo=0, hi=1000, doc="penalize: score units per unit of "
                            "combined penalty")
    max_penalty: float = setting(0.5, lo=0, hi=1, doc="constrain: the largest combined penalty")
    settings: GuidelineSettings = setting(factory=GuidelineSettings, doc="the checkers' "
                                          "thresholds and weights")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class SamplerSettings:
    """`sampler:` Optuna's sampler (``sampler: nsga2`` names it alone)."""

    name: str = setting("tpe", choices=SAMPLERS, doc="the Optuna sampler")
    n_startup_trials: int = setting(10, lo=0, hi=10_000, doc="random trials before TPE/GP model")
    population_size: int = setting(20, lo=2, hi=10_000, doc="NSGA-II's population")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class Limits:
    """`constraints:` each a limit a feasible trial stays within; none by default."""

    latency_ms: float | None = setting(None, lo=0, doc="measured latency on the target, ms")
    params_m: float | None = setting(None, lo=0, doc="parameters, millions")
    macs_m: float | None = setting(None, lo=0, doc="multiply-accumulates, millions")
    mac_m: float | None = setting(None, lo=0, doc="memory access cost, millions of elements")
    guideline_penalty: float | None = setting(None, lo=0, doc="combined guideline penalty, [0, 1]")

    def __post_init__(self) -> None:
        check_settings(self)
        for f in dataclasses.fields(self):  # limits are compared, and stored, as floats
            if getattr(self, f.name) is not None:
                object.__setattr__(self, f.name, float(getattr(self, f.name)))

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


CONSTRAINTS = tuple(f.name for f in dataclasses.fields(Limits))


@dataclass(frozen=True)
class Objective:
    """One objective (``proxy`` names it alone); its direction is fixed by its name."""

    name: str = setting(choices=tuple(OBJECTIVES), doc="proxy, latency, mac, macs or params",
                        says="unknown objective {value!r}; choose from {choices}")
    direction: str | None = setting(None, choices=("maximize", "minimize"), doc="may be given; "
                                    "must then be the name's own")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.direction not in (None, OBJECTIVES[self.name]):
            raise SettingError("direction", f"{self.name} is to be {OBJECTIVES[self.name]}d")
        object.__setattr__(self, "direction", OBJECTIVES[self.name])


@dataclass(frozen=True)
class StemSpace:
    """`space.stem:` the stem's conv width, its stride and whether a max-pool follows."""

    channels: Dim[int] = setting(fixed(24), lo=1, hi=4096, doc="stem conv output channels")
    stride: int = setting(2, choices=(1, 2), doc="stem conv stride")
    pool: bool = setting(True, doc="3x3 max-pool after the stem conv")

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True, kw_only=True)
class StageSpace:
    """`space.stages[i]:` one stage's choices. A searchable key takes a value, a list of
    choices, or (integers) a range {low, high, step}."""

    family: Dim[str] = setting(fixed("v2"), choices=FAMILIES, doc="unit family")
    width: Dim[int] = setting(lo=2, hi=8192, doc="output channels")
    depth: Dim[int] = setting(lo=1, hi=64, doc="units in the stage")
    split: Dim[float] = setting(fixed(0.5), lo=0.01, hi=0.99, doc="v2: share of channels the "
                                "branch takes")
    groups: Dim[int] = setting(fixed(1), lo=1, hi=64, doc="v1: groups of the 1x1 convs")
    kernel: Dim[int] = setting(fixed(3), choices=KERNELS, doc="depthwise kernel size")
    bottleneck: Dim[float] = setting(fixed(0.25), lo=0.01, hi=4.0, doc="v1: bottleneck width "
                                     "ratio")
    stride: int = setting(2, choices=(1, 2), doc="stride of the stage's first unit")
    per_unit_kernel: bool = setting(False, doc="a kernel choice per unit (Single-Path-One-Shot "
                                    "style)")
    layout: str = setting("torchvision", choices=LAYOUTS, doc="v2: channel order of the unit")

    def __post_init__(self) -> None:
        check_settings(self)


def _stage_count(stages: tuple[StageSpace, ...]) -> str | None:
    if not stages:
        return "required: a non-empty list of stages"
    return f"{len(stages)} stages; at most 8" if len(stages) > 8 else None


@dataclass(frozen=True, kw_only=True)
class SpaceShape:
    """`space:` the architectures searched: a stem, stages and a head."""

    stem: StemSpace = setting(factory=StemSpace, doc="the stem")
    stages: tuple[StageSpace, ...] = setting(check=_stage_count, doc="the stages, 1 to 8, "
                                             "each a mapping")
    head: Dim[int] = setting(fixed(1024), lo=0, hi=16384, doc="channels of the last 1x1 conv "
                             "(0: none)")

    def __post_init__(self) -> None:
        check_settings(self)


def _objectives_error(objectives: tuple[Objective, ...]) -> str | tuple[str, str] | None:
    if not objectives:
        return "must be a non-empty list, e.g. [proxy, latency]"
    names = [o.name for o in objectives]
    twice = next((i for i, n in enumerate(names) if n in names[:i]), None)
    return None if twice is None else (f"[{twice}]", f"{names[twice]} is listed twice")


def _name_error(name: str | None) -> str | None:
    return "must be a non-empty string" if name == "" else None


@dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    """A whole space file."""

    name: str | None = setting(None, check=_name_error, doc="the run's name (left out: the "
                               "file's name)")
    seed: int = setting(0, lo=0, doc="seeds the sampler and the proxy task's split")
    target: TargetOptions = setting(factory=TargetOptions, doc="the deployment target")
    proxy: ProxySettings = setting(factory=ProxySettings, doc="the proxy task")
    space: SpaceShape = setting(doc="the stem, stages and head to search")
    objectives: tuple[Objective, ...] = setting(
        factory=lambda: (Objective("proxy"), Objective("latency")), check=_objectives_error,
        doc="what the search optimises, each a name or {name, direction}")
    constraints: Limits = setting(factory=Limits, doc="limits of a feasible trial")
    guidelines: GuidelineConfig = setting(factory=GuidelineConfig, doc="the guideline checks")
    sampler: SamplerSettings = setting(factory=SamplerSettings, doc="the Optuna sampler, a "
                                       "mapping or its name")
    baselines: tuple[str, ...] | None = setting(None, choices=tuple(PRESETS), doc="presets "
                                                "evaluated first: auto (or left out) every "
                                                "preset the space holds; a list of names "
                                                "(`shufflesearch show --list`); [] none",
                                                says="unknown preset {value!r} (see "
                                                "`shufflesearch show --list`)")
    fidelity: FidelitySettings | None = setting(None, doc="the fidelity ladder: none (or left "
                                                "out) the zero-cost search of rung 0 only; "
                                                "{} every default")

    def __post_init__(self) -> None:
        check_settings(self)


# --- what only the YAML knows ------------------------------------------------------------

ALIASES = {(DataSpec, "name"): "dataset"}  # fields a file spells otherwise: YAML key
SKIPPED = {(DataSpec, "seed")}  # fields no section holds: the split takes the file's seed
SPACE_DEFAULTS = {  # a space file's default where it differs from the model's
    # A bare TargetSpec stays NCHW for the library's callers; a space times and exports NHWC
    # unless it says otherwise, the format the inference form runs fastest in on oneDNN CPUs.
    "target.channels_last": True,
}
SHORTHANDS = {SamplerSettings: "name", Objective: "name"}  # a bare value names this field


def _fidelity_spelling(v: Any) -> Any:
    if v is False or (isinstance(v, str) and v.strip().lower() == "none"):
        return None
    return {} if v is None else v  # `fidelity:` alone: every default


def _baselines_spelling(v: Any) -> Any:
    if v == "auto":
        return None
    if v is None or v is False:
        return ()
    if not isinstance(v, list):
        raise SettingError("", "must be 'auto', a list of preset names, or []")
    return v


SPELLINGS = {"fidelity": _fidelity_spelling, "baselines": _baselines_spelling}


def _listed(section: str, keys: str) -> set[str]:
    return {section} | {f"{section}.{k}" for k in keys.split()}


# The keys the resolved config (the run's config.yaml, and what its fingerprint hashes) lists
# even where the file leaves them out, with their defaults: those of the first releases,
# frozen here so that every existing run keeps its fingerprint. Any other key is listed only
# when the file gives it, so adding a key changes no existing run's fingerprint.
LISTED = frozenset(
    {"name", "seed", "space", "objectives", "constraints", "baselines", "fidelity.check"}
    | _listed("target", "resolution batch threads num_classes backend channels_last "
                        "max_seconds prefilter")
    | _listed("proxy", "dataset resolution batch proxies score short_train_top_k "
                       "short_train_steps")
    | _listed("guidelines", "mode weight max_penalty settings")
    | _listed("sampler", "name n_startup_trials population_size")
    | _listed("fidelity", "rungs eta estimator device check")
    | _listed("fidelity.check", "top steps seeds"))
OMIT_NONE = {"fidelity"}  # `fidelity: none` is left out, as spaces were before the ladder
WRITTEN_AS = {Objective: lambda o: [o.name, o.direction]}  # the resolved config's form


# --- the keys of a section, and the reference that lists them ----------------------------


@dataclass(frozen=True)
class Entry:
    """One YAML key of a section: the field that holds it, reached by ``attrs`` from the
    section's model (through flattened models)."""

    attrs: tuple[str, ...]
    field: dataclasses.Field
    type: Any  # the field's resolved annotation


def own_keys(cls: type) -> list[tuple[dataclasses.Field, str | None]]:
    """(field, YAML key) of each field of ``cls`` a section holds; None for a flattened model,
    whose own keys sit beside these."""
    return [(f, None if rule_of(f).flat else ALIASES.get((cls, f.name), f.name))
            for f in dataclasses.fields(cls) if (cls, f.name) not in SKIPPED]


@functools.cache
def entries(cls: type) -> dict[str, Entry]:
    """YAML key → Entry for every key of the section ``cls`` fills, in declaration order."""
    out: dict[str, Entry] = {}
    hints = field_types(cls)
    for f, key in own_keys(cls):
        if key is None:
            out.update({k: Entry((f.name, *e.attrs), e.field, e.type)
                        for k, e in entries(hints[f.name]).items()})
        else:
            out[key] = Entry((f.name,), f, hints[f.name])
    return out


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def model_of(tp: Any) -> tuple[type | None, bool]:
    """The section model a key's type holds, and whether as a list of them."""
    tp, _ = optional(tp)
    if typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        return typing.get_args(tp)[0], True
    return (tp, False) if dataclasses.is_dataclass(tp) and isinstance(tp, type) else (None, False)


def _flow(v: Any) -> str:
    if isinstance(v, Dim):
        v = v.written
    if isinstance(v, tuple) and v and type(v[0]) in SHORTHANDS:
        v = [getattr(x, SHORTHANDS[type(x)]) for x in v]
    if dataclasses.is_dataclass(v):
        return "see below"
    return yaml.safe_dump(v, default_flow_style=True, width=1000).removesuffix("...\n").strip()


def _row(path: str, key: str, e: Entry) -> str:
    f, rule = e.field, rule_of(e.field)
    p = join(path, key)
    if p in SPACE_DEFAULTS:
        default = _flow(SPACE_DEFAULTS[p])
    elif f.default is not dataclasses.MISSING:
        default = _flow(f.default)
    elif f.default_factory is not dataclasses.MISSING:
        default = _flow(f.default_factory())
    else:
        default = "required"
    tp, _ = optional(e.type)
    kind = (f"searchable {type_name(typing.get_args(tp)[0])}" if typing.get_origin(tp) is Dim
            else type_name(e.type))
    allowed = allowed_text(rule) if rule.choices is None or len(rule.choices) <= 8 else "see description"
    return f"| `{key}` | {kind} | `{default}` | {allowed} | {rule.doc} |"


def yaml_reference() -> str:
    """A Markdown reference of every section and key of a space file (type, default, allowed
    range or values, description), rendered from the models the reader reads, so a page
    generated from it cannot drift from what the reader accepts."""
    out = ["# Search-space files: every key", "",
           "A searchable key takes one value, a list of choices, or (integers only) a range "
           "`{low, high, step}`. A section left out takes every default.", ""]
    todo: list[tuple[str, type]] = [("", SpaceConfig)]
    while todo:
        path, cls = todo.pop(0)
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n    ", " ")
        out += [f"## `{path}`" if path else "## The file", "", doc, "",
                "| key | type | default | allowed | description |", "|---|---|---|---|---|"]
        for key, e in entries(cls).items():
            out.append(_row(path, key, e))
            sub, many = model_of(e.type)
            if sub is not None:
                todo.append((join(path, key) + ("[i]" if many else ""), sub))
        out.append("")
    return "\n".join(out)
