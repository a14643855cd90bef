"""The export bundle: one architecture as files people can deploy, read and train.

``export_arch`` writes, into one folder,

    arch.yaml    the Arch (``load_arch`` and ``shufflesearch show`` read it back)
    model.py     standalone PyTorch source of the training form (codegen.py)
    weights.pt   a state_dict for model.py (the given weights, else the fresh ones tested)
    model.pt2    torch.export program of the inference form (BN folded, shuffle fused)
    model.onnx   the inference form as ONNX, run through onnxruntime
    model.aoti.pt2   (with ``aoti=True``) the inference form compiled by AOTInductor for one
                 input shape: the torch backend's compiled form, built by the same code;
                 its latency beside the eager forms goes into report.md
    model.pte    (with ``executorch=True``) the inference form lowered to XNNPACK for ExecuTorch,
                 for one input shape (pte.py); its latency beside torch's goes into report.md
    model.int8.onnx  (with ``int8=True``) model.onnx statically quantised to int8 (QDQ,
                 per-channel weights) on the proxy task's training split; its top-1
                 agreement with model.onnx on the validation split, both latencies and both
                 proxy-task accuracies go into report.md
    report.md    costs, guideline findings, latency and fingerprint, what was verified

and verifies every artefact as it goes, against one reference: the compiled training form in
eval mode, loaded with the weights, on a seeded random batch. The earlier exporters that users
left behind never checked their files (issue 7); a failed check here is an ExportError.
Everything is first written to a hidden staging folder and moved into place only when all
checks pass, so a failed export leaves no half-verified bundle behind.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..accuracy.data import load_data
from ..common.files import prepare_out_dir
from ..errors import Deprecated, UserError, first_line
from ..measure import backends as B
from ..measure.timing import time_rounds
from ..model.arch import Arch, load_arch, resolve_arch
from ..model.codegen import model_source
from ..model.compile import (
    build,
    check_state_dict_fits,
    compile_package,
    load_package,
    to_inference,
)
from .bundle import AOTI, ARTEFACTS, INT8, PTE, VERIFY_BATCH, ExportResult, render_report
from .pte import export_pte

_AGREEMENT_IMAGES = 500  # validation images compared at most (digits has 360)
# model.py may import these and nothing else: "depends only on torch" is checked, not hoped.
_ALLOWED_IMPORTS = {"__future__", "os", "collections", "typing", "dataclasses", "torch"}
# Tolerances relative to the largest reference output (freshly initialised logits are ~1e-8,
# so an absolute bound would pass anything).
_EXACT_TOL = 1e-6  # model.py runs the very same ops as the compiled model
_FOLDED_TOL = 1e-3  # BN folding and the exporters reorder float32 arithmetic


class ExportError(UserError):
    """An export that cannot be written or whose artefact failed verification."""


def export_arch(
    arch: Arch | str,
    out_dir: str | Path,
    *,
    state_dict: Mapping[str, torch.Tensor] | str | Path | None = None,
    info: dict[str, Any] | None = None,
    resolution: int = 224,
    onnx: bool | None = None,
    torch_export: bool = True,
    log: Callable[[str], None] | None = None,
    int8: bool = False,
    data: Any = None,
    channels_last: bool = True,
    aoti: bool = False,
    batch: int = 1,
    threads: int = 1,
    executorch: bool = False,
    proxy: Any = None,
) -> ExportResult:
    """Write and verify the bundle of ``arch`` (an Arch, preset name or arch file) in ``out_dir``.

    ``state_dict``: weights of the training form (a mapping or a .pt file); default: fresh ones.
    ``info``: what the caller knows beyond the Arch, shown in report.md; recognised keys are
    ``latency`` (a ``Latency.to_dict()``), ``fingerprint``, ``proxy``, ``trial``, ``run``; any
    other key is listed as is. ``resolution``: input side for the verification batch and the
    exported programs (ONNX and pt2 keep the batch dimension dynamic).
    ``onnx``: None exports ONNX when onnx/onnxruntime are installed and notes the skip
    otherwise; True makes their absence an error; False skips it.
    ``int8``: also write model.int8.onnx (needs model.onnx), calibrated on the training split
    of ``data`` (the proxy task, a DataSpec; default the default one) and compared with
    model.onnx on its validation split. (``proxy`` is the old name of ``data``, read for one
    release.)
    ``channels_last``: the memory format of the exported inference form (model.pt2); pass the
    target's ``channels_last`` so that what ships is what was timed.
    ``aoti``: also write model.aoti.pt2, the inference form compiled by AOTInductor for input
    (``batch``, 3, ``resolution``, ``resolution``) and ``threads`` threads (pass the target's),
    checked against the training form on a batch of that shape and timed beside the eager
    forms. Compiling takes tens of seconds.
    ``executorch``: also write model.pte, the ExecuTorch program (XNNPACK) for the same fixed
    shape, run in ExecuTorch's runtime against the training form and timed beside torch.
    """
    say = log or (lambda _msg: None)
    arch = resolve_arch(arch)
    if proxy is not None:
        warnings.warn("export_arch(proxy=...) is now export_arch(data=...); the old name goes in "
                      "the next release", Deprecated, stacklevel=2)
        data = proxy if data is None else data
    for name, v in (("batch", batch), ("threads", threads)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ExportError(f"{v!r} must be an integer >= 1", field=name)
    if not isinstance(resolution, int) or resolution < arch.total_stride:
        raise ExportError(f"{resolution!r} must be an integer >= the network's total stride "
                          f"{arch.total_stride}", field="resolution")
    created = not Path(out_dir).exists()
    out = prepare_out_dir(Path(out_dir), ExportError)
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        try:
            result = _export_into(arch, stage, out, state_dict, info or {}, resolution, onnx, torch_export, say,
                                  int8, data, channels_last, (batch, threads) if aoti else None,
                                  (batch, threads) if executorch else None)
        except BaseException:
            if created:  # a failed export leaves the disk as it found it
                shutil.rmtree(stage, ignore_errors=True)
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise
        for old in ARTEFACTS + ("model.onnx.data", INT8, AOTI, PTE):  # no stale files from an earlier export
            (out / old).unlink(missing_ok=True)
        for f in stage.iterdir():
            f.replace(out / f.name)
        result.files = {k: out / v.name for k, v in result.files.items()}
        return result
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _export_into(
    arch: Arch, d: Path, out: Path, state_dict: Any, info: dict[str, Any], res: int,
    onnx: bool | None, torch_export: bool, say: Callable[[str], None], int8: bool = False,
    data: Any = None, channels_last: bool = True, aoti: tuple[int, int] | None = None,
    pte: tuple[int, int] | None = None,
) -> ExportResult:
    model = build(arch)
    trained = state_dict is not None
    if trained:
        _load_weights(model, state_dict)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(VERIFY_BATCH, arch.in_channels, res, res, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)  # (B, classes): the reference every artefact is compared with
    scale = ref.abs().max().item() + 1e-30
    result = ExportResult(out, arch.archid, {}, {}, params=params, output_scale=scale)

    say("arch.yaml")
    (d / "arch.yaml").write_text(arch.to_yaml())
    back = load_arch(d / "arch.yaml")
    if back.archid != arch.archid:
        raise ExportError(f"arch.yaml: reads back as archid {back.archid}, expected {arch.archid}")
    result.files["arch.yaml"] = d / "arch.yaml"

    say("weights.pt")
    torch.save(model.state_dict(), d / "weights.pt")
    result.files["weights.pt"] = d / "weights.pt"

    say("model.py")
    (d / "model.py").write_text(model_source(arch, __version__))
    result.max_abs_diff["model.py"] = _verify_source(d / "model.py", d / "weights.pt", arch, params, x, ref)
    result.files["model.py"] = d / "model.py"

    inf = to_inference(model, channels_last=channels_last)  # the memory format the target timed
    result.channels_last = channels_last
    if torch_export:
        say("model.pt2")
        result.max_abs_diff["model.pt2"] = _export_pt2(inf, x, ref, scale, d / "model.pt2")
        result.files["model.pt2"] = d / "model.pt2"
    else:
        result.skipped["model.pt2"] = "not requested"

    if onnx is False:
        result.skipped["model.onnx"] = "not requested"
    else:
        # torch.onnx's exporter needs onnxscript; the check needs onnx and onnxruntime.
        missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
        hint = f"pip install {' '.join(missing)}, or the package's [onnx] extra"
        if missing and onnx:
            raise ExportError(f"model.onnx: needs {', '.join(missing)} ({hint})")
        if missing:
            result.skipped["model.onnx"] = f"{', '.join(missing)} not installed ({hint})"
            say(f"skipping model.onnx: {result.skipped['model.onnx']}")
        else:
            say("model.onnx")
            result.max_abs_diff["model.onnx"] = _export_onnx(inf, x, ref, scale, d / "model.onnx")
            result.files["model.onnx"] = d / "model.onnx"

    if int8:
        if "model.onnx" not in result.files:
            raise ExportError(f"{INT8}: needs model.onnx, which was skipped ({result.skipped['model.onnx']})")
        say(f"{INT8} (calibrating, comparing with model.onnx on the proxy task)")
        result.int8 = _export_int8(d / "model.onnx", d / INT8, x, ref, scale, arch, data)
        result.max_abs_diff[INT8] = result.int8.pop("max_abs_diff")
        result.files[INT8] = d / INT8

    if aoti is not None:
        say(f"{AOTI} (compiling: tens of seconds)")
        result.aoti = _export_aoti(model, d / AOTI, res, *aoti)
        result.max_abs_diff[AOTI] = result.aoti.pop("max_abs_diff")
        result.files[AOTI] = d / AOTI

    _add_pte(result, model, d / PTE, res, pte, channels_last, say)

    say("report.md")
    (d / "report.md").write_text(render_report(arch, result, info, res, trained, __version__))
    result.files["report.md"] = d / "report.md"
    return result


def _add_pte(result: ExportResult, model: torch.nn.Module, path: Path, res: int,
             pte: tuple[int, int] | None, channels_last: bool, say: Callable[[str], None]) -> None:
    """model.pte (``pte``: batch and threads; None: not asked for), its outputs checked against
    the training form's on a batch of its one shape (pte.py)."""
    if pte is None:
        return
    say(f"{PTE} (lowering to XNNPACK for ExecuTorch: tens of seconds)")
    try:
        y, ref, result.executorch = export_pte(model, path, res, *pte, channels_last)
    except UserError as e:
        raise ExportError(str(e) if str(e).startswith(PTE) else f"{PTE}: {e}") from None
    result.max_abs_diff[PTE] = _max_diff(y, ref, PTE, _FOLDED_TOL * (ref.abs().max().item() + 1e-30))
    result.files[PTE] = path


def _load_weights(model: torch.nn.Module, state_dict: Any) -> None:
    if isinstance(state_dict, (str, Path)):
        try:
            with warnings.catch_warnings():  # torch's pickle-protocol notes are not for users
                warnings.simplefilter("ignore")
                state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ExportError(f"{state_dict}: no such weights file") from None
        except Exception as e:  # pickle, zip and torch errors all mean "not a state_dict file"
            raise ExportError(f"{state_dict}: not a PyTorch state_dict file ({e.__class__.__name__})") from None
    if not isinstance(state_dict, Mapping):
        raise ExportError(f"weights: expected a state_dict (a mapping), got {type(state_dict).__name__}")
    check_state_dict_fits(model, state_dict, "weights", ExportError)
    model.load_state_dict(state_dict)


def _max_diff(y: torch.Tensor, ref: torch.Tensor, what: str, tol: float) -> float:
    """max |y − ref|, or an ExportError when it exceeds ``tol`` or the shapes differ."""
    if tuple(y.shape) != tuple(ref.shape):
        raise ExportError(f"{what}: output shape {tuple(y.shape)}, expected {tuple(ref.shape)}")
    diff = (y.detach().float() - ref).abs().max().item()
    if not diff <= tol:  # also catches NaN
        raise ExportError(f"{what}: outputs differ from the compiled model by {diff:.3g} (tolerance {tol:.3g})")
    return diff


def _verify_source(path: Path, weights: Path, arch: Arch, params: int, x: torch.Tensor,
                   ref: torch.Tensor) -> float:
    """Import model.py on its own (from its path, not via our package), rebuild the network,
    load weights.pt into it and compare parameter count and outputs."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or "."]
        for n in names:
            if n.split(".")[0] not in _ALLOWED_IMPORTS:
                raise ExportError(f"model.py: imports '{n}'; it must depend on torch only")
    name = f"_shufflesearch_export_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ExportError(f"model.py: cannot be imported from {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # NamedTuple and dataclass machinery look the module up by name
    try:
        spec.loader.exec_module(mod)
        net = mod.shufflenet(arch.num_classes, weights=weights)
    except Exception as e:
        raise ExportError(f"model.py: does not build the network ({e.__class__.__name__}: {e})") from None
    finally:
        sys.modules.pop(name, None)
    n = sum(p.numel() for p in net.parameters())
    if n != params:
        raise ExportError(f"model.py: {n:,} parameters, the compiled model has {params:,}")
    with torch.no_grad():
        y = net.eval()(x)
    return _max_diff(y, ref, "model.py", _EXACT_TOL * (ref.abs().max().item() + 1e-30))


def _dynamic_batch() -> dict[str, dict[int, Any]]:
    return {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}


def _export_pt2(inf: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor, scale: float, path: Path) -> float:
    try:
        with B.quiet_exporters():
            prog = torch.export.export(inf, (x,), dynamic_shapes=_dynamic_batch())
            torch.export.save(prog, path)
            loaded = torch.export.load(path)
    except Exception as e:
        raise ExportError(f"model.pt2: torch.export failed ({first_line(e)})") from None
    with torch.no_grad():
        y = loaded.module()(x)
    return _max_diff(y, ref, "model.pt2", _FOLDED_TOL * scale)


def _export_onnx(inf: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor, scale: float, path: Path) -> float:
    # onnx/onnxruntime are optional and heavy: loaded only when a bundle includes model.onnx.
    import onnx
    import onnxruntime as ort

    try:
        with B.quiet_exporters():
            torch.onnx.export(
                inf, (x,), str(path), dynamo=True, input_names=["input"], output_names=["logits"],
                dynamic_shapes=_dynamic_batch(), verbose=False,
                external_data=False,  # one self-contained file to deploy
            )
        onnx.checker.check_model(str(path))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = sess.run(["logits"], {"input": x.numpy()})
    except Exception as e:
        raise ExportError(f"model.onnx: export or onnxruntime check failed ({first_line(e)})") from None
    return _max_diff(torch.from_numpy(y), ref, "model.onnx", _FOLDED_TOL * scale)


def _export_aoti(model: torch.nn.Module, path: Path, res: int, batch: int, threads: int
                 ) -> dict[str, Any]:
    """Compile the inference form of ``model`` (the training form, eval, with its weights) as
    the torch backend's compiled runner does, check the package's outputs on a seeded batch
    of its one shape against ``model``'s, and time it beside the two eager forms."""
    shape = (batch, model.arch.in_channels, res, res)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    inf = to_inference(model)  # NHWC: the form the torch backend compiles (measure/compiled.py)
    t0 = time.perf_counter()
    try:
        with B.quiet_exporters():
            compile_package(inf, shape, path, threads)
        fn = load_package(path)
        with torch.inference_mode():
            y = fn(x)
    except Exception as e:
        raise ExportError(f"{AOTI}: AOTInductor compile or check failed "
                          f"({first_line(e)})") from None
    compile_s = time.perf_counter() - t0
    diff = _max_diff(y, ref, AOTI, _FOLDED_TOL * (ref.abs().max().item() + 1e-30))

    def runner(f: Callable[[torch.Tensor], torch.Tensor]) -> B.Runner:
        def run() -> torch.Tensor:
            with torch.inference_mode():
                return f(x)
        return B.Runner("torch", run, x.numpy(), threads, {})

    t_ref, t_e, t_a = time_rounds([runner(model), runner(inf), runner(fn)], max_seconds=1.0, target_rel_ci=None)
    return {
        "max_abs_diff": diff, "batch": batch, "resolution": res, "threads": threads,
        "compile_s": compile_s, "size_kb": path.stat().st_size / 1024,
        "reference_ms": statistics.median(t_ref), "eager_ms": statistics.median(t_e),
        "aoti_ms": statistics.median(t_a),
        "eager_speedup": statistics.median(r / e for r, e in zip(t_ref, t_e)),
        "aoti_speedup": statistics.median(r / a for r, a in zip(t_ref, t_a)),
    }


def _export_int8(fp32: Path, path: Path, x: torch.Tensor, ref: torch.Tensor, scale: float,
                 arch: Arch, task: Any) -> dict[str, Any]:
    """Quantise model.onnx to int8 on the proxy task's training split, check that it runs on
    the verification batch, and measure what int8 costs and gains: top-1 agreement with
    model.onnx and accuracy on the validation split, latency of both side by side."""
    data = load_data(task)
    shape = tuple(x.shape[1:])  # (C, H, W): the exported size; proxy images are resized to it
    try:
        cal = B.calibration_array(B.calibration_images(data), (1, *shape))
        B.quantize_int8(fp32, path, cal, batch=16)
        q = B.onnx_session(path, threads=torch.get_num_threads())
        f = B.onnx_session(fp32, threads=torch.get_num_threads())
        (y,) = q.run(None, {q.get_inputs()[0].name: x.numpy()})
    except UserError as e:
        raise ExportError(f"{INT8}: {e}") from None
    except Exception as e:
        raise ExportError(f"{INT8}: onnxruntime check failed ({first_line(e)})") from None
    if y.shape != tuple(ref.shape) or not np.isfinite(y).all():
        raise ExportError(f"{INT8}: output shape {y.shape} or non-finite values, expected {tuple(ref.shape)}")
    diff = float(np.abs(y - ref.numpy()).max())

    val = data.val
    n = min(len(val.y), _AGREEMENT_IMAGES)
    pred_f, pred_q = [], []
    for i in range(0, n, 32):
        xb = B.calibration_array(val.x[i:min(i + 32, n)], (1, *shape))
        pred_f.append(f.run(None, {f.get_inputs()[0].name: xb})[0].argmax(1))
        pred_q.append(q.run(None, {q.get_inputs()[0].name: xb})[0].argmax(1))
    pf, pq = np.concatenate(pred_f), np.concatenate(pred_q)
    labels = val.y[:n].numpy()
    same_task = arch.num_classes == data.num_classes  # accuracy needs the proxy task's classes
    one = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    runners = [B.Runner("onnxruntime", (lambda s=s: s.run(None, {s.get_inputs()[0].name: one})), one, 1, {})
               for s in (B.onnx_session(fp32, 1), B.onnx_session(path, 1))]
    t_f, t_q = time_rounds(runners, max_seconds=1.0, target_rel_ci=None)
    return {
        "max_abs_diff": diff,
        "proxy": data.spec.name,
        "calibration_images": len(cal),
        "val_images": int(n),
        "top1_agreement": float((pf == pq).mean()),
        "acc_fp32": float((pf == labels).mean()) if same_task else None,
        "acc_int8": float((pq == labels).mean()) if same_task else None,
        "latency_fp32_ms": statistics.median(t_f),
        "latency_int8_ms": statistics.median(t_q),
        "latency_ratio": statistics.median(q_ / f_ for f_, q_ in zip(t_f, t_q)),
        "size_fp32_kb": fp32.stat().st_size / 1024,
        "size_int8_kb": path.stat().st_size / 1024,
    }
