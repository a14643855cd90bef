"""The one reader of a search-space file: its YAML sections into the typed models of
config.py, and the resolved config written back from them (the run's config.yaml, whose hash
is the run's fingerprint).

The models drive it. A section takes its model's keys (``config.entries``), so an unknown
key is refused with a did-you-mean; every value is checked by its field's rule as the model
is built (common/settings.py), and the reader turns the field the model names into the YAML
path and line: ``v2.yaml:12: proxy.batch: 1 is out of range [2, 4096]``. Searchable values
(Dim) are read here: one value, a list of choices, or a range ``{low, high, step}``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.settings import Rule, SettingError, check_value, field_types, optional, rule_of
from ..common.yamlio import Located, check_keys
from ..errors import UserError
from .config import (
    ALIASES,
    LISTED,
    OMIT_NONE,
    SHORTHANDS,
    SPACE_DEFAULTS,
    SPELLINGS,
    WRITTEN_AS,
    Dim,
    SpaceConfig,
    entries,
    join,
    model_of,
    own_keys,
)

MAX_RANGE = 100_000  # values one {low, high, step} range may hold


@dataclass
class _Reading:
    """One pass over a document: where its lines are, and which paths it gave."""

    doc: Located
    given: set[str] = field(default_factory=set)

    def error(self, path: str, msg: str) -> UserError:
        return self.doc.error(path, msg)


def read_space_config(doc: Located) -> tuple[SpaceConfig, frozenset[str]]:
    """A space file's sections, typed, and the YAML paths the file gave."""
    if not isinstance(doc.data, dict):
        raise UserError(f"{doc.source}: a search space must be a YAML mapping, got {type(doc.data).__name__}")
    r = _Reading(doc)
    cfg = _read(r, SpaceConfig, doc.data, "")
    data = dataclasses.replace(cfg.proxy.data, seed=cfg.seed)  # the file's seed seeds the split
    cfg = dataclasses.replace(cfg, name=cfg.name or Path(doc.source).stem,
                              proxy=dataclasses.replace(cfg.proxy, data=data))
    return cfg, frozenset(r.given)


def read_section(path: str, value: Any, source: str = "") -> Any:
    """One section of a space file (``proxy``, ``fidelity``, ``guidelines.settings``, ...)
    read from ``value`` alone, e.g. the same block of another file; errors name ``source``
    and the key's path in a space file."""
    cls: Any = SpaceConfig
    for key in path.split("."):
        e = entries(cls)[key]
        cls = model_of(e.type)[0]
    return _value(_Reading(Located(value, {}, source)), e.type, e.field, value, path)


def _read(r: _Reading, cls: type, v: Any, path: str) -> Any:
    """A mapping at ``path`` (or a bare value, where the model has a shorthand) → ``cls``."""
    named = SHORTHANDS.get(cls)
    if named and isinstance(v, (str, int, float)):  # `sampler: nsga2`
        v = {named: v}
    else:
        named = None
    if v is None:  # `guidelines:` alone: every default
        v = {}
    if not isinstance(v, dict):
        raise r.error(path, f"must be a mapping, got {v!r}")
    check_keys(r.doc, v, entries(cls), path)
    return _build(r, cls, v, path, named)


def _build(r: _Reading, cls: type, data: dict, path: str, named: str | None = None) -> Any:
    """The model from its section's keys; a rule the model reports broken is named by the
    key's path (``named``: the field a bare value filled, named by the value's own path)."""
    values: dict[str, Any] = {}
    hints = field_types(cls)
    for f, key in own_keys(cls):
        if key is None:
            values[f.name] = _build(r, hints[f.name], data, path)
            continue
        p = join(path, key)
        if key in data:
            r.given.add(p)
            values[f.name] = _value(r, hints[f.name], f, data[key], p)
        elif p in SPACE_DEFAULTS:
            values[f.name] = SPACE_DEFAULTS[p]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise r.error(p, f"required ({rule_of(f).doc})")
        elif model_of(hints[f.name]) == (hints[f.name], False):  # a section left out: its
            values[f.name] = _build(r, hints[f.name], {}, p)  # defaults, the file's included
    try:
        return cls(**values)
    except SettingError as e:
        head = re.match(r"\w*", e.field).group()  # type: ignore[union-attr]
        at = path if head in ("", named) else join(path, ALIASES.get((cls, head), head)) + e.field[len(head):]
        raise r.error(at, e.rule) from None


