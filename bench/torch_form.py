"""The torch backend's forms against torchvision's eager ShuffleNet V2, side by side.

For each preset and batch: the eager reference, the eager inference form (what a search
times: BN folded, shuffle fused, NHWC) and the compiled inference form (the AOTInductor
package that ``export --aoti`` writes as model.aoti.pt2, built by the same code) run in
interleaved rounds in one process, 1 thread, 224x224 (``timing.time_rounds``). The
speed-up is the reference's time over the form's, taken per round; printed is its median
with a distribution-free 95% interval of the median (order statistics of the rounds). The
compile time of each package is printed too: it is paid once per architecture and shape.

The reference is the training form in eval mode: torchvision's ShuffleNetV2 module for
module (conv, BN and ReLU modules; concat, then the view-transpose shuffle), with the same
logits (tests/model/test_compile.py, where torchvision imports). torchvision itself does not import
beside this torch build. Nothing is asserted; the load average is printed before and after.

    python bench/torch_form.py [--presets a,b] [--batches 1,8] [--seconds 10]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile

import numpy as np
import torch

from shufflesearch.measure import backends as B
from shufflesearch.measure.compiled import compiled_runner
from shufflesearch.measure.target import TargetSpec
from shufflesearch.measure.timing import Runner, time_rounds
from shufflesearch.model.arch import preset

PRESETS = "shufflenet_v2_x0_5,shufflenet_v2_x1_0,shufflenet_v2_x1_5"


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def median_ci(xs: list[float]) -> tuple[float, float, float]:
    """Median and a 95% interval for it from order statistics (normal approximation to the
    binomial ranks; exact enough from ~10 rounds)."""
    s = sorted(xs)
    n = len(s)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    return statistics.median(s), s[lo], s[hi]


def reference_runner(name: str, spec: TargetSpec) -> Runner:
    model = B.seeded_model(preset(name))  # the training form, eval mode, NCHW
    return B.torch_runner(model, torch.from_numpy(B.fixed_input(spec.input_shape)), spec.threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presets", default=PRESETS)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--seconds", type=float, default=10.0, help="interleaved timing per preset and batch")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, 224x224; {load()}")
    print(f"{'preset':<20} {'batch':>5} {'ref ms':>8} {'eager ms':>8} {'aoti ms':>8} "
          f"{'eager x (95% CI)':>20} {'aoti x (95% CI)':>20} {'rounds':>6} {'compile s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SHUFFLESEARCH_CACHE_DIR"] = tmp  # every package is compiled afresh
        for name in args.presets.split(","):
            for b in (int(v) for v in args.batches.split(",")):
                spec = TargetSpec(batch=b, threads=1)
                ref = reference_runner(name, spec)
                eager = B.make_runner(name, spec)
                aoti = compiled_runner(name, spec)
                scale = float(np.abs(ref.outputs()).max())
                for r in (eager, aoti):  # the forms compute what the reference does
                    assert np.abs(r.outputs() - ref.outputs()).max() <= 1e-3 * scale
                t_ref, t_e, t_a = time_rounds([ref, eager, aoti], max_seconds=args.seconds, min_rounds=15,
                                              target_rel_ci=None)
                e = median_ci([r / x for r, x in zip(t_ref, t_e)])
                a = median_ci([r / x for r, x in zip(t_ref, t_a)])
                print(f"{name:<20} {b:>5} {statistics.median(t_ref):>8.2f} {statistics.median(t_e):>8.2f} "
                      f"{statistics.median(t_a):>8.2f} {f'{e[0]:.2f} ({e[1]:.2f}-{e[2]:.2f})':>20} "
                      f"{f'{a[0]:.2f} ({a[1]:.2f}-{a[2]:.2f})':>20} {len(t_ref):>6} "
                      f"{aoti.info['compile_s']:>9.1f}", flush=True)
    print(load())


if __name__ == "__main__":
    main()
