"""ExecuTorch (XNNPACK) beside the torch backend: what a search pays to lower each network, how
the latencies compare, and whether a front found on torch survives on ExecuTorch.

1. Per-trial export cost: V2 0.5x and 1x (1000 classes) at --resolution (default 224, the
   target of search_spaces/v2.yaml), batch 1, into an empty program cache: the seconds
   ``make_runner`` spends lowering (wall, and this process's CPU time, which the other users
   of a shared machine inflate less), then the same call again with the program cached.
   Importing ExecuTorch (once per process) is timed apart.
2. Latency: six runners (two presets; torch's inference form in NHWC, as a search space times
   it by default, and in NCHW, as ``channels_last: false`` does; ExecuTorch) timed in interleaved rounds for
   --seconds; per round the ratio executorch/torch of each preset, and 1x/0.5x on each
   runtime; medians with 95% bootstrap intervals over the rounds.
3. A small run (--budget trials of a narrow V2 space at --resolution, V2 0.5x as its baseline,
   timed on torch in the space's default NHWC), then ``latency transfer RUN --backends torch,executorch``: Kendall tau
   between the runtimes' rankings of the front and baselines, and how many front points stay
   non-dominated on ExecuTorch. A front holds few points, so every completed architecture of
   the run is also re-timed side by side on both runtimes (``protocol.retime``) for a tau
   over all of them, with a 95% bootstrap interval over the architectures.

Everything uses one thread; the load average before and after is printed. Usage:
    python bench/executorch_backend.py [--parts 1,2,3] [--resolution 224] [--seconds 5]
                                       [--budget 10] [--runs DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shufflesearch.common.stats import bootstrap_ci, kendall_tau
from shufflesearch.measure import backends as B
from shufflesearch.measure import executorch as ET
from shufflesearch.measure.env import package_version
from shufflesearch.measure.target import TargetSpec
from shufflesearch.measure.timing import time_rounds
from shufflesearch.model.arch import preset
from shufflesearch.model.compile import to_inference

PRESETS = ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0")
SPACE = """# A narrow V2 space for a cheap run: three stages, two depths and kernels each.
seed: 0
target: {{resolution: {res}, batch: 1, threads: 1, num_classes: 1000, max_seconds: 0.3}}
proxy: {{dataset: digits, resolution: 16, batch: 16}}
space:
  stem: {{channels: 24, stride: 2, pool: true}}
  stages:
    - {{family: v2, width: {{low: 24, high: 96, step: 8}}, depth: [2, 4], split: [0.5], kernel: [3, 5]}}
    - {{family: v2, width: {{low: 48, high: 192, step: 16}}, depth: [2, 4], split: [0.5], kernel: [3, 5]}}
    - {{family: v2, width: {{low: 96, high: 384, step: 32}}, depth: [2, 4], split: [0.5], kernel: [3]}}
  head: [512, 1024]
