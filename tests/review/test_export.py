"""The export bundle: every artefact written, each checked here independently of export.py's
own verification (own import of model.py, own onnxruntime session, own torch.export.load)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

import shufflesearch as ss
from shufflesearch import Arch, Stage, Stem
from shufflesearch.cli import main
from shufflesearch.review.export import ARTEFACTS, ExportError, export_arch

# An architecture no preset resembles: stem without pool at stride 1, a V2 stage with a 1/4
# split and per-unit kernels, a megvii-layout V2 stage that widens at stride 1, V1 stages with
# 2 and 4 groups (one widening at stride 1), no head conv, odd class count, FC without bias.
ODD = Arch(
    stages=(
        Stage("v2", 32, 2, stride=2, kernel=(3, 5), split=0.25),
        Stage("v2", 48, 2, stride=1, kernel=7, layout="megvii"),
        Stage("v1", 96, 2, stride=2, groups=2),
        Stage("v1", 128, 1, stride=1, groups=4),
    ),
    stem=Stem(channels=16, stride=1, pool=False),
    head=0,
    num_classes=7,
    fc_bias=False,
)

# Parameter counts from REFERENCE.md (torchvision layout V2 0.5x; Megvii layout V1 g=3 1x).
CASES = [
    ("shufflenet_v2_x0_5", 1_366_792),
    ("shufflenet_v1_g3_x1_0", 1_864_728),
    (ODD, None),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """On a shared, oversubscribed machine two intra-op threads spin against each other and a
    32 px forward pass takes seconds instead of milliseconds; one thread keeps the tests short."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_state(arch: Arch, seed: int = 1, fc_scale: float = 0.1) -> dict[str, torch.Tensor]:
    """Weights far from the fresh init (non-trivial BN statistics, a non-negligible FC) so that
    a wrong channel order or a missing BN shows up in the outputs."""
    g = torch.Generator().manual_seed(seed)
    sd = ss.build(arch).state_dict()
    for k, v in sd.items():
        if not v.is_floating_point():
            continue
        if k.endswith("running_var"):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.startswith("fc."):
            sd[k] = fc_scale * torch.randn(v.shape, generator=g)
        else:
            sd[k] = v + 0.1 * torch.randn(v.shape, generator=g)
    return sd


def reference(arch: Arch, sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    m = ss.build(arch)
    m.load_state_dict(sd)
    with torch.no_grad():
        return m.eval()(x)


def import_standalone(path: Path, monkeypatch: pytest.MonkeyPatch):
    """Import model.py from its path with our package made unimportable."""
    monkeypatch.setitem(sys.modules, "shufflesearch", None)  # any `import shufflesearch` fails
    name = f"exported_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    spec.loader.exec_module(mod)
    return mod


def _arch(a: Arch | str) -> Arch:
    return ss.preset(a) if isinstance(a, str) else a


@pytest.mark.parametrize("case,params", CASES, ids=["v2_x0_5", "v1_g3_x1_0", "odd"])
def test_standalone_model_matches_compiled(case, params, tmp_path, monkeypatch):
    arch = _arch(case)
    sd = random_state(arch)
    res = export_arch(arch, tmp_path, state_dict=sd, resolution=32, onnx=False, torch_export=False)
    assert res.max_abs_diff["model.py"] <= 1e-5
    mod = import_standalone(tmp_path / "model.py", monkeypatch)
    net = mod.shufflenet(weights=tmp_path / "weights.pt").eval()
    n = sum(p.numel() for p in net.parameters())
    assert n == sum(p.numel() for p in ss.build(arch).parameters())
    if params is not None:
        assert n == params
    # Same parameter names and shapes as the training form.
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    x = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(5))
    ref = reference(arch, sd, x)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (3, arch.num_classes)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6)
    assert ref.abs().max() > 1e-2  # the comparison is not between two near-zero tensors


