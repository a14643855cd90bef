"""Trial records: what a trial of the search stored, read back from the study."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

GUIDELINES = ("G1", "G2", "G3", "G4")


def trial_records(trials: Sequence[Any]) -> list[dict[str, Any]]:
    """One flat dict per finished trial (Optuna FrozenTrials), sorted by trial number.

    A COMPLETE trial's record is what the search stored in ``user_attrs`` (never recomputed)
    plus ``trial`` and ``state``; a FAIL/PRUNED trial keeps ``fail_reason``. RUNNING and
    WAITING trials are left out: nothing about them is known yet.
    """
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        state = t.state.name
        if state not in ("COMPLETE", "FAIL", "PRUNED"):
            continue
        rec = dict(t.user_attrs)
        rec.update(trial=t.number, state=state)
        if state == "COMPLETE":
            rec.setdefault("baseline", None)
        else:
            rec.setdefault("fail_reason", "no reason recorded (the worker died?)")
        out.append(rec)
    return out


def completed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("state", "COMPLETE") == "COMPLETE" and "proxy" in r]


def failed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("state") in ("FAIL", "PRUNED")]
