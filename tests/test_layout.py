"""The package's layout rules, read off its import graph (ast, every import statement,
function-level and TYPE_CHECKING ones included).

The order of the stages, each importing only from itself and the stages before it:
    common < model < measure < guidelines < accuracy < search < review < cli
(errors.py and the package's __init__.py sit outside the order; nothing imports review or cli).

Below the import rules, read off the source the same way: one door to the run's storage, every
module imported by a test and every test file in its stage's folder, private names kept in
their module, no function over 80 lines, no exception text cut into lines. Each checker has a
guard test that runs it over a small source breaking its rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "shufflesearch"
ORDER = ("common", "model", "measure", "guidelines", "accuracy", "search", "review", "cli")
EXEMPT = {"errors", "__init__"}  # the exception type and the public API's lazy re-exports
MAX_LINES = 450
# Heavy optional packages a function may import where it uses them, so that `import
# shufflesearch` (and every command that does not need them) stays light.
HEAVY = {"onnx", "onnxruntime", "onnxscript", "matplotlib", "optuna", "sklearn", "PIL", "scipy",
         "psycopg2", "executorch"}
LAZY_MARK = "# lazy:"


def _modules() -> dict[str, Path]:
    """Dotted name (relative to the package, e.g. ``model.arch``) -> file."""
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = f.relative_to(PKG).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _stage(mod: str) -> str:
    return mod.split(".")[0]


def _resolve(mod: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The package-internal modules an import statement names (dotted, package-relative)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n.removeprefix("shufflesearch.") for n in names
                if n == "shufflesearch" or n.startswith("shufflesearch.")]
    if node.level == 0:
        if not (node.module or "").startswith("shufflesearch"):
            return []
        base = (node.module or "").removeprefix("shufflesearch").lstrip(".")
    else:
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        if path.name == "__init__.py" and mod == "__init__":
            here = []
        up = here[: len(here) - (node.level - 1)] if node.level > 1 else here
        base = ".".join([*up, *([node.module] if node.module else [])])
    out = []
    for a in node.names:
        sub = f"{base}.{a.name}" if base else a.name
        out.append(sub if sub in MODULES else base)  # `from .x import y`: y a module or a name
    return [o for o in out if o]


def _imports(mod: str, source: str | None = None) -> list[tuple[str, int, bool, ast.AST]]:
    """(target module, line, function-level?, node) for every import in ``mod`` (its file, or
    ``source`` in its place)."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text() if source is None else source)
    out = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in _resolve(mod, path, child):
                    out.append((t, child.lineno, in_func, child))
                if in_func:
                    out.append(("<any>", child.lineno, in_func, child))
            visit(child, in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return out


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for t, *_ in _imports(m):
            if t in MODULES and t != m:
                g[m].add(t)
    return g


def _owned(stage: str) -> list[str]:
    return [m for m in MODULES if _stage(m) == stage]


def test_the_layout_is_readable() -> None:
    assert set(ORDER) <= {_stage(m) for m in MODULES}, "a stage of the order is missing"
    unknown = {_stage(m) for m in MODULES} - set(ORDER) - EXEMPT
    assert not unknown, f"modules outside the stage order: {sorted(unknown)}"


def test_no_import_cycles() -> None:
    g = _graph()
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(g[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            dfs(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("stage", ORDER)
def test_imports_point_down(stage: str) -> None:
    bad = []
    for m in _owned(stage):
        for t, line, _, _ in _imports(m):
            if t not in MODULES or _stage(t) in EXEMPT:
                continue
            ts = _stage(t)
            # review and cli close the order, so "nothing imports review or cli" (but cli, which
            # sits above review) follows from it.
            if ORDER.index(ts) > ORDER.index(stage):
                bad.append(f"{m}:{line} imports {t} ({ts} sits above {stage})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("stage", ORDER)
def test_modules_are_short(stage: str) -> None:
    long = {m: n for m in _owned(stage) if (n := len(MODULES[m].read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("stage", ORDER)
def test_every_package_says_what_it_owns_and_may_import(stage: str) -> None:
    init = PKG / stage / "__init__.py"
    assert init.exists(), f"{stage}/ is not a package"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "Owns" in doc, f"{stage}/__init__.py: the docstring must say what the package owns ('Owns ...')"
    assert "May import" in doc, f"{stage}/__init__.py: the docstring must say what it may import ('May import ...')"
    # The docstring's import rule must agree with the order enforced above.
    allowed = [s for s in ORDER[: ORDER.index(stage)]]
    rule = doc[doc.index("May import"):]
    for s in allowed:
        assert s in rule, f"{stage}/__init__.py: 'May import' does not mention {s}"


@pytest.mark.parametrize("stage", ORDER)
def test_function_level_imports_are_heavy_or_explained(stage: str) -> None:
    bad = []
    for m in _owned(stage):
        lines = MODULES[m].read_text().splitlines()
        for t, line, _, node in _imports(m):
            if t != "<any>":
                continue
            if isinstance(node, ast.Import):
                tops = {a.name.split(".")[0] for a in node.names}
            else:
                tops = {(node.module or "").split(".")[0]} if node.level == 0 else {"shufflesearch"}
            if tops <= HEAVY:
                continue
            # The reason may sit on the import line, or on the comment line just above it.
            near = lines[line - 1] + (lines[line - 2] if line >= 2 else "")
            if LAZY_MARK not in near:
                bad.append(f"{m}:{line}: {lines[line - 1].strip()}")
    assert not bad, (f"function-level imports that are neither heavy optional packages ({sorted(HEAVY)}) "
                     f"nor explained with a '{LAZY_MARK} <why>' comment:\n" + "\n".join(bad))


def test_the_checker_sees_every_import() -> None:
    # Guard the checks above: imports inside functions, methods and TYPE_CHECKING blocks count.
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..search import space\n"
           "class A:\n    def f(self):\n        from ..review.pareto import pick_trial\n"
           "def g():\n    import numpy\n")
    found = {(t, in_func) for t, _, in_func, _ in _imports("model.arch", src)}
    assert ("search.space", False) in found and ("review.pareto", True) in found
    assert sum(in_func for t, _, in_func, _ in _imports("model.arch", src) if t == "<any>") == 2


# --- one door to the run's storage ------------------------------------------------------------
# Optuna's private API (a study's storage and id, a trial's storage id, the cache's backend) and
# every read or write of trial and study user attributes live in search/storage.py only.

DOOR = "search.storage"
PRIVATE = {"_storage", "_study_id", "_trial_id", "_backend", "_cached_frozen_trial", "_thread_local"}
USER_ATTRS = {"user_attrs", "set_user_attr", "set_trial_user_attr", "set_study_user_attr",
              "get_trial_user_attrs", "get_study_user_attrs"}


def _storage_uses(mod: str, source: str | None = None) -> list[str]:
    """``line: what`` for each use of Optuna's private API or of user attributes in ``mod``."""
    tree = ast.parse(MODULES[mod].read_text() if source is None else source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE | USER_ATTRS:
            out.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and any(
                part.startswith("_") for part in (node.module or "").split(".")[1:]) \
                and (node.module or "").startswith("optuna"):
            out.append(f"{node.lineno}: from {node.module} import ...")
    return out


def test_only_the_storage_door_touches_optunas_private_api_and_user_attributes() -> None:
    assert DOOR in MODULES, "search/storage.py is the storage door"
    bad = [f"{m}:{use}" for m in MODULES if m != DOOR for use in _storage_uses(m)]
    assert not bad, ("Optuna's private API or user attributes outside search/storage.py (go "
                     "through its functions):\n" + "\n".join(bad))


def test_the_door_checker_sees_every_use() -> None:
    src = ("import optuna\nfrom optuna.storages._cached_storage import _CachedStorage\n"
           "def f(study, t):\n    st = study._storage\n    n = t._trial_id\n"
           "    study.set_user_attr('x', 1)\n    return t.user_attrs.get('archid'), getattr(st, '_x', st)\n")
    found = {u.split(": ", 1)[1] for u in _storage_uses("model.arch", src)}
    assert found == {"from optuna.storages._cached_storage import ...", "._storage", "._trial_id",
                     ".set_user_attr", ".user_attrs"}, found


# --- every module is exercised by a test ------------------------------------------------------
# A test file that imports a module (``import shufflesearch.x.y``, ``from shufflesearch.x import
# y``, ``from shufflesearch.x.y import z``) counts for it; packages' __init__ and __main__ modules
# are exempt (they re-export or start what the other modules hold).

TESTS = PKG.parent / "tests"


def _test_imports(source: str) -> set[str]:
    """The package's modules (dotted, package-relative) a test file's source imports."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name.removeprefix("shufflesearch.") for a in node.names
                    if a.name.startswith("shufflesearch.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "shufflesearch" or node.module.startswith("shufflesearch.")):
            base = node.module.removeprefix("shufflesearch").lstrip(".")
            for a in node.names:
                sub = f"{base}.{a.name}" if base else a.name
                out.add(sub if sub in MODULES else base)
    return out - {""}


def _untested(test_sources: list[str]) -> list[str]:
    seen = set().union(*map(_test_imports, test_sources))
    return [m for m, f in MODULES.items() if f.name not in ("__init__.py", "__main__.py") and m not in seen]


def test_every_module_is_imported_by_a_test() -> None:
    untested = _untested([f.read_text() for f in sorted(TESTS.rglob("*.py"))])
    assert not untested, ("modules no test file imports (add a test that calls them and checks "
                          "the result):\n" + "\n".join(untested))


def test_the_test_import_checker_sees_every_form() -> None:
    src = ("import shufflesearch.search.ladder\nimport shufflesearch.common.stats as st\n"
           "from shufflesearch.review import bundle\nfrom shufflesearch.model.arch import Arch\n"
           "from shufflesearch import errors\ndef f():\n    from shufflesearch.common.files import prepare_out_dir\n"
           "import os.path\nfrom pathlib import Path\n")
    assert _test_imports(src) == {"search.ladder", "common.stats", "review.bundle", "model.arch", "errors",
                                  "common.files"}
    left = _untested([src])
    assert "search.objective" in left and "model.arch" not in left
    assert "model" not in left and "cli.__main__" not in left  # __init__ and __main__ are exempt


# --- the tests mirror the package ----------------------------------------------------------------
# A test file sits in the folder of the stage it tests (tests/search/test_ladder.py); only the
# checks that read the whole repository sit at the top.

TOP_LEVEL_TESTS = {"test_layout.py", "test_docs.py"}


def _misplaced(test_files: list[str]) -> list[str]:
    """The test files (paths relative to tests/) outside a stage folder, or in a folder that is
    no stage."""
    out = []
    for f in test_files:
        parts = f.split("/")
        if parts[-1].startswith("test_") and not (
                (len(parts) == 1 and parts[0] in TOP_LEVEL_TESTS) or (len(parts) == 2 and parts[0] in ORDER)):
            out.append(f)
    return out


def test_test_files_sit_in_the_folder_of_their_stage() -> None:
    files = [f.relative_to(TESTS).as_posix() for f in sorted(TESTS.rglob("test_*.py"))]
    bad = _misplaced(files)
    assert not bad, (f"test files outside tests/STAGE/ (STAGE one of {', '.join(ORDER)}):\n"
                     + "\n".join(bad))
    for d in {f.parent for f in TESTS.rglob("test_*.py")} | {TESTS}:
        assert (d / "__init__.py").exists(), f"{d.relative_to(TESTS.parent)} is not a package"


def test_the_mirror_checker_sees_a_misplaced_file() -> None:
    assert _misplaced(["test_layout.py", "search/test_ladder.py", "conftest.py", "search/helpers.py",
                       "test_ladder.py", "spaces/test_x.py", "search/deep/test_y.py"]) == [
        "test_ladder.py", "spaces/test_x.py", "search/deep/test_y.py"]


# --- names with a leading underscore stay in their module -------------------------------------
# `from .x import _name` (or `x._name` on an imported package module) reaches into another
# module's private parts. Where that is right after all, the import line says why with a
# `# private: <why>` comment; the package keeps at most MAX_PRIVATE of those.

PRIVATE_MARK = "# private:"
MAX_PRIVATE = 5
ALL_STAGES = (*ORDER, *sorted(EXEMPT))


def _rel(mod: str) -> str:
    """A module's file as the repository names it (shufflesearch/cli/__init__.py)."""
    return MODULES[mod].relative_to(PKG.parent).as_posix()


def _private_uses(mod: str, source: str | None = None) -> list[tuple[int, str, bool]]:
    """(line, name, explained?) for every private name of another package module that ``mod``
    imports or reads as a module attribute."""
    text = MODULES[mod].read_text() if source is None else source
    lines = text.splitlines()
    out = []
    modules: set[str] = set()  # local names bound to package modules

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    tree = ast.parse(text)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = _resolve(mod, MODULES[mod], node)
        if not targets:
            continue
        for a in node.names:
            local = a.asname or a.name.split(".")[0]
            if isinstance(node, ast.ImportFrom) and private(a.name):
                line = getattr(a, "lineno", node.lineno)
                out.append((line, a.name, PRIVATE_MARK in lines[line - 1]))
            elif any(t.endswith(a.name) for t in targets if t in MODULES):
                modules.add(local)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            out.append((node.lineno, f"{node.value.id}.{node.attr}", PRIVATE_MARK in lines[node.lineno - 1]))
    return sorted(out)


@pytest.mark.parametrize("stage", ALL_STAGES)
def test_private_names_stay_in_their_module(stage: str) -> None:
    bad = [f"{_rel(m)}:{line}: {name}" for m in _owned(stage) for line, name, ok in _private_uses(m) if not ok]
    assert not bad, ("private names used outside their module (make them public, or say why on the "
                     f"import line with '{PRIVATE_MARK} <why>'):\n" + "\n".join(bad))


def test_few_private_names_cross_modules() -> None:
    excused = [f"{_rel(m)}:{line}: {name}" for m in MODULES for line, name, ok in _private_uses(m) if ok]
    assert len(excused) <= MAX_PRIVATE, (f"more than {MAX_PRIVATE} private names cross modules, even "
                                         "with a reason:\n" + "\n".join(excused))


def test_the_private_name_checker_sees_every_form() -> None:
    src = ("from ..measure.protocol import estimate, _iqr\nfrom . import cost\n"
           "from .specs import (\n    unit_specs,\n    _widths,  # private: why\n)\n"
           "from ..common import stats as s\nimport torch\nfrom .graph import __doc__\n"
           "x = cost._node(1) + s._ok + torch._C + self._y\n")
    found = {(name, ok) for _, name, ok in _private_uses("model.arch", src)}
    assert found == {("_iqr", False), ("_widths", True), ("cost._node", False), ("s._ok", False)}, found


# --- an exception's text is not cut -------------------------------------------------------------
# `str(e).splitlines()[0]` (or .split("\n"), .partition("\n")) on a caught exception edits a
# message after it was raised; the raising site makes the message one line instead.

CUTS = {"splitlines", "split", "partition"}


def _cut_messages(source: str) -> list[int]:
    """Lines where an ``except ... as e`` body cuts the text of ``e`` into lines."""
    out = []
    for h in ast.walk(ast.parse(source)):
        if not (isinstance(h, ast.ExceptHandler) and h.name):
            continue
        for node in ast.walk(ast.Module(body=h.body, type_ignores=[])):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in CUTS):
                continue
            if node.func.attr != "splitlines" and not (
                    node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "\n"):
                continue
            if any(isinstance(n, ast.Name) and n.id == h.name for n in ast.walk(node.func.value)):
                out.append(node.lineno)
    return sorted(set(out))


@pytest.mark.parametrize("stage", ALL_STAGES)
def test_exception_messages_are_not_cut(stage: str) -> None:
    bad = [f"{_rel(m)}:{line}: {MODULES[m].read_text().splitlines()[line - 1].strip()}"
           for m in _owned(stage) for line in _cut_messages(MODULES[m].read_text())]
    assert not bad, ("an exception's text cut after it was raised (make the raising site's message "
                     "one line):\n" + "\n".join(bad))


def test_the_cut_checker_sees_every_form() -> None:
    src = ("try:\n    f()\nexcept OSError as e:\n    a = str(e).splitlines()[0]\n"
           "    b = e.args[0].split('\\n')[0]\n    c = f'{e}'.partition('\\n')[0]\n"
           "    d = other.splitlines()\n    g = str(e).split(',')\nexcept ValueError:\n    h = x.splitlines()\n"
           "text.splitlines()\n")
    assert _cut_messages(src) == [4, 5, 6]


# --- functions fit on a screen ------------------------------------------------------------------

MAX_FUNCTION_LINES = 80


def _long_functions(source: str) -> list[tuple[str, int, int]]:
    """(name, line, length) of each function over MAX_FUNCTION_LINES (def line to last line)."""
    return [(n.name, n.lineno, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]


@pytest.mark.parametrize("stage", ALL_STAGES)
def test_functions_are_short(stage: str) -> None:
    long = [f"{_rel(m)}:{line}: {name} ({n} lines)" for m in _owned(stage)
            for name, line, n in _long_functions(MODULES[m].read_text())]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(long)


def test_the_length_checker_counts_the_whole_function() -> None:
    def fn(name: str, body_lines: int, indent: str = "") -> str:
        return f"{indent}def {name}():\n" + f"{indent}    x = 1\n" * body_lines

    src = fn("ok", MAX_FUNCTION_LINES - 1) + "class A:\n" + fn("long", MAX_FUNCTION_LINES, "    ")
    assert _long_functions(src) == [("long", MAX_FUNCTION_LINES + 2, MAX_FUNCTION_LINES + 1)]
