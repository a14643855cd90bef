"""Training form ↔ inference form ↔ torchvision's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import shufflesearch as ss
from shufflesearch import PRESETS, Arch, Stage, Stem, build, load_torchvision_weights, to_inference
from shufflesearch.model.compile import convert_torchvision_state_dict
from shufflesearch.model.units import channel_shuffle


def _warm_bn(model: torch.nn.Module, res: int, seed: int = 0) -> torch.nn.Module:
    """Give BN non-trivial running statistics and affine params, so folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, res, res, generator=g))
    return model.eval()


def _max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", list(PRESETS))
def test_inference_form_equals_training_form_on_presets(name):
    torch.manual_seed(0)
    m = _warm_bn(build(name), 64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = m(x), to_inference(m)(x)
    assert (out - ref).abs().max().item() < 1e-5


def test_inference_form_equals_training_form_on_random_archs(random_archs):
    for i, a in enumerate(random_archs):
        torch.manual_seed(i)
        m = _warm_bn(build(a), 32, seed=i)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            ref, out = m(x), to_inference(m)(x)
        assert (out - ref).abs().max().item() < 1e-5 and _max_rel_diff(out, ref) < 1e-4, a.to_dict()


def test_build_inference_flag_gives_the_inference_form():
    m = build("shufflenet_v2_x0_5", inference=True)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert not m.training


@pytest.mark.parametrize("res", [32, 45, 64])
def test_forward_and_backward_on_random_archs(random_archs, res):
    for a in random_archs[::5]:
        m = build(a, num_classes=7).train()
        x = torch.randn(2, 3, res, res, requires_grad=True)
        y = m(x)
        assert y.shape == (2, 7)
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert all(p.grad is not None for p in m.parameters())


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_num_classes_override():
    m = build("shufflenet_v2_x0_5", num_classes=10)
    assert m.fc.out_features == 10


# --- torchvision weights --------------------------------------------------------------------


def torchvision_state_dict(widths: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
    """A state_dict with torchvision's ShuffleNetV2 key names and shapes, written from
    torchvision's layout (conv1, stage2-4 of InvertedResidual with branch1/branch2
    Sequentials, conv5, fc), with a distinct random value per tensor."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}

    def conv(key, cout, cin, k):
        sd[f"{key}.weight"] = torch.randn(cout, cin, k, k, generator=g)

    def bn(key, c):
        sd[f"{key}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{key}.bias"] = torch.randn(c, generator=g)
        sd[f"{key}.running_mean"] = torch.randn(c, generator=g)
        sd[f"{key}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{key}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1.0", 24, 3, 3)
    bn("conv1.1", 24)
    cin = 24
    for s, (out, n) in enumerate(zip(widths[:3], (4, 8, 4)), start=2):
        bf = out // 2
        for i in range(n):
            p = f"stage{s}.{i}"
            if i == 0:
                conv(f"{p}.branch1.0", cin, 1, 3)
                bn(f"{p}.branch1.1", cin)
                conv(f"{p}.branch1.2", bf, cin, 1)
                bn(f"{p}.branch1.3", bf)
            conv(f"{p}.branch2.0", bf, cin if i == 0 else bf, 1)
            bn(f"{p}.branch2.1", bf)
            conv(f"{p}.branch2.3", bf, 1, 3)
            bn(f"{p}.branch2.4", bf)
            conv(f"{p}.branch2.5", bf, bf, 1)
            bn(f"{p}.branch2.6", bf)
        cin = out
    conv("conv5.0", widths[3], cin, 1)
    bn("conv5.1", widths[3])
    sd["fc.weight"] = torch.randn(1000, widths[3], generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


@pytest.mark.parametrize("name, widths", [
    ("shufflenet_v2_x0_5", (48, 96, 192, 1024)), ("shufflenet_v2_x1_0", (116, 232, 464, 1024)),
    ("shufflenet_v2_x1_5", (176, 352, 704, 1024)), ("shufflenet_v2_x2_0", (244, 488, 976, 2048)),
])
def test_torchvision_keys_and_shapes_load(name, widths):
    sd = torchvision_state_dict(widths)
    assert len(sd) == 6 + 3 * 30 + 13 * 18 + 6 + 2  # 338 keys in torchvision's model
    m = load_torchvision_weights(build(name), sd)
    ours = m.state_dict()
    conv = convert_torchvision_state_dict(sd)
    assert set(conv) == set(ours)
    for k, v in conv.items():
        assert torch.equal(ours[k], v), k
    # spot checks of the mapping, written from torchvision's module structure
    assert torch.equal(ours["stages.0.0.proj.dw.conv.weight"], sd["stage2.0.branch1.0.weight"])
    assert torch.equal(ours["stages.1.3.main.dw.bn.running_var"], sd["stage3.3.branch2.4.running_var"])
    assert torch.equal(ours["head.conv.weight"], sd["conv5.0.weight"])


def test_torchvision_weights_of_the_wrong_width_are_refused():
    from shufflesearch import UserError

    with pytest.raises(UserError, match="do not fit"):
        load_torchvision_weights(build("shufflenet_v2_x1_0"), torchvision_state_dict((48, 96, 192, 1024)))


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0"])
def test_same_logits_as_torchvision(name):
    tv = pytest.importorskip("torchvision")  # not importable beside the CPU torch build here
    ref = getattr(tv.models, name)(weights=None).eval()
    _warm_bn(ref, 64)
    ours = load_torchvision_weights(build(name), ref.state_dict()).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)
        assert torch.allclose(to_inference(ours)(x), ref(x), atol=1e-4)


def test_merged_halves_path_is_used_and_exact():
    m = _warm_bn(build("shufflenet_v2_x1_0"), 64)
    inf = to_inference(m)
    units = [u for s in inf.stages for u in s]
    # every unit but the last of each stage hands halves to the next basic unit
    assert sum(getattr(u, "emit_halves", False) for u in units) == 13
    for cl in (True, False):
        x = torch.randn(1, 3, 96, 96)
        with torch.no_grad():
            assert (to_inference(m, channels_last=cl)(x) - m(x)).abs().max().item() < 1e-5


# --- the compiled form (AOTInductor) ---------------------------------------------------------------


def test_compiled_runner_matches_training_form_and_is_cached(tmp_path, monkeypatch):
    from shufflesearch.measure import backends as B
    from shufflesearch.measure.compiled import compiled_runner, package_tag
    from shufflesearch.measure.target import TargetSpec

    monkeypatch.setenv("SHUFFLESEARCH_CACHE_DIR", str(tmp_path))
    arch = Arch(stages=(Stage("v2", 24, 2),), stem=Stem(channels=8), head=32, num_classes=5)
    spec = TargetSpec(resolution=32, batch=2, threads=1)
    r = compiled_runner(arch, spec)
    assert r.backend == "torch" and r.info["compile_cached"] is False
    y = r.outputs()
    with torch.no_grad():
        ref = B.seeded_model(arch)(torch.from_numpy(r.x)).numpy()  # the training form, eval
    assert y.shape == (2, 5)
    assert np.abs(y - ref).max() <= 1e-3 * np.abs(ref).max() and np.abs(ref).max() > 0
    files = list((tmp_path / "aoti").glob("*.pt2"))
    assert [f.name for f in files] == [f"{arch.archid}_{package_tag(spec)}.pt2"]
    again = compiled_runner(arch, spec)  # read from the cache, not compiled again
    assert again.info["compile_cached"] is True
    assert np.array_equal(again.outputs(), y)
    assert package_tag(spec) != package_tag(TargetSpec(resolution=32, batch=2, threads=2))
    with pytest.raises(ss.UserError, match="no compiled form"):
        compiled_runner(arch, TargetSpec(resolution=32, backend="onnxruntime"))
