"""The end of a run: re-time the front and the baselines side by side.

During the search every trial is timed in its own window against the reference network; its
ratio is comparable with any other, but each came from a different phase of the machine. Before
a run ends (engine.search) and in `shufflesearch pareto RUN --retime`, the front's points and
the baselines are timed once more, all interleaved with the reference in ONE window
(measure.protocol.retime), so the front that is shown, picked from and exported rests on
figures taken side by side. The result is a study user attribute::

    retime = {"at": ISO time, "seconds": wall time of the window, "reference": {...},
              "speed_factor": ..., "drifted": bool, "spec": {...},
              "trials": {"<trial number>": Latency.to_dict(), ...}}

A later re-timing replaces it (the run's newest window is the one shown).
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from ..measure.cache import LatencyCache
from ..measure.protocol import DRIFT_BOUND, ReferenceSchedule, retime
from .evaluator import calibration_images
from .front import attach_retime, on_one_reference, pareto_front
from .ladder import apply_estimator, chosen_estimator
from .records import TrialRecord, completed, measured
from .runfolder import Run
from .storage import set_study_attr, study_attr, study_records

log = logging.getLogger("shufflesearch.search")

RETIME_ATTR = "retime"
# The window's cap by default: the space's per-measurement cap per model, at most this. A v2
# run's front under the default MACs score held 55 points; at 0.5 s each the window took 47.5 s
# of a 673 s run (docs/benchmarks.md, "What relative timing costs"). The rounds are shared by every model, so a shorter
# window still gives each ratio its >= 10 rounds; what it loses is interval width, which the
# tie marks then show.
RETIME_MAX_SECONDS = 15.0


def retime_targets(records: list[TrialRecord]) -> list[TrialRecord]:
    """What is re-timed: the front of the feasible completed trials (on one reference, without
    any earlier re-timing) and every completed baseline, one trial per architecture."""
    done = completed(records)
    for r in done:
        r.retimed = None
    done = on_one_reference(done)
    picked, seen = [], set()
    for r in [*pareto_front(done), *(r for r in measured(records) if r.baseline)]:
        if r.archid not in seen and r.arch:
            seen.add(r.archid)
            picked.append(r)
    return picked


def retime_run(run: Run, *, max_seconds: float | None = None,
               say: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Re-time the run's front and baselines in one window, store the result on the study as
    ``retime`` and return it (None when the run has no completed trial). ``max_seconds`` caps
    the window; default: the space's per-measurement cap for each model and the reference, at
    most RETIME_MAX_SECONDS."""
    study = run.load_study()
    records = study_records(study)
    est = chosen_estimator(study, run.space)
    if est is not None:  # the front the check's estimator draws, not the search's
        apply_estimator(records, est)
    targets = retime_targets(records)
    if not targets:
        return None
    spec = run.space.target
    per = run.space.target_options.max_seconds
    cap = max_seconds if max_seconds is not None else min(per * (len(targets) + 1), RETIME_MAX_SECONDS)
    if say:
        say(f"re-timing {len(targets)} architectures side by side (cap {cap:.1f} s)")
    schedule = ReferenceSchedule(spec, LatencyCache())
    before = schedule.figure()
    t0 = time.perf_counter()
    lats = retime([r.arch for r in targets], spec, max_seconds=cap, schedule=schedule,
                  calibration=calibration_images(run.space))
    seconds = time.perf_counter() - t0
    ref = dict(lats[0].reference or {})
    factor = None
    if before is not None and before["n"] >= 3 and ref.get("window_ms"):
        factor = round(ref["window_ms"] / before["ms"], 4)
    drifted = factor is not None and abs(factor - 1) > DRIFT_BOUND
    by_arch = {r.archid: lat for r, lat in zip(targets, lats)}
    figs: dict[str, Any] = {}
    for r in measured(records):  # every trial of a re-timed architecture (repeats, baselines)
        lat = by_arch.get(r.archid)
        if lat is not None:
            lat.speed_factor, lat.drifted = factor, drifted
            d = lat.to_dict()
            d.pop("fingerprint", None)  # the same for all; kept once below
            figs[str(r.trial)] = d
    out = {
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 2), "reference": ref, "speed_factor": factor, "drifted": drifted,
        "spec": spec.to_dict(), "fingerprint": lats[0].fingerprint, "trials": figs,
    }
    set_study_attr(study, RETIME_ATTR, out)
    log.info("run %s: re-timed %d architectures side by side in %.1f s (reference %.3f ms%s)",
             run.name, len(targets), seconds, ref.get("ms", float("nan")), ", drifted" if drifted else "")
    return out


def load_retime(study: Any) -> dict[str, Any] | None:
    """The study's stored re-timing, if any."""
    return study_attr(study, RETIME_ATTR)


def records_with_retime(study: Any) -> list[TrialRecord]:
    """The study's records with the stored re-timing attached."""
    records = study_records(study)
    attach_retime(records, load_retime(study))
    return records
