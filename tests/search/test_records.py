"""Trial records (search/records.py) and the one reader of a stored trial (search/storage.py):
typed fields, the shapes earlier versions stored, lossless round trips, and the one rule for
a rung's estimate."""

from __future__ import annotations

import copy
import dataclasses

import optuna
import pytest
from optuna.trial import TrialState

from shufflesearch import UserError
from shufflesearch.measure.target import Latency
from shufflesearch.model.arch import PRESETS, Arch
from shufflesearch.search.records import (
    GuidelineSummary,
    RungResult,
    TrialRecord,
    latency_from_dict,
)
from shufflesearch.search.storage import read_record, read_records, trial_id, write_fields

# --- what the previous version stored, copied from a ladder run it made --------------------------

ARCH = {"in_channels": 3, "stem": {"channels": 8, "stride": 1, "pool": False},
        "stages": [{"family": "v2", "channels": 24, "depth": 1, "stride": 2, "kernel": 5, "split": 0.5,
                    "groups": 1, "bottleneck": 0.25, "layout": "torchvision"},
                   {"family": "v2", "channels": 48, "depth": 2, "stride": 2, "kernel": 3, "split": 0.5,
                    "groups": 1, "bottleneck": 0.25, "layout": "torchvision"}],
        "head": 64, "num_classes": 10, "fc_bias": True}
LATENCY = {"median_ms": 1.1526, "iqr_ms": 0.2121, "n": 3, "runs_ms": [1.29, 1.10, 1.15],
           "fingerprint": {"cpu": "AMD EPYC", "machine": "x86_64", "cores": 2, "torch": "2.13.0+cpu",
                           "threads": 1, "backend": "torch", "clock": "thread_cpu"},
           "spec": {"resolution": 32, "batch": 1, "threads": 1, "channels_last": True, "backend": "torch"},
           "cached": True, "speed_factor": None, "drifted": False, "ratio": 0.2703,
           "ratio_ci": [0.2576, 0.3086], "estimator": "median_of_ratios", "abs_ms": 1.293,
           "reference": {"arch": "shufflenet_v2_x0_5", "archid": "701a2876c91a", "window_ms": 4.4688,
                         "spread": 0.0963, "n": 2, "ms": 4.2635},
           "ref_runs_ms": [4.22, 4.23, 4.08], "protocol": 2}


def _rung(k: int, steps: int, sotl: float, **more) -> dict:
    return {"rung": k, "steps": steps, **more, "sotl": sotl, "seconds": 0.03, "device": "cpu",
            "latency": 0.2703, "latency_ms": 1.1526, "trained_seconds": 0.03, "resumed_from": k - 1}


OLD = {  # user attributes, key by key, as the previous version wrote them
    "arch": ARCH, "archid": "d4c1207aa339", "estimator": "sotl",
    "guidelines": {"penalties": {"G1": 0.0, "G2": 0.0, "G3": 0.0, "G4": 0.0}, "total": 0.0,
                   "n_findings": 0, "overhead_ms": None},
    "latency": LATENCY, "latency_ms": 1.1526, "mac": 379374, "macs": 1042560, "params": 8942,
    "peak_activation": 27648, "promoted_to": 3, "proxy": -2.3140, "rung": 3,
    "rungs": {"1": _rung(1, 2, -4.6424), "2": _rung(2, 4, -9.2763),
              "3": _rung(3, 8, -18.5119, val_acc=0.1003)},
    "timings": {"sample": 0.067, "build": 0.011, "latency": 0.129, "ladder": 0.487, "storage": 0.065},
    "top_rung": 3, "worker_pid": 23983,
}


def _frozen(attrs: dict, number: int = 2, state: TrialState = TrialState.COMPLETE,
            system_attrs: dict | None = None) -> optuna.trial.FrozenTrial:
    t = optuna.trial.create_trial(state=state, params={}, distributions={},
                                  values=[-2.3140, 1.1526] if state == TrialState.COMPLETE else None,
                                  user_attrs=copy.deepcopy(attrs), system_attrs=system_attrs or {})
    t.number = number
    return t


def test_a_trial_stored_by_the_previous_version_reads_typed_and_writes_back_unchanged():
    rec = read_record(_frozen(OLD, system_attrs={"constraints:ladder": 0.0}))
    assert isinstance(rec.arch, Arch) and rec.arch.archid == OLD["archid"]  # the stored archid, recomputed
    assert isinstance(rec.latency, Latency) and rec.ratio == 0.2703 and rec.reference_ms == 4.2635
    assert rec.latency.fingerprint["cpu"] == "AMD EPYC" and rec.ratio_ci == [0.2576, 0.3086]
    assert isinstance(rec.guidelines, GuidelineSummary) and rec.guidelines.penalties["G4"] == 0.0
    assert sorted(rec.rungs) == [1, 2, 3] and all(isinstance(r, RungResult) for r in rec.rungs.values())
    assert rec.rungs[2].steps == 4 and rec.rungs[2].resumed_from == 1 and rec.promoted_to == 3
    assert (rec.trial, rec.state, rec.rung, rec.top_rung, rec.at_top) == (2, "COMPLETE", 3, 3, True)
    assert rec.extra == {}  # every key of the previous version is a field of this one
    # the JSON on disk keeps its shape: string rung keys, plain dicts, nothing lost or added
    assert rec.to_user_attrs() == OLD


