"""The command modules of the CLI, called the way main() calls them: on the arguments the real
parser makes (end-to-end runs of each command live with the stage they drive)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from shufflesearch.cli import arch as cli_arch
from shufflesearch.cli import build_parser
from shufflesearch.cli import output as cli_output
from shufflesearch.cli import review as cli_review
from shufflesearch.cli import run as cli_run
from shufflesearch.errors import UserError
from shufflesearch.search.runfolder import open_run
from shufflesearch.search.space import load_space
from tests.conftest import SPACES

TINY = SPACES / "tiny.yaml"


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_show_prints_the_papers_figures(capsys):
    assert cli_arch.cmd_show(parse("show", "shufflenet_v2_x1_0", "--json")) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["params"] == 2_278_604  # torchvision's count (REFERENCE.md)
    assert round(shown["macs"] / 1e6, 2) == 144.91
    assert cli_arch.cmd_show(parse("show", "--list")) == 0
    assert "shufflenet_v1_g3_x1_0" in capsys.readouterr().out.split()


def test_guidelines_finds_g2_only_in_a_grouped_v1(capsys):
    assert cli_arch.cmd_guidelines(parse("guidelines", "shufflenet_v1_g8_x1_0", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["penalties"]["G2"] > 0
    assert cli_arch.cmd_guidelines(parse("guidelines", "shufflenet_v1_g1_x1_0", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["penalties"]["G2"] == 0  # no groups, nothing to flag


def test_space_reads_the_space_and_samples_it(capsys):
    assert cli_run.cmd_space(parse("space", str(TINY), "--sample", "3")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{TINY}: ok"
    assert out[-1] == "  sampled 3 distinct valid architectures out of 3 asked"


def test_pareto_of_a_run_without_trials_and_of_no_run(tmp_path, capsys):
    run = open_run(load_space(TINY), "empty", tmp_path)
    run.load_study()
    assert cli_review.cmd_pareto(parse("pareto", str(run.root))) == 0
    assert capsys.readouterr().out.strip() == f"{run.root}: no completed trials yet"
    with pytest.raises(UserError, match="nowhere: no such run folder"):
        cli_review.cmd_pareto(parse("pareto", str(tmp_path / "nowhere")))


def test_artefact_lines_say_how_each_file_was_verified(capsys):
    res = SimpleNamespace(
        files={"model.pt2": Path("b/model.pt2"), "model.int8.onnx": Path("b/model.int8.onnx")},
        max_abs_diff={"model.pt2": 1.5e-6}, int8={"top1_agreement": 0.975},
        skipped={"model.onnx": "onnxruntime is not installed"})
    cli_output.print_artefacts(res)
    assert capsys.readouterr().out.splitlines() == [
        "  model.pt2   verified, max abs diff 1.5e-06",
        "  model.int8.onnx verified, top-1 agreement with model.onnx 97.5%",
        "  model.onnx  skipped: onnxruntime is not installed",
    ]
    cli_output.print_json({"out": Path("b"), "n": 1})
    assert json.loads(capsys.readouterr().out) == {"out": "b", "n": 1}
