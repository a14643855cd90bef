"""The documentation: the site builds strictly, every code example runs or parses, links resolve.

What is done with a fenced block depends on its language and on an optional HTML comment on the
line before it (`<!-- docs-test: WORD -->`); the conventions are written up for authors in
docs/layout.md, "The documentation". Pages: README.md and docs/*.md.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from shufflesearch.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LANGS = {"python", "console", "bash", "sh", "shell", "", "yaml", "text"}
MARKERS = {"skip", "space", "space-fragment", "arch", "in-bundle", "in-run"}
SHELL = {"bash", "sh", "shell", ""}
# Commands run for real (seconds at most), new spellings and old; `guidelines bench` is not one.
RUN_CHEAP = {"show", "guidelines", "space", "check", "validate"}
OTHER_COMMANDS = {"createuser", "createdb", "optuna-dashboard", "uptime", "cd"}
STAGES = ("common", "model", "measure", "guidelines", "accuracy", "search", "review", "cli", "errors")
FILE_EXT = {"py", "pt", "pt2", "pte", "onnx", "yaml", "yml", "json", "jsonl", "md", "db", "html", "png",
            "npz", "log", "csv"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    marker: str  # the docs-test comment's word, "" when none
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^(\s*)(`{3,})([\w-]*)\s*$")
_MARK = re.compile(r"<!--\s*docs-test:\s*([\w-]+).*?-->")


def _blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, lang = m.groups()
        j = i + 1
        while j < len(lines) and lines[j].strip() != ticks:
            j += 1
        body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j]]
        prev = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        mark = _MARK.search(prev)
        out.append(Block(page, i + 1, lang, mark.group(1) if mark else "", "\n".join(body) + "\n"))
        i = j + 1
    return out


BLOCKS = [b for p in PAGES for b in _blocks(p)]


def _of(*langs: str, skip: bool = True) -> list:
    return [pytest.param(b, id=str(b)) for b in BLOCKS
            if b.lang in langs and not (skip and b.marker == "skip")]


def _prose(page: Path) -> str:
    """The page without its fenced blocks."""
    return re.sub(r"^(\s*)(`{3,})[\w-]*\s*$.*?^\s*\2\s*$", "", page.read_text(encoding="utf-8"),
                  flags=re.M | re.S)


# --- the site ---------------------------------------------------------------------------------


def test_site_builds_strictly_and_offline(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed: the test extra must bring mkdocs, "
                        "mkdocs-material and mkdocstrings[python]")
        pytest.skip("mkdocs not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                        str(tmp_path / "site"), "--config-file", str(ROOT / "mkdocs.yml")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    assert not re.search(r"^(WARNING|ERROR)\b", log, re.M), log
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "shufflesearch.search.front" in api and "knee" in api  # the docstrings were rendered
    ref = (tmp_path / "site" / "reference" / "search-space" / "index.html").read_text(encoding="utf-8")
    assert "yaml-reference" not in ref  # the hook replaced the marker with the generated tables
    for key in ("check_fraction", "max_seconds", "estimator", "n_startup_trials"):
        assert f"<code>{key}</code>" in ref, key
    pages = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "site").rglob("*.html"))
    assert "fonts.googleapis.com" not in pages  # theme.font: false, nothing fetched to read it


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [p.name for p in PAGES[1:] if f": {p.name}" not in nav]
    assert not missing, f"docs pages missing from mkdocs.yml's nav: {missing}"


# --- README ---------------------------------------------------------------------------------


def _awk_line(marker: str) -> str:
    """The line .ci/run takes from README: two lines after the marker, read with its own awk."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    prog = re.search(r"awk '([^']*)' README\.md", ci).group(1)
    assert "<!-- test-command -->" in prog
    if shutil.which("awk"):
        prog = prog.replace("<!-- test-command -->", marker)
        return subprocess.run(["awk", prog, str(README)], capture_output=True, text=True,
                              check=True).stdout.strip()
    lines = README.read_text(encoding="utf-8").splitlines()
    return lines[lines.index(marker) + 2]


def test_readme_keeps_the_commands_ci_runs():
    assert _awk_line("<!-- test-command -->") == \
        'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q'
    assert _awk_line("<!-- run-command -->") == \
        "pip install torch==2.13.0 -e . && shufflesearch run search_spaces/v2.yaml --budget 200"


def test_readme_is_short_and_quotes_no_timings():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    prose = re.sub(r"`[^`\n]*`", "", _prose(README))
    timings = re.findall(r"\b\d+(?:\.\d+)?\s?(?:ms|µs|s|sec|min|minutes|seconds|h)\b", prose)
    assert not timings, f"README quotes timings (they belong on docs/benchmarks.md): {timings}"


