"""The `train` command: a seeded loop on the bundled digits, its files, and its errors."""

from __future__ import annotations

import json

import pytest
import torch

import shufflesearch as ss
from shufflesearch import Arch, Stage, Stem
from shufflesearch.accuracy.data import DataSpec, load_data
from shufflesearch.accuracy.training import steps_per_epoch, train_arch
from shufflesearch.cli import main

# Small enough to train for a few epochs in seconds at 16 px.
TINY = Arch(
    stages=(Stage("v2", 32, 2, stride=2), Stage("v2", 64, 2, stride=2)),
    stem=Stem(channels=16, stride=1, pool=False),
    head=128,
)
SPEC = DataSpec(name="digits", resolution=16, batch=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    m = train_arch(TINY, SPEC, 3, out, seed=0, threads=1, quiet=True)
    return out, m


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return int((model.eval()(x).argmax(1) == y).sum()) / len(y)


def test_writes_weights_arch_and_metrics(trained):
    out, m = trained
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(m))
    arch = ss.load_arch(out / "arch.yaml")
    assert arch == TINY.replace(num_classes=10)  # the digits have 10 classes
    model = ss.build(arch)
    model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    # Recompute the reported validation accuracy from the saved weights and the data alone.
    data = load_data(SPEC)
    assert _accuracy(model, data.val.x, data.val.y) == pytest.approx(m["final"]["val_acc"], abs=1e-9)
    assert [e["epoch"] for e in m["epochs"]] == [1, 2, 3]
    # 1,797 digits, 20% of every class for validation and 20% for the check → 1,079 train
    # images; 64 per batch → 17 steps.
    assert m["settings"]["steps"] == 3 * 17 == 3 * steps_per_epoch(data)
    assert m["params"] == sum(p.numel() for p in model.parameters())


def test_it_learns(trained):
    _, m = trained
    losses = [e["train_loss"] for e in m["epochs"]]
    assert losses[-1] < losses[0]
    assert m["final"]["val_acc"] > 0.3  # 10 classes: chance is 0.1


def test_seeded(tmp_path, trained):
    out, m = trained
    m2 = train_arch(TINY, SPEC, 3, tmp_path, seed=0, threads=1, quiet=True)
    assert m2["epochs"] == m["epochs"]
    a = torch.load(out / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_trained_weights_export(trained, tmp_path, capsys):
    out, _ = trained
    assert main(["export-arch", str(out / "arch.yaml"), "--weights", str(out / "weights.pt"),
                 "--out", str(tmp_path), "--resolution", "16", "--no-onnx", "--no-pt2", "--quiet"]) == 0
    assert "given weights" in (tmp_path / "report.md").read_text()


def test_cli_errors(tmp_path, capsys):
    arch = tmp_path / "tiny.yaml"
    arch.write_text(TINY.to_yaml())
    cases = [
        (["--data", "mnist"], "--data: 'mnist'"),
        (["--data", f"npz:{tmp_path / 'missing.npz'}"], "missing.npz"),
        (["--epochs", "0"], "--epochs"),
        (["--resolution", "4"], "--resolution: 4"),
        (["--batch", "1"], "--batch: 1"),
    ]
    for extra, needle in cases:
        argv = ["train", str(arch), "--epochs", "1", "--out", str(tmp_path / "o"), "--quiet", *extra]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    assert main(["train", str(tmp_path / "nope.yaml"), "--epochs", "1", "--out", str(tmp_path)]) == 2
    assert "nope.yaml" in capsys.readouterr().err
