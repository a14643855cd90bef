"""What an export bundle holds (its artefacts, the ExportResult that describes them) and its
report.md: what was exported, how it was verified, what it costs, where it breaks the guidelines,
and the search figures it came with."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..guidelines import checks as guidelines
from ..model.arch import Arch, preset_name
from ..model.cost import costs, format_costs

ARTEFACTS = ("arch.yaml", "model.py", "weights.pt", "model.pt2", "model.onnx", "report.md")
INT8 = "model.int8.onnx"  # optional (int8=True): not part of the default bundle
AOTI = "model.aoti.pt2"  # optional (aoti=True): the compiled inference form (tens of seconds)
PTE = "model.pte"  # optional (executorch=True): the ExecuTorch program, lowered to XNNPACK
_MAX_FINDINGS = 15  # rows of guideline findings in report.md
VERIFY_BATCH = 2  # verification batch: 2 so that the dynamic batch dimension is exercised


@dataclass
class ExportResult:
    out_dir: Path
    archid: str
    files: dict[str, Path]  # artefact name → path
    max_abs_diff: dict[str, float]  # artefact → max |output − training-form output|
    skipped: dict[str, str] = field(default_factory=dict)  # artefact → why it is missing
    params: int = 0
    output_scale: float = 0.0  # max |reference output|: the yardstick for the diffs above
    int8: dict[str, Any] = field(default_factory=dict)  # agreement, accuracies, latencies (int8=True)
    channels_last: bool = True  # memory format of the exported inference form (the target's)
    aoti: dict[str, Any] = field(default_factory=dict)  # shape, compile time, latencies (aoti=True)
    executorch: dict[str, Any] = field(default_factory=dict)  # shape, lowering, latencies (model.pte)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "archid": self.archid,
            "params": self.params,
            "files": {k: str(v) for k, v in self.files.items()},
            "max_abs_diff": self.max_abs_diff,
            "output_scale": self.output_scale,
            "skipped": self.skipped,
            "channels_last": self.channels_last,
            **({"int8": self.int8} if self.int8 else {}),
            **({"aoti": self.aoti} if self.aoti else {}),
            **({"executorch": self.executorch} if self.executorch else {}),
        }


def _aoti_lines(r: Mapping[str, Any]) -> list[str]:
    return [
        f"`{AOTI}`: the inference form compiled ahead of time by AOTInductor (`torch.export`, "
        f"weights frozen into the package) for input ({r['batch']}, 3, {r['resolution']}, "
        f"{r['resolution']}) and {r['threads']} thread(s); it runs only that shape. Load it with "
        "`torch._inductor.aoti_load_package(\"model.aoti.pt2\")` on a machine like this one "
        f"(the kernels are compiled for its CPU). Compiling took {r['compile_s']:.0f} s.",
        "",
        "| form | latency (ms) | speed-up over eager training form |",
        "|---|---|---|",
        f"| training form, eval (torchvision's eager ShuffleNetV2, module for module) | "
        f"{r['reference_ms']:.3f} | x1.00 |",
        f"| inference form, eager (what a search times) | {r['eager_ms']:.3f} | x{r['eager_speedup']:.2f} |",
        f"| {AOTI} | {r['aoti_ms']:.3f} | x{r['aoti_speedup']:.2f} |",
        "",
        "Medians over interleaved rounds on this machine when exporting; speed-ups are the "
        "medians of the per-round ratios (`python bench/torch_form.py` measures them with intervals).",
    ]


def _int8_lines(r: Mapping[str, Any], arch: Arch, res: int) -> list[str]:
    def acc(v: Any) -> str:
        return f"{100 * v:.1f}%" if v is not None else "n/a"

    lines = [
        f"`{INT8}`: static post-training quantisation of `model.onnx` (QDQ, int8 activations, "
        f"per-channel int8 weights), calibrated on {r['calibration_images']} training images of "
        f"the proxy task ({r['proxy']}, resized to {res}x{res}). On {r['val_images']} validation "
        f"images its top-1 prediction agrees with `model.onnx` for **{100 * r['top1_agreement']:.1f}%**.",
        "",
        "| | model.onnx (fp32) | model.int8.onnx |",
        "|---|---|---|",
        f"| latency, ONNX Runtime, batch 1, 1 thread (ms) | {r['latency_fp32_ms']:.3f} | "
        f"{r['latency_int8_ms']:.3f} (x{r['latency_ratio']:.2f}) |",
        f"| proxy-task accuracy (validation split) | {acc(r['acc_fp32'])} | {acc(r['acc_int8'])} |",
        f"| file size (KB) | {r['size_fp32_kb']:.0f} | {r['size_int8_kb']:.0f} |",
        "",
        "Latencies are medians over interleaved rounds of the two sessions on this machine when "
        "exporting; the ratio is the median of the per-round ratios.",
    ]
    if r["acc_fp32"] is None:
        lines += ["", f"Accuracy is n/a: the classifier has {arch.num_classes} outputs, not the proxy "
                     "task's classes (export weights trained with `shufflesearch train`)."]
    return lines


def _pte_lines(r: Mapping[str, Any]) -> list[str]:
    n = r["delegated_nodes"] + r["portable_nodes"]
    return [
        f"`{PTE}`: the inference form (NCHW) captured by `torch.export` and lowered by ExecuTorch "
        f"{r['executorch']} with the XNNPACK partitioner for input ({r['batch']}, 3, {r['resolution']}, "
        f"{r['resolution']}); it runs only that shape. XNNPACK runs {r['delegated_nodes']} of its "
        f"{n} ops, ExecuTorch's portable kernels the rest. Lowering took {r['lower_s']:.0f} s; "
        f"the file is {r['size_kb']:.0f} KB.",
        "",
        "Run it with ExecuTorch's runtime: in Python, `executorch.runtime.Runtime.get()"
        ".load_program(\"model.pte\").load_method(\"forward\").execute([x])`; on Android or iOS, "
        "ExecuTorch's `Module` API with the XNNPACK backend linked in.",
        "",
        "| form | latency (ms) | ratio to torch |",
        "|---|---|---|",
        f"| inference form, torch eager, {r['torch_form']} (what a `torch` search times) | "
        f"{r['torch_ms']:.3f} | x1.00 |",
        f"| {PTE}, ExecuTorch + XNNPACK | {r['executorch_ms']:.3f} | x{r['latency_ratio']:.2f} |",
        "",
        f"Medians over interleaved rounds on this machine when exporting, {r['threads']} thread(s); "
        "the ratio is the median of the per-round ratios. A phone runs the XNNPACK kernels, not "
        "torch's: time model.pte there for the figure that ships.",
    ]


# --- report.md --------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return f"{len(v)} values"
    return str(v)


def _kv_table(d: Mapping[str, Any]) -> list[str]:
    rows = ["| key | value |", "|---|---|"]
    rows += [f"| {k} | {_fmt(v)} |" for k, v in d.items()]
    return rows


def _guideline_lines(arch: Arch, res: int) -> list[str]:
    try:
        rep = guidelines.check(arch, res)
    except Exception as e:  # a checker bug must not cost the user an otherwise verified bundle
        return [f"The guideline check failed: {e.__class__.__name__}: {e}"]
    findings = list(getattr(rep, "findings", []))
    penalties = getattr(rep, "penalties", {})
    lines = []
    if isinstance(penalties, Mapping) and penalties:
        lines += ["Penalties: " + ", ".join(f"{k} {_fmt(v)}" for k, v in penalties.items()), ""]
    if not findings:
        return [*lines, "No findings: the network follows G1–G4 as the checkers see it."]
    # Worst first, and not hundreds of rows: `shufflesearch guidelines arch.yaml --all` lists them all.
    findings.sort(key=lambda f: -float(getattr(f, "penalty", 0) or 0))
    shown = findings[:_MAX_FINDINGS]
    lines += ["| guideline | node | penalty | finding |", "|---|---|---|---|"]
    for f in shown:
        lines.append(
            f"| {getattr(f, 'guideline', '')} | `{getattr(f, 'node', '')}` | "
            f"{_fmt(getattr(f, 'penalty', ''))} | {getattr(f, 'message', '')} |"
        )
    if len(findings) > len(shown):
        lines += ["", f"... and {len(findings) - len(shown)} more (`shufflesearch guidelines arch.yaml --all` lists all)."]
    return lines


_LATENCY_KEYS = ("latency_ms", "latency_measured_ms", "latency_ratio", "latency_ratio_ci", "latency_reference",
                 "latency_drifted", "latency_retimed")


def _latency_summary(info: Mapping[str, Any]) -> list[str]:
    """The figure in one paragraph: ms = ratio [95% CI] x the reference, the drift flag, and
    whether it comes from the run's side-by-side re-timing (export_info's latency_* keys)."""
    ms, ratio = info.get("latency_ms"), info.get("latency_ratio")
    if ms is None:
        return []
    ref = info.get("latency_reference") or {}
    ci = info.get("latency_ratio_ci")
    if ratio is not None and ref:
        ref_ms = ms / ratio if ratio else ref.get("ms")
        text = (f"**{ms:.3f} ms** = ratio {ratio:.4f}"
                + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")
                + f" x reference {ref.get('arch')} ({ref.get('archid')}) at {ref_ms:.3f} ms.")
    else:
        text = f"**{ms:.3f} ms** (the trial's own median; no reference, timing protocol 1)."
    if info.get("latency_measured_ms") is not None:
        text += f" The search stored {info['latency_measured_ms']:.3f} ms (its own window's reference figure)."
    text += (" Re-timed side by side with the front and the baselines at the end of the run."
             if info.get("latency_retimed") else " Not re-timed side by side (`shufflesearch pareto RUN --retime`).")
    text += (" **Drifted**: the window ran beyond the drift bound off the reference's usual speed."
             if info.get("latency_drifted") else " Drifted: no.")
    return [text, ""]


def render_report(arch: Arch, result: ExportResult, info: Mapping[str, Any], res: int,
                  trained: bool, version: str = "") -> str:
    """report.md: what the bundle holds, what was verified, and what the Arch costs."""

    name = preset_name(arch)
    c = costs(arch, res)
    what = {
        "arch.yaml": "the architecture (`shufflesearch show arch.yaml`)",
        "model.py": "standalone PyTorch source (training form), needs torch only",
        "weights.pt": "state_dict for model.py: " + ("the given weights" if trained else "freshly initialised"),
        "model.pt2": "`torch.export` program of the inference form (BN folded), dynamic batch, "
                     + ("NHWC (channels_last)" if result.channels_last else "NCHW") + " as the target timed",
        "model.onnx": "the inference form as ONNX, dynamic batch; input `input`, output `logits`",
        INT8: "model.onnx quantised to int8 (QDQ, per-channel weights), same input and output",
        AOTI: "AOTInductor package of the inference form, one fixed input shape (see below)",
        PTE: "ExecuTorch program (XNNPACK) of the inference form, one fixed input shape (see below)",
        "report.md": "this file",
    }
    lines = [
        f"# Export of {arch.archid}" + (f" ({name})" if name else ""),
        "",
        f"Written by shufflesearch {version} on {time.strftime('%Y-%m-%d %H:%M:%S')}. Every file was "
        f"checked against the compiled training form (eval mode) on a seeded random batch of "
        f"{VERIFY_BATCH} at {res}x{res}; its outputs reach {result.output_scale:.3g} in absolute value"
        + (" (fresh weights: logits are tiny, so are the diffs)." if not trained else "."),
        "",
        "| file | what | check |",
        "|---|---|---|",
    ]
    for art in ARTEFACTS + tuple(a for a in (INT8, AOTI, PTE) if a in result.files):
        if art in result.skipped:
            lines.append(f"| {art} | skipped | {result.skipped[art]} |")
            continue
        if art == "arch.yaml":
            check = "reads back with the same archid"
        elif art == "model.py":
            check = f"imported alone; {result.params:,} params; max abs diff {result.max_abs_diff[art]:.3g}"
        elif art == INT8:
            check = (f"onnxruntime; max abs diff {result.max_abs_diff[art]:.3g}; top-1 agreement "
                     f"with model.onnx {100 * result.int8['top1_agreement']:.1f}% (see below)")
        elif art == AOTI:
            a = result.aoti
            check = (f"loaded, run on a batch of {a['batch']} at {a['resolution']}x{a['resolution']}; "
                     f"max abs diff {result.max_abs_diff[art]:.3g}")
        elif art == PTE:
            a = result.executorch
            check = (f"loaded by the ExecuTorch runtime, run on a batch of {a['batch']} at "
                     f"{a['resolution']}x{a['resolution']}; max abs diff {result.max_abs_diff[art]:.3g}")
        elif art in result.max_abs_diff:
            tool = "onnxruntime" if art == "model.onnx" else "saved, loaded, run"
            check = f"{tool}; max abs diff {result.max_abs_diff[art]:.3g}"
        elif art == "weights.pt":
            check = "loaded into model.py"
        else:
            check = ""
        lines.append(f"| {art} | {what[art]} | {check} |")
    lines += ["", "## Costs", "", f"At {res}x{res}, batch 1: {c.params:,} params, "
              f"{c.macs / 1e6:.2f}M MACs, MAC {c.mac / 1e6:.2f}M elements, peak activation "
              f"{c.peak_activation / 1e6:.2f}M elements.", "", "```", format_costs(arch, c), "```"]
    lines += ["", "## Guidelines (ShuffleNet V2, Sec. 2)", "", *_guideline_lines(arch, res)]
    if result.int8:
        lines += ["", "## int8 (ONNX Runtime)", "", *_int8_lines(result.int8, arch, res)]
    if result.aoti:
        lines += ["", "## Compiled form (AOTInductor)", "", *_aoti_lines(result.aoti)]
    if result.executorch:
        lines += ["", "## Mobile runtime (ExecuTorch, XNNPACK)", "", *_pte_lines(result.executorch)]
    lines += ["", "## Latency", ""]
    lines += _latency_summary(info)
    lat = info.get("latency")
    if isinstance(lat, Mapping):
        lines += _kv_table({k: v for k, v in lat.items() if k not in ("fingerprint", "runs_ms")})
    else:
        lines.append("Not measured for this export (see `shufflesearch export RUN` for a searched trial).")
    fp = info.get("fingerprint") or (lat.get("fingerprint") if isinstance(lat, Mapping) else None)
    if isinstance(fp, Mapping):
        lines += ["", "Environment fingerprint:", "", *_kv_table(fp)]
    rest = {k: v for k, v in info.items() if k not in ("latency", "fingerprint") and k not in _LATENCY_KEYS}
    if rest:
        lines += ["", "## Provenance", "", *_kv_table(rest)]
    return "\n".join(lines) + "\n"