def test_older_shapes_still_load():
    # rungs from before the ratio (only latency_ms), without their own "rung" key, with a key
    # this version does not know; a protocol-1 latency figure; constraints stored as a list.
    proto1 = {k: LATENCY[k] for k in ("median_ms", "iqr_ms", "n", "runs_ms", "fingerprint", "spec", "cached")}
    rung = {"steps": 2, "sotl": -4.0, "latency_ms": 1.5, "note": "kept"}
    attrs = {**OLD, "latency": proto1, "rungs": {"1": rung}, "rung": 1, "constraints": [-1.0, 0.25]}
    del attrs["promoted_to"]
    t = _frozen(attrs, system_attrs={"constraints:latency_ms": -1.0, "constraints:macs_m": 0.25})
    rec = read_record(t)
    assert rec.ratio is None and rec.latency.median_ms == LATENCY["median_ms"] and rec.latency.protocol == 1
    assert rec.rungs[1].rung == 1 and rec.rungs[1].rank_latency == 1.5 and rec.rungs[1].extra == {"note": "kept"}
    assert rec.constraints == {"latency_ms": -1.0, "macs_m": 0.25} and rec.broken == {"macs_m": 0.25}
    assert not rec.at_top and rec.promoted_to is None
    back = rec.to_user_attrs()["rungs"]["1"]
    assert back["note"] == "kept" and "latency" not in back  # nothing invented on the way back
    # a list whose names Optuna did not keep: numbered
    assert read_record(_frozen({**attrs, "constraints": [0.5]})).constraints == {"#0": 0.5}


def test_an_architecture_this_version_cannot_read_is_kept_as_stored():
    from shufflesearch.review.pareto import pick_trial

    later = {**ARCH, "stages": [{**ARCH["stages"][0], "dilation": 2}]}  # a field this version lacks
    rec = read_record(_frozen({**OLD, "arch": later}))
    assert rec.arch is None and rec.extra["arch"] == later and rec.to_user_attrs()["arch"] == later
    with pytest.raises(UserError, match="cannot read its stored architecture"):
        pick_trial([rec], trial=2)


def test_round_trip_keeps_unknown_keys_and_reads_failed_trials():
    r = TrialRecord(trial=3, archid="a3", arch=PRESETS["shufflenet_v2_x0_5"], proxy=0.5, latency_ms=3.0,
                    latency=latency_from_dict({"median_ms": 3.0, "iqr_ms": 0.1, "ratio": 1.25}),
                    constraints={"macs_m": 1.5}, worker_pid=7, timings={"build": 0.1},
                    rungs={1: RungResult(rung=1, steps=8, sotl=-16.0)}, extra={"fidelity": {"rung": 2}})
    attrs = r.to_user_attrs()
    assert "trial" not in attrs and "state" not in attrs and attrs["fidelity"] == {"rung": 2}
    assert list(attrs["rungs"]) == ["1"] and attrs["latency"]["ratio"] == 1.25
    back = read_record(_frozen(attrs, number=3))
    assert back == r and back.to_user_attrs() == attrs
    assert not back.feasible and back.broken == {"macs_m": 1.5}
    fail = _frozen({}, number=4, state=TrialState.FAIL)
    ok = _frozen(attrs, number=3)
    assert [(x.trial, x.state) for x in read_records([fail, ok])] == [(3, "COMPLETE"), (4, "FAIL")]
    assert read_record(fail).fail_reason.startswith("no reason recorded")
    dup = back.copy_for_duplicate(3)
    assert dup.duplicate_of == 3 and dup.worker_pid is None and dup.arch == back.arch


def test_a_rung_estimate_is_one_rule():
    top = RungResult(rung=3, steps=8, sotl=-18.0, val_acc=0.25)
    low = RungResult(rung=1, steps=2, sotl=-4.8)
    # SoTL per step: the mean negated training loss, one unit at every rung
    assert top.estimate("sotl") == pytest.approx(-2.25) and low.estimate("sotl") == pytest.approx(-2.4)
    assert top.estimate("val_acc") == 0.25 and top.has("val_acc") and not low.has("val_acc")
    with pytest.raises(ValueError, match="rung 1: no val_acc"):
        low.estimate("val_acc")
    with pytest.raises(UserError, match="auto is resolved by the run's check"):
        top.estimate("auto")
    rec = TrialRecord(top_rung=3, rung=1, rungs={1: low}, estimator="val_acc")
    from shufflesearch.search.ladder import apply_estimator, rung_estimate

    assert rung_estimate(rec) == (1, "sotl", low.estimate("sotl"))  # below the top: its own rung
    full = TrialRecord(top_rung=3, rung=3, rungs={1: low, 3: top})
    apply_estimator([full], "val_acc")
    assert full.proxy == top.estimate("val_acc") and full.estimator == "val_acc"
    apply_estimator([full], "sotl")
    assert full.proxy == top.estimate("sotl")


def test_fields_written_through_the_door_land_in_the_stored_shape():
    study = optuna.create_study(directions=["maximize", "minimize"])
    t = study.ask()
    rungs = {1: RungResult(rung=1, steps=2, sotl=-4.0, latency=0.5), 2: RungResult(rung=2, steps=4, sotl=-7.0)}
    write_fields(study, trial_id(t), archid="abc", rungs=rungs, rung=2)
    stored = study.trials[0].user_attrs
    assert stored["rungs"]["1"] == {"rung": 1, "steps": 2, "sotl": -4.0, "latency": 0.5}
    assert set(stored) == {"archid", "rungs", "rung"}
    rec = TrialRecord(archid="abc", arch=PRESETS["shufflenet_v2_x0_5"], latency_ms=2.0, proxy=0.1,
                      latency=latency_from_dict({"median_ms": 2.0}))
    write_fields(study, trial_id(t), rec)
    study.tell(t, [0.1, 2.0])
    back = read_record(study.trials[0])
    assert back.arch == rec.arch and back.latency == rec.latency and back.rungs == rungs
    with pytest.raises(ValueError, match="not a stored field"):
        write_fields(study, trial_id(t), trial=3)
    assert dataclasses.replace(back, rungs=None).to_user_attrs()["arch"] == rec.arch.to_dict()
