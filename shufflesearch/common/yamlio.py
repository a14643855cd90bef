"""Safe YAML loading that remembers where every value came from, so that errors can name
both the path (``space.stages[2].width``) and the line of the file."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError


class Located:
    """A parsed YAML document plus a map from dotted path to 1-based line number."""

    def __init__(self, data: Any, lines: dict[str, int], source: str) -> None:
        self.data = data
        self.lines = lines
        self.source = source

    def where(self, path: str) -> str:
        """``file:line`` of ``path``, or of its nearest ancestor that has a line."""
        while path and path not in self.lines:
            path = path[: path.rindex("[")] if path.endswith("]") else path.rpartition(".")[0]
        line = self.lines.get(path)
        return f"{self.source}:{line}" if line else self.source

    def error(self, path: str, msg: str) -> UserError:
        return UserError(f"{self.where(path)}: {path}: {msg}")


def _walk(node: yaml.Node, path: str, lines: dict[str, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k, v in node.value:
            key = yaml.safe_load(yaml.serialize(k)) if not isinstance(k, yaml.ScalarNode) else k.value
            sub = f"{path}.{key}" if path else str(key)
            lines[sub] = k.start_mark.line + 1
            out[key] = _walk(v, sub, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, f"{path}[{i}]", lines) for i, v in enumerate(node.value)]
    return None  # scalars are re-read below with the safe constructor


def read_text(path: str | Path) -> str:
    """A text file's contents; missing, unreadable, binary, non-UTF-8 or empty is a UserError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if b"\0" in raw:
        raise UserError(f"{path}: binary file, expected text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty")
    return text


def load_yaml(path: str | Path) -> Located:
    """Load a YAML file safely; a syntax error, an empty or binary file is a UserError."""
    path = Path(path)
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        at = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{at}: not valid YAML: {problem}") from None
    if data is None and node is None:  # only comments or document markers
        raise UserError(f"{path}: the file is empty (no YAML content)")
    lines: dict[str, int] = {}
    if node is not None:
        _walk(node, "", lines)
    return Located(data, lines, str(path))


def check_keys(doc: Located, d: Mapping[str, Any], allowed: Iterable[str], path: str) -> None:
    """Unknown keys are errors, with a did-you-mean suggestion."""
    allowed = list(allowed)
    for k in d:
        if k not in allowed:
            hint = difflib.get_close_matches(str(k), allowed, n=1)
            dym = f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(allowed)})"
            sub = f"{path}.{k}" if path else str(k)
            raise doc.error(sub, f"unknown key{dym}")
