"""The line between the library and the command line: stages name fields, the CLI names flags;
errors are one line, never cut afterwards; the latency and guidelines sub-commands and the old
spellings they replace; the public types each subpackage exports."""

from __future__ import annotations

import argparse
import ast
import importlib
import pickle
import re
from pathlib import Path

import pytest

import shufflesearch
from shufflesearch.cli import COMMANDS, OLD, build_parser, main
from shufflesearch.cli import latency as cli_latency
from shufflesearch.cli.flags import FLAGS, error_line
from shufflesearch.cli.parser import OWN, Command, Tree
from shufflesearch.common.settings import SettingError
from shufflesearch.errors import Deprecated, UserError, first_line
from tests.conftest import SPACES

PKG = Path(shufflesearch.__file__).parent
TINY = str(SPACES / "tiny.yaml")
STAGES = ("common", "model", "measure", "guidelines", "accuracy", "search", "review")


# --- errors: parts, not edited strings --------------------------------------------------------


def test_an_error_keeps_field_value_and_rule_apart():
    e = UserError("no such trial (the run has trials 0..5)", field="trial", value=999)
    assert str(e) == "trial 999: no such trial (the run has trials 0..5)"
    assert e.named("--trial") == "--trial 999: no such trial (the run has trials 0..5)"
    s = SettingError("rungs[1]", "must increase strictly", "FidelitySettings")
    assert (s.setting, str(s)) == ("FidelitySettings.rungs", "FidelitySettings.rungs[1]: must increase strictly")
    assert s.named("--rungs") == "--rungs[1]: must increase strictly"  # the index inside is kept
    assert str(UserError("a.yaml:3: bad", field="name", where="")) == "a.yaml:3: bad"
    back = pickle.loads(pickle.dumps(s))  # a worker process's error crosses intact
    assert (type(back), back.field, back.owner, back.rule, str(back)) == (
        SettingError, "rungs[1]", "FidelitySettings", "must increase strictly", str(s))


def test_first_line_of_a_third_party_error():
    assert first_line(RuntimeError("boom\n  at frame 1\n  at frame 2")) == "RuntimeError: boom"
    assert first_line(KeyError()) == "KeyError"


def test_the_cli_names_the_flag_only_where_the_command_has_it():
    e = SettingError("name", "'mnist' is not a proxy task", "DataSpec")
    assert error_line(e, {"--data", "--epochs"}) == "--data: 'mnist' is not a proxy task"
    assert error_line(e, {"--epochs"}) == str(e) == "DataSpec.name: 'mnist' is not a proxy task"
    assert error_line(UserError("a plain message"), {"--data"}) == "a plain message"


def test_every_flag_in_the_table_belongs_to_some_command():
    options = set()
    for c in COMMANDS.values():
        p = argparse.ArgumentParser(add_help=False)
        c.add(p)
        options |= {s for a in p._actions for s in a.option_strings}
    assert set(FLAGS.values()) <= options, set(FLAGS.values()) - options


def _fields_named_by_stages() -> set[str]:
    """``Owner.field`` or ``field`` of every error call outside cli/ that names its field."""
    out = set()
    for f in PKG.rglob("*.py"):
        if "cli" in f.relative_to(PKG).parts:
            continue
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Call):
                kw = {k.arg: k.value.value for k in n.keywords
                      if k.arg in ("field", "owner") and isinstance(k.value, ast.Constant)}
                if kw.get("field"):
                    out.add(".".join(x for x in (kw.get("owner"), kw["field"]) if x))
    return out


def test_every_field_a_stage_names_has_its_flag_or_none_on_purpose():
    no_flag = {"target.prefilter"}  # a space file's key: the message names it as the file does
    fields = _fields_named_by_stages()
    assert {"epochs", "trial", "DataSpec.name", "out_dir", "name"} <= fields  # the scan sees them
    assert fields - no_flag <= set(FLAGS), fields - no_flag - set(FLAGS)


def _raise_texts(path: Path) -> list[tuple[int, str]]:
    src = path.read_text()
    return [(n.lineno, ast.get_source_segment(src, n.exc) or "") for n in ast.walk(ast.parse(src))
            if isinstance(n, ast.Raise) and n.exc is not None]


