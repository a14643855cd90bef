"""Search-space YAML → SearchSpace; ``SearchSpace.sample(trial)`` → Arch (define-by-run).

Sampling only calls ``trial.suggest_*`` and returns an Arch, so a space can be listed, validated
and sampled without torch. Widths that break a construction rule (a split that makes a
fractional channel count, groups that do not divide a width) are repaired deterministically
to the nearest valid width of the same dimension; the repair is recorded on the trial.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.yamlio import Located, check_keys, load_yaml
from ..errors import UserError
from ..measure.target import BACKENDS
from ..model.arch import FAMILIES, KERNELS, LAYOUTS, PRESETS, Arch, ArchError, Stage, Stem

OBJECTIVES = {  # name → direction
    "proxy": "maximize",
    "latency": "minimize",
    "mac": "minimize",
    "macs": "minimize",
    "params": "minimize",
}
CONSTRAINTS = ("latency_ms", "params_m", "macs_m", "mac_m", "guideline_penalty")
SAMPLERS = ("tpe", "nsga2", "random", "gp")
GUIDELINE_MODES = ("penalize", "constrain", "report")


@dataclass(frozen=True)
class Dim:
    """One searchable value: fixed, a list of choices, or an int range with a step."""

    choices: tuple[Any, ...]  # every value it can take, in order
    is_range: bool = False  # sampled with suggest_int (ordered) rather than categorically

    @property
    def fixed(self) -> bool:
        return len(self.choices) == 1

    def distribution(self) -> Any:
        """The Optuna distribution ``suggest`` uses (None when fixed: nothing is suggested)."""
        from optuna.distributions import CategoricalDistribution, IntDistribution

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
            step = self.choices[1] - self.choices[0]
            return trial.suggest_int(name, lo, hi, step=step)
        return trial.suggest_categorical(name, list(self.choices))

    def nearest(self, v: Any) -> list[Any]:
        """All choices ordered by distance from v (the repair order)."""
        return sorted(self.choices, key=lambda c: (abs(c - v), c))


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
    target: dict[str, Any]  # resolution, batch, threads, num_classes, backend, channels_last, max_seconds, prefilter
    proxy: dict[str, Any]  # dataset, resolution, batch, proxies, score, short_train_top_k/steps
    stem_channels: Dim
    stem_stride: int
    stem_pool: bool
    stages: list[StageSpace]
    head: Dim
    objectives: list[tuple[str, str]]  # (name, direction)
    constraints: dict[str, float]
    guidelines: dict[str, Any]  # mode, weight, settings
    sampler: dict[str, Any]
    baselines: list[str]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    # --- identity -------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of the resolved config: a run folder belongs to exactly one space."""
        blob = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # --- sampling -------------------------------------------------------------------------
    def sample(self, trial: Any) -> Arch:
        """Define-by-run: suggest every choice, repair widths, return a valid Arch.

        Raises ArchError when no width of a stage can be made valid."""
        repaired: dict[str, str] = {}
        stem_c = self.stem_channels.suggest(trial, "stem.channels")
        stem = Stem(channels=stem_c, stride=self.stem_stride, pool=self.stem_pool)
        head = self.head.suggest(trial, "head")
        nc = int(self.target["num_classes"])
        stages: list[Stage] = []
        for i, st in enumerate(self.stages):
            p = f"stages.{i}"
            fam = st.family.suggest(trial, f"{p}.family")
            width = st.width.suggest(trial, f"{p}.width")
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
            first_err: ArchError | None = None
            for w in st.width.nearest(width):
                cand = Stage(fam, w, depth, stride=st.stride, kernel=kernel, **extra)
                try:
                    Arch(stages=(*stages, cand), stem=stem, head=head, num_classes=nc)
                except ArchError as e:
                    first_err = first_err or e
                    continue
                if w != width:
                    repaired[f"{p}.width"] = f"{width} -> {w} ({first_err})"
                stages.append(cand)
                break
            else:
                raise ArchError(f"no valid width for {p}: {first_err}")
        if hasattr(trial, "set_user_attr") and repaired:
            trial.set_user_attr("repaired", repaired)
        return Arch(stages=tuple(stages), stem=stem, head=head, num_classes=nc)

    def sample_random(self, n: int, seed: int = 0) -> list[Arch]:
        """n distinct random architectures (uniform over the define-by-run choices)."""
        import optuna

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

        def put(name: str, dim: Dim, value: Any) -> None:
            d = dim.distribution()
            if d is not None:
                params[name], dists[name] = value, d

        put("stem.channels", self.stem_channels, arch.stem.channels)
        put("head", self.head, arch.head)
        for i, (s, st) in enumerate(zip(arch.stages, self.stages)):
            p = f"stages.{i}"
            put(f"{p}.family", st.family, s.family)
            put(f"{p}.width", st.width, s.channels)
            put(f"{p}.depth", st.depth, s.depth)
            if st.per_unit_kernel:
                for j, k in enumerate(s.kernels()):
                    put(f"{p}.kernel.{j}", st.kernel, k)
            else:
                put(f"{p}.kernel", st.kernel, s.kernels()[0])
            if s.family == "v2":
                put(f"{p}.split", st.split, s.split)
            else:
                put(f"{p}.groups", st.groups, s.groups)
                put(f"{p}.bottleneck", st.bottleneck, s.bottleneck)
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
        nc = int(self.target["num_classes"])
        return {n: PRESETS[n].replace(num_classes=nc) for n in self.baselines}


