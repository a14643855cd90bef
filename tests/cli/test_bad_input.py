"""A corpus of malformed inputs through the CLI. Each one must get exactly one line on stderr
naming what is wrong, exit code 2, no traceback (an exception would escape `main`), and leave
the disk exactly as it was (every file's bytes and every folder, snapshotted before/after).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from shufflesearch.cli import main
from shufflesearch.model.arch import preset
from shufflesearch.search.engine import search
from tests.conftest import SPACES

TINY = SPACES / "tiny.yaml"
S = TINY.read_text()
V1 = preset("shufflenet_v1_g3_x1_0").to_yaml()


def _sub(old: str, new: str, text: str = S) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


class Pwn:
    """A pickle that would leave a file behind if anything unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# Setup helpers: each writes into the case folder d and returns nothing.
def _file(name: str, data: str | bytes) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / name).write_bytes(data.encode() if isinstance(data, str) else data)

    return make


def _dir(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).mkdir()


def _run_copy(mutate: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        shutil.copytree(RUN_TEMPLATE[0], d / "runs" / "tiny")
        if mutate:
            mutate(d / "runs" / "tiny")

    return make


def _corrupt_config(run: Path) -> None:
    (run / "config.yaml").write_bytes(b"\x00\xff garbage")


def _config_is_a_dir(run: Path) -> None:
    (run / "config.yaml").unlink()
    (run / "config.yaml").mkdir()


def _pickle(d: Path) -> None:
    (d / "weights.pt").write_bytes(pickle.dumps(Pwn(str(d / "pwned"))))


def _bomb(key: str) -> str:
    """A "billion laughs" block under ``key``: 9 levels of 9 aliases each stand for 9^9 (387M)
    strings in a few hundred bytes. Whatever walks the expanded data hangs for minutes."""
    names = "abcdefghi"
    rows = [f"  {names[0]}: &{names[0]} [" + ", ".join(['"lol"'] * 9) + "]"]
    rows += [f"  {n}: &{n} [" + ", ".join([f"*{p}"] * 9) + "]" for p, n in zip(names, names[1:])]
    return f"{key}:\n" + "\n".join(rows) + "\n"


RUN = ["run", "{d}/space.yaml", "--runs", "{d}/runs", "--quiet"]
SHOW = ["show", "{d}/arch.yaml"]

# id, setup, argv, what the line must say
CASES: list[tuple[str, Callable[[Path], None] | None, list[str], str]] = [
    # YAML syntax
    ("yaml-unclosed-list", _file("space.yaml", "space: ["), RUN, "not valid YAML"),
    ("yaml-bad-indent", _file("space.yaml", "seed: 0\n  target: 1\n x"), RUN, "not valid YAML"),
    ("yaml-unclosed-quote", _file("space.yaml", 'seed: "0\n'), RUN, "not valid YAML"),
    ("empty-file", _file("space.yaml", ""), RUN, "empty"),
    ("comments-only", _file("space.yaml", "# nothing here\n"), RUN, "empty"),
    ("binary-file", _file("space.yaml", b"\x00\x01\x02\x89PNG"), RUN, "binary file"),
    ("not-utf8", _file("space.yaml", b"seed: \xe9\xff\n"), RUN, "not UTF-8"),
    ("top-level-list", _file("space.yaml", "- a\n- b\n"), RUN, "must be a YAML mapping"),
    ("top-level-scalar", _file("space.yaml", "42\n"), RUN, "must be a YAML mapping"),
    # YAML is loaded safely: a python/object payload is refused, never constructed
    ("python-object-apply", _file("space.yaml", "!!python/object/apply:os.system ['touch pwned']\n"),
     RUN, "not valid YAML"),
    ("python-object-nested", _file("space.yaml", _sub("seed: 0", "seed: !!python/object/new:builtins.int [1]")),
     RUN, "not valid YAML"),
    # wrong types
    ("type-str-for-int", _file("space.yaml", _sub("resolution: 32, batch: 1", "resolution: 'big', batch: 1")),
     RUN, "target.resolution: must be an integer"),
    ("type-bool-for-int", _file("space.yaml", _sub("batch: 1,", "batch: true,")), RUN, "target.batch: must be an integer"),
    ("type-float-for-int", _file("space.yaml", _sub("batch: 1,", "batch: 1.5,")), RUN, "target.batch: must be an integer"),
    ("type-scalar-for-list", _file("space.yaml", _sub("objectives: [proxy, latency]", "objectives: 7")), RUN, "objectives"),
    # out of range and huge numbers
    ("range-depth-0", _file("space.yaml", _sub("depth: [1, 2], split", "depth: [0, 2], split")), RUN, "depth[0]: 0 is out of range"),
    ("range-split", _file("space.yaml", _sub("split: [0.5]", "split: [1.5]")), RUN, "split[0]: 1.5 is out of range"),
    ("range-negative-threads", _file("space.yaml", _sub("threads: 1", "threads: -1")), RUN, "target.threads: -1 is out of range"),
    ("huge-resolution", _file("space.yaml", _sub("resolution: 32, batch", "resolution: " + "9" * 100 + ", batch")),
     RUN, "target.resolution"),
    ("huge-width-range", _file("space.yaml", _sub("high: 32, step: 8", "high: 99999999999, step: 1")), RUN, "out of range"),
    ("huge-float-inf", _file("space.yaml", _sub("max_seconds: 0.1", "max_seconds: 1e400")), RUN, "target.max_seconds"),
    # impossible channel / group combinations
    ("groups-never-divide", _file("space.yaml", _sub("groups: [1, 2]", "groups: [7]").replace("family: [v1, v2]", "family: v1")),
     RUN, "groups"),
    ("odd-width-v2-split", _file("space.yaml", _sub("width: {low: 16, high: 32, step: 8}", "width: 17")), RUN, "stages[0]"),
    # unknown keys, with a suggestion
    ("unknown-top-key", _file("space.yaml", _sub("target:", "targte:")), RUN, "did you mean 'target'"),
    ("unknown-nested-key", _file("space.yaml", _sub("step: 8}", "stpe: 8}")), RUN, "did you mean 'step'"),
    ("unknown-objective", _file("space.yaml", _sub("[proxy, latency]", "[proxy, latncy]")), RUN, "unknown objective 'latncy'"),
    ("unknown-preset", _file("space.yaml", _sub("baselines: []", "baselines: [shufflenet_v2_x9]")), RUN, "unknown preset"),
    # files that are not there or not files
    ("missing-space-file", None, RUN, "no such file"),
    ("directory-for-file", _dir("space.yaml"), RUN, "is a directory"),
    # run names and flags
    ("name-dotdot", _file("space.yaml", S), [*RUN, "--name", "../../escape"], "--name"),
    ("name-absolute", _file("space.yaml", S), [*RUN, "--name", "/tmp/escape"], "--name"),
    ("name-slash", _file("space.yaml", S), [*RUN, "--name", "a/b"], "--name"),
    ("budget-negative", _file("space.yaml", S), [*RUN, "--budget", "-1"], "--budget"),
    ("workers-zero", _file("space.yaml", S), [*RUN, "--workers", "0"], "--workers"),
    ("storage-bad-url", _file("space.yaml", S), [*RUN, "--storage", "nosuchdb://x/y"], "cannot open storage"),
    # run folders
    ("run-of-another-space", lambda d: (_run_copy()(d), _file("space.yaml", _sub("seed: 0", "seed: 1"))(d)),
     [*RUN, "--name", "tiny"], "different search space"),
    ("run-config-corrupt", lambda d: (_run_copy(_corrupt_config)(d), _file("space.yaml", S)(d)),
     [*RUN, "--name", "tiny"], "config.yaml"),
    ("run-config-is-a-dir", _run_copy(_config_is_a_dir), ["pareto", "{d}/runs/tiny"], "config.yaml"),
    ("pareto-missing-run", None, ["pareto", "{d}/runs/nope"], "no such run"),
    ("pareto-not-a-run", _dir("notarun"), ["pareto", "{d}/notarun"], "not a shufflesearch run"),
    ("report-missing-run", None, ["report", "{d}/runs/nope", "--quiet"], "no such run"),
    ("export-missing-trial", _run_copy(), ["export", "{d}/runs/tiny", "--trial", "999", "--out", "{d}/out"], "no such trial"),
    ("export-negative-trial", _run_copy(), ["export", "{d}/runs/tiny", "--trial", "-1", "--out", "{d}/out"], "--trial"),
    # arch files
    ("arch-corrupt-yaml", _file("arch.yaml", V1[: len(V1) // 2] + "\n  - [unclosed"), SHOW, "arch.yaml"),
    ("arch-truncated-json", _file("arch.json", '{"stem": {"channels": 24'), ["show", "{d}/arch.json"], "not valid JSON"),
    ("arch-binary", _file("arch.yaml", b"\x00\x00\x00\x01"), SHOW, "arch.yaml"),
    ("arch-unknown-key", _file("arch.yaml", V1.replace("bottleneck:", "botleneck:", 1)), SHOW, "did you mean 'bottleneck'"),
    ("arch-impossible-groups", _file("arch.yaml", V1.replace("channels: 240", "channels: 241", 1)), SHOW, "stages[0]"),
    ("arch-python-object", _file("arch.yaml", "!!python/object/apply:os.system ['touch pwned']\n"), SHOW, "arch.yaml"),
    ("arch-unknown-preset", None, ["show", "shufflenet_v3_x1_0"], "shufflenet_v3_x1_0"),
    ("check-settings-unknown-key", _file("s.yaml", "g1_tolerance: 0.1\nbogus_key: 1\n"),
     ["guidelines", "shufflenet_v2_x0_5", "--settings", "{d}/s.yaml"], "g1_tolerance: unknown key (did you mean"),
    # YAML alias bombs and self-referring aliases, in every kind of file the CLI reads: refused
    # while parsing (issue: they hung the CLI for minutes)
    ("space-alias-bomb", _file("space.yaml", S + _bomb("x_bomb")), RUN, "alias bomb"),
    ("space-alias-bomb-validate", _file("space.yaml", _bomb("x_bomb") + S), ["space", "{d}/space.yaml"], "alias bomb"),
    ("arch-alias-bomb", _file("arch.yaml", V1 + _bomb("x_bomb")), SHOW, "alias bomb"),
    ("arch-alias-bomb-train", _file("arch.yaml", V1 + _bomb("x_bomb")),
     ["train", "{d}/arch.yaml", "--epochs", "1", "--out", "{d}/out", "--quiet"], "alias bomb"),
    ("arch-alias-recursive", _file("arch.yaml", V1 + "x: &r [1, *r]\n"), SHOW, "refers to the node that contains it"),
    ("check-settings-alias-bomb", _file("s.yaml", _bomb("weights")),
     ["guidelines", "shufflenet_v2_x0_5", "--settings", "{d}/s.yaml"], "alias bomb"),
    ("proxies-alias-bomb", _file("set.yaml", _bomb("archs")), ["proxies", "validate", "{d}/set.yaml"], "alias bomb"),
    # nothing is unpickled unless asked; when asked (--weights), only tensors are accepted
    ("weights-malicious-pickle", _pickle,
     ["export-arch", "shufflenet_v2_x0_5", "--weights", "{d}/weights.pt", "--out", "{d}/out", "--quiet"], "weights.pt"),
]

RUN_TEMPLATE: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _template_run(tmp_path_factory):
    """One real completed run (budget 1) that run-folder cases copy."""
    base = tmp_path_factory.mktemp("template")
    run = search(TINY, 1, runs_root=base, quiet=True)
    RUN_TEMPLATE[:] = [run.root]


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = "dir"
        for n in filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_no_change_on_disk(tmp_path, monkeypatch, capsys, case):
    _, setup, argv, needle = case
    d = tmp_path / "case"
    d.mkdir()
    if setup:
        setup(d)
    monkeypatch.chdir(d)  # a stray relative runs/ would show in the snapshot
    before = snapshot(d)
    capsys.readouterr()
    code = main([a.replace("{d}", str(d)) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err and not out.strip()
    assert snapshot(d) == before
    assert not (d / "pwned").exists()


def test_unreadable_file(tmp_path, capsys):
    """chmod 000: under root the permission bits do not stop reads, so this case can only be
    checked as a normal user (the directory-for-file case covers an unreadable path as root)."""
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not make a file unreadable")
    p = tmp_path / "space.yaml"
    p.write_text(S)
    p.chmod(0)
    before = snapshot(tmp_path)
    assert main(["run", str(p), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot read" in err
    assert snapshot(tmp_path) == before
