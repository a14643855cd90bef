"""The fidelity ladder below the search loop: rung training that continues one run, its
checkpoints across kills, the settings, the promotion rule and the self-check."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from shufflesearch import Arch, Stage, Stem
from shufflesearch.accuracy import check as chk
from shufflesearch.accuracy import fidelity as fid
from shufflesearch.accuracy.check import check_estimator, check_report
from shufflesearch.accuracy.data import DataSpec, ProxyData, Split, load_data
from shufflesearch.accuracy.fidelity import FidelitySettings, ladder_run, train_to_rung
from shufflesearch.accuracy.training import Trainer, fresh_model, resolve_device, short_train
from shufflesearch.errors import UserError
from shufflesearch.search.promotion import (
    Point,
    crowding_distances,
    front_numbers,
    promotable,
    ranking,
    should_promote,
)
from shufflesearch.search.reader import read_section
from tests.conftest import ROOT

STEM = Stem(channels=8, stride=1, pool=False)
TINY = [
    Arch(stages=(Stage("v2", 16, 1), Stage("v2", 32, 1)), stem=STEM, head=0),
    Arch(stages=(Stage("v2", 24, 1, kernel=5),), stem=STEM, head=0),
    Arch(stages=(Stage("v1", 24, 1, groups=2),), stem=STEM, head=0),
]
# estimator val_acc: every rung scores val_acc, so the tests below compare it rung by rung
RUNGS = FidelitySettings(rungs=(3, 5, 8), estimator="val_acc", device="cpu")


def tiny_data() -> ProxyData:
    """16 px digits cut to 33 training images in batches of 16: two steps per epoch and a
    last batch of one (skipped: BN cannot train on it), so the rungs stop mid-epoch, at an
    epoch's end and across the skipped batch."""
    d = load_data(DataSpec(name="digits", resolution=16, batch=16))
    return dataclasses.replace(d, train=Split(d.train.x[:33], d.train.y[:33]),
                               val=Split(d.val.x[:64], d.val.y[:64]))


@pytest.fixture(scope="module")
def data() -> ProxyData:
    return tiny_data()


def _weights(sd: dict) -> dict:
    return {k: v.clone() for k, v in sd.items()}


# --- the loop: stop anywhere, continue as if it had not stopped -------------------------------


def test_continued_run_equals_uninterrupted_run(data):
    torch.set_num_threads(1)
    straight = Trainer(fresh_model(TINY[0], data, 0), data, total_steps=8, seed=0, device="cpu")
    straight.run(8)
    first = Trainer(fresh_model(TINY[0], data, 0), data, total_steps=8, seed=0, device="cpu")
    first.run(3)  # mid-epoch
    sd = first.state_dict()
    again = Trainer(fresh_model(TINY[0], data, 7), data, total_steps=8, seed=0, device="cpu")  # other init: overwritten
    again.load_state_dict(sd)
    again.run(4)  # an epoch's end, before its skipped batch of one
    again.run(5)
    again.run(8)
    assert again.losses == straight.losses  # bit for bit, on one thread
    a, b = again.model.state_dict(), straight.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a restart (a new schedule over the first rung only) would NOT give the same run
    restart = Trainer(fresh_model(TINY[0], data, 0), data, total_steps=3, seed=0, device="cpu")
    restart.run(3)
    assert restart.losses[:1] == straight.losses[:1] and restart.losses != straight.losses[:3]


