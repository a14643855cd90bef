"""The runtimes a latency figure can be taken on, each as a zero-argument callable.

The search ranks candidates by the latency of what ships. Four runtimes (``BACKENDS``):

  torch             the inference form (BN folded, shuffle fused) under ``inference_mode``
  onnxruntime       the inference form exported to ONNX, run by ONNX Runtime (CPU provider)
  onnxruntime-int8  the same ONNX file after static post-training quantisation (QDQ, int8
                    weights per output channel, int8 activations calibrated on images the
                    caller passes: the proxy task's training split)
  executorch        the inference form lowered to XNNPACK, run by ExecuTorch (executorch.py)

``make_runner(arch, spec)`` returns a ``Runner`` (timing.py): calling it runs ONE forward pass
of ``spec.batch`` images at ``spec.resolution`` on a fixed input, in the calling thread, and
returns the outputs. This module only builds runners; every one is timed by the one loop,
``timing.time_rounds``. Building a runner (export, quantisation, session) is the per-trial
set-up cost and is kept out of the timed calls.

ONNX Runtime is configured for timing on a shared machine: ``spec.threads`` intra-op threads,
one inter-op thread, and no spinning (idle ORT workers otherwise spin on the cores that
PyTorch work in the same process needs). With one thread ORT runs every kernel on the
calling thread, so the thread-CPU clock times it as it times torch.

Exports are cached in ``cache_dir()/onnx`` under (archid, input shape, exporter, opset, torch
version), and int8 models additionally under the calibration images' fingerprint, so an
architecture re-timed by a later trial or run is not exported again. The weights are the
seeded fresh ones of ``seeded_model`` (latency does not depend on their values; the cached
file must not depend on the global RNG either). The exporter is the TorchScript one: on this
project's 2-core VM it was 4-13x cheaper than ``dynamo=True`` (V2 1x: 0.6-3.1 s against
4.1-18.9 s under load), with the same outputs (bench/backends.py measures both).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..common.files import atomic_write
from ..errors import UserError, first_line
from ..model.arch import resolve_arch
from ..model.compile import build, to_inference
from . import executorch
from .env import cache_dir
from .target import BACKENDS, TargetSpec, stable_hash
from .timing import Runner

__all__ = ["BACKENDS", "Runner", "make_runner", "make_module_runner", "torch_runner", "fixed_input",
           "seeded_model", "export_onnx", "quantize_int8", "calibration_images", "calibration_array",
           "calibration_fingerprint", "require_onnx", "onnx_session", "CALIBRATION_IMAGES",
           "INSTALL_HINT"]

INSTALL_HINT = 'pip install -e ".[onnx]"'
OPSET = 17  # ONNX opset of the exports: every op of the inference form exists since 13
EXPORTER = "torchscript"  # torch.onnx.export(dynamo=False): 4-13x cheaper than dynamo here
SEED = 0  # the weights of an architecture's cached export
# int8 calibrates on this many proxy-task training images, everywhere (calibration_images).
# The count never changes what is timed (where the QDQ pairs go), only the MinMax ranges of
# the model an export ships, and the quantiser's cost. 16 because (bench/backends.py part 5,
# fashion, top-1 agreement with fp32 over draws of the images): V2 presets gain at most ~1
# point from 64 (worst draw 93.2-95.2% at 16, 94.2-95.4% at 64), while V1 loses badly as
# more images widen its ranges (g3 1x, worst draw: 66% at 16, 27% at 32, 26% at 64), and a
# new architecture quantises seconds faster at 224 px.
CALIBRATION_IMAGES = 16
CALIBRATION_LIMIT = 256  # a guard on what an iterable of batches is read for, not a choice


# --- the optional packages ---------------------------------------------------------------------


def require_onnx(backend: str = "onnxruntime") -> tuple[Any, Any]:
    """(onnx, onnxruntime), or a one-line UserError naming the install command."""
    try:
        # Heavy optional packages: imported only when an ONNX backend is asked for.
        import onnx
        import onnxruntime
    except ImportError as e:
        name = getattr(e, "name", None) or "onnxruntime"
        raise UserError(f"target.backend: {backend} needs the {name} package ({INSTALL_HINT})") from None
    return onnx, onnxruntime


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"target.backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")


# --- the runner ----------------------------------------------------------------------------------


def seeded_model(arch: Any, num_classes: int | None = None) -> nn.Module:
    """The training form of ``arch`` with weights drawn from a fixed seed (eval mode), without
    touching the caller's RNG: the weights every backend's runner of ``arch`` uses."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build(arch, num_classes=num_classes).eval()


