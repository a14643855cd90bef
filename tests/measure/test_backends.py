"""The runtimes (measure/backends.py): every backend's runner computes what the training form
computes, exports are cached, int8 calibrates on the images it is given, and a missing
package is one clear line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shufflesearch.accuracy.data import DataSpec, load_data
from shufflesearch.errors import UserError
from shufflesearch.measure import backends as B
from shufflesearch.measure.target import TargetSpec
from shufflesearch.measure.timing import time_rounds
from shufflesearch.model.arch import Arch, Stage, Stem
from shufflesearch.model.compile import build
from shufflesearch.search.space import load_space
from tests.conftest import SPACES
from tests.review.test_export import random_state

# Two small stages, one of each family, so both unit kinds go through the exporter.
TINY = Arch(stages=(Stage("v2", 24, 2), Stage("v1", 48, 1, groups=2)), stem=Stem(channels=8), head=64,
            num_classes=10)


def randomised(arch: Arch, seed: int = 1) -> torch.nn.Module:
    """The training form of ``arch`` with weights far from the fresh init and a large FC, so that
    logits are O(1) and a wrong op shows up (fresh logits are ~1e-6 and compare equal to noise)."""
    model = build(arch)
    model.load_state_dict(random_state(arch, seed, fc_scale=0.3))
    return model.eval()


def reference(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def digits_like(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_runner_matches_training_form(backend):
    spec = TargetSpec(resolution=32, batch=2, backend=backend)
    r = B.make_runner(TINY, spec)
    y = r.outputs()
    ref = reference(B.seeded_model(TINY), r.x)
    assert r.x.shape == (2, 3, 32, 32) and y.shape == (2, 10)
    scale = float(np.abs(ref).max())
    assert scale > 0
    assert np.abs(y - ref).max() <= 1e-3 * scale  # BN folding reorders float32 arithmetic
    # The runner is a zero-argument callable that runs again on the same input.
    assert r() is not None and np.allclose(r.outputs(), y)


def test_seeded_weights_do_not_touch_the_callers_rng():
    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    B.seeded_model(TINY)
    assert torch.equal(torch.rand(3), a)
    w1 = B.seeded_model(TINY).fc.weight
    assert torch.equal(w1, B.seeded_model(TINY).fc.weight)


def test_torch_runner_uses_the_spec_threads_and_restores_them():
    before = torch.get_num_threads()
    r = B.make_runner(TINY, TargetSpec(resolution=32, threads=2))
    seen = []
    real = r.fn
    r.fn = lambda: (seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled())), real())[1]
    r()  # called alone, the runner fixes its own threads
    assert seen == [(2, True)] and torch.get_num_threads() == before
    time_rounds([r], max_rounds=3)  # in the timing loop, the loop fixes them for every call
    assert len(seen) > 4 and set(seen) == {(2, True)} and torch.get_num_threads() == before


def test_module_runner_onnx_matches_torch():
    m = randomised(TINY)
    spec = TargetSpec(resolution=32, backend="onnxruntime")
    r = B.make_module_runner(m, (3, 3, 32, 32), spec)
    ref = reference(m, r.x)
    assert np.abs(r.outputs() - ref).max() <= 1e-3 * np.abs(ref).max()
    assert np.abs(ref).max() > 0.1  # not two near-zero tensors
    assert r.info["path"] is None  # no key: not cached


def test_export_cache_hits_on_second_call(monkeypatch):
    spec = TargetSpec(resolution=32, batch=1, backend="onnxruntime")
    arch = TINY.replace(num_classes=11)  # an archid no other test exported
    calls = []
    real = B.export_onnx
    monkeypatch.setattr(B, "export_onnx", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    first = B.make_runner(arch, spec)
    second = B.make_runner(arch, spec)
    assert len(calls) == 1 and first.info["export_cached"] is False and second.info["export_cached"] is True
    assert first.info["path"] == second.info["path"] and arch.archid in Path(first.info["path"]).name
    assert np.array_equal(first.outputs(), second.outputs())
    B.make_runner(arch, TargetSpec(resolution=32, batch=2, backend="onnxruntime"))  # another shape
    assert len(calls) == 2


def test_int8_agrees_with_fp32_in_top1():
    m = randomised(TINY, seed=3)
    shape = (32, 3, 32, 32)
    r8 = B.make_module_runner(m, shape, TargetSpec(resolution=32, backend="onnxruntime-int8"),
                              calibration=digits_like(64, 0))
    ref = reference(m, r8.x)
    y8 = r8.outputs()
    assert y8.shape == ref.shape
    agree = float((y8.argmax(1) == ref.argmax(1)).mean())
    assert agree >= 0.75, agree
    # Quantised, not the fp32 graph again: the logits move, but not far.
    rel = np.abs(y8 - ref).max() / np.abs(ref).max()
    assert 0 < rel < 0.5, rel


def test_int8_calibration_reads_the_images_it_is_given():
    arch = TINY.replace(num_classes=12)
    spec = TargetSpec(resolution=32, batch=4, backend="onnxruntime-int8")
    consumed = []

    def images():  # an iterable of batches, at the proxy task's 16 px: resized to 32
        for i in range(3):
            consumed.append(i)
            yield torch.from_numpy(digits_like(8, i)[:, :, :16, :16].copy())

    a = B.make_runner(arch, spec, calibration=images())
    assert consumed == [0, 1, 2] and a.info["calibration"]["images"] == 24
    assert a.info["quantize_cached"] is False
    again = B.make_runner(arch, spec, calibration=np.concatenate(
        [digits_like(8, i)[:, :, :16, :16] for i in range(3)]))
    assert again.info["quantize_cached"] is True  # same images: same fingerprint, same file
    assert again.info["calibration"] == a.info["calibration"]
    # Images 50x larger widen every activation range: another file, other quantisation scales.
    wide = B.make_runner(arch, spec, calibration=50 * digits_like(24, 0))
    assert wide.info["calibration"]["fingerprint"] != a.info["calibration"]["fingerprint"]
    assert wide.info["path"] != a.info["path"]
    scales = []
    import onnx

    for r in (a, wide):
        g = onnx.load(r.info["path"]).graph
        q = [n for n in g.node if n.op_type == "QuantizeLinear"][0]
        init = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
        scales.append(float(np.max(init[q.input[1]])))
    assert scales[1] > 5 * scales[0]


def _input_scale(path: str) -> float:
    import onnx

    g = onnx.load(path).graph
    q = [n for n in g.node if n.op_type == "QuantizeLinear"][0]  # the network's input
    init = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    return float(np.max(init[q.input[1]]))


def test_int8_calibrates_a_batch_larger_than_its_images():
    # 16 calibration images at target.batch 32 once did not fill one batch, and
    # nothing could be measured.
    images = digits_like(16, 3)[:, :, :16, :16].copy()
    images[5] *= 40  # one image with a far wider range: the input's scale must see it
    a = B.make_runner(TINY, TargetSpec(resolution=32, batch=32, backend="onnxruntime-int8"), calibration=images)
    assert a.info["calibration"]["images"] == 16 and a().__len__() == 1
    b = B.make_runner(TINY, TargetSpec(resolution=32, batch=4, backend="onnxruntime-int8"), calibration=images)
    assert _input_scale(a.info["path"]) == pytest.approx(_input_scale(b.info["path"]), rel=1e-6)
    # batch 10: 16 images are one batch and a wrapped second; image 5 ranks in either way, and
    # image 12 (the wrapped part, once dropped) now counts too
    images[5] /= 40
    images[12] *= 40
    c = B.make_runner(TINY, TargetSpec(resolution=32, batch=10, backend="onnxruntime-int8"), calibration=images)
    d = B.make_runner(TINY, TargetSpec(resolution=32, batch=4, backend="onnxruntime-int8"), calibration=images)
    assert _input_scale(c.info["path"]) == pytest.approx(_input_scale(d.info["path"]), rel=1e-6)


def test_int8_calibrates_everywhere_on_one_draw_of_the_training_split(tmp_path):
    from shufflesearch.search.evaluator import calibration_images as search_images

    space = load_space(_tiny_space(tmp_path, "onnxruntime-int8"))
    data = load_data(space.data)
    x = B.calibration_images(data)
    assert x.dtype == np.float32 and x.shape == (B.CALIBRATION_IMAGES, *data.split("train").x.shape[1:])
    train = {img.tobytes() for img in data.split("train").x.numpy()}
    assert all(img.tobytes() in train for img in x)  # the training split, never what is scored
    assert len({img.tobytes() for img in x}) > B.CALIBRATION_IMAGES // 2  # a draw, not one image
    # one draw: the same images every time and for every caller (the search's, the CLI's,
    # a transfer's), so a quantised model is made once and found in the cache by the others
    again = B.calibration_images(load_data(space.data))
    assert np.array_equal(x, again) and np.array_equal(x, search_images(space))
    assert not np.array_equal(x, B.calibration_images(data, seed=1))
    assert len(B.calibration_images(data, 8)) == 8


def test_int8_without_calibration_is_an_error():
    with pytest.raises(UserError, match="calibration"):
        B.make_runner(TINY, TargetSpec(resolution=32, backend="onnxruntime-int8"))
    with pytest.raises(UserError, match="calibration: no images"):
        B.make_runner(TINY, TargetSpec(resolution=32, backend="onnxruntime-int8"), calibration=[])


@pytest.mark.parametrize("hidden", ["onnxruntime", "onnx"])
@pytest.mark.parametrize("backend", ["onnxruntime", "onnxruntime-int8"])
def test_missing_package_is_one_line(hidden, backend, monkeypatch):
    monkeypatch.setitem(sys.modules, hidden, None)  # any `import <hidden>` fails
    with pytest.raises(UserError) as e:
        B.make_runner(TINY, TargetSpec(resolution=32, backend=backend), calibration=digits_like(4, 0))
    msg = str(e.value)
    assert "\n" not in msg and hidden in msg and 'pip install -e ".[onnx]"' in msg and backend in msg
    B.make_runner(TINY, TargetSpec(resolution=32))  # torch needs neither


def test_target_and_space_accept_the_three_backends(tmp_path):
    assert B.BACKENDS == ("torch", "onnxruntime", "onnxruntime-int8", "executorch")
    for b in B.BACKENDS:
        assert TargetSpec(backend=b).backend == b
    with pytest.raises(UserError, match="backend: must be one of torch, onnxruntime, onnxruntime-int8, executorch"):
        TargetSpec(backend="int8")
    text = (SPACES / "tiny.yaml").read_text()
    assert "threads: 1," in text
    for b in B.BACKENDS:
        (tmp_path / f"{b}.yaml").write_text(text.replace("threads: 1,", f"threads: 1, backend: {b},"))
        assert load_space(tmp_path / f"{b}.yaml").target.backend == b
    (tmp_path / "bad.yaml").write_text(text.replace("threads: 1,", "threads: 1, backend: tensorrt,"))
    with pytest.raises(UserError, match="target.backend") as e:
        load_space(tmp_path / "bad.yaml")
    assert "\n" not in str(e.value) and "onnxruntime-int8" in str(e.value)


# --- the export bundle's int8 model -------------------------------------------------------------


def test_export_adds_a_verified_int8_model(tmp_path):
    import onnxruntime as ort

    from shufflesearch.review.export import ARTEFACTS, INT8, ExportError, export_arch

    m = randomised(TINY, seed=5)
    res = export_arch(TINY, tmp_path / "b", state_dict=m.state_dict(), resolution=32, torch_export=False,
                      int8=True, data=DataSpec(name="digits", resolution=16))
    out = tmp_path / "b"
    assert sorted(p.name for p in out.iterdir()) == sorted([*(a for a in ARTEFACTS if a != "model.pt2"), INT8])
    r = res.int8
    assert r["calibration_images"] == B.CALIBRATION_IMAGES and r["val_images"] == 359  # digits: 1,797 images, 20% held out
    assert 0.5 <= r["top1_agreement"] <= 1 and r["latency_fp32_ms"] > 0 and r["latency_int8_ms"] > 0
    assert r["acc_fp32"] is not None and 0 <= r["acc_int8"] <= 1  # 10 outputs: digits' classes
    assert r["size_int8_kb"] < r["size_fp32_kb"]
    # Our own session on validation digits (the range it was calibrated for), another batch
    # size (the dynamic batch is kept): it agrees with the training form as export reported.
    val = load_data(DataSpec(name="digits", resolution=16)).val
    x = torch.nn.functional.interpolate(val.x[:100], size=(32, 32), mode="bilinear", align_corners=False)
    s = ort.InferenceSession(str(out / INT8), providers=["CPUExecutionProvider"])
    (y,) = s.run(None, {s.get_inputs()[0].name: x.numpy()})
    ref = reference(m, x.numpy())
    assert y.shape == (100, 10)
    assert abs(float((y.argmax(1) == ref.argmax(1)).mean()) - r["top1_agreement"]) < 0.15
    assert any(n.op_type == "DequantizeLinear" for n in __import__("onnx").load(str(out / INT8)).graph.node)
    report = (out / "report.md").read_text()
    assert "## int8 (ONNX Runtime)" in report and f"{100 * r['top1_agreement']:.1f}%" in report
    assert f"{100 * r['acc_int8']:.1f}%" in report

    # A later export without --int8 leaves no stale int8 model beside the new files.
    export_arch(TINY, out, resolution=32, torch_export=False, onnx=False)
    assert not (out / INT8).exists()
    with pytest.raises(ExportError, match="model.int8.onnx: needs model.onnx"):
        export_arch(TINY, tmp_path / "c", resolution=32, torch_export=False, onnx=False, int8=True)


def test_int8_keeps_the_classifier_float(tmp_path):
    import onnx

    r = B.make_runner(TINY.replace(num_classes=13), TargetSpec(resolution=32, backend="onnxruntime-int8"),
                      calibration=digits_like(8, 0))
    fp32 = onnx.load(r.info["path"].split("_int8_")[0] + ".onnx")
    fc = B.classifier_nodes(fp32)
    assert fc and [n.op_type for n in fp32.graph.node if n.name in fc][0] in ("MatMul", "Gemm")
    g = onnx.load(r.info["path"]).graph
    producer = {o: n for n in g.node for o in n.output}
    node = producer[g.output[0].name]  # the logits come from the float classifier, not a DQ node
    assert node.op_type in ("MatMul", "Gemm", "Add")
    assert sum(n.op_type == "QuantizeLinear" for n in g.node) > 5  # the rest is quantised


def test_cli_export_arch_int8(tmp_path, capsys):
    import json

    from shufflesearch.cli import main

    (tmp_path / "a.yaml").write_text(TINY.to_yaml())
    assert main(["export-arch", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "b"), "--resolution", "32",
                 "--no-pt2", "--int8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert "model.int8.onnx" in d["files"] and 0 <= d["int8"]["top1_agreement"] <= 1
    assert d["int8"]["proxy"] == "digits" and d["int8"]["calibration_images"] == B.CALIBRATION_IMAGES
    assert main(["export-arch", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "c"), "--int8",
                 "--data", "nope"]) == 2
    assert "--data: 'nope' is not" in capsys.readouterr().err


# --- every backend through the timing protocol, the search, the CLI ------------------------------


def _calibration() -> np.ndarray:
    return B.calibration_images(load_data(DataSpec(name="digits")))


# ExecuTorch is left to tests/measure/test_executorch.py, whose search and transfer time it by
# the same protocol: lowering a network costs 15-20 s, too much to pay again here.
FAST_BACKENDS = [b for b in B.BACKENDS if b != "executorch"]


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_protocol_times_every_backend_against_its_own_reference(backend):
    from shufflesearch.measure.protocol import measure_arch, reference_archid, retime

    spec = TargetSpec(resolution=32, backend=backend)
    lat = measure_arch(TINY, spec, max_seconds=0.2, calibration=_calibration())
    assert lat.fingerprint["backend"] == backend and lat.spec["backend"] == backend
    assert lat.reference["archid"] == reference_archid() and lat.protocol == 2
    assert lat.ratio > 0 and lat.ratio_ci[0] <= lat.ratio <= lat.ratio_ci[1] and lat.n >= 10
    assert len(lat.ref_runs_ms) == len(lat.runs_ms)  # paired rounds: timed in one window
    # Side by side: the reference itself re-timed against the reference is a ratio near 1.
    ref, tiny = retime(["shufflenet_v2_x0_5", TINY], spec, max_seconds=0.5, calibration=_calibration())
    assert 0.7 < ref.ratio < 1.4 and tiny.ratio > 0


def test_int8_timing_without_calibration_is_one_line():
    from shufflesearch.measure.protocol import measure_arch

    with pytest.raises(UserError, match="onnxruntime-int8 needs calibration") as e:
        measure_arch(TINY, TargetSpec(resolution=32, backend="onnxruntime-int8"), max_seconds=0.1)
    assert "\n" not in str(e.value)


def _tiny_space(tmp_path: Path, backend: str, baselines: str = "[]") -> Path:
    text = (SPACES / "tiny.yaml").read_text().replace("threads: 1,", f"threads: 1, backend: {backend},")
    p = tmp_path / f"{backend}.yaml"
    p.write_text(text.replace("baselines: []", f"baselines: {baselines}"))
    return p


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_run_times_trials_on_the_space_backend(tmp_path, backend):
    from shufflesearch.cli import main
    from shufflesearch.review.pareto import load_records

    space = _tiny_space(tmp_path, backend)
    assert main(["run", str(space), "--budget", "2", "--workers", "1", "--name", "b", "--runs", str(tmp_path / "runs"), "--quiet"]) == 0
    _, records = load_records(tmp_path / "runs" / "b")
    done = [r for r in records if r.state == "COMPLETE"]
    assert len(done) == 2
    for r in done:
        assert r.latency.fingerprint["backend"] == backend and r.latency.spec["backend"] == backend
        assert r.latency.ratio > 0 and r.latency_ms == pytest.approx(r.latency.ratio * r.latency.reference["ms"])


def test_cli_latency_on_int8(tmp_path, capsys):
    from shufflesearch.cli import main

    (tmp_path / "a.yaml").write_text(TINY.to_yaml())
    assert main(["latency", str(tmp_path / "a.yaml"), "--resolution", "32", "--backend", "onnxruntime-int8",
                 "--max-seconds", "0.2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fingerprint"]["backend"] == "onnxruntime-int8" and d["ratio"] > 0


def test_latency_transfer_and_report(tmp_path, capsys):
    from shufflesearch.cli import main

    # Two baselines make at least two points whatever the front.
    space = _tiny_space(tmp_path, "torch", "[shufflenet_v2_x0_5, shufflenet_v1_g3_x0_5]")
    assert main(["run", str(space), "--budget", "3", "--workers", "1", "--name", "t", "--runs", str(tmp_path / "runs"), "--quiet"]) == 0
    run = tmp_path / "runs" / "t"
    capsys.readouterr()
    assert main(["latency", "transfer", str(run), "--backends", "torch,onnxruntime-int8", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d == json.loads((run / "transfer.json").read_text())
    assert d["backends"] == ["torch", "onnxruntime-int8"] and set(d["kendall_tau"]) == {"torch~onnxruntime-int8"}
    assert {"shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5"} <= {p["baseline"] for p in d["points"]}
    assert d["fingerprint"]["onnxruntime-int8"]["backend"] == "onnxruntime-int8"
    for p in d["points"]:
        for b in d["backends"]:
            assert p["latency"][b]["ratio"] > 0
    for b in d["backends"]:  # the fastest point on a runtime is never dominated there
        fastest = min(d["points"], key=lambda p: (p["latency"][b]["ms"], -p["proxy"]))
        assert fastest["front"][b] and d["front_size"][b] == sum(p["front"][b] for p in d["points"])
    assert main(["report", str(run), "--out", str(tmp_path / "r.html"), "--quiet"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Runtimes</h2>" in page and "torch vs onnxruntime-int8" in page
    assert main(["latency", "transfer", str(run), "--backends", "torch"]) == 2  # one runtime: nothing to compare
    with pytest.raises(SystemExit) as e:  # RUN is required: argparse's usage error
        main(["latency", "transfer"])
    assert e.value.code == 2


def test_guideline_table_on_onnxruntime():
    from shufflesearch.guidelines.microbench import TABLES, run

    res = run(scales=(1,), tables=("4",), max_seconds=0.05, backend="onnxruntime")
    assert [m.label for m in res] == [r.label for r in TABLES["4"]["rows"]]
    assert res[0].ratio == 1.0 and all(m.ms > 0 and m.ratio > 0 for m in res)
