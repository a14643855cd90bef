"""Does a larger validation split let the proxy task tell architectures apart? For a finished
ladder run: retrain its checked architectures (plus more top-rung ones, up to N) at STEPS steps
with seeds 100 and 101, once per validation fraction, and print the seed-noise ceiling (Kendall
τ between the two seeds) and the accuracy range.

    python bench/val_fraction_power.py RUN [N=8] [STEPS=108] [FRACTIONS=0.2,0.5]
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np

from shufflesearch.accuracy.check import check_seeds, check_training, noise_ceiling
from shufflesearch.accuracy.data import load_data
from shufflesearch.common.threads import torch_threads
from shufflesearch.search.runfolder import load_run
from shufflesearch.search.storage import study_attr, study_records


def main(argv: list[str]) -> None:
    run, study = load_run(argv[0])
    n = int(argv[1]) if len(argv) > 1 else 8
    steps = int(argv[2]) if len(argv) > 2 else 108
    fractions = [float(x) for x in (argv[3] if len(argv) > 3 else "0.2,0.5").split(",")]
    recs = {r.archid: r for r in study_records(study) if r.state == "COMPLETE"}
    top = sorted((r for r in recs.values() if r.at_top and r.rungs and r.feasible), key=lambda r: r.trial)
    ids = list(study_attr(study, "check_runs", {}))
    ids += [r.archid for r in top if r.archid not in ids][: max(0, n - len(ids))]
    for vf in fractions:
        data = load_data(dataclasses.replace(run.space.data, val_fraction=vf))
        t0 = time.perf_counter()
        with torch_threads(1):
            acc = np.array([check_training(recs[a].arch, data, steps, check_seeds(2),
                                           device="cpu")["val_acc"] for a in ids])
        print(f"val_fraction {vf}: {len(data.val.y)} val images, {len(ids)} archs, noise ceiling "
              f"{noise_ceiling(acc.T):.3f}, acc {acc.min():.3f}-{acc.max():.3f}, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