def test_standalone_model_is_plain_torch(tmp_path):
    export_arch("shufflenet_v2_x0_5", tmp_path, resolution=32, onnx=False, torch_export=False)
    text = (tmp_path / "model.py").read_text()
    assert "shufflesearch" not in text.split('"""', 2)[2]  # only the docstring names us
    assert "def channel_shuffle" in text and "class V2Unit" in text and "def shufflenet" in text
    assert "class V1Unit" not in text  # a V2-only network carries no V1 code


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_generated_source_is_lint_clean(tmp_path):
    from shufflesearch.model.codegen import model_source

    for i, arch in enumerate((ss.preset("shufflenet_v1_g8_x1_0"), ODD)):
        (tmp_path / f"m{i}.py").write_text(model_source(arch))
    r = subprocess.run(["ruff", "check", "--no-cache", "--isolated", "--select", "E,F,W,I,UP,B",
                        "--line-length", "100", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_bundle_has_every_artefact(tmp_path, capsys):
    arch = ss.preset("shufflenet_v2_x0_5")
    sd = random_state(arch)
    info = {"latency": {"median_ms": 3.25, "iqr_ms": 0.11, "n": 40}, "fingerprint": {"cpu": "TestCPU 9000"},
            "trial": 17}
    res = export_arch(arch, tmp_path / "bundle", state_dict=sd, info=info, resolution=32)
    out = tmp_path / "bundle"
    for name in ARTEFACTS:
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.iterdir()) == sorted(ARTEFACTS)  # nothing else, no staging left
    assert ss.load_arch(out / "arch.yaml").archid == arch.archid
    assert main(["show", str(out / "arch.yaml"), "--resolution", "32"]) == 0
    assert arch.archid in capsys.readouterr().out

    report = (out / "report.md").read_text()
    for needle in (arch.archid, "1,366,792", "3.25", "TestCPU 9000", "model.onnx", "Guidelines"):
        assert needle in report, needle

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))  # batch 3: dynamic
    ref = reference(arch, sd, x)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (y_onnx,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    diff = float(abs(torch.from_numpy(y_onnx) - ref).max())
    assert diff <= 1e-3 * float(ref.abs().max())
    assert 0 <= res.max_abs_diff["model.onnx"] <= 1e-3 * float(ref.abs().max())

    prog = torch.export.load(out / "model.pt2")
    with torch.no_grad():
        y_pt2 = prog.module()(x)
    assert torch.allclose(y_pt2, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))


def test_failed_verification_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    import shufflesearch.review.export as export

    # A generator bug: every depthwise kernel written as 5 instead of 3.
    real = export.model_source
    monkeypatch.setattr(export, "model_source", lambda a, v="": real(a, v).replace(", 3, True,", ", 5, True,"))
    with pytest.raises(ExportError, match="model.py"):
        export_arch("shufflenet_v2_x0_5", tmp_path / "b", resolution=32, onnx=False, torch_export=False)
    assert not (tmp_path / "b").exists()  # the folder the export created is removed again


def test_bad_weights_are_named(tmp_path):
    sd = random_state(ss.preset("shufflenet_v2_x0_5"))
    with pytest.raises(ExportError, match="fc.weight"):
        export_arch(ss.preset("shufflenet_v2_x0_5").replace(num_classes=10), tmp_path, state_dict=sd,
                    resolution=32, onnx=False, torch_export=False)
    with pytest.raises(ExportError, match=r"stages\.0\.0\.proj\.pw\.conv\.weight has shape"):
        export_arch("shufflenet_v2_x1_0", tmp_path, state_dict=sd, resolution=32, onnx=False,
                    torch_export=False)
    with pytest.raises(ExportError, match="unexpected.*head"):
        export_arch("shufflenet_v1_g3_x0_5", tmp_path, state_dict=sd, resolution=32, onnx=False,
                    torch_export=False)