def fixed_input(shape: tuple[int, ...]) -> np.ndarray:
    """The input every runner of ``shape`` is timed on: seeded, not the caller's RNG."""
    return np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)


def make_runner(arch: Any, spec: TargetSpec, *,
                calibration: np.ndarray | Iterable[Any] | None = None) -> Runner:
    """A zero-argument callable running one forward pass of ``arch`` (an Arch, preset name or
    arch file) on ``spec`` with ``spec.backend``. ``calibration`` (images, NCHW, any size:
    they are resized to ``spec.resolution``) is required by ``onnxruntime-int8``. All backends
    run the inference form (ONNX: as model.onnx; 2-3x cheaper to export than the training form)."""
    _check_backend(spec.backend)
    arch = resolve_arch(arch)
    if spec.backend == "executorch":  # the NCHW form: XNNPACK's passes reject channels_last
        return make_module_runner(to_inference(seeded_model(arch), False), spec.input_shape, spec, key=arch.archid)
    model = to_inference(seeded_model(arch))
    if spec.backend == "torch":
        return _torch_runner(model, spec)
    return _ort_runner(model, spec, calibration, key=arch.archid)


def make_module_runner(module: nn.Module, input_shape: tuple[int, int, int, int], spec: TargetSpec,
                       *, calibration: np.ndarray | Iterable[Any] | None = None,
                       key: str | None = None) -> Runner:
    """The same for any ``nn.Module`` (e.g. a guideline micro-bench block) on ``input_shape``;
    ``spec.backend``/``spec.threads`` choose the runtime. ONNX exports are cached only when
    the caller names the module's weights and structure with ``key``."""
    _check_backend(spec.backend)
    spec = TargetSpec(resolution=input_shape[-1], batch=input_shape[0], threads=spec.threads,
                      channels_last=spec.channels_last, backend=spec.backend)
    if spec.backend == "torch":
        return _torch_runner(module.eval(), spec, input_shape)
    if spec.backend == "executorch":
        return Runner(spec.backend, *executorch.prepare(module.eval(), fixed_input(input_shape), spec.threads, key))
    return _ort_runner(module.eval(), spec, calibration, key=key, input_shape=input_shape)


def _torch_runner(model: nn.Module, spec: TargetSpec,
                  input_shape: tuple[int, ...] | None = None) -> Runner:
    x = torch.from_numpy(fixed_input(input_shape or spec.input_shape))
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return torch_runner(model, x, spec.threads)


def torch_runner(f: Callable[[torch.Tensor], Any], x: torch.Tensor, threads: int = 1,
                 info: dict[str, Any] | None = None) -> Runner:
    """A ``Runner`` of any torch callable on the fixed input ``x`` (in the memory format it is
    to be timed in): a module (put in eval mode), a loaded package, a wrapped function."""
    if isinstance(f, nn.Module):
        f = f.eval()
    # Its own copy, from torch's allocator (aligned as every tensor a model is fed; an input
    # that wraps a numpy buffer need not be), in the memory format it was given.
    x = x.detach().clone(memory_format=torch.preserve_format)
    return Runner("torch", lambda: f(x), x.numpy(), threads, info or {})


# --- ONNX export, cached -----------------------------------------------------------------------


def _onnx_dir() -> Path:
    d = cache_dir() / "onnx"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _export_tag() -> str:
    return stable_hash({"exporter": EXPORTER, "opset": OPSET, "torch": torch.__version__, "form": "inference"})