objectives: [proxy, latency]
sampler: {{name: tpe, n_startup_trials: 4}}
baselines: [shufflenet_v2_x0_5]
"""


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def ratio_ci(a: list[float], b: list[float]) -> str:
    """median of a_i / b_i over the rounds [95% bootstrap interval]."""
    med = statistics.median(x / y for x, y in zip(a, b))
    ci = bootstrap_ci(lambda x, y: float(np.median(x / y)), a, b, n_boot=1000)
    return f"{med:.3f} [{ci.lo:.3f}, {ci.hi:.3f}]"


def export_cost(res: int) -> dict[str, B.Runner]:
    t0 = time.perf_counter()
    ET.require_executorch()
    print(f"\n1. importing ExecuTorch (once per process): {time.perf_counter() - t0:.1f} s")
    print(f"per-trial export cost at {res}x{res}, batch 1 (make_runner, empty program cache)")
    print(f"{'preset':<22} {'lower wall s':>12} {'lower CPU s':>11} {'cached s':>8} {'size KB':>8}")
    spec = TargetSpec(resolution=res, backend="executorch")
    runners = {}
    for n in PRESETS:
        t0, c0 = time.perf_counter(), time.process_time()
        r = B.make_runner(n, spec)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        again = B.make_runner(n, spec)
        cached = time.perf_counter() - t0
        assert again.info["export_cached"] and not r.info["export_cached"]
        size = Path(r.info["path"]).stat().st_size / 1024
        print(f"{n:<22} {wall:>12.1f} {cpu:>11.1f} {cached:>8.2f} {size:>8.0f}")
        runners[n] = r
    return runners


def torch_runner(name: str, res: int, channels_last: bool) -> B.Runner:
    """The torch backend's figure: the seeded inference form in the target's memory format."""
    model = to_inference(B.seeded_model(preset(name)), channels_last=channels_last)
    x = torch.from_numpy(B.fixed_input((1, 3, res, res)))
    return B.torch_runner(model, x.contiguous(memory_format=torch.channels_last) if channels_last else x)


def latency(res: int, et: dict[str, B.Runner], seconds: float) -> None:
    print(f"\n2. latency at {res}x{res}, batch 1, 1 thread: median ms over interleaved rounds of "
          f"{seconds:.0f} s; ratios with 95% CIs")
    rs = [r for n in PRESETS for r in (torch_runner(n, res, False), torch_runner(n, res, True), et[n])]
    t = dict(zip([(n, f) for n in PRESETS for f in ("nchw", "nhwc", "et")], time_rounds(rs, max_seconds=seconds, target_rel_ci=None)))
    print(f"{'preset':<22} {'torch NCHW':>10} {'torch NHWC':>10} {'executorch':>10} "
          f"{'executorch/torch NCHW':>24} {'executorch/torch NHWC':>24}")
    for n in PRESETS:
        med = [statistics.median(t[n, f]) for f in ("nchw", "nhwc", "et")]
        print(f"{n:<22} {med[0]:>10.2f} {med[1]:>10.2f} {med[2]:>10.2f} "
              f"{ratio_ci(t[n, 'et'], t[n, 'nchw']):>24} {ratio_ci(t[n, 'et'], t[n, 'nhwc']):>24}")
    a, b = PRESETS
    print(f"1x / 0.5x: torch NCHW {ratio_ci(t[b, 'nchw'], t[a, 'nchw'])}, torch NHWC "
          f"{ratio_ci(t[b, 'nhwc'], t[a, 'nhwc'])}, executorch {ratio_ci(t[b, 'et'], t[a, 'et'])}; "
          f"{len(t[a, 'et'])} rounds")


def transfer_run(res: int, budget: int, runs: Path, seconds: float) -> None:
    # The CLI as users run it: the search, then the transfer (its programs cached in part 1 or here).
    from shufflesearch.cli import main
    from shufflesearch.measure.protocol import retime
    from shufflesearch.review.pareto import load_records
    from shufflesearch.review.transfer import format_transfer, transfer

    space = runs / "et-small.yaml"
    space.write_text(SPACE.format(res=res))
    print(f"\n3. shufflesearch run {space} --budget {budget} --name et-small; then "
          f"latency transfer --backends torch,executorch")
    t0 = time.perf_counter()
    assert main(["run", str(space), "--budget", str(budget), "--name", "et-small", "--runs", str(runs),
                 "--quiet"]) == 0
    print(f"run: {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    d = transfer(runs / "et-small", ["torch", "executorch"], seconds_per_point=seconds)
    print(f"transfer: {time.perf_counter() - t0:.0f} s, {len(d['points'])} points")
    print(format_transfer(d))

    run, records = load_records(runs / "et-small")
    archs = list({r.archid: r.arch for r in records if r.complete}.values())
    t0 = time.perf_counter()
    lat = {b: retime(archs, dataclasses.replace(run.space.target, backend=b),
                     max_seconds=seconds * (len(archs) + 1)) for b in ("torch", "executorch")}
    ratios = {b: np.array([la.ratio for la in lat[b]]) for b in lat}
    ci = bootstrap_ci(kendall_tau, ratios["torch"], ratios["executorch"], n_boot=1000)
    print(f"all {len(archs)} completed architectures re-timed on both ({time.perf_counter() - t0:.0f} s): "
          f"Kendall tau torch vs executorch {kendall_tau(ratios['torch'], ratios['executorch']):.2f} "
          f"[{ci.lo:.2f}, {ci.hi:.2f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--seconds", type=float, default=5.0, help="part 2's timing window")
    ap.add_argument("--parts", default="1,2,3", help="which parts to run (2 needs 1)")
    ap.add_argument("--budget", type=int, default=10, help="part 3's search trials")
    ap.add_argument("--runs", help="folder for part 3's run (default: a temporary one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, executorch {package_version('executorch')}; {load()}")
    with tempfile.TemporaryDirectory(prefix="bench-executorch-") as tmp:
        os.environ["SHUFFLESEARCH_CACHE_DIR"] = tmp  # an empty cache: part 1 pays every lowering
        parts = {int(p) for p in args.parts.split(",")}
        if 1 in parts:
            et = export_cost(args.resolution)
            if 2 in parts:
                latency(args.resolution, et, args.seconds)
        if 3 in parts:
            runs = Path(args.runs) if args.runs else Path(tmp) / "runs"
            runs.mkdir(parents=True, exist_ok=True)
            transfer_run(args.resolution, args.budget, runs, seconds=1.0)
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