def test_missing_onnxruntime_skips_unless_required(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    res = export_arch(ODD, tmp_path / "a", resolution=32, torch_export=False)
    assert "onnxruntime" in res.skipped["model.onnx"]
    assert not (tmp_path / "a" / "model.onnx").exists()
    assert "skipped" in (tmp_path / "a" / "report.md").read_text()
    with pytest.raises(ExportError, match="onnxruntime"):
        export_arch(ODD, tmp_path / "b", resolution=32, onnx=True, torch_export=False)


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [{family: v2, channels: 48, depth: 2}\n")  # unclosed list
    assert main(["export-arch", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and err.count("\n") == 1

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("stages: [{family: v2, channels: 47, depth: 2}]\n")
    assert main(["export-arch", str(wrong), "--out", str(tmp_path / "o")]) == 2
    assert "stages[0].channels" in capsys.readouterr().err

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["export-arch", "shufflenet_v2_x0_5", "--out", str(afile), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "not a directory" in err

    assert main(["export-arch", "shufflenet_v2_x0_5", "--out", str(tmp_path / "o"),
                 "--weights", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err


def test_cli_export_arch_json(tmp_path, capsys):
    import json

    assert main(["export-arch", "shufflenet_v1_g3_x0_5", "--out", str(tmp_path), "--resolution", "32",
                 "--no-onnx", "--no-pt2", "--latency", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["archid"] == ss.preset("shufflenet_v1_g3_x0_5").archid
    assert set(d["files"]) == {"arch.yaml", "model.py", "weights.pt", "report.md"}
    assert set(d["skipped"]) == {"model.onnx", "model.pt2"}
    report = (tmp_path / "report.md").read_text()
    assert "median_ms" in report and "Environment fingerprint" in report
    assert "| G2 |" in report  # V1's grouped 1x1 convs are what G2 is about


# --- model.aoti.pt2: the compiled inference form -------------------------------------------------

SMALL_V2 = Arch(stages=(Stage("v2", 24, 2), Stage("v2", 48, 2)), stem=Stem(channels=8), head=64)


def test_aoti_package_runs_the_exported_weights(tmp_path, capsys):
    sd = random_state(SMALL_V2)
    res = export_arch(SMALL_V2, tmp_path / "b", state_dict=sd, resolution=32, onnx=False,
                      torch_export=False, aoti=True, batch=3)
    out = tmp_path / "b"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [a for a in ARTEFACTS if a not in ("model.onnx", "model.pt2")] + ["model.aoti.pt2"])
    # Read back by torch's own loader, on a batch of the one shape it was compiled for, and
    # compared with the training form holding the given weights.
    import torch._inductor

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ref = reference(SMALL_V2, sd, x)
    y = torch._inductor.aoti_load_package(str(out / "model.aoti.pt2"))(x)
    y = y[0] if isinstance(y, (list, tuple)) else y
    assert float(ref.abs().max()) > 0.1  # far-from-init weights: a wrong op would show
    assert (y - ref).abs().max().item() <= 1e-3 * float(ref.abs().max())
    a = res.aoti
    assert (a["batch"], a["resolution"], a["threads"]) == (3, 32, 1)
    assert a["reference_ms"] > 0 and a["aoti_ms"] > 0 and a["compile_s"] > 0
    assert 0 <= res.max_abs_diff["model.aoti.pt2"] <= 1e-3 * float(ref.abs().max())
    report = (out / "report.md").read_text()
    assert "| model.aoti.pt2 |" in report and "Compiled form (AOTInductor)" in report
    assert "input (3, 3, 32, 32)" in report


def test_aoti_package_that_computes_otherwise_is_refused(tmp_path, monkeypatch):
    import shufflesearch.review.export as export

    # No compiler needed: a "package" that runs the eager inference form, one output nudged.
    monkeypatch.setattr(export, "compile_package", lambda inf, shape, path, threads: path.write_bytes(b"x"))
    built = {}

    def fake_load(path):
        def run(x):
            y = built["inf"](x).clone()
            y[:, 0] += 0.01 * y.abs().max()
            return y
        return run

    real_to_inference = export.to_inference

    def spy(model, channels_last=True):
        built["inf"] = real_to_inference(model, channels_last)
        return built["inf"]

    monkeypatch.setattr(export, "load_package", fake_load)
    monkeypatch.setattr(export, "to_inference", spy)
    with pytest.raises(ExportError, match="model.aoti.pt2: outputs differ"):
        export_arch(SMALL_V2, tmp_path / "b", state_dict=random_state(SMALL_V2), resolution=32,
                    onnx=False, torch_export=False, aoti=True)
    assert not (tmp_path / "b").exists()
    with pytest.raises(ExportError, match="batch: 0 must be an integer >= 1"):
        export_arch(SMALL_V2, tmp_path / "c", resolution=32, onnx=False, aoti=True, batch=0)