def _value(r: _Reading, tp: Any, f: dataclasses.Field, v: Any, p: str) -> Any:
    """One key's value in the form its model takes (the model checks it against its rule)."""
    if p in SPELLINGS:
        try:
            v = SPELLINGS[p](v)
        except SettingError as e:
            raise r.error(p, e.rule) from None
    inner, opt = optional(tp)
    if v is None and opt:
        return None
    sub, many = model_of(tp)
    if sub is not None and not many:
        return _read(r, sub, v, p)
    if sub is not None:
        if not isinstance(v, list):
            raise r.error(p, f"must be a list, got {v!r}")
        return tuple(_read(r, sub, x, f"{p}[{i}]") for i, x in enumerate(v))
    if typing.get_origin(inner) is Dim:
        return read_dim(r.doc, v, p, typing.get_args(inner)[0], rule_of(f))
    if typing.get_origin(inner) is dict and isinstance(v, dict) and f.default_factory is not dataclasses.MISSING:
        base = f.default_factory()  # a mapping overrides the default's entries one by one
        check_keys(r.doc, v, base, p)
        r.given.update(f"{p}.{k}" for k in v)
        return {**base, **v}
    return v


def read_dim(doc: Located, v: Any, p: str, kind: type, rule: Rule) -> Dim:
    """A searchable value: a scalar, a list of choices, or {low, high, step} (integers)."""

    def check(x: Any, at: str) -> Any:
        try:
            return check_value(kind, rule, x, at)
        except SettingError as e:
            raise doc.error(e.field, e.rule) from None

    if isinstance(v, dict):
        check_keys(doc, v, ("low", "high", "step"), p)
        if kind is not int or rule.choices is not None:
            raise doc.error(p, "a range {low, high, step} is only for integers; give a list")
        for k in ("low", "high"):
            if k not in v:
                raise doc.error(f"{p}.{k}", "required in a range")
        low, high = check(v["low"], f"{p}.low"), check(v["high"], f"{p}.high")
        step = v.get("step", 1)
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise doc.error(f"{p}.step", f"must be a positive integer, got {step!r}")
        if high < low:
            raise doc.error(p, f"high ({high}) is below low ({low})")
        if (high - low) // step > MAX_RANGE:
            raise doc.error(p, f"range has more than {MAX_RANGE} values; raise the step")
        vals = tuple(range(low, high + 1, step))
        return Dim(vals, is_range=len(vals) > 1, written=v)
    if isinstance(v, list):
        if not v:
            raise doc.error(p, "an empty list of choices")
        vals = tuple(check(x, f"{p}[{i}]") for i, x in enumerate(v))
        if len(set(vals)) != len(vals):
            raise doc.error(p, "repeats a choice")
        return Dim(vals, written=v)
    return Dim((check(v, p),), written=v)


# --- the resolved config -----------------------------------------------------------------


def resolved_config(cfg: SpaceConfig, given: frozenset[str]) -> dict[str, Any]:
    """The space as YAML data: every key the file gave, as it gave it, and every key LISTED
    with its value. The run folder keeps it (config.yaml, read back to the same space) and
    the run's fingerprint hashes it."""
    return _written(cfg, "", given)


def _written(obj: Any, path: str, given: frozenset[str]) -> dict[str, Any]:
    out = {}
    for key, e in entries(type(obj)).items():
        p = join(path, key)
        v = functools.reduce(getattr, e.attrs, obj)
        if (p in LISTED or p in given) and not (v is None and p in OMIT_NONE):
            out[key] = _as_written(v, p, given)
    return out


def _as_written(v: Any, p: str, given: frozenset[str]) -> Any:
    if isinstance(v, Dim):
        return v.written
    if type(v) in WRITTEN_AS:
        return WRITTEN_AS[type(v)](v)
    if dataclasses.is_dataclass(v):
        return _written(v, p, given)
    if isinstance(v, tuple):
        return [_as_written(x, f"{p}[{i}]", given) for i, x in enumerate(v)]
    if isinstance(v, dict):
        return {k: x for k, x in v.items() if f"{p}.{k}" in given or f"{p}.{k}" in LISTED}
    return v
