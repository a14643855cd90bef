"""Search-space YAML → SearchSpace (typed settings, each default written once);
``SearchSpace.sample(trial)`` → Arch (define-by-run).

Sampling only calls ``trial.suggest_*`` and returns an Arch. A stage's width is suggested after
its other choices, among the widths those choices allow (a split that makes a fractional
channel count, groups that do not divide a width rule some out), so the parameters Optuna
records always rebuild the Arch that was evaluated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from ..accuracy.data import DataSpec
from ..accuracy.fidelity import FidelitySettings
from ..accuracy.proxies import PROXIES, needed_for
from ..common.yamlio import Located, check_keys, load_yaml
from ..errors import UserError
from ..guidelines.checks import GuidelineSettings
from ..measure.target import TargetSpec
from ..model.arch import FAMILIES, KERNELS, LAYOUTS, PRESETS, Arch, ArchError, Stage, Stem

# The typed settings and the readers live in config.py; re-exported here, where callers look.
from .config import (
    _GUIDELINE_RULES,
    _PROXY_KEYS,
    _PROXY_RULES,
    _SAMPLER_RULES,
    _TARGET_RULES,
    _TARGET_SPACE_DEFAULTS,
    GUIDELINE_MODES,
    SAMPLERS,
    VAL_FRACTION_RULE,
    Dim,
    GuidelineConfig,
    ProxySettings,
    SamplerSettings,
    TargetOptions,
    _defaults,
    _dim,
    _fields,
    _mapping,
    _scalar,
    _section,
    parse_fidelity,
)

OBJECTIVES = {  # name → direction
    "proxy": "maximize",
    "latency": "minimize",
    "mac": "minimize",
    "macs": "minimize",
    "params": "minimize",
}
CONSTRAINTS = ("latency_ms", "params_m", "macs_m", "mac_m", "guideline_penalty")
__all__ = ["CONSTRAINTS", "GUIDELINE_MODES", "OBJECTIVES", "SAMPLERS", "Dim", "GuidelineConfig",
           "ProxySettings", "SamplerSettings", "SearchSpace", "StageSpace", "TargetOptions",
           "load_space", "parse_space"]


@dataclass(frozen=True)
class StageSpace:
    family: Dim
    width: Dim
    depth: Dim
    split: Dim
    groups: Dim
    kernel: Dim
    bottleneck: Dim
    stride: int = 2
    per_unit_kernel: bool = False  # Single-Path-One-Shot style: a kernel choice per unit
    layout: str = "torchvision"


@dataclass
class SearchSpace:
    name: str
    path: str
    seed: int
    target: TargetSpec  # what latency is measured on
    target_options: TargetOptions  # num_classes, max_seconds, prefilter
    data: DataSpec  # the proxy task (proxies and short training)
    proxy: ProxySettings
    stem_channels: Dim
    stem_stride: int
    stem_pool: bool
    stages: list[StageSpace]
    head: Dim
    objectives: list[tuple[str, str]]  # (name, direction)
    constraints: dict[str, float]
    guidelines: GuidelineConfig
    sampler: SamplerSettings
    baselines: list[str]
    # The fidelity ladder (accuracy from training, accuracy/fidelity.py); None: `fidelity:
    # none` (or no `fidelity:` key), the zero-cost search of rung 0 only.
    fidelity: FidelitySettings | None = None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)  # the resolved YAML (config.yaml)

    @property
    def num_classes(self) -> int:
        return self.target_options.num_classes

    # --- identity -------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of the resolved config: a run folder belongs to exactly one space."""
        blob = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # --- sampling -------------------------------------------------------------------------
    def valid_widths(self, i: int, stage: Stage, before: tuple[Stage, ...], stem: Stem,
                     head: int) -> list[int]:
        """The widths of stage ``i`` that build, given its other choices (``stage``, whose own
        width is ignored) and the stages before it. Raises ArchError when there is none."""
        st = self.stages[i]
        valid, first_err = [], None
        for w in st.width.choices:
            try:
                Arch(stages=(*before, dataclasses.replace(stage, channels=w)), stem=stem, head=head,
                     num_classes=self.num_classes)
            except ArchError as e:
                first_err = first_err or e
                continue
            valid.append(w)
        if not valid:
            raise ArchError(f"no valid width for stages.{i}: {first_err}")
        return valid

    def width_param(self, i: int, valid: list[int]) -> tuple[str, BaseDistribution | None]:
        """The trial parameter stage ``i``'s width is sampled as, given its valid widths.

        Only widths that build are offered, so the recorded width is the built one:
        ``stages.i.width`` over the space's own grid when every width is valid; the same name
        over the valid sub-grid (a narrower range or a coarser step: e.g. split 0.375 needs a
        multiple of 8) when those form an even grid; otherwise a categorical over the valid
        widths, named after them (Optuna needs one fixed choice list per name). None when a
        single width is valid (nothing to choose)."""
        st, p = self.stages[i], f"stages.{i}.width"
        if len(valid) == 1:
            return p, None
        if valid == list(st.width.choices):
            return p, st.width.distribution()
        steps = {b - a for a, b in zip(valid, valid[1:])}
        if st.width.is_range and len(steps) == 1:
            return p, IntDistribution(valid[0], valid[-1], step=steps.pop())
        return f"{p}[{'/'.join(map(str, valid))}]", CategoricalDistribution(valid)

    def sample(self, trial: Any) -> Arch:
        """Define-by-run: suggest every choice and return the Arch they build. A stage's width
        is suggested last, among the widths its other choices allow (see ``width_param``), so
        ``trial.params`` always decode to the returned Arch.

        Raises ArchError when no width of a stage can be made valid."""
        stem_c = self.stem_channels.suggest(trial, "stem.channels")
        stem = Stem(channels=stem_c, stride=self.stem_stride, pool=self.stem_pool)
        head = self.head.suggest(trial, "head")
        stages: list[Stage] = []
        for i, st in enumerate(self.stages):
            p = f"stages.{i}"
            fam = st.family.suggest(trial, f"{p}.family")
            depth = st.depth.suggest(trial, f"{p}.depth")
            if st.per_unit_kernel:
                kernel: Any = tuple(st.kernel.suggest(trial, f"{p}.kernel.{j}") for j in range(depth))
            else:
                kernel = st.kernel.suggest(trial, f"{p}.kernel")
            extra: dict[str, Any] = {}
            if fam == "v2":
                extra["split"] = st.split.suggest(trial, f"{p}.split")
                extra["layout"] = st.layout
            else:
                extra["groups"] = st.groups.suggest(trial, f"{p}.groups")
                extra["bottleneck"] = st.bottleneck.suggest(trial, f"{p}.bottleneck")
            shape = Stage(fam, st.width.choices[0], depth, stride=st.stride, kernel=kernel, **extra)
            valid = self.valid_widths(i, shape, tuple(stages), stem, head)
            name, dist = self.width_param(i, valid)
            if dist is None:
                width = valid[0]
            elif isinstance(dist, IntDistribution):
                width = trial.suggest_int(name, dist.low, dist.high, step=dist.step)
            else:
                width = trial.suggest_categorical(name, list(dist.choices))
            stages.append(dataclasses.replace(shape, channels=width))
        return Arch(stages=tuple(stages), stem=stem, head=head, num_classes=self.num_classes)

    def sample_random(self, n: int, seed: int = 0) -> list[Arch]:
        """n distinct random architectures (uniform over the define-by-run choices)."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        seen: dict[str, Arch] = {}
        for _ in range(50 * n):
            if len(seen) >= n:
                break
            trial = study.ask()
            try:
                a = self.sample(trial)
            except ArchError:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            study.tell(trial, 0.0)
            seen.setdefault(a.archid, a)
        return list(seen.values())

    def encode(self, arch: Arch) -> tuple[dict[str, Any], dict[str, Any]]:
        """The trial params (and their distributions) under which ``sample`` returns ``arch``,
        so that a baseline stored as a trial informs the sampler. Requires ``contains(arch)``."""
        params: dict[str, Any] = {}
        dists: dict[str, Any] = {}

        def put(name: str, dist: BaseDistribution | None, value: Any) -> None:
            if dist is not None:
                params[name], dists[name] = value, dist

        put("stem.channels", self.stem_channels.distribution(), arch.stem.channels)
        put("head", self.head.distribution(), arch.head)
        for i, (s, st) in enumerate(zip(arch.stages, self.stages)):
            p = f"stages.{i}"
            put(f"{p}.family", st.family.distribution(), s.family)
            put(f"{p}.depth", st.depth.distribution(), s.depth)
            if st.per_unit_kernel:
                for j, k in enumerate(s.kernels()):
                    put(f"{p}.kernel.{j}", st.kernel.distribution(), k)
            else:
                put(f"{p}.kernel", st.kernel.distribution(), s.kernels()[0])
            if s.family == "v2":
                put(f"{p}.split", st.split.distribution(), s.split)
            else:
                put(f"{p}.groups", st.groups.distribution(), s.groups)
                put(f"{p}.bottleneck", st.bottleneck.distribution(), s.bottleneck)
            valid = self.valid_widths(i, s, arch.stages[:i], arch.stem, arch.head)
            put(*self.width_param(i, valid), s.channels)
        return params, dists

    def contains(self, arch: Arch) -> bool:
        """Whether the space can produce ``arch`` (used to pick the baselines that fit)."""
        if len(arch.stages) != len(self.stages) or arch.stem.channels not in self.stem_channels.choices:
            return False
        if (arch.stem.stride, arch.stem.pool) != (self.stem_stride, self.stem_pool):
            return False
        if arch.head not in self.head.choices:
            return False
        for s, st in zip(arch.stages, self.stages):
            ok = (
                s.family in st.family.choices and s.channels in st.width.choices
                and s.depth in st.depth.choices and s.stride == st.stride
                and all(k in st.kernel.choices for k in s.kernels())
                and (st.per_unit_kernel or len(set(s.kernels())) == 1)
            )
            if s.family == "v2":
                ok = ok and s.split in st.split.choices and s.layout == st.layout
            else:
                ok = ok and s.groups in st.groups.choices and s.bottleneck in st.bottleneck.choices
            if not ok:
                return False
        return True

    def baseline_archs(self) -> dict[str, Arch]:
        return {n: PRESETS[n].replace(num_classes=self.num_classes) for n in self.baselines}


# --- parsing ------------------------------------------------------------------------------

_TOP = ("name", "seed", "target", "proxy", "space", "objectives", "constraints", "guidelines",
        "sampler", "baselines", "fidelity")
_STAGE_KEYS = ("family", "width", "depth", "split", "groups", "kernel", "bottleneck", "stride",
               "per_unit_kernel", "layout")


# proxy.val_fraction and proxy.check_fraction (DataSpec): kept in the resolved config only when
# set, so that spaces without them keep their fingerprint.
_FRACTIONS = ("val_fraction", "check_fraction")


def parse_space(doc: Located) -> SearchSpace:
    d = doc.data
    if not isinstance(d, dict):
        raise UserError(f"{doc.source}: a search space must be a YAML mapping, got {type(d).__name__}")
    check_keys(doc, d, _TOP, "")
    if "space" not in d:
        raise UserError(f"{doc.source}: space: required (the stem, stages and head to search)")
    name = d.get("name", Path(doc.source).stem)
    if not isinstance(name, str) or not name:
        raise doc.error("name", f"must be a non-empty string, got {name!r}")
    seed = _scalar(doc, d, "seed", "", int, 0, 0)

    t = _mapping(doc, d.get("target"), "target")
    check_keys(doc, t, _TARGET_RULES, "target")
    tv = _section(doc, t, "target", _TARGET_RULES, {**_defaults(TargetSpec, TargetOptions), **_TARGET_SPACE_DEFAULTS})
    target, target_options = TargetSpec(**_fields(TargetSpec, tv)), TargetOptions(**_fields(TargetOptions, tv))

    pr = _mapping(doc, d.get("proxy"), "proxy")
    check_keys(doc, pr, (*_PROXY_KEYS, *_FRACTIONS), "proxy")
    pv = _section(doc, pr, "proxy", _PROXY_RULES, {**_defaults(DataSpec, ProxySettings), "dataset": DataSpec.name})
    proxies = pr.get("proxies")
    if proxies is not None:
        if not (isinstance(proxies, list) and all(isinstance(x, str) for x in proxies)):
            raise doc.error("proxy.proxies", "must be a list of proxy names")
        for i, n in enumerate(proxies):
            if n not in PROXIES:
                raise doc.error(f"proxy.proxies[{i}]", f"unknown proxy {n!r}; choose from {', '.join(PROXIES)}")
        missing = [n for n in needed_for(pv["score"]) if n not in proxies]
        if missing:
            raise doc.error("proxy.proxies", f"score {pv['score']!r} needs {', '.join(missing)}")
    kind, lo, hi, _ = VAL_FRACTION_RULE
    vf = {k: float(_scalar(doc, pr, k, "proxy", kind, None, lo, hi)) for k in _FRACTIONS if k in pr}
    try:
        data = DataSpec(name=pv["dataset"], resolution=pv["resolution"], batch=pv["batch"], seed=seed, **vf)
    except UserError as e:
        raise UserError(f"{doc.where('proxy.dataset')}: {e}") from None
    proxy = ProxySettings(**_fields(ProxySettings, pv), proxies=None if proxies is None else tuple(proxies))

    sp = _mapping(doc, d["space"], "space")
    check_keys(doc, sp, ("stem", "stages", "head"), "space")
    stem = _mapping(doc, sp.get("stem"), "space.stem")
    check_keys(doc, stem, ("channels", "stride", "pool"), "space.stem")
    stem_channels = _dim(doc, stem.get("channels", 24), "space.stem.channels", int, 1, 4096)
    stem_stride = _scalar(doc, stem, "stride", "space.stem", int, 2, allowed=(1, 2))
    stem_pool = _scalar(doc, stem, "pool", "space.stem", bool, True)
    raw_stages = sp.get("stages")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise doc.error("space.stages", "required: a non-empty list of stages")
    if len(raw_stages) > 8:
        raise doc.error("space.stages", f"{len(raw_stages)} stages; at most 8")
    stages = []
    for i, s in enumerate(raw_stages):
        p = f"space.stages[{i}]"
        s = _mapping(doc, s, p)
        check_keys(doc, s, _STAGE_KEYS, p)
        for req in ("width", "depth"):
            if req not in s:
                raise doc.error(f"{p}.{req}", "required")
        stages.append(StageSpace(
            family=_dim(doc, s.get("family", "v2"), f"{p}.family", str, 0, allowed=FAMILIES),
            width=_dim(doc, s["width"], f"{p}.width", int, 2, 8192),
            depth=_dim(doc, s["depth"], f"{p}.depth", int, 1, 64),
            split=_dim(doc, s.get("split", 0.5), f"{p}.split", float, 0.01, 0.99),
            groups=_dim(doc, s.get("groups", 1), f"{p}.groups", int, 1, 64),
            kernel=_dim(doc, s.get("kernel", 3), f"{p}.kernel", int, 0, allowed=KERNELS),
            bottleneck=_dim(doc, s.get("bottleneck", 0.25), f"{p}.bottleneck", float, 0.01, 4.0),
            stride=_scalar(doc, s, "stride", p, int, 2, allowed=(1, 2)),
            per_unit_kernel=_scalar(doc, s, "per_unit_kernel", p, bool, False),
            layout=_scalar(doc, s, "layout", p, str, "torchvision", allowed=LAYOUTS),
        ))
    head = _dim(doc, sp.get("head", 1024), "space.head", int, 0, 16384)

    objectives = []
    raw_obj = d.get("objectives", ["proxy", "latency"])
    if not isinstance(raw_obj, list) or not raw_obj:
        raise doc.error("objectives", "must be a non-empty list, e.g. [proxy, latency]")
    for i, o in enumerate(raw_obj):
        oname = o if isinstance(o, str) else (o.get("name") if isinstance(o, dict) else None)
        if oname not in OBJECTIVES:
            raise doc.error(f"objectives[{i}]", f"unknown objective {oname!r}; choose from {', '.join(OBJECTIVES)}")
        direction = OBJECTIVES[oname]
        if isinstance(o, dict):
            check_keys(doc, o, ("name", "direction"), f"objectives[{i}]")
            direction = o.get("direction", direction)
            if direction != OBJECTIVES[oname]:
                raise doc.error(f"objectives[{i}].direction", f"{oname} is to be {OBJECTIVES[oname]}d")
        if any(n == oname for n, _ in objectives):
            raise doc.error(f"objectives[{i}]", f"{oname} is listed twice")
        objectives.append((oname, direction))

    c = _mapping(doc, d.get("constraints"), "constraints")
    check_keys(doc, c, CONSTRAINTS, "constraints")
    constraints = {k: float(_scalar(doc, c, k, "constraints", float, None, 0)) for k in c}

    g = _mapping(doc, d.get("guidelines"), "guidelines")
    check_keys(doc, g, (*_GUIDELINE_RULES, "settings"), "guidelines")
    gv = _section(doc, g, "guidelines", _GUIDELINE_RULES, _defaults(GuidelineConfig))
    gs = _mapping(doc, g.get("settings"), "guidelines.settings")
    try:
        settings = GuidelineSettings.from_dict(gs)
    except UserError as e:
        raise doc.error("guidelines.settings", str(e)) from None
    guidelines = GuidelineConfig(**gv, settings=settings)

    sm = d.get("sampler", SamplerSettings.name)
    sm = {"name": sm} if isinstance(sm, str) else _mapping(doc, sm, "sampler")
    check_keys(doc, sm, _SAMPLER_RULES, "sampler")
    sampler = SamplerSettings(**_section(doc, sm, "sampler", _SAMPLER_RULES, _defaults(SamplerSettings)))

    fidelity = parse_fidelity(doc, d)

    space = SearchSpace(
        name=name, path=doc.source, seed=seed, target=target, target_options=target_options,
        data=data, proxy=proxy, stem_channels=stem_channels, stem_stride=stem_stride,
        stem_pool=stem_pool, stages=stages, head=head, objectives=objectives,
        constraints=constraints, guidelines=guidelines, sampler=sampler, baselines=[],
        fidelity=fidelity,
        # The resolved config as YAML keys: written to the run's config.yaml, parsed back by
        # load_run, and hashed into the space's fingerprint.
        raw={"name": name, "seed": seed, "target": tv,
             "proxy": {**{k: pv[k] for k in _PROXY_KEYS if k in pv}, "proxies": proxies,
                       **{k: getattr(data, k) for k in _FRACTIONS if k in pr}},
             "space": sp, "objectives": objectives, "constraints": constraints,
             "guidelines": {**gv, "settings": gs}, "sampler": dataclasses.asdict(sampler)},
    )
    b = d.get("baselines", "auto")
    if b == "auto":
        space.baselines = [n for n, a in PRESETS.items() if space.contains(a)]
    elif isinstance(b, list) and all(isinstance(x, str) for x in b):
        for i, n in enumerate(b):
            if n not in PRESETS:
                raise doc.error(f"baselines[{i}]", f"unknown preset {n!r} (see `shufflesearch show --list`)")
        space.baselines = list(b)
    elif b in (None, False, []):
        space.baselines = []
    else:
        raise doc.error("baselines", "must be 'auto', a list of preset names, or []")
    space.raw["baselines"] = space.baselines
    if fidelity is not None:  # absent under `none`, so a zero-cost space keeps its fingerprint
        space.raw["fidelity"] = fidelity.to_dict()
    return space


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; errors name the YAML path and line."""
    return parse_space(load_yaml(path))
