"""Settings declared once: a dataclass field carries its type (the annotation), its default,
its rule (a range, the allowed values, a further check, the error text) and a one-line
description, written with ``setting(...)``. ``check_settings`` applies every rule of a model
(its ``__post_init__`` calls it, so a model built in code is checked as one read from a file);
``check_value`` checks one value. Knows no file format: the search-space reader
(search/config.py) names the fields as a file writes them and adds the file and line.

The types a setting may have: bool, int, float (an int is accepted and kept as written), str,
``X | None``, ``tuple[X, ...]`` (a list), ``dict[str, X]``, a nested settings dataclass, and a
generic dataclass ``C[X]`` whose ``choices`` hold X values (the search's Dim). A range or a set
of allowed values applies to every item of a tuple, a dict or a Dim.

Why dataclass field metadata and not Pydantic. The models the stages use are plain frozen
dataclasses that key caches (``TargetSpec.key`` hashes ``asdict``) and that model and measure
code builds directly; they stay so, free of a validation library. The errors are the
project's own, one line each with the rule in words (``v2.yaml:12: proxy.batch: 1 is out of
range [2, 4096]``) and a did-you-mean for unknown keys: Pydantic's messages, its error
locations and its lax coercions ("5" to 5, 1.0 to 1, True to 1) would each need undoing field
by field. And a run's fingerprint hashes numbers as the file wrote them (``max_seconds: 1``
stays 1, as it always has), which a converting validator loses. What Pydantic would add (JSON
Schema, error locations) is a few lines here: ``yaml_reference`` and the reader's paths.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UserError


class SettingError(UserError):
    """A setting that breaks its rule. ``field`` (``rungs[1]``, ``weights.G9``) and ``rule``
    (what is wrong) are kept apart so that a reader can name the field as its file writes it."""

    def __init__(self, field: str, rule: str, owner: str = "") -> None:
        super().__init__(rule, field=field, owner=owner)


@dataclass(frozen=True)
class Rule:
    doc: str  # one line: what the setting does (the YAML reference prints it)
    lo: float | None = None  # smallest allowed value (of every item, for a tuple or dict)
    hi: float | None = None  # largest allowed value
    choices: tuple[Any, ...] | None = None  # the allowed values
    says: str | None = None  # the error for a value outside choices: {value!r}, {choices}
    # A rule over the whole value: what is wrong, or (where inside it, e.g. "[2]", what is wrong).
    check: Callable[[Any], str | tuple[str, str] | None] | None = None
    flat: bool = False  # a nested settings model whose keys sit beside this model's own


NO_RULE = Rule("")


def setting(default: Any = dataclasses.MISSING, *, doc: str, lo: float | None = None,
            hi: float | None = None, choices: tuple[Any, ...] | None = None, says: str | None = None,
            check: Callable[[Any], Any] | None = None, factory: Any = dataclasses.MISSING,
            flat: bool = False) -> Any:
    """A dataclass field with its rule; ``factory`` in place of a mutable default."""
    return dataclasses.field(default=default, default_factory=factory,
                             metadata={"rule": Rule(doc, lo, hi, choices, says, check, flat)})


def rule_of(f: dataclasses.Field) -> Rule:
    return f.metadata.get("rule", NO_RULE)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of a dataclass."""
    return typing.get_type_hints(cls)


def optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` → (X, True); any other type → (it, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def type_name(tp: Any) -> str:
    """How the YAML reference names a type."""
    tp, opt = optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        name = f"list of {type_name(args[0])}"
    elif origin is dict:
        name = f"mapping of {type_name(args[1])}"
    elif dataclasses.is_dataclass(tp):
        name = "mapping"
    else:
        name = {bool: "bool", int: "int", float: "number", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))
    return f"{name} or null" if opt else name


def allowed_text(rule: Rule) -> str:
    """A rule's range or allowed values in words (errors and the YAML reference)."""
    if rule.choices is not None:
        return ", ".join(map(str, rule.choices))
    if rule.lo is not None and rule.hi is not None:
        return f"[{rule.lo}, {rule.hi}]"
    if rule.lo is not None:
        return f">= {rule.lo}"
    return "" if rule.hi is None else f"<= {rule.hi}"


def _kind_error(tp: Any, v: Any) -> str | None:
    if tp is bool:
        return None if isinstance(v, bool) else f"must be true or false, got {v!r}"
    if tp is int:
        return None if isinstance(v, int) and not isinstance(v, bool) else f"must be an integer, got {v!r}"
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"must be a number, got {v!r}"
        return None if math.isfinite(v) else f"must be a finite number, got {v!r}"
    if tp is str:
        return None if isinstance(v, str) else f"must be a string, got {v!r}"
    return None


def _scalar(tp: Any, rule: Rule, v: Any, at: str) -> Any:
    if rule.choices is not None and not (v in rule.choices and _kind_error(tp, v) is None):
        choices = ", ".join(map(str, rule.choices))
        raise SettingError(at, (rule.says or "must be one of {choices}, got {value!r}")
                           .format(value=v, choices=choices))
    msg = _kind_error(tp, v)
    if msg is None and (rule.lo is not None and v < rule.lo or rule.hi is not None and v > rule.hi):
        rng = allowed_text(rule)
        msg = f"{v} is out of range {rng if rng.startswith('[') else f'({rng})'}"
    if msg:
        raise SettingError(at, msg)
    return v


def check_value(tp: Any, rule: Rule, v: Any, at: str = "") -> Any:
    """``v`` checked against the type ``tp`` and ``rule``; returned as the type holds it (a list
    as a tuple). Raises SettingError naming ``at`` (plus ``[i]`` or ``.key`` inside)."""
    tp, opt = optional(tp)
    if v is None and opt:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    item = dataclasses.replace(rule, check=None)
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise SettingError(at, f"must be a list, got {v!r}")
        v = tuple(check_value(args[0], item, x, f"{at}[{i}]") for i, x in enumerate(v))
    elif origin is dict:
        if not isinstance(v, Mapping):
            raise SettingError(at, f"must be a mapping, got {v!r}")
        v = {k: check_value(args[1], item, x, f"{at}.{k}") for k, x in v.items()}
    elif dataclasses.is_dataclass(origin):  # a searchable value, Dim[X]: each choice an X
        for i, x in enumerate(v.choices):
            check_value(args[0], item, x, f"{at}[{i}]")
    elif dataclasses.is_dataclass(tp):
        if not isinstance(v, tp):
            raise SettingError(at, f"must be a mapping, got {v!r}")
    elif tp in (bool, int, float, str):
        v = _scalar(tp, rule, v, at)
    msg = rule.check(v) if rule.check else None
    if isinstance(msg, tuple):  # (where inside the value, what is wrong)
        raise SettingError(at + msg[0], msg[1])
    if msg:
        raise SettingError(at, msg)
    return v


def check_settings(obj: Any) -> None:
    """Check every field of a settings dataclass against its rule (lists become tuples);
    the first field that breaks one raises SettingError naming the class and the field."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        if "rule" not in f.metadata:
            continue
        v = getattr(obj, f.name)
        try:
            got = check_value(hints[f.name], rule_of(f), v, f.name)
        except SettingError as e:
            raise SettingError(e.field, e.rule, type(obj).__name__) from None
        if got is not v:
            object.__setattr__(obj, f.name, got)  # frozen models too: the checked form
