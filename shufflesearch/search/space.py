"""Search-space YAML → SearchSpace (its sections typed by config.py, read by reader.py);
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
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from ..common.yamlio import Located, load_yaml
from ..model.arch import PRESETS, Arch, ArchError, Stage, Stem

# The typed sections live in config.py; re-exported here, where callers look.
from .config import (
    CONSTRAINTS,
    GUIDELINE_MODES,
    OBJECTIVES,
    SAMPLERS,
    Dim,
    GuidelineConfig,
    ProxySettings,
    SamplerSettings,
    SpaceConfig,
    StageSpace,
    TargetOptions,
)
from .reader import read_space_config, resolved_config

__all__ = ["CONSTRAINTS", "GUIDELINE_MODES", "OBJECTIVES", "SAMPLERS", "Dim", "GuidelineConfig",
           "ProxySettings", "SamplerSettings", "SearchSpace", "StageSpace", "TargetOptions",
           "load_space", "parse_space"]


def _section(attrs: str) -> Any:
    """A read-only attribute of the space: ``attrs`` (dotted) of its config."""
    get = operator.attrgetter(attrs)
    return property(lambda self: get(self.config))


@dataclass
class SearchSpace:
    """A space file read: its typed config, the sampling over it, and its identity."""

    config: SpaceConfig  # the file, one typed model per section (config.py)
    path: str  # the file it was read from
    given: frozenset[str] = frozenset()  # the YAML paths the file gave (reader.py)

    # The sections under the names the pipeline reads them by.
    name = _section("name")
    seed = _section("seed")
    target = _section("target.spec")  # what latency is measured on (TargetSpec)
    target_options = _section("target")  # num_classes, max_seconds, prefilter
    data = _section("proxy.data")  # the proxy task (DataSpec)
    proxy = _section("proxy")  # how the proxy task scores (ProxySettings)
    stem_channels = _section("space.stem.channels")
    stem_stride = _section("space.stem.stride")
    stem_pool = _section("space.stem.pool")
    stages = _section("space.stages")  # tuple of StageSpace
    head = _section("space.head")
    guidelines = _section("guidelines")
    sampler = _section("sampler")
    # The fidelity ladder (accuracy from training, accuracy/fidelity.py); None: `fidelity:
    # none` (or no `fidelity:` key), the zero-cost search of rung 0 only.
    fidelity = _section("fidelity")

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """(name, direction) of every objective, in order."""
        return [(o.name, o.direction) for o in self.config.objectives]

    @property
    def constraints(self) -> dict[str, float]:
        return self.config.constraints.as_dict()

    @property
    def baselines(self) -> list[str]:
        return list(self.config.baselines or ())

    @property
    def num_classes(self) -> int:
        return self.target_options.num_classes

    # --- identity -------------------------------------------------------------------------
    @property
    def raw(self) -> dict[str, Any]:
        """The resolved config as YAML data (the run's config.yaml), from the typed config."""
        return resolved_config(self.config, self.given)

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


def parse_space(doc: Located) -> SearchSpace:
    """A parsed space file → SearchSpace. reader.py reads every section into its typed model,
    so an error names the key's YAML path, its line and the rule it breaks."""
    config, given = read_space_config(doc)
    space = SearchSpace(config, doc.source, given)
    if config.baselines is None:  # auto: every preset the space can produce
        auto = tuple(n for n, a in PRESETS.items() if space.contains(a))
        space.config = dataclasses.replace(config, baselines=auto)
    return space


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file; errors name the YAML path and line."""
    return parse_space(load_yaml(path))
