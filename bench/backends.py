"""The three latency backends side by side: ONNX export cost, per-trial cost, latency ratios,
int8 agreement, the int8 calibration count. Everything in one process, interleaved (the one
timing loop, ``timing.time_rounds``), and printed as ratios.

1. Exporter: seconds per export of the TorchScript exporter vs ``dynamo=True`` (and whether
   the outputs match the torch inference form).
2. Per-trial cost of each backend as a search pays it for a new architecture: build the model,
   export (uncached), quantise (int8, calibrated on ``calibration_images`` of the default proxy
   task, and on --other-calibration images), open the session, time ~1 s; against the torch
   backend (build + time ~1 s). Then the same with the export cached.
3. Latency at 224x224, batch 1: the three runners timed in interleaved rounds; the ratio of
   each round is taken and the median reported (onnxruntime/torch, int8/onnxruntime).
4. int8 top-1 agreement on the default proxy task: each preset trained briefly at 32 px, exported
   with ``export_arch(int8=True)`` as users get it: agreement with model.onnx on the validation
   split and both accuracies.
5. int8 calibration count: each preset trained briefly on the default proxy task (fashion,
   32 px); for each count of --counts and --draws draws of the training split, the top-1
   agreement of int8 with fp32 on the validation split (3,000 images) and the seconds the
   quantisation took; then the quantisation's seconds at the search's default target
   (224x224), where a search pays them once per architecture.

The load average before and after is printed: the machine is shared. Usage:
    python bench/backends.py [--presets a,b] [--seconds 3] [--train-steps 100] [--skip-train]
                             [--other-calibration 64] [--counts 8,16,32,64,128] [--draws 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np
import torch

from shufflesearch.accuracy.data import DataSpec, load_data
from shufflesearch.accuracy.training import train_model
from shufflesearch.measure import backends as B
from shufflesearch.measure.target import TargetSpec
from shufflesearch.measure.timing import time_rounds
from shufflesearch.model.arch import Arch, preset
from shufflesearch.model.compile import build, to_inference
from shufflesearch.review.export import export_arch

# The torch and ONNX Runtime backends; executorch's lowering has its own bench (bench/executorch_backend.py).
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")
PRESETS = "shufflenet_v2_x0_5,shufflenet_v2_x1_0,shufflenet_v2_x1_5,shufflenet_v1_g3_x1_0"


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def exporter_cost(name: str, tmp: str) -> tuple[float, float, float, float]:
    """(TorchScript s, dynamo s, TorchScript rel. diff, dynamo rel. diff), each exporter twice
    interleaved, the faster of its two runs."""
    m = to_inference(B.seeded_model(name))
    shape = (1, 3, 224, 224)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    with torch.no_grad():
        ref = m(x).numpy()
    secs: dict[bool, list[float]] = {False: [], True: []}
    diffs: dict[bool, float] = {}
    for _ in range(2):
        for dynamo in (False, True):
            path = os.path.join(tmp, f"e{int(dynamo)}.onnx")
            t0 = time.perf_counter()
            B.export_onnx(m, shape, path, dynamo=dynamo)
            secs[dynamo].append(time.perf_counter() - t0)
            s = B.onnx_session(path)
            y = s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]
            diffs[dynamo] = float(np.abs(y - ref).max() / np.abs(ref).max())
    return min(secs[False]), min(secs[True]), diffs[False], diffs[True]


def trial_cost(name: str, backend: str, cal: np.ndarray, seconds: float) -> tuple[float, float]:
    """(set-up s, total s) of one new architecture on ``backend``: runner + ~``seconds`` timing."""
    t0 = time.perf_counter()
    r = B.make_runner(name, TargetSpec(backend=backend), calibration=cal)
    setup = time.perf_counter() - t0
    time_rounds([r], max_seconds=seconds, target_rel_ci=None)
    return setup, time.perf_counter() - t0


def trained(name: str, data: Any, steps: int) -> tuple[Arch, torch.nn.Module, float]:
    """(arch with the task's classes, its training form trained ``steps`` steps from seed 0,
    seconds the training took)."""
    arch = preset(name).replace(num_classes=data.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = build(arch)
    t0 = time.perf_counter()
    train_model(m, data, steps=steps)
    return arch, m, time.perf_counter() - t0


def calibration_counts(names: list[str], counts: list[int], draws: int, steps: int, tmp: str) -> None:
    """Part 5: what the int8 calibration count buys (agreement) and costs (quantisation s)."""
    data = load_data(DataSpec())  # the default proxy task
    val = np.ascontiguousarray(data.val.x.numpy(), dtype=np.float32)
    print(f"\n5. int8 calibration count on {data.spec.name} ({data.spec.resolution} px, {steps} training steps): "
          f"top-1 agreement with fp32 on {len(val)} validation images (min-max over {draws} draws), "
          "quantisation s; then quantisation s at 224x224 (an untrained network)")
    print(f"{'preset':<24} {'count':>5} {'agree min':>9} {'agree max':>9} {'quant s':>7} {'224 s':>6}")
    for n in names:
        arch, m, _ = trained(n, data, steps)
        small, large = os.path.join(tmp, "small.onnx"), os.path.join(tmp, "large.onnx")
        B.export_onnx(to_inference(m.eval()), (1, *val.shape[1:]), small)
        B.export_onnx(to_inference(B.seeded_model(arch)), (1, 3, 224, 224), large)
        f = B.onnx_session(small)
        ref = np.concatenate([f.run(None, {"x": val[i:i + 1]})[0] for i in range(len(val))]).argmax(1)
        for k in counts:
            agree, secs = [], []
            for seed in range(draws):
                t0 = time.perf_counter()
                B.quantize_int8(small, os.path.join(tmp, "q.onnx"), B.calibration_images(data, k, seed), 1)
                secs.append(time.perf_counter() - t0)
                q = B.onnx_session(os.path.join(tmp, "q.onnx"))
                y = np.concatenate([q.run(None, {"x": val[i:i + 1]})[0] for i in range(len(val))]).argmax(1)
                agree.append(float((y == ref).mean()))
            t0 = time.perf_counter()
            big = B.calibration_array(B.calibration_images(data, k), (1, 3, 224, 224))
            B.quantize_int8(large, os.path.join(tmp, "q224.onnx"), big, 1)
            print(f"{n:<24} {k:>5} {100 * min(agree):>8.1f}% {100 * max(agree):>8.1f}% "
                  f"{statistics.median(secs):>7.2f} {time.perf_counter() - t0:>6.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", default=PRESETS)
    ap.add_argument("--seconds", type=float, default=3.0, help="interleaved timing per preset (part 3)")
    ap.add_argument("--train-steps", type=int, default=100, help="parts 4, 5: SGD steps per preset")
    ap.add_argument("--skip-train", action="store_true", help="skip part 4")
    ap.add_argument("--parts", default="1,2,3,4,5", help="which parts to run (default 1,2,3,4,5)")
    ap.add_argument("--other-calibration", type=int, default=64,
                    help="part 2: int8 cost also with this many calibration images (default 64)")
    ap.add_argument("--counts", default="8,16,32,64,128", help="part 5: calibration counts")
    ap.add_argument("--draws", type=int, default=3, help="part 5: draws of the training split per count")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = args.presets.split(",")
    data = load_data(DataSpec())  # the default proxy task at 32 px: calibration and agreement
    cal = B.calibration_images(data)
    ort = B.require_onnx()[1]
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, 1 thread, 224x224 batch 1; {load()}")

    # Every export of this bench goes to a fresh cache: costs are those of a new architecture.
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SHUFFLESEARCH_CACHE_DIR"] = tmp

        parts = {int(p) for p in args.parts.split(",")}
        if 1 in parts:
            print("\n1. ONNX export, seconds (faster of 2, interleaved); max |diff| / max |output| vs torch")
            print(f"{'preset':<24} {'torchscript':>11} {'dynamo':>8} {'dynamo/ts':>9} {'diff ts':>9} {'diff dyn':>9}")
            for n in names:
                ts, dy, d_ts, d_dy = exporter_cost(n, tmp)
                print(f"{n:<24} {ts:>11.2f} {dy:>8.2f} {dy / ts:>9.1f} {d_ts:>9.1e} {d_dy:>9.1e}")

        if 2 in parts:
            print("\n2. per-trial cost: set-up + ~1 s timing, seconds; ratio to the torch backend")
            print(f"{'preset':<24} {'backend':<23} {'setup':>6} {'total':>6} {'/torch':>7} "
                  f"{'cached setup':>12} {'total':>6} {'/torch':>7}")
            for n in names:
                base = None
                for be, k in [(b, len(cal)) for b in BACKENDS] + [("onnxruntime-int8", args.other_calibration)]:
                    images = B.calibration_images(data, k)
                    first = trial_cost(n, be, images, 1.0)
                    again = trial_cost(n, be, images, 1.0)  # the export (and int8 model) now cached
                    if base is None:
                        base = (first[1], again[1])
                    label = f"{be} ({k} img)" if be.endswith("int8") else be
                    print(f"{n:<24} {label:<23} {first[0]:>6.2f} {first[1]:>6.2f} {first[1] / base[0]:>7.2f} "
                          f"{again[0]:>12.2f} {again[1]:>6.2f} {again[1] / base[1]:>7.2f}")

        if 3 in parts:
            print(f"\n3. latency, ms (median over interleaved rounds of {args.seconds:.0f} s); ratios: median of per-round ratios")
            print(f"{'preset':<24} {'torch':>7} {'ort':>7} {'int8':>7} {'ort/torch':>9} {'int8/ort':>8} "
                  f"{'int8/torch':>10} {'rounds':>6}")
            for n in names:
                rs = [B.make_runner(n, TargetSpec(backend=be), calibration=cal) for be in BACKENDS]
                t, o, q = time_rounds(rs, max_seconds=args.seconds, target_rel_ci=None)

                def ratio(a: list[float], b: list[float]) -> float:
                    return statistics.median(x / y for x, y in zip(a, b))

                print(f"{n:<24} {statistics.median(t):>7.2f} {statistics.median(o):>7.2f} "
                      f"{statistics.median(q):>7.2f} {ratio(o, t):>9.3f} {ratio(q, o):>8.3f} "
                      f"{ratio(q, t):>10.3f} {len(t):>6}")

        if 4 in parts and not args.skip_train:
            print(f"\n4. int8 on {data.spec.name} (32 px, {args.train_steps} training steps, export_arch(int8=True)): "
                  "top-1 agreement with model.onnx, accuracies, on the validation split")
            print(f"{'preset':<24} {'agree':>7} {'acc fp32':>8} {'acc int8':>8} {'train s':>7}")
            for n in names:
                arch, m, took = trained(n, data, args.train_steps)
                res = export_arch(arch, os.path.join(tmp, "bundle"), state_dict=m.state_dict(), resolution=32,
                                  torch_export=False, int8=True)
                r = res.int8
                print(f"{n:<24} {100 * r['top1_agreement']:>6.1f}% {100 * r['acc_fp32']:>7.1f}% "
                      f"{100 * r['acc_int8']:>7.1f}% {took:>7.0f}")
        if 5 in parts:
            counts = [int(c) for c in args.counts.split(",")]
            calibration_counts(names, counts, args.draws, args.train_steps, tmp)
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
