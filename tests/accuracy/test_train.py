"""The `train` command: a seeded loop on the bundled digits, its files, and its errors."""

from __future__ import annotations

import contextlib
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


# --- cheap steps: what the Trainer does differently must not change what it computes ------------


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("c, hw, k, stride, bias", [
    (6, 1, 3, 1, False), (6, 2, 3, 1, False), (5, 3, 3, 2, True), (4, 4, 3, 1, False),
    (4, 4, 5, 2, False), (3, 2, 5, 1, True), (4, 5, 3, 2, False), (5, 2, 3, 2, False),
])
def test_small_map_depthwise_gradients_are_torchs(c, hw, k, stride, bias, nhwc):
    from shufflesearch.accuracy.training import (
        SMALL_MAP,
        SMALL_MAP_NHWC,
        _SmallMapDepthwise,
        small_map_depthwise,
    )

    oh = (hw + 2 * (k // 2) - k) // stride + 1
    if oh * oh * hw * hw > (SMALL_MAP_NHWC if nhwc else SMALL_MAP):
        pytest.skip("beyond the small-map limit of this layout: torch's own conv runs")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=bias).double()
    x = torch.randn(7, c, hw, hw, dtype=torch.double)
    if nhwc:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(conv(x))
    grads = []
    for patched in (False, True):
        conv.zero_grad()
        xi = x.clone().requires_grad_()
        with small_map_depthwise(conv) if patched else contextlib.nullcontext():
            y = conv(xi)
        (y * g).sum().backward()
        grads.append([xi.grad, conv.weight.grad] + ([conv.bias.grad] if bias else []))
        if patched:
            assert y.grad_fn.name() == "_SmallMapDepthwiseBackward"
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert "forward" not in vars(conv)  # the module is plain again
    # Big maps keep torch's own conv.
    with small_map_depthwise(conv):
        y = conv(torch.randn(2, c, 16, 16, dtype=torch.double))
    assert y.grad_fn.name() != "_SmallMapDepthwiseBackward"
    assert torch.autograd.gradcheck(
        lambda xx, ww: _SmallMapDepthwise.apply(xx, ww, None, conv), (x[:2].requires_grad_(),
                                                                      conv.weight.detach().clone().requires_grad_()))


def _tiny_trainer(data, channels_last=None, steps=6):
    from shufflesearch.accuracy.training import Trainer, fresh_model

    return Trainer(fresh_model(TINY, data, 0), data, total_steps=steps, device="cpu",
                   channels_last=channels_last)


def test_trainer_hands_the_model_back_as_it_was_given():
    torch.set_num_threads(1)
    data = load_data(SPEC)
    t = _tiny_trainer(data, channels_last=True)
    keys = list(t.model.state_dict())
    t.run(3)
    assert list(t.model.state_dict()) == keys
    assert all(p.is_contiguous() for p in t.model.parameters())  # NCHW again, not NHWC
    assert not [n for n, m in t.model.named_modules() if "forward" in vars(m)]
    # ... and a checkpoint taken there continues as if never stopped (on NHWC steps)
    straight = _tiny_trainer(data, channels_last=True)
    straight.run(6)
    again = _tiny_trainer(data, channels_last=True)
    again.load_state_dict(t.state_dict())
    again.run(6)
    assert again.losses == straight.losses


def test_losses_read_back_once_equal_losses_read_every_step():
    torch.set_num_threads(1)
    data = load_data(SPEC)
    quiet, loud = _tiny_trainer(data), _tiny_trainer(data)
    quiet.run(4)
    seen = []
    loud.run(4, on_step=lambda s, v: seen.append((s, v)))
    assert quiet.losses == loud.losses == [v for _, v in seen]
    assert [s for s, _ in seen] == [1, 2, 3, 4] and quiet.step == 4


def test_nhwc_steps_compute_the_nchw_steps():
    """One SGD step in NHWC and in NCHW: the same loss and the same updated weights, up to the
    float summation order of oneDNN's kernels."""
    torch.set_num_threads(1)
    data = load_data(SPEC)
    a, b = _tiny_trainer(data, channels_last=True), _tiny_trainer(data, channels_last=False)
    a.run(1)
    b.run(1)
    assert a.losses == pytest.approx(b.losses, rel=1e-5)
    wa, wb = a.model.state_dict(), b.model.state_dict()
    for k in wa:
        if wa[k].is_floating_point():
            assert torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5), k