def test_readme_space_is_a_real_excerpt_of_v2():
    (block,) = [b for b in BLOCKS if b.page == README and b.lang == "yaml"]
    shipped = [ln.rstrip() for ln in (ROOT / "search_spaces" / "v2.yaml").read_text().splitlines()]
    at = 0
    for ln in block.text.splitlines():
        assert ln.rstrip() in shipped[at:], f"not in search_spaces/v2.yaml (in order): {ln!r}"
        at = shipped.index(ln.rstrip(), at) + 1


def _slugs(page: Path) -> set[str]:
    from markdown.extensions.toc import slugify  # lazy: markdown comes with the docs extra

    heads = re.findall(r"^#{1,6}\s+(.+?)\s*$", _prose(page), re.M)
    return {slugify(h, "-") for h in heads} | {
        re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}  # GitHub's slugs


def test_readme_links_resolve():
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(README)):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        f = ROOT / path if path else README
        if not f.exists():
            bad.append(f"{target}: no such file")
        elif anchor and f.suffix == ".md" and anchor not in _slugs(f):
            bad.append(f"{target}: no such heading")
    assert not bad, bad


# --- fenced blocks --------------------------------------------------------------------------


def test_every_block_follows_the_conventions():
    bad = [f"{b}: language {b.lang!r}" for b in BLOCKS if b.lang not in LANGS]
    bad += [f"{b}: marker {b.marker!r}" for b in BLOCKS if b.marker and b.marker not in MARKERS]
    assert not bad, f"unknown fence languages or docs-test markers (see docs/layout.md): {bad}"
    assert len([b for b in BLOCKS if b.marker == "skip"]) <= 3, "keep skipped examples few"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A scratch folder where the examples' relative paths (search_spaces/, tests/) resolve."""
    d = tmp_path_factory.mktemp("docs")
    for name in ("search_spaces", "tests"):
        (d / name).symlink_to(ROOT / name, target_is_directory=True)
    return d


@pytest.fixture(scope="module")
def bundle(workspace):
    """A small exported bundle (model.py, weights.pt) for the examples that use one."""
    from shufflesearch import export_arch

    out = workspace / "exported"
    export_arch("shufflenet_v2_x0_5", out, resolution=32, onnx=False, torch_export=False)
    return out