# --- parsing ------------------------------------------------------------------------------

_TOP = ("name", "seed", "target", "proxy", "space", "objectives", "constraints", "guidelines",
        "sampler", "baselines")
_TARGET_DEFAULTS = {"resolution": 224, "batch": 1, "threads": 1, "num_classes": 1000,
                    "backend": "torch", "channels_last": False, "max_seconds": 1.0,
                    "prefilter": 0.0}
_PROXY_DEFAULTS = {"dataset": "digits", "resolution": 32, "batch": 64, "proxies": None,
                   "score": "macs", "short_train_top_k": 0, "short_train_steps": 150}
_STAGE_KEYS = ("family", "width", "depth", "split", "groups", "kernel", "bottleneck", "stride",
               "per_unit_kernel", "layout")


def _is_num(v: Any, kind: type) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) if kind is int else isinstance(v, (int, float))


def _dim(doc: Located, v: Any, path: str, kind: type, lo: float, hi: float | None = None,
         allowed: tuple | None = None) -> Dim:
    """A scalar, a list, or {low, high, step} → Dim, checked against [lo, hi] / allowed."""

    def check(x: Any, at: str) -> Any:
        if allowed is not None:
            if x not in allowed:
                raise doc.error(at, f"must be one of {', '.join(map(str, allowed))}, got {x!r}")
            return x
        if not _is_num(x, kind):
            raise doc.error(at, f"must be {'an integer' if kind is int else 'a number'}, got {x!r}")
        if x < lo or (hi is not None and x > hi):
            rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise doc.error(at, f"{x} is out of range {rng}")
        return x

    if isinstance(v, dict):
        check_keys(doc, v, ("low", "high", "step"), path)
        if kind is not int or allowed is not None:
            raise doc.error(path, "a range {low, high, step} is only for integers; give a list")
        for k in ("low", "high"):
            if k not in v:
                raise doc.error(f"{path}.{k}", "required in a range")
        low, high = check(v["low"], f"{path}.low"), check(v["high"], f"{path}.high")
        step = v.get("step", 1)
        if not _is_num(step, int) or step < 1:
            raise doc.error(f"{path}.step", f"must be a positive integer, got {step!r}")
        if high < low:
            raise doc.error(path, f"high ({high}) is below low ({low})")
        if (high - low) // step > 100_000:
            raise doc.error(path, "range has more than 100000 values; raise the step")
        vals = tuple(range(low, high + 1, step))
        return Dim(vals, is_range=len(vals) > 1)
    if isinstance(v, list):
        if not v:
            raise doc.error(path, "an empty list of choices")
        vals = tuple(check(x, f"{path}[{i}]") for i, x in enumerate(v))
        if len(set(vals)) != len(vals):
            raise doc.error(path, "repeats a choice")
        return Dim(vals)
    return Dim((check(v, path),))


