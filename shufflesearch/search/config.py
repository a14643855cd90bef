"""The typed settings of a search-space file and the readers of its values.

Each settings section of the YAML is one frozen dataclass; its field defaults are the defaults
of the YAML keys (written nowhere else). A section's rules (type, range, allowed values) sit in
a table here; ``_section`` reads a whole section by its table, ``_scalar`` one key, ``_dim`` a
searchable value. space.py assembles a SearchSpace from them (and from the ``space:`` block).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from ..accuracy.fidelity import FidelitySettings
from ..accuracy.proxies import SCORES
from ..common.yamlio import Located, check_keys
from ..errors import UserError
from ..guidelines.checks import GuidelineSettings
from ..measure.target import BACKENDS

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
            step = self.choices[1] - self.choices[0]
            return trial.suggest_int(name, lo, hi, step=step)
        return trial.suggest_categorical(name, list(self.choices))



# --- typed settings: each section of the YAML is one frozen dataclass; its field defaults are
# the defaults of the YAML keys (written nowhere else). A section's rules (type, range, allowed
# values) sit in a table beside it in the parsing code below.


@dataclass(frozen=True)
class TargetOptions:
    """The `target:` keys that are not part of the measured target (TargetSpec): the
    classifier size, the per-figure time cap and the latency pre-filter."""

    num_classes: int = 1000
    max_seconds: float = 1.0  # time cap per latency measurement
    # > 0: skip measuring architectures the latency predictor puts above the latency_ms
    # constraint by more than this fraction (needs `shufflesearch latency build-table`)
    prefilter: float = 0.0


@dataclass(frozen=True)
class ProxySettings:
    """The `proxy:` keys that say how an architecture is scored (the data is a DataSpec)."""

    score: str = "macs"  # accuracy.proxies.SCORES
    proxies: tuple[str, ...] | None = None  # computed proxies; None: the default set
    # Multi-fidelity: at the end of a run, short-train the baselines and k points spread along
    # the front, and store the accuracies with the run (pareto shows them).
    short_train_top_k: int = 0
    short_train_steps: int = 150


@dataclass(frozen=True)
class GuidelineConfig:
    """The `guidelines:` section: how guideline penalties enter the search."""

    mode: str = "penalize"  # GUIDELINE_MODES
    weight: float = 30.0  # penalize: score units per unit of combined penalty
    max_penalty: float = 0.5  # constrain: the largest combined penalty allowed
    settings: GuidelineSettings = field(default_factory=GuidelineSettings)


@dataclass(frozen=True)
class SamplerSettings:
    name: str = "tpe"  # SAMPLERS
    n_startup_trials: int = 10
    population_size: int = 20



# One rule per YAML key of a settings section: (type, low, high, allowed values). The default
# of a key is the field default of the dataclass it fills (``_defaults``), written nowhere else.
Rule = tuple[type, float | None, float | None, tuple | None]
_TARGET_RULES: dict[str, Rule] = {  # fills TargetSpec and TargetOptions, in YAML check order
    "resolution": (int, 8, 4096, None),
    "batch": (int, 1, 4096, None),
    "threads": (int, 1, 256, None),
    "num_classes": (int, 1, 1_000_000, None),
    "backend": (str, None, None, BACKENDS),
    "channels_last": (bool, None, None, None),
    "max_seconds": (float, 0.05, 600, None),
    "prefilter": (float, 0.0, 10.0, None),
}
# Where a search space's default differs from TargetSpec's (a bare TargetSpec stays NCHW for the
# library's callers): a space times and exports NHWC unless it says otherwise, the format the
# inference form runs fastest in on oneDNN CPUs (README, Search spaces: channels_last).
_TARGET_SPACE_DEFAULTS: dict[str, Any] = {"channels_last": True}
_PROXY_RULES: dict[str, Rule] = {  # fills DataSpec (`dataset` is its `name`) and ProxySettings
    "dataset": (str, None, None, None),
    "resolution": (int, 8, 1024, None),
    "batch": (int, 2, 4096, None),
    "short_train_top_k": (int, 0, 100, None),
    "short_train_steps": (int, 1, 100_000, None),
    "score": (str, None, None, SCORES),
}
_PROXY_KEYS = ("dataset", "resolution", "batch", "proxies", "score", "short_train_top_k", "short_train_steps")
# proxy.val_fraction (DataSpec.val_fraction): read apart from _PROXY_RULES, and kept in the
# resolved config only when set, so that spaces without it keep their fingerprint.
VAL_FRACTION_RULE: Rule = (float, 0.05, 0.95, None)
_GUIDELINE_RULES: dict[str, Rule] = {
    "mode": (str, None, None, GUIDELINE_MODES),
    "weight": (float, 0, 1000, None),
    "max_penalty": (float, 0, 1, None),
}
_SAMPLER_RULES: dict[str, Rule] = {
    "name": (str, None, None, SAMPLERS),
    "n_startup_trials": (int, 0, 10_000, None),
    "population_size": (int, 2, 10_000, None),
}


def _defaults(*classes: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
    return out


def _section(doc: Located, d: dict, path: str, rules: dict[str, Rule], defaults: dict[str, Any]) -> dict[str, Any]:
    """Every key of one section, read and checked by its rule; absent keys take their default."""
    return {k: _scalar(doc, d, k, path, kind, defaults[k], lo, hi, allowed)
            for k, (kind, lo, hi, allowed) in rules.items()}


def _fields(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


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



def parse_fidelity(doc: Located, d: dict[str, Any]) -> FidelitySettings | None:
    """The ``fidelity:`` section. No key at all, or ``none``: the zero-cost search (rung 0
    only), so a space file written before the ladder searches as it did; ``{}`` takes every
    default of FidelitySettings; a mapping overrides them key by key. The shipped spaces set
    it explicitly."""
    if "fidelity" not in d:
        return None
    v = d["fidelity"]
    try:
        return FidelitySettings.from_dict({} if v is None else v, "fidelity")
    except UserError as e:
        raise UserError(f"{doc.where('fidelity')}: {e}") from None