@pytest.fixture(scope="module")
def run_folder(workspace):
    """A small finished ladder run at runs/v2 (tests/spaces/ladder.yaml, budget 4, one worker)
    for the examples that read a run."""
    from shufflesearch.cli import main

    shutil.copy(ROOT / "tests" / "spaces" / "ladder.yaml", workspace / "v2.yaml")
    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        assert main(["run", "v2.yaml", "--budget", "4", "--workers", "1", "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    return workspace / "runs" / "v2"


@pytest.mark.parametrize("block", _of("python"))
def test_python_example_runs(block, workspace, monkeypatch, request):
    where = workspace
    if block.marker == "in-run":
        request.getfixturevalue("run_folder")
    if block.marker == "in-bundle":
        where = request.getfixturevalue("bundle")
        monkeypatch.syspath_prepend(str(where))
        monkeypatch.delitem(sys.modules, "model", raising=False)
    monkeypatch.chdir(where)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block.text, str(block), "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("block", _of("yaml"))
def test_yaml_example_is_valid(block, tmp_path):
    from shufflesearch.common.yamlio import load_yaml
    from shufflesearch.model.arch import load_arch
    from shufflesearch.search.space import load_space

    f = tmp_path / "example.yaml"
    f.write_text(block.text)
    if block.marker == "space-fragment":  # merged into a small valid space
        base = yaml.safe_load((ROOT / "tests" / "spaces" / "tiny.yaml").read_text())
        f.write_text(yaml.safe_dump({**base, **yaml.safe_load(block.text)}))
    if block.marker in ("space", "space-fragment"):
        load_space(f)
    elif block.marker == "arch":
        load_arch(f)
    else:
        load_yaml(f)


# --- commands in console and shell blocks ---------------------------------------------------


def _commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command line, output lines shown after it) for a console or shell block."""
    out: list[tuple[str, list[str]]] = []
    for ln in block.text.splitlines():
        if block.lang == "console":
            if ln.startswith("$ "):
                out.append((ln[2:], []))
            elif out:
                out[-1][1].append(ln)
        elif ln.strip() and not ln.lstrip().startswith("#"):
            out.append((ln, []))
    return out


def _segments(line: str) -> list[list[str]]:
    lex = shlex.shlex(line, posix=True, punctuation_chars="&|;")
    lex.whitespace_split = True
    segs: list[list[str]] = [[]]
    for tok in lex:
        if tok in ("&&", "||", "|", ";"):
            segs.append([])
        else:
            segs[-1].append(tok)
    return [s for s in segs if s]


def _strip_prefixes(argv: list[str]) -> list[str]:
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):  # VAR=value command
        argv = argv[1:]
    if argv and argv[0] in ("time", "/usr/bin/time"):
        argv = argv[2:] if argv[1:2] == ["-v"] else argv[1:]
    if argv and argv[0] == "sudo":
        argv = argv[3:] if argv[1:2] == ["-u"] else argv[1:]
    return argv


def _extras() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^(\w+)\s*=", section, re.M))


def _check_python(argv: list[str]) -> str | None:
    if argv[1:2] == ["-m"]:
        mod = argv[2]
        if mod == "pytest":
            for a in argv[3:]:
                if a.endswith(".py") and not (ROOT / a).exists():
                    return f"no test file {a}"
            if "-k" in argv:
                name = argv[argv.index("-k") + 1]
                files = [ROOT / a for a in argv if a.endswith(".py")]
                if files and not any(name in f.read_text() for f in files):
                    return f"no test matches -k {name}"
            return None
        return None if importlib.util.find_spec(mod) else f"no module {mod}"
    if argv[1:2] == ["-c"]:
        return None
    script = ROOT / argv[1]
    if not script.exists():
        return f"no script {argv[1]}"
    src = script.read_text(encoding="utf-8")
    flags = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
    missing = [f for f in flags if not re.search(rf"""["']{f}["']""", src)]
    return f"{argv[1]} takes no {missing}" if missing else None


def _check_command(argv: list[str], expected: list[str]) -> str | None:
    argv = _strip_prefixes(argv)
    prog = argv[0]
    if prog == "shufflesearch":
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                args = build_parser().parse_args(argv[1:])
        except SystemExit:
            return f"does not parse: {err.getvalue().strip()}"
        cheap = args.command in RUN_CHEAP and (args.command != "guidelines" or hasattr(args, "arch"))
        return _run_cheap(argv, args.command, expected) if cheap else None
    if prog == "python":
        return _check_python(argv)
    if prog == "pip":
        extras = {e for a in argv for m in re.finditer(r"\.\[([\w,]+)\]", a) for e in m.group(1).split(",")}
        return f"no extra {extras - _extras()} in pyproject.toml" if extras - _extras() else None
    if prog == "mkdocs":
        return None if argv[1:2] in (["serve"], ["build"]) else "unknown mkdocs command"
    if prog == "source":
        return None if (ROOT / argv[1]).exists() else f"no file {argv[1]}"
    return None if prog in OTHER_COMMANDS else f"unknown command {prog!r} (see docs/layout.md)"


def _squeeze(s: str) -> str:
    return " ".join(s.split())


def _run_cheap(argv: list[str], command: str, expected: list[str]) -> str | None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv[1:])
    got = [_squeeze(ln) for ln in (out.getvalue() + err.getvalue()).splitlines()]
    wants_error = any(ln.startswith("error:") for ln in expected)
    if (rc != 0) != wants_error:
        return f"exit {rc}: {err.getvalue().strip()}"
    at = 0
    for want in (_squeeze(ln) for ln in expected):
        if not want or want == "...":
            continue
        if want not in got[at:]:
            return f"`{command}` no longer prints: {want!r}"
        at = got.index(want, at) + 1
    return None


@pytest.mark.parametrize("block", _of("console", *SHELL))
def test_commands_parse_and_cheap_ones_run(block, workspace, monkeypatch):
    monkeypatch.chdir(workspace)  # where the commands' relative paths resolve
    bad = []
    for line, expected in _commands(block):
        for argv in _segments(line):
            problem = _check_command(argv, expected)
            if problem:
                bad.append(f"{line!r}: {problem}")
    assert not bad, f"{block}: {bad}"


# --- names and files quoted in prose --------------------------------------------------------

_STAGE = "|".join(STAGES)
_API = re.compile(rf"^(?:shufflesearch\.\w+|(?:shufflesearch\.)?(?:{_STAGE})\.\w+)(?:\.\w+)*(?:\(.*\))?$")
_PATH = re.compile(rf"^((?:shufflesearch|tests|bench|search_spaces|docs|\.ci|{_STAGE})/[\w./-]*\w)(::\w+)?")


def _resolve(name: str) -> bool:
    parts = name.split("(")[0].split(".")
    if parts[0] != "shufflesearch":
        parts = ["shufflesearch", *parts]
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_names_and_files_quoted_in_the_docs_exist():
    bad = []
    for page in PAGES:
        for span in set(re.findall(r"`([^`\n]+)`", _prose(page))):
            span = span.strip()
            m = _PATH.match(span)
            if m:
                path = m.group(1)
                f = ROOT / path if (ROOT / path.split("/")[0]).exists() else ROOT / "shufflesearch" / path
                if not f.exists():
                    bad.append(f"{page.name}: `{span}`: no such file")
                elif m.group(2) and m.group(2)[2:] not in f.read_text(encoding="utf-8"):
                    bad.append(f"{page.name}: `{span}`: no such test")
            elif _API.match(span) and span.split("(")[0].rsplit(".", 1)[-1] not in FILE_EXT:
                if not _resolve(span):
                    bad.append(f"{page.name}: `{span}`: no such module or name")
    assert not bad, bad