def _mapping(doc: Located, v: Any, path: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise doc.error(path, f"must be a mapping, got {type(v).__name__}")
    return v


def _scalar(doc: Located, d: dict, key: str, path: str, kind: type, default: Any,
            lo: float | None = None, hi: float | None = None, allowed: tuple | None = None) -> Any:
    v = d.get(key, default)
    at = f"{path}.{key}"
    if allowed is not None:
        if v not in allowed:
            raise doc.error(at, f"must be one of {', '.join(map(str, allowed))}, got {v!r}")
        return v
    if kind is bool:
        if not isinstance(v, bool):
            raise doc.error(at, f"must be true or false, got {v!r}")
        return v
    if kind is str:
        if not isinstance(v, str):
            raise doc.error(at, f"must be a string, got {v!r}")
        return v
    if not _is_num(v, kind):
        raise doc.error(at, f"must be {'an integer' if kind is int else 'a number'}, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise doc.error(at, f"{v} is out of range [{lo}, {hi if hi is not None else '∞'}]")
    return v


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
    check_keys(doc, t, _TARGET_DEFAULTS, "target")
    target = {
        "resolution": _scalar(doc, t, "resolution", "target", int, 224, 8, 4096),
        "batch": _scalar(doc, t, "batch", "target", int, 1, 1, 4096),
        "threads": _scalar(doc, t, "threads", "target", int, 1, 1, 256),
        "num_classes": _scalar(doc, t, "num_classes", "target", int, 1000, 1, 1_000_000),
        "backend": _scalar(doc, t, "backend", "target", str, "torch", allowed=BACKENDS),
        "channels_last": _scalar(doc, t, "channels_last", "target", bool, False),
        "max_seconds": _scalar(doc, t, "max_seconds", "target", float, 1.0, 0.05, 600),
        # > 0: skip measuring architectures the latency predictor puts above the latency_ms
        # constraint by more than this fraction (needs `shufflesearch latency build-table`)
        "prefilter": _scalar(doc, t, "prefilter", "target", float, 0.0, 0.0, 10.0),
    }

    pr = _mapping(doc, d.get("proxy"), "proxy")
    check_keys(doc, pr, _PROXY_DEFAULTS, "proxy")
    proxy = {
        "dataset": _scalar(doc, pr, "dataset", "proxy", str, "digits"),
        "resolution": _scalar(doc, pr, "resolution", "proxy", int, 32, 8, 1024),
        "batch": _scalar(doc, pr, "batch", "proxy", int, 64, 2, 4096),
        "proxies": pr.get("proxies"),
    }
    # Multi-fidelity: at the end of a run, short-train the baselines and k points spread along
    # the front, and store the accuracies with the run (pareto shows them).
    proxy["short_train_top_k"] = _scalar(doc, pr, "short_train_top_k", "proxy", int, 0, 0, 100)
    proxy["short_train_steps"] = _scalar(doc, pr, "short_train_steps", "proxy", int, 150, 1, 100_000)
    from ..accuracy.proxies import PROXIES, SCORES, needed_for

    proxy["score"] = _scalar(doc, pr, "score", "proxy", str, "macs", allowed=SCORES)
    if proxy["proxies"] is not None:
        if not (isinstance(proxy["proxies"], list) and all(isinstance(x, str) for x in proxy["proxies"])):
            raise doc.error("proxy.proxies", "must be a list of proxy names")
        for i, n in enumerate(proxy["proxies"]):
            if n not in PROXIES:
                raise doc.error(f"proxy.proxies[{i}]", f"unknown proxy {n!r}; choose from {', '.join(PROXIES)}")
        missing = [n for n in needed_for(proxy["score"]) if n not in proxy["proxies"]]
        if missing:
            raise doc.error("proxy.proxies", f"score {proxy['score']!r} needs {', '.join(missing)}")

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
    check_keys(doc, g, ("mode", "weight", "max_penalty", "settings"), "guidelines")
    guidelines = {
        "mode": _scalar(doc, g, "mode", "guidelines", str, "penalize", allowed=GUIDELINE_MODES),
        "weight": _scalar(doc, g, "weight", "guidelines", float, 30.0, 0, 1000),
        "max_penalty": _scalar(doc, g, "max_penalty", "guidelines", float, 0.5, 0, 1),
        "settings": _mapping(doc, g.get("settings"), "guidelines.settings"),
    }
    if guidelines["settings"]:
        try:
            from ..guidelines.checks import GuidelineSettings
        except ImportError:  # pragma: no cover - guidelines module always ships
            pass
        else:
            try:
                GuidelineSettings.from_dict(guidelines["settings"])
            except UserError as e:
                raise doc.error("guidelines.settings", str(e)) from None

    sm = d.get("sampler", "tpe")
    sm = {"name": sm} if isinstance(sm, str) else _mapping(doc, sm, "sampler")
    check_keys(doc, sm, ("name", "n_startup_trials", "population_size"), "sampler")
    sampler = {
        "name": _scalar(doc, sm, "name", "sampler", str, "tpe", allowed=SAMPLERS),
        "n_startup_trials": _scalar(doc, sm, "n_startup_trials", "sampler", int, 10, 0, 10_000),
        "population_size": _scalar(doc, sm, "population_size", "sampler", int, 20, 2, 10_000),
    }

    space = SearchSpace(
        name=name, path=doc.source, seed=seed, target=target, proxy=proxy,
        stem_channels=stem_channels, stem_stride=stem_stride, stem_pool=stem_pool,
        stages=stages, head=head, objectives=objectives, constraints=constraints,
        guidelines=guidelines, sampler=sampler, baselines=[],
        raw={"name": name, "seed": seed, "target": target, "proxy": proxy, "space": sp,
             "objectives": objectives, "constraints": constraints, "guidelines": guidelines,
             "sampler": sampler},
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
    return space


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; errors name the YAML path and line."""
    return parse_space(load_yaml(path))