def test_stages_never_name_a_flag_in_an_error():
    # A whole command to run (`shufflesearch show --list`) may be quoted as a remedy.
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        if "cli" in f.relative_to(PKG).parts:
            continue
        for line, text in _raise_texts(f):
            text = re.sub(r"`shufflesearch [^`]*`", "", text)
            if re.search(r"(?<![\w`-])--[a-z]", text):
                bad.append(f"{f.relative_to(PKG)}:{line}")
    assert not bad, f"errors that name a command-line flag outside cli/ (use field=): {bad}"


def test_the_scan_sees_a_flag():
    src = 'raise UserError(f"--epochs: {n} must be >= 1")\n'
    assert re.search(r"(?<![\w`-])--[a-z]", ast.get_source_segment(src, ast.parse(src).body[0].exc))


def test_no_message_is_cut_after_it_is_raised():
    cut = [f"{f.relative_to(PKG)}" for f in PKG.rglob("*.py")
           if f.name != "errors.py" and "splitlines()[0]" in f.read_text() and f.name != "make_fashion.py"]
    assert not cut, f"cut messages (wrap with errors.first_line at the raise): {cut}"


def test_library_names_the_field_and_cli_the_flag(tmp_path, capsys):
    from shufflesearch.accuracy.training import train_arch

    with pytest.raises(UserError) as e:
        train_arch("shufflenet_v2_x0_5", "digits", 0, tmp_path / "o", quiet=True)
    assert e.value.field == "epochs" and str(e.value).startswith("epochs: 0 must be")
    assert main(["train", "shufflenet_v2_x0_5", "--epochs", "0", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "error: --epochs: 0 must be an integer >= 1\n"
    assert main(["latency", "shufflenet_v2_x0_5", "--resolution", "4"]) == 2
    assert capsys.readouterr().err == "error: --resolution: 4 is out of range [8, 4096]\n"
    assert main(["proxies", "validate", TINY, "--data", "npz:/nonexistent.npz"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data: file '/nonexistent.npz' does not exist") and err.count("\n") == 1


# --- the command tree -------------------------------------------------------------------------


def _parsed(*argv: str):
    return build_parser().parse_args(list(argv))


def test_a_group_sends_words_it_does_not_know_to_its_own_form():
    root = argparse.ArgumentParser(prog="tool")
    tree = Tree(root, {"g": "a group"})

    def add_own(p):
        p.add_argument("thing")
        p.add_argument("--level", type=int)

    own = Command("the group's own form", add_own, lambda a: 1)
    sub = Command("a sub-command", lambda p: p.add_argument("--fast", action="store_true"), lambda a: 2)
    tree.node("g", "a group")
    tree.command("g", own, hidden_word=OWN)
    tree.command("g sub", sub)
    tree.old("g quick", "g sub", sub, None)
    assert root.parse_args(["g", "box"]).thing == "box"
    assert root.parse_args(["g", "--level", "3", "box"]).level == 3  # an option's value is no word
    got = root.parse_args(["g", "sub", "--fast"])
    assert got._run(got) == 2 and got.fast and got._note is None
    old = root.parse_args(["g", "quick"])
    assert old._run(old) == 2 and old._note.startswith("`tool g quick` is now `tool g sub`")
    assert root.parse_args(["g", "--level", "1", "sub"]).thing == "sub"  # a word after an option: the form's


@pytest.mark.parametrize("argv, run, note", [
    (["latency", "shufflenet_v2_x0_5"], cli_latency.cmd_latency, False),
    (["latency", "--resolution", "32", "shufflenet_v2_x0_5"], cli_latency.cmd_latency, False),
    (["latency", "table", "build", "--n", "3"], cli_latency.cmd_table_build, False),
    (["latency", "table", "validate"], cli_latency.cmd_table_validate, False),
    (["latency", "transfer", "runs/x"], cli_latency.cmd_transfer, False),
    (["latency", "build-table", "--n", "3", "--max-seconds", "2"], cli_latency.cmd_table_build, True),
    (["latency", "validate", "--backends", "torch"], cli_latency.cmd_table_validate, True),
    (["guidelines", "shufflenet_v2_x0_5"], COMMANDS["guidelines"].run, False),
    (["guidelines", "bench", "--quick"], COMMANDS["guidelines bench"].run, False),
    (["guidelines", "--quick", "--threads", "2"], COMMANDS["guidelines bench"].run, True),
    (["check", "shufflenet_v2_x0_5"], COMMANDS["guidelines"].run, True),
    (["validate", "x.yaml"], COMMANDS["space"].run, True),
])
def test_each_spelling_reaches_its_command(argv, run, note):
    args = _parsed(*argv)
    assert args._run is run and bool(args._note) is note
    if note:
        assert "is now `shufflesearch" in args._note and "\n" not in args._note


@pytest.mark.parametrize("argv", [
    ["latency", "table", "build", "--backends", "torch"],
    ["latency", "transfer", "runs/x", "--resolution", "32"],
    ["latency", "shufflenet_v2_x0_5", "--n", "3"],
    ["guidelines", "shufflenet_v2_x0_5", "--quick"],
    ["latency", "table"],
])
def test_each_form_takes_only_its_own_options(argv, capsys):
    with pytest.raises(SystemExit):
        _parsed(*argv)
    assert "error:" in capsys.readouterr().err


def test_old_spellings_run_the_new_command_after_one_note(capsys):
    assert main(["guidelines", "shufflenet_v1_g3_x1_0", "--json"]) == 0
    new = capsys.readouterr()
    assert main(["check", "shufflenet_v1_g3_x1_0", "--json"]) == 0
    old = capsys.readouterr()
    assert old.out == new.out and new.err == ""
    assert old.err.startswith("note: `shufflesearch check` is now `shufflesearch guidelines ARCH`")
    assert old.err.count("\n") == 1
    assert main(["validate", TINY, "--sample", "2"]) == 0
    old = capsys.readouterr()
    assert main(["space", TINY, "--sample", "2"]) == 0
    assert capsys.readouterr().out == old.out and old.err.startswith("note: ")


def test_an_old_latency_spelling_notes_then_errs_on_one_line_each(capsys):
    assert main(["latency", "validate", "--n", "3", "--resolution", "40"]) == 2
    note, err = capsys.readouterr().err.splitlines()
    assert note.startswith("note: `shufflesearch latency validate` is now `shufflesearch latency table validate`")
    assert err.startswith("error: ") and "latency table build" in err


def test_help_lists_the_old_spellings(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for old in OLD:
        assert old.split()[-1] in out
    assert "old spelling of `guidelines ARCH`" in out and "old spelling of `space`" in out


# --- public names -----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_each_subpackage_exports_its_public_types(stage):
    pkg = importlib.import_module(f"shufflesearch.{stage}")
    assert pkg.__all__ and len(set(pkg.__all__)) == len(pkg.__all__)
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        home = getattr(obj, "__module__", "") or ""
        assert not isinstance(obj, type) or home.startswith(f"shufflesearch.{stage}."), (name, home)


def test_the_named_types_come_from_their_stage():
    from shufflesearch.accuracy import DataSpec, FidelitySettings
    from shufflesearch.guidelines import GuidelineReport, GuidelineSettings
    from shufflesearch.measure import Latency, TargetSpec
    from shufflesearch.model import Arch, ArchError
    from shufflesearch.review import ExportResult, ParetoRow
    from shufflesearch.search import RungResult, SearchSpace, TrialRecord
    from shufflesearch.search.records import TrialRecord as Defined

    assert TrialRecord is Defined and RungResult.__module__ == "shufflesearch.search.records"
    assert SearchSpace.__module__ == "shufflesearch.search.space"
    assert {TargetSpec.__module__, Latency.__module__} == {"shufflesearch.measure.target"}
    assert DataSpec.__module__ == "shufflesearch.accuracy.data"
    assert all(isinstance(t, type) for t in (FidelitySettings, GuidelineReport, GuidelineSettings,
                                             Arch, ArchError, ExportResult, ParetoRow))


def test_old_python_names_warn_and_still_work(tmp_path):
    with pytest.warns(Deprecated, match="guideline_report"):
        old = shufflesearch.check
    assert old is shufflesearch.guideline_report
    from shufflesearch.accuracy.data import DataSpec

    with pytest.warns(Deprecated, match=r"export_arch\(data=...\)"):
        shufflesearch.export_arch("shufflenet_v2_x0_5", tmp_path, resolution=32, onnx=False,
                                  torch_export=False, proxy=DataSpec(name="digits"))
    assert (tmp_path / "arch.yaml").exists()