def test_train_to_rung_continues_the_previous_rung(data, tmp_path):
    torch.set_num_threads(1)
    r1 = train_to_rung(TINY[0], data, RUNGS, 1, tmp_path, seed=0)
    r2 = train_to_rung(TINY[0], data, RUNGS, 2, tmp_path, seed=0)
    r3 = train_to_rung(TINY[0], data, RUNGS, 3, tmp_path, seed=0)
    assert (r1["resumed_from"], r2["resumed_from"], r3["resumed_from"]) == (0, 1, 2)
    assert [r["steps"] for r in (r1, r2, r3)] == [3, 5, 8]
    one_go = ladder_run(TINY[0], data, RUNGS.rungs, seed=0, device="cpu")
    for got, want in zip((r1, r2, r3), one_go):
        assert got["val_acc"] == want["val_acc"] and got["sotl"] == want["sotl"]
    # sotl is minus the sum of the per-step losses of the one 8-step run
    straight = Trainer(fresh_model(TINY[0], data, 0), data, total_steps=8, seed=0, device="cpu")
    straight.run(8)
    assert r3["sotl"] == -sum(straight.losses)
    assert r1["sotl"] == -sum(straight.losses[:3])
    # only the newest checkpoint is kept, and it holds the one run's weights
    assert sorted(p.name for p in tmp_path.glob("rung*")) == ["rung3.pt"]
    ck = torch.load(tmp_path / "rung3.pt", weights_only=False)
    w = straight.model.state_dict()
    assert all(torch.equal(ck["trainer"]["model"][k], w[k]) for k in w)
    # asking again for a rung already reached trains nothing
    again = train_to_rung(TINY[0], data, RUNGS, 2, tmp_path, seed=0)
    assert again["trained_seconds"] == 0.0 and again["val_acc"] == r2["val_acc"]
    assert (tmp_path / ".lock").exists()  # the folder lock serialising workers
    attr = fid.rung_attr(r3)
    assert attr == {"rung": 3, "steps": 8, "val_acc": r3["val_acc"], "sotl": r3["sotl"],
                    "seconds": r3["seconds"], "device": "cpu"}
    assert fid.rung_dir("runs/x", "abc", 0).as_posix() == "runs/x/rungs/abc-s0"


