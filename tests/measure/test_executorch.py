"""The executorch backend (measure/executorch.py) and the bundle's model.pte (review/pte.py):
the runner computes what the training form computes and its program is cached by archid; a
search, a transfer and an export run on it; model.pte runs in ExecuTorch's own runtime API,
checked here independently of export.py; a missing package is one clear line.

Lowering costs seconds per network, so one small run (budget 2, 32x32) serves several tests
and the reference's program (V2 0.5x, also the run's baseline) is lowered once per pytest run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shufflesearch.cli import main
from shufflesearch.errors import UserError
from shufflesearch.measure import backends as B
from shufflesearch.measure import executorch as ET
from shufflesearch.measure.env import package_version
from shufflesearch.measure.protocol import reference_archid
from shufflesearch.measure.target import TargetSpec
from shufflesearch.model.arch import Arch, Stage, Stem
from shufflesearch.model.compile import build
from shufflesearch.review.export import ExportError, export_arch
from shufflesearch.review.pareto import load_records
from tests.conftest import SPACES

# One V2 and one V1 stage (a group conv, a channel shuffle), so both unit kinds are lowered.
TINY = Arch(stages=(Stage("v2", 24, 2), Stage("v1", 48, 1, groups=2)), stem=Stem(channels=8), head=64,
            num_classes=13)  # a class count no other test's network has: an archid of its own


@pytest.fixture
def lowerings(monkeypatch):
    """The shapes ``ET.lower`` is called with (the cache calls it only on a miss)."""
    calls: list[tuple[int, ...]] = []
    real = ET.lower
    monkeypatch.setattr(ET, "lower", lambda m, shape: (calls.append(tuple(shape)), real(m, shape))[1])
    return calls


def test_runner_matches_the_training_form_and_its_program_is_cached(lowerings):
    spec = TargetSpec(resolution=32, batch=2, backend="executorch")
    first = B.make_runner(TINY, spec)
    y = first.outputs()
    with torch.no_grad():
        ref = B.seeded_model(TINY)(torch.from_numpy(first.x)).numpy()
    assert first.backend == "executorch" and y.shape == ref.shape == (2, 13)
    scale = float(np.abs(ref).max())
    assert scale > 0 and np.abs(y - ref).max() <= 1e-3 * scale  # BN folding reorders float32 sums
    second = B.make_runner(TINY, spec)
    assert lowerings == [(2, 3, 32, 32)]  # the second runner read the program back
    assert first.info["export_cached"] is False and second.info["export_cached"] is True
    assert first.info["path"] == second.info["path"] and TINY.archid in Path(first.info["path"]).name
    assert np.array_equal(second.outputs(), y)


@pytest.fixture(scope="module")
def et_run(tmp_path_factory) -> Path:
    """A tiny search timed on executorch, with V2 0.5x as its baseline: at 1000 classes it is
    the reference itself, so its program is lowered once for both."""
    tmp = tmp_path_factory.mktemp("et")
    text = (SPACES / "tiny.yaml").read_text()
    assert "num_classes: 10," in text and "threads: 1," in text and "baselines: []" in text
    space = tmp / "et.yaml"
    space.write_text(text.replace("threads: 1,", "threads: 1, backend: executorch,")
                     .replace("num_classes: 10,", "num_classes: 1000,")
                     .replace("baselines: []", "baselines: [shufflenet_v2_x0_5]"))
    assert main(["run", str(space), "--budget", "2", "--name", "et", "--runs", str(tmp / "runs"), "--workers", "1",
                 "--quiet"]) == 0
    return tmp / "runs" / "et"


def test_search_times_trials_on_executorch(et_run):
    _, records = load_records(et_run)
    done = [r for r in records if r.state == "COMPLETE"]
    assert len(done) >= 3  # two search trials and the baseline
    for r in done:
        fp = r.latency.fingerprint
        assert fp["backend"] == "executorch" and fp["executorch"] == package_version("executorch")
        assert r.latency.ratio > 0 and r.latency_ms == pytest.approx(r.latency.ratio * r.latency.reference["ms"])


def test_transfer_to_executorch_reuses_the_run_programs(et_run, capsys, lowerings):
    capsys.readouterr()
    assert main(["latency", "transfer", str(et_run), "--backends", "torch,executorch", "--json",
                 "--max-seconds", "0.3"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert lowerings == []  # every point (and the reference) was lowered by the run already
    assert reference_archid() in {p["archid"] for p in d["points"]}  # the baseline is the reference
    assert d["backends"] == ["torch", "executorch"] and set(d["kendall_tau"]) == {"torch~executorch"}
    assert -1 <= d["kendall_tau"]["torch~executorch"] <= 1
    assert d["fingerprint"]["executorch"]["backend"] == "executorch"
    assert "shufflenet_v2_x0_5" in {p["baseline"] for p in d["points"]}
    for b in d["backends"]:  # the fastest point on a runtime is never dominated there
        assert all(p["latency"][b]["ratio"] > 0 for p in d["points"])
        fastest = min(d["points"], key=lambda p: (p["latency"][b]["ms"], -p["proxy"]))
        assert fastest["front"][b] and d["front_size"][b] == sum(p["front"][b] for p in d["points"])
        assert 0 <= d["run_front_surviving"][b] <= d["run_front_points"]


def test_export_writes_a_pte_that_executorch_runs(et_run, tmp_path, capsys):
    _, records = load_records(et_run)
    trial = next(r for r in records if r.state == "COMPLETE" and not r.baseline)
    out = tmp_path / "bundle"
    capsys.readouterr()
    assert main(["export", str(et_run), "--trial", str(trial.trial), "--out", str(out), "--no-onnx",
                 "--executorch", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert Path(d["files"]["model.pte"]) == out / "model.pte"
    assert d["executorch"]["delegated_nodes"] > d["executorch"]["portable_nodes"]  # XNNPACK runs most ops
    report = (out / "report.md").read_text()
    assert "## Mobile runtime (ExecuTorch, XNNPACK)" in report and "| model.pte |" in report

    # Checked here with ExecuTorch's public runtime API and weights.pt, not with export.py's code.
    from executorch.runtime import Runtime

    model = build(trial.arch)
    model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model.eval()(x)
    method = Runtime.get().load_program(out / "model.pte").load_method("forward")
    (y,) = method.execute([x])
    scale = ref.abs().max().item()
    assert y.shape == ref.shape and scale > 0 and (y - ref).abs().max().item() <= 1e-3 * scale


def _hide_executorch(monkeypatch) -> None:
    """Every ``import executorch...`` fails, also of submodules imported earlier."""
    for name in {n for n in sys.modules if n.startswith("executorch.")} | {"executorch"}:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_package_is_one_line(monkeypatch, tmp_path):
    _hide_executorch(monkeypatch)
    hint = 'pip install -e ".[executorch]"'
    with pytest.raises(UserError) as e:
        B.make_runner(TINY, TargetSpec(resolution=32, backend="executorch"))
    assert str(e.value) == f"target.backend: executorch needs the executorch package ({hint})"
    with pytest.raises(ExportError) as e:
        export_arch(TINY, tmp_path / "b", resolution=32, onnx=False, torch_export=False, executorch=True)
    assert "\n" not in str(e.value) and str(e.value).startswith("model.pte") and hint in str(e.value)
    assert not (tmp_path / "b").exists()  # a failed export leaves nothing behind
    # A search says so once, before it makes its folder, instead of failing every trial.
    space = tmp_path / "et.yaml"
    space.write_text((SPACES / "tiny.yaml").read_text().replace("threads: 1,", "threads: 1, backend: executorch,"))
    assert main(["run", str(space), "--budget", "2", "--name", "x", "--runs", str(tmp_path / "runs"), "--quiet"]) == 2
    assert not (tmp_path / "runs" / "x").exists()
    B.make_runner(TINY, TargetSpec(resolution=32))  # torch needs none of it
