"""The one YAML reader of the package: safe loading, one-line errors that name the file and
line, a guard against alias bombs, and (``load_yaml``) a map from every value's path
(``space.stages[2].width``) to its line, so that later errors can name both.

Alias bombs ("billion laughs"): PyYAML shares an aliased node instead of copying it, so a few
hundred bytes can stand for 10^9 values, and whatever walks the data afterwards (validation,
the line map, JSON output) hangs. The composed node graph is measured before anything is
built from it: more than ``MAX_NODES`` nodes once aliases are expanded, or an alias that
contains itself, is refused.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError, first_line

# Expanded YAML nodes one file may hold. A search space or an arch file has a few hundred; a
# validation set of 1000 archs about 40k.
MAX_NODES = 200_000


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
        where = self.where(path)
        return UserError(f"{where}: {path}: {msg}" if where else f"{path}: {msg}")


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


def _expanded_size(root: yaml.Node, source: str) -> int:
    """Nodes in the document once every alias is expanded (memoised, so this costs one visit
    per distinct node); a UserError past ``MAX_NODES`` or on an alias inside itself."""
    memo: dict[int, int] = {}
    open_: set[int] = set()

    def size(n: yaml.Node) -> int:
        k = id(n)
        if k in memo:
            return memo[k]
        if k in open_:
            raise UserError(f"{source}:{n.start_mark.line + 1}: not valid YAML: an alias refers to "
                            "the node that contains it (recursive data)")
        open_.add(k)
        if isinstance(n, yaml.MappingNode):
            s = 1 + sum(size(a) + size(b) for a, b in n.value)
        elif isinstance(n, yaml.SequenceNode):
            s = 1 + sum(size(c) for c in n.value)
        else:
            s = 1
        open_.discard(k)
        if s > MAX_NODES:
            raise UserError(f"{source}:{n.start_mark.line + 1}: not valid YAML: aliases expand to more "
                            f"than {MAX_NODES:,} values (an alias bomb?); refused")
        memo[k] = s
        return s

    try:
        return size(root)
    except RecursionError:
        raise UserError(f"{source}: not valid YAML: nested too deeply") from None


def _parse(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """The document's data and its node graph; every failure is a one-line UserError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _expanded_size(node, source)
        return loader.construct_document(node), node
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or first_line(e)
        at = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{source}{at}: not valid YAML: {problem}") from None
    except RecursionError:
        raise UserError(f"{source}: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str = "<yaml>") -> Any:
    """YAML text to plain data (None when it holds no document), under the same rules and
    error messages as the files: ``source`` names the text in errors."""
    return _parse(text, source)[0]


def read_yaml(path: str | Path) -> Any:
    """A YAML file's data, without the line map; empty, binary or malformed is a UserError."""
    return load_yaml(path).data


def load_yaml(path: str | Path) -> Located:
    """Load a YAML file safely; a syntax error, an alias bomb, an empty or binary file is a
    UserError."""
    path = Path(path)
    data, node = _parse(read_text(path), str(path))
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
