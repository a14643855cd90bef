"""review/bundle.py: report.md says what the bundle holds and how each file was checked, with
the costs of the paper's network (REFERENCE.md) and the latency figure as the run stored it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shufflesearch.model.arch import preset
from shufflesearch.review.bundle import ARTEFACTS, INT8, VERIFY_BATCH, ExportResult, render_report

ARCH = preset("shufflenet_v2_x0_5")


def result(**kw) -> ExportResult:
    files = {a: Path("out") / a for a in ARTEFACTS if a != "model.onnx"}
    return ExportResult(out_dir=Path("out"), archid=ARCH.archid, files=files,
                        max_abs_diff={"model.py": 0.0, "model.pt2": 2e-6}, params=1_366_792,
                        skipped={"model.onnx": "onnxruntime is not installed"}, output_scale=0.5, **kw)


@pytest.fixture(scope="module")
def plain() -> str:
    return render_report(ARCH, result(), {"space": "v2.yaml"}, 224, trained=False, version="9.9")


def test_the_report_lists_every_artefact_and_its_check(plain):
    assert plain.startswith(f"# Export of {ARCH.archid} (shufflenet_v2_x0_5)\n")
    assert f"seeded random batch of {VERIFY_BATCH} at 224x224" in plain
    assert "| model.onnx | skipped | onnxruntime is not installed |" in plain
    assert "| model.py | standalone PyTorch source (training form), needs torch only | imported alone; " \
           "1,366,792 params; max abs diff 0 |" in plain
    assert "| model.pt2 |" in plain and "max abs diff 2e-06 |" in plain
    assert "fresh weights" in plain and "freshly initialised" in plain
    assert INT8 not in plain  # not asked for


def test_the_costs_are_the_papers(plain):
    assert "At 224x224, batch 1: 1,366,792 params, 40.48M MACs" in plain  # torchvision's 0.5x
    assert "## Guidelines (ShuffleNet V2, Sec. 2)" in plain


def test_without_a_measurement_the_latency_says_so(plain):
    assert "Not measured for this export" in plain
    assert "## Provenance" in plain and "| space | v2.yaml |" in plain


def test_the_latency_is_the_ratio_times_the_reference():
    info = {"latency_ms": 2.0, "latency_ratio": 0.5, "latency_ratio_ci": [0.49, 0.51],
            "latency_reference": {"arch": "shufflenet_v2_x0_5", "archid": "ref0"},
            "latency_retimed": True, "latency": {"median_ms": 2.0, "n": 12}}
    text = render_report(ARCH, result(), info, 224, trained=True)
    assert ("**2.000 ms** = ratio 0.5000 (95% CI 0.4900-0.5100) x reference shufflenet_v2_x0_5 (ref0) "
            "at 4.000 ms.") in text
    assert "Re-timed side by side" in text and "Drifted: no." in text
    assert "| median_ms | 2 |" in text and "| n | 12 |" in text
    assert "## Provenance" not in text  # every key was a latency key
    assert "the given weights" in text


def test_int8_results_get_their_section_and_the_dict_keeps_them():
    int8 = {"calibration_images": 16, "proxy": "fashion", "val_images": 100, "top1_agreement": 0.97,
            "latency_fp32_ms": 1.0, "latency_int8_ms": 0.5, "latency_ratio": 0.5, "acc_fp32": None,
            "acc_int8": None, "size_fp32_kb": 100.0, "size_int8_kb": 30.0}
    r = result(int8=int8)
    r.files[INT8] = Path("out") / INT8
    r.max_abs_diff[INT8] = 0.01
    text = render_report(ARCH, r, {}, 224, trained=False)
    assert "## int8 (ONNX Runtime)" in text and "agrees with `model.onnx` for **97.0%**" in text
    assert "Accuracy is n/a: the classifier has 1000 outputs" in text
    assert r.to_dict()["int8"] == int8 and "int8" not in result().to_dict()