def _int8_tag() -> str:
    """What else a quantised model depends on: the settings of quantize_int8 and the quantiser."""
    _, ort = require_onnx("onnxruntime-int8")
    return stable_hash({"format": "QDQ", "weights": "int8 per-channel", "activations": "int8 minmax",
                        "classifier": "float", "onnxruntime": ort.__version__})[:8]


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """The TorchScript exporter's deprecation notes and ORT's quantiser logging say nothing
    about this model."""
    loggers = [logging.getLogger(n) for n in ("", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, *,
                dynamo: bool = False) -> None:
    """Write ``model`` (eval mode) as ONNX for a fixed ``input_shape``, input ``x``, output
    ``y``; replaced whole (``atomic_write``) so that a concurrent reader never sees half."""
    x = torch.from_numpy(fixed_input(input_shape))

    def write(tmp: Path) -> None:
        with torch.inference_mode(False), torch.no_grad(), quiet_exporters():
            if dynamo:
                torch.onnx.export(model.eval(), (x,), str(tmp), dynamo=True, opset_version=18,  # its lowest
                                  input_names=["x"], output_names=["y"], external_data=False)
            else:
                torch.onnx.export(model.eval(), (x,), str(tmp), dynamo=False, opset_version=OPSET,
                                  input_names=["x"], output_names=["y"])

    try:
        atomic_write(path, write)
    except Exception as e:
        raise UserError(f"ONNX export failed ({first_line(e)})") from None


def _cached_export(model: nn.Module, shape: tuple[int, ...], key: str | None,
                   tmpdir: Path) -> tuple[Path, float, bool]:
    """(path, seconds spent, cache hit)."""
    if key is None:
        path = tmpdir / "model.onnx"
    else:
        b, _, h, w = shape
        path = _onnx_dir() / f"{key}_b{b}_{h}x{w}_{_export_tag()}.onnx"
        if path.is_file():
            return path, 0.0, True
    t0 = time.perf_counter()
    export_onnx(model, shape, path)
    return path, time.perf_counter() - t0, False


# --- int8 --------------------------------------------------------------------------------------


def calibration_images(data: Any, n: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """The images int8 is calibrated on, wherever it is (the search's timing, a re-time, a
    transfer, an export): ``n`` images of the proxy task's training split, drawn with a fixed
    ``seed`` (``data`` is an ``accuracy.data.ProxyData``). One draw everywhere means the same
    fingerprint everywhere, so a quantised model made once is found in the cache by the others."""
    return calibration_array(data.batch("train", n, seed=seed).x)


def calibration_array(images: np.ndarray | Iterable[Any], shape: tuple[int, ...] | None = None
                      ) -> np.ndarray:
    """The calibration images as one float32 array (N, C, H, W), at most CALIBRATION_LIMIT of
    them, resized to the model's input ``shape`` when given."""
    parts: list[np.ndarray] = []
    count = 0
    it = [images] if isinstance(images, (np.ndarray, torch.Tensor)) else images
    for item in it:
        a = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4:
            raise UserError(f"calibration: images must be (N, C, H, W) or (C, H, W), got shape {a.shape}")
        parts.append(a.astype(np.float32, copy=False))
        count += len(a)
        if count >= CALIBRATION_LIMIT:
            break
    if not parts or count == 0:
        raise UserError("calibration: no images given (onnxruntime-int8 calibrates on the proxy task's training split)")
    x = np.ascontiguousarray(np.concatenate(parts)[:CALIBRATION_LIMIT], dtype=np.float32)
    if shape is None:
        return x
    if x.shape[1] != shape[1]:
        raise UserError(f"calibration: images have {x.shape[1]} channels, the model takes {shape[1]}")
    if x.shape[2:] != tuple(shape[2:]):
        # The proxy task is smaller than the target; a ShuffleNet sees either (global pooling),
        # and activation ranges are taken on what the deployed model will see: the target size.
        t = torch.nn.functional.interpolate(torch.from_numpy(x), size=tuple(shape[2:]), mode="bilinear",
                                            align_corners=False)
        x = t.numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def calibration_fingerprint(x: np.ndarray) -> str:
    """What the calibration read: its shape and bytes."""
    h = hashlib.sha256(repr(x.shape).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()[:12]


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray,
                  batch: int) -> None:
    """Static post-training quantisation of an ONNX file: QDQ format, per-channel int8 weights,
    int8 activations with MinMax ranges from ``calibration`` fed ``batch`` images at a time
    (the exported batch is fixed)."""
    onnx, ort = require_onnx("onnxruntime-int8")
    # Heavy optional package, imported with onnxruntime.
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    # Whole batches of every image: fewer than the batch repeat, a last part-batch wraps round.
    n = -(-len(calibration) // batch) * batch
    calibration = calibration[np.arange(n) % len(calibration)]
    name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(range(0, n, batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.it, None)
            return None if i is None else {name: calibration[i:i + batch]}

    def write(tmp: Path) -> None:
        with quiet_exporters():
            quantize_static(str(fp32_path), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8,
                            nodes_to_exclude=classifier_nodes(onnx.load(str(fp32_path))))

    try:
        atomic_write(out_path, write)
    except Exception as e:
        raise UserError(f"int8 quantisation failed ({first_line(e)})") from None


def classifier_nodes(model: Any) -> list[str]:
    """Names of the nodes from the graph output back to the classifier's MatMul/Gemm. They stay
    float: the logits' int8 grid is (range / 255) wide, coarser than the gap between the top
    classes of a trained network (V1 g3 on digits: 13% top-1 agreement with the FC quantised,
    64% without), and the FC is a negligible share of the time."""
    producer = {o: n for n in model.graph.node for o in n.output}
    names: list[str] = []
    frontier = [o.name for o in model.graph.output]
    while frontier:
        node = producer.get(frontier.pop())
        if node is None or node.name in names:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            names.append(node.name)
        elif node.op_type in ("Add", "Flatten", "Reshape", "Squeeze", "Identity"):  # bias, views
            names.append(node.name)
            frontier += [i for i in node.input if i in producer]
    return names


# --- ONNX Runtime sessions -------------------------------------------------------------------------


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    """An InferenceSession set up for timing: CPU provider, ``threads`` intra-op threads, one
    inter-op thread, spinning off, all graph optimisations."""
    _, ort = require_onnx()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_runner(model: nn.Module, spec: TargetSpec, calibration: Any, *, key: str | None,
                input_shape: tuple[int, ...] | None = None) -> Runner:
    require_onnx(spec.backend)
    # spec.channels_last is a torch memory format; ONNX is NCHW and ORT picks its own layouts.
    shape = tuple(input_shape or spec.input_shape)
    int8 = spec.backend == "onnxruntime-int8"
    if int8 and calibration is None:
        raise UserError("target.backend: onnxruntime-int8 needs calibration images "
                        "(the proxy task's training split)")
    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="shufflesearch-onnx-") as tmp:
        path, info["export_s"], info["export_cached"] = _cached_export(model, shape, key, Path(tmp))
        if int8:
            t0 = time.perf_counter()
            raw = calibration_array(calibration)  # fingerprinted as given: resizing is skipped
            fp = calibration_fingerprint(raw)  # when the quantised model is cached
            info["calibration"] = {"images": len(raw), "fingerprint": fp}
            q = (Path(tmp) / "model.int8.onnx" if key is None
                 else path.with_name(f"{path.stem}_int8_{_int8_tag()}_{fp}.onnx"))
            info["quantize_cached"] = q.is_file() and key is not None
            if not info["quantize_cached"]:
                quantize_int8(path, q, calibration_array(raw, shape), shape[0])
            info["quantize_s"] = time.perf_counter() - t0
            path = q
        t0 = time.perf_counter()
        sess = onnx_session(path, spec.threads)  # reads the file now: the temp folder may go
        info["session_s"] = time.perf_counter() - t0
        info["path"] = str(path) if key is not None else None
    x = fixed_input(shape)
    name = sess.get_inputs()[0].name
    feed = {name: x}

    def run() -> list:
        return sess.run(None, feed)

    return Runner(spec.backend, run, x, spec.threads, info)