def test_killed_rung_restarts_cleanly(data, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    want = ladder_run(TINY[1], data, RUNGS.rungs, seed=1, device="cpu")
    train_to_rung(TINY[1], data, RUNGS, 1, tmp_path, seed=1)
    real = fid.rung_estimates
    calls = {"n": 0}

    def dies_once(trainer, d, **kw):  # the process dies after rung 2's steps, before its checkpoint
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real(trainer, d, **kw)

    monkeypatch.setattr(fid, "rung_estimates", dies_once)
    with pytest.raises(KeyboardInterrupt):
        train_to_rung(TINY[1], data, RUNGS, 3, tmp_path, seed=1)
    assert sorted(p.name for p in tmp_path.glob("*rung*")) == ["rung1.pt"]
    (tmp_path / ".rung2.pt.x.tmp").write_bytes(b"torn")  # a write cut short: ignored
    (tmp_path / "rung2.pt").write_bytes(b"damaged")  # unreadable: set aside, back to rung 1
    r3 = train_to_rung(TINY[1], data, RUNGS, 3, tmp_path, seed=1)
    assert r3["resumed_from"] == 1 and (tmp_path / "rung2.pt.bad").exists()
    assert [h["val_acc"] for h in r3["history"]] == [w["val_acc"] for w in want]
    assert r3["sotl"] == want[2]["sotl"]


KILL_SCRIPT = """
import os, signal, sys, torch
from shufflesearch.accuracy.fidelity import train_to_rung
from tests.accuracy.test_fidelity import TINY, RUNGS, tiny_data
torch.set_num_threads(1)
d = tiny_data()
def die(h):
    if h["rung"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
train_to_rung(TINY[2], d, RUNGS, 3, sys.argv[1], seed=0, on_rung=die)
"""


def test_kill_minus_nine_between_rungs_resumes_from_the_checkpoint(data, tmp_path):
    torch.set_num_threads(1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], env=env,
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert (tmp_path / "rung2.pt").exists() and not (tmp_path / "rung3.pt").exists()
    r3 = train_to_rung(TINY[2], data, RUNGS, 3, tmp_path, seed=0)
    assert r3["resumed_from"] == 2
    want = ladder_run(TINY[2], data, RUNGS.rungs, seed=0, device="cpu")
    assert r3["val_acc"] == want[2]["val_acc"]
    assert r3["sotl"] == pytest.approx(want[2]["sotl"], rel=1e-6)  # another process: float tolerance


def test_a_foreign_checkpoint_is_refused(data, tmp_path):
    train_to_rung(TINY[0], data, RUNGS, 1, tmp_path, seed=0)
    with pytest.raises(UserError, match="rung1.pt: checkpoint of another trial"):
        train_to_rung(TINY[0], data, RUNGS, 2, tmp_path, seed=5)
    with pytest.raises(UserError, match=r"rung: 4 must be in 1\.\.3"):
        train_to_rung(TINY[0], data, RUNGS, 4, tmp_path, seed=0)


# --- settings -------------------------------------------------------------------------------


def test_settings_defaults_none_and_overrides():
    s = read_section("fidelity", None)
    d = FidelitySettings()
    assert s == d and (s.rungs, s.eta, s.estimator, s.device) == ((8, 16, 64), 3, "sotl", "auto")
    assert s.check.top >= chk.MIN_CHECK and s.check.seeds == 2 and s.check.steps > s.top_steps
    assert read_section("fidelity", "none") is None and read_section("fidelity", False) is None
    t = read_section("fidelity", {"rungs": [10, 20], "check": {"seeds": 3}})
    assert t.rungs == (10, 20) and t.check.seeds == 3 and t.check.steps == d.check.steps
    assert read_section("fidelity", t.to_dict()) == t
    assert FidelitySettings(rungs=[4, 9]).rungs == (4, 9)  # built in code: checked the same way
    assert fid.search_estimator(FidelitySettings(estimator="auto")) == "sotl"  # before the run's check
    assert fid.search_estimator(FidelitySettings(estimator="val_acc")) == "val_acc"


@pytest.mark.parametrize("doc, needle", [
    ({"rungs": []}, "fidelity.rungs: must be a non-empty list"),
    ({"rungs": [30, 30]}, "fidelity.rungs: [30, 30] must increase strictly"),
    ({"rungs": [0, 5]}, "fidelity.rungs[0]: 0 is out of range (>= 1)"),
    ({"rungs": [1.5]}, "fidelity.rungs[0]: must be an integer, got 1.5"),
    ({"eta": 1}, "fidelity.eta: 1 is out of range (>= 2)"),
    ({"eta": True}, "fidelity.eta: must be an integer, got True"),
    ({"estimator": "loss"}, "fidelity.estimator: must be one of val_acc, sotl, auto, got 'loss'"),
    ({"device": "tpu"}, "fidelity.device: must be one of auto, cpu, cuda, got 'tpu'"),
    ({"check": {"steps": 0}}, "fidelity.check.steps: 0 is out of range (>= 1)"),
    ({"check": {"seeds": 0}}, "fidelity.check.seeds"),
    ({"check": {"top": -1}}, "fidelity.check.top"),
    ({"check": {"tops": 3}}, "fidelity.check.tops: unknown key (did you mean 'top'?)"),
    ({"rung": [1]}, "fidelity.rung: unknown key"),
    ("always", "fidelity: must be a mapping, got 'always'"),
])
def test_settings_errors_name_field_and_rule(doc, needle):
    with pytest.raises(UserError) as e:
        read_section("fidelity", doc)
    assert needle in str(e.value) and len(str(e.value).splitlines()) == 1


def test_device_resolution():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError, match="device: 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rungs_match_cpu(data, tmp_path):
    gpu = dataclasses.replace(RUNGS, device="cuda")
    r = train_to_rung(TINY[0], data, gpu, 3, tmp_path, seed=0)
    assert r["device"].startswith("cuda")
    cpu = ladder_run(TINY[0], data, RUNGS.rungs, seed=0, device="cpu")
    assert r["sotl"] == pytest.approx(cpu[2]["sotl"], rel=1e-3)  # GPU kernels: float tolerance
    s = short_train(TINY[0], data, steps=4, device="cuda")
    assert 0 <= s["val_acc"] <= 1


# --- promotion: NSGA-II ranking and the ASHA rule, on points checked by hand -------------------

# est (max), latency (min). Front 0: A, B, C. D is dominated by C (0.7 > 0.6, 2 < 8) and E by A
# (0.9 > 0.85, 10 < 12); D and E do not dominate each other: front 1. F is dominated by D: front 2.
HAND = [Point(1, 0.9, 10), Point(2, 0.8, 5), Point(3, 0.7, 2), Point(4, 0.6, 8),
        Point(5, 0.85, 12), Point(6, 0.5, 20)]


def test_fronts_by_hand():
    assert front_numbers(HAND) == [0, 0, 0, 1, 1, 2]


def test_crowding_by_hand():
    # A four-point front: ends infinite; P2 = (1.0-0.5)/0.6 + (10-5)/9, P3 = (0.9-0.4)/0.6 + (9-1)/9
    f = [Point(1, 1.0, 10), Point(2, 0.9, 9), Point(3, 0.5, 5), Point(4, 0.4, 1)]
    d = crowding_distances(f)
    assert d[0] == d[3] == math.inf
    assert d[1] == pytest.approx(0.5 / 0.6 + 5 / 9)
    assert d[2] == pytest.approx(0.5 / 0.6 + 8 / 9)
    r = [p.id for p in ranking(f)]
    assert set(r[:2]) == {1, 4} and r[2:] == [3, 2]


def test_promotion_rule_by_hand():
    # front 0 crowding: A and C are the ends (inf), B = (0.9-0.7)/0.2 + (10-2)/8 = 2
    order = [p.id for p in ranking(HAND)]
    assert set(order[:2]) == {1, 3} and order[2:] == [2, 4, 5, 6]
    # eta 3: floor(6/3) = 2 promoted: the two ends of the front, not the middle point B
    assert [should_promote(t, HAND, 3) for t in (1, 2, 3, 4, 5, 6)] == [True, False, True, False, False, False]
    assert [should_promote(t, HAND, 3, min_one=False) for t in (1, 2, 3)] == [True, False, True]
    assert should_promote(2, HAND, 2)  # eta 2: floor(6/2) = 3 -> B too
    # the cap: with both places at the next rung already taken, nobody else starts it
    assert not should_promote(1, HAND, 3, started=2) and should_promote(1, HAND, 3, started=1)
    assert promotable(HAND, promoted=[1], eta=3) == [3]
    assert promotable(HAND, promoted=[1, 4], eta=3) == []  # the two places are taken
    assert promotable(HAND[:2], promoted=[], eta=3) == []  # fewer than eta finished: nobody yet
    # ... unless deciding at finish time: the best of the first few climbs (A and B tie: both ends)
    assert should_promote(1, HAND[:2], 3) != should_promote(2, HAND[:2], 3)
    assert not should_promote(1, HAND[:2], 3, min_one=False)
    with pytest.raises(ValueError, match="trial 9"):
        should_promote(9, HAND, 3)


def test_failed_estimate_ranks_last():
    pts = [Point(1, float("nan"), 1.0), Point(2, 0.1, 50.0), Point(3, 0.2, 60.0)]
    assert ranking(pts)[-1].id == 1 and front_numbers(pts) == [1, 0, 0]  # though it is the fastest


# --- the self-check -------------------------------------------------------------------------


def test_check_report_by_hand():
    # 8 architectures: val_acc ranks them as the check does, sotl the reverse way
    est = {"val_acc": list(range(8)), "sotl": list(range(8, 0, -1))}
    acc = [[0.1 * i, 0.1 * i + 0.01] for i in range(8)]
    r = check_report(est, acc, "val_acc", n_boot=200)
    assert r["estimators"]["val_acc"]["tau"] == pytest.approx(1.0)
    assert r["estimators"]["sotl"]["tau"] == pytest.approx(-1.0)
    assert r["chosen"] == "val_acc" and r["graded_on"] == "all" and r["too_few"] is None
    # seed noise of 0.005 against gaps of 0.1: an oracle would rank perfectly
    assert r["noise_ceiling_tau"] == pytest.approx(1.0)
    assert r["warning"] is None  # the CI is [1, 1]
    forced = check_report(est, acc, "sotl", n_boot=200)
    assert forced["chosen"] == "sotl" and "cannot tell" in forced["warning"]
    # auto: chosen on the even positions, graded on the odd ones only (4 of 8)
    auto = check_report(est, acc, "auto", n_boot=200)
    assert auto["chosen"] == "val_acc" and auto["graded_on"] == "other half" and auto["graded_n"] == 4
    assert "graded on the other 4 only" in auto["chosen_how"]
    # a ranking unrelated to the check: the CI includes 0, said plainly
    flat = check_report({"val_acc": [2, 4, 1, 3, 5, 0, 7, 6][:8]}, [[a, a + 1] for a in (3, 1, 6, 2, 5, 8, 4, 7)],
                        "val_acc", n_boot=200)
    assert flat["tau_ci"][0] <= 0 <= flat["tau_ci"][1] and "not above 0" in flat["warning"]
    # fewer than MIN_CHECK architectures: too few to tell, no verdict either way
    few = check_report({"sotl": [1, 2, 3, 4]}, [[1, 1], [2, 2], [3, 3], [4, 4]], "sotl", n_boot=200)
    assert few["too_few"] and "too few to tell" in few["too_few"] and few["warning"] is None


def test_vectorised_tau_matches_scipy():
    rng = np.random.default_rng(3)
    x = np.round(rng.normal(size=9), 1)  # some ties
    ys = np.round(rng.normal(size=(5, 9)), 1)
    got = chk.kendall_tau_rows(x, ys)
    assert got == pytest.approx([chk.kendall_tau(x, y) for y in ys])


def test_oracle_does_not_beat_the_noise_ceiling():
    """The ceiling bounds what an estimator that knew the true accuracies would reach against
    the check's truth (the mean of 2 noisy seeds). Simulated checks of 11 architectures at
    three noise levels: the oracle beats the ceiling in at most about 10% of draws. The old
    ceiling (τ between single seeds) was beaten in most of them."""
    rng = np.random.default_rng(7)
    for noise in (0.3, 0.7, 1.5):
        beats = beats_seed_tau = 0
        draws = 150
        for _ in range(draws):
            true = rng.normal(0.0, 1.0, 11)
            acc = true[:, None] + rng.normal(0.0, noise, (11, 2))
            truth = acc.mean(axis=1)
            oracle = chk.kendall_tau(true, truth)
            beats += oracle > chk.oracle_ceiling(acc, n_sim=500, seed=int(rng.integers(1 << 30)))
            beats_seed_tau += oracle > chk.noise_ceiling(acc.T)
        assert beats / draws <= 0.13, (noise, beats)
        assert beats_seed_tau / draws >= 0.5, (noise, beats_seed_tau)  # what the old ceiling allowed


def test_check_estimator_trains_stores_and_reuses(data):
    stored = {}
    rep = check_estimator(TINY, {"val_acc": [0.3, 0.2, 0.1], "sotl": [-3.0, -2.0, -1.0]}, data,
                          steps=2, seeds=2, device="cpu", n_boot=50,
                          on_trained=lambda aid, r: stored.__setitem__(aid, r))
    assert set(stored) == {a.archid for a in TINY}
    assert all(len(r["val_acc"]) == 2 and r["seeds"] == [100, 101] for r in stored.values())
    assert rep["n"] == 3 and rep["chosen"] in ("val_acc", "sotl")
    assert rep["check_acc_mean"] == [float(np.mean(stored[a.archid]["val_acc"])) for a in TINY]
    again = check_estimator(TINY, {"val_acc": [0.3, 0.2, 0.1], "sotl": [-3.0, -2.0, -1.0]}, data,
                            steps=2, seeds=2, device="cpu", n_boot=50, done=stored,
                            on_trained=lambda *_: pytest.fail("retrained a stored architecture"))
    assert again["check_acc_mean"] == rep["check_acc_mean"]
    with pytest.raises(UserError, match="at least 3"):
        check_estimator(TINY[:2], [0.1, 0.2], data, steps=2, seeds=1, estimator="val_acc")


def test_check_in_two_processes_gives_what_one_gives(data):
    """The check's retrainings spread over spawned processes come back whole (every seed of
    every architecture, in seed order) and equal to one process's, figure for figure."""
    one = dict(chk.train_checks(TINY, data, 2, [100, 101], device="cpu"))
    two = dict(chk.train_checks(TINY, data, 2, [100, 101], device="cpu", workers=2))
    assert set(two) == {a.archid for a in TINY}
    for archid, r in one.items():
        assert two[archid]["seeds"] == [100, 101] and two[archid]["steps"] == 2
        assert two[archid]["val_acc"] == r["val_acc"]
        assert two[archid]["train_loss_sum"] == r["train_loss_sum"]
    # Stopping early (Ctrl-C in the caller, an error storing a result) leaves no process behind.
    first = chk.train_checks(TINY, data, 2, [100, 101], device="cpu", workers=2)
    assert next(first)[0] in two
    first.close()
    assert mp.active_children() == []


def test_two_workers_on_one_folder_train_once(data, tmp_path):
    import threading

    out: list[dict] = []
    ts = [threading.Thread(target=lambda: out.append(train_to_rung(TINY[0], data, RUNGS, 2, tmp_path, seed=0)))
          for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(r["trained_seconds"] == 0.0 for r in out) == [False, True]  # one trained, one waited
    assert out[0]["val_acc"] == out[1]["val_acc"]


def test_the_check_scores_images_the_ladder_never_scores(data, monkeypatch):
    seen: list[str] = []
    real = chk.evaluate
    monkeypatch.setattr(chk, "evaluate", lambda m, d, which="val": seen.append(which) or real(m, d, which))
    r = chk.check_training(TINY[0], data, 2, [100])
    assert seen == ["check"] and r["split"] == "check" and len(r["train_loss_sum"]) == 1
