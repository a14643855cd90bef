"""The evaluator: everything the space asks of one Arch (costs, guidelines, measured latency,
accuracy proxies), as one record."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import optuna

from ..accuracy.data import ProxyData, load_data
from ..accuracy.proxies import compute_proxies, proxy_score
from ..common.threads import torch_threads
from ..errors import UserError
from ..guidelines.checks import check, load_calibration
from ..measure import backends
from ..measure.cache import LatencyCache
from ..measure.drift import DriftMonitor
from ..measure.env import compute_lock, fingerprint, fingerprint_id, timing_lock
from ..measure.predictor import LatencyTable, table_path
from ..model.arch import Arch
from ..model.compile import build
from ..model.cost import costs
from .faults import fault_point
from .records import GuidelineSummary, TrialRecord
from .space import SearchSpace

log = logging.getLogger("shufflesearch.search")

# --- evaluation -------------------------------------------------------------------------------


def prefilter_table(space: SearchSpace) -> LatencyTable | None:
    """The latency table the pre-filter uses (None when it is off or has no latency_ms
    constraint to filter against); a UserError when it is on but this machine has no table."""
    t = space.target
    if not (space.target_options.prefilter and "latency_ms" in space.constraints):
        return None
    path = table_path(t)
    build = (f"`shufflesearch latency table build --resolution {t.resolution} --batch {t.batch} "
             f"--threads {t.threads}{' --channels-last' if t.channels_last else ''}"
             f"{'' if t.backend == 'torch' else ' --backend ' + t.backend}`")
    if not path.exists():
        raise UserError("needs a latency table for this target on this machine: run "
                        f"{build} first", field="prefilter", owner="target")
    table = LatencyTable.load(path)
    if not table.reference_ms:  # the pre-filter compares ratios to the reference
        raise UserError(f"{path}: this latency table predates relative timing; rebuild it with {build}")
    return table


def calibration_images(space: SearchSpace, data: ProxyData | None = None) -> Any:
    """The images an int8 target is calibrated on (``backends.calibration_images``: the proxy
    task's training split); None for the other backends, which need none."""
    if space.target.backend != "onnxruntime-int8":
        return None
    return backends.calibration_images(data or load_data(space.data))


class Evaluator:
    """Scores one Arch on everything the space asks for; loaded once per worker."""

    def __init__(self, space: SearchSpace, run_root: str | Path | None = None,
                 limit: dict[str, Any] | None = None) -> None:
        self.space = space
        # The latency_ms limit as a ratio to the reference (objective.latency_limit); without
        # it (an Evaluator made outside a run) the limit is compared in ms, as measured.
        self.limit = limit
        self.run_root = run_root  # where a ladder keeps its rung checkpoints (rungs/)
        self.spec = space.target
        self.cache = LatencyCache()
        self.data = load_data(space.data)
        calibration = calibration_images(space, self.data)
        # Re-times a reference network every 25 fresh measurements; figures taken while this
        # machine ran >10% off its own starting speed are re-timed once, then flagged.
        self.drift = DriftMonitor(self.spec, every=25, max_seconds=space.target_options.max_seconds,
                                  calibration=calibration)
        self.table = prefilter_table(space)
        self.settings = space.guidelines.settings
        # The calibration made for this target's thread count (`shufflesearch guidelines bench
        # --threads N` stores it under the fingerprint at N threads).
        self.calibration = load_calibration(fingerprint_id(fingerprint(self.spec.threads)))

    def __call__(self, arch: Arch, timings: dict[str, float]) -> TrialRecord:
        space = self.space
        res = self.spec.resolution
        t0 = time.perf_counter()
        c = costs(arch, res)
        rep = check(arch, res, self.settings, self.calibration)
        build(arch)  # fail fast (and cheaply) on anything torch refuses
        t1 = time.perf_counter()
        if self.table is not None:
            # The cheap pre-filter: a clear miss of the latency constraint is not measured.
            # Front figures stay measured: anything that passes is timed as usual.
            # One yardstick: the predicted ratio to the reference against the limit's ratio.
            limit = space.constraints["latency_ms"]
            margin = space.target_options.prefilter
            pred = self.table.predict_ratio(arch)
            lim = self.limit["ratio"] if self.limit else limit / self.table.reference_ms
            if pred > lim * (1 + margin):
                raise optuna.TrialPruned(f"predicted ratio {pred:.3f} to the reference, over the "
                                         f"latency_ms limit {limit:g} (ratio {lim:.3f}) by more than "
                                         f"{100 * margin:.0f}%; not measured")
        fault_point("latency", hold=timing_lock)
        lat = self.drift.measure_arch(arch, cache=self.cache)
        t2 = time.perf_counter()
        g = space.guidelines
        scores: dict[str, float] = {}
        score = proxy_value = None
        if space.fidelity is None:  # zero-cost run; a ladder's accuracy comes from training
            with compute_lock(), torch_threads(1):
                # One thread: proxies run on tiny proxy-task inputs where a second thread buys
                # little, and on a busy machine extra threads oversubscribe the cores.
                fault_point("proxies")
                names = list(space.proxy.proxies) if space.proxy.proxies is not None else None
                scores = compute_proxies(arch, self.data, names=names, seed=space.seed)
            score = proxy_score(scores, space.proxy.score)
            # Any non-finite proxy means the network broke down numerically (exploding or dead
            # activations): fail the trial with the names, even if the score does not use them.
            bad = {k: v for k, v in scores.items() if not math.isfinite(v)}
            if bad or not math.isfinite(score):
                raise FloatingPointError(f"proxy score is not finite ({bad or score})")
            proxy_value = score - g.weight * rep.total if g.mode == "penalize" else score
        t3 = time.perf_counter()
        timings.update(build=t1 - t0, latency=t2 - t1, proxies=t3 - t2)
        return TrialRecord(
            archid=arch.archid, arch=arch, params=c.params, macs=c.macs, mac=c.mac,
            peak_activation=c.peak_activation, latency=lat, latency_ms=lat.median_ms,
            proxies=scores, proxy_raw=score, proxy=proxy_value,
            latency_limit=self.limit["ratio"] if self.limit else None,
            guidelines=GuidelineSummary(penalties=rep.penalties, total=rep.total,
                                        n_findings=len(rep.findings), overhead_ms=rep.overhead_ms),
        )
