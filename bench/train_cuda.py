"""The fidelity ladder on a CUDA device: does it run there, how fast, and does it agree with
the CPU?

Run where a GPU is (it exits with a message where torch sees none):

    python bench/train_cuda.py [--arch shufflenet_v2_x0_5] [--rungs 30,90,270] [--check-steps 810]

Prints, for one architecture on the default proxy task (digits, 32 px, batch 64):
  - the three rungs trained with ``train_to_rung`` on cuda (checkpoints in a temporary
    folder), each rung's estimates and seconds, and a resume from the rung-2 checkpoint;
  - the same rungs on the CPU (one thread), their estimates and seconds, and the cuda/cpu
    time ratio measured in this run;
  - a check training (``check_training``) of ``--check-steps`` steps on cuda.
Nothing is asserted: the estimates differ within float tolerance (GPU kernels sum in another
order), and the times depend on the device and on what else runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from shufflesearch.accuracy.check import check_training
from shufflesearch.accuracy.data import DataSpec, load_data
from shufflesearch.accuracy.fidelity import FidelitySettings, train_to_rung
from shufflesearch.model.arch import preset


def ladder(arch, data, settings: FidelitySettings) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        out = [train_to_rung(arch, data, settings, k, d, seed=0) for k in range(1, len(settings.rungs) + 1)]
        again = train_to_rung(arch, data, settings, len(settings.rungs), d, seed=0)
        assert again["trained_seconds"] == 0.0  # a rung already reached trains nothing
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="shufflenet_v2_x0_5")
    ap.add_argument("--rungs", default="30,90,270")
    ap.add_argument("--check-steps", type=int, default=810)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch: nothing to measure here (run this where a GPU is)")
        return 0
    rungs = [int(x) for x in args.rungs.split(",")]
    data = load_data(DataSpec())
    arch = preset(args.arch)
    print(f"{args.arch}, digits 32px batch 64, rungs {rungs}, device {torch.cuda.get_device_name(0)}")
    gpu = ladder(arch, data, FidelitySettings(rungs=tuple(rungs), device="cuda"))
    torch.set_num_threads(1)
    cpu = ladder(arch, data, FidelitySettings(rungs=tuple(rungs), device="cpu"))
    for g, c in zip(gpu, cpu):
        print(f"rung {g['rung']} ({g['steps']} steps): cuda val_acc {g['val_acc']:.4f} sotl {g['sotl']:.3f} "
              f"{g['seconds']:.2f}s | cpu val_acc {c['val_acc']:.4f} sotl {c['sotl']:.3f} {c['seconds']:.2f}s")
    tg, tc = sum(g["seconds"] for g in gpu), sum(c["seconds"] for c in cpu)
    print(f"ladder time cuda/cpu: {tg:.2f}s / {tc:.2f}s = {tg / tc:.3f}")
    t0 = time.perf_counter()
    chk = check_training(arch, data, args.check_steps, [100, 101], device="cuda")
    print(f"check: {args.check_steps} steps x 2 seeds on cuda: val_acc {chk['val_acc']} "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
