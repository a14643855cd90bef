"""search/progress.py: the progress line is read from the study (trials done, front, failures)."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
from optuna.trial import TrialState

from shufflesearch.search.progress import Progress, front_summary
from shufflesearch.search.storage import trial_id, write_fields


def _study() -> optuna.Study:
    """A baseline, three search trials (one of them dominated) and one failure."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for proxy, ms, extra in ((0.9, 4.0, {"baseline": "shufflenet_v2_x0_5"}), (0.5, 1.0, {}),
                             (0.8, 2.0, {}), (0.4, 3.0, {})):
        t = study.ask()
        write_fields(study, trial_id(t), archid=f"a{t.number}", proxy=proxy, latency_ms=ms, **extra)
        study.tell(t, [proxy, ms])
    t = study.ask()
    write_fields(study, trial_id(t), fail_reason="out of memory")
    study.tell(t, state=TrialState.FAIL)
    return study


def test_front_summary_names_both_ends_of_the_front():
    trials = _study().get_trials()
    n, text = front_summary(trials, [])
    assert n == 3  # the baseline (0.9 at 4 ms) and trials 1, 2; trial 3 is beaten by trial 2
    assert text == "fastest 1.00ms@0.5 best 0.9@4.00ms"
    assert front_summary([t for t in trials if t.state == TrialState.FAIL], []) == (0, "")


def test_a_poll_prints_one_line_when_stderr_is_not_a_terminal(capsys):
    study = _study()
    run = SimpleNamespace(name="tiny", load_study=lambda: study)
    with Progress(run, budget=3) as p:
        p.poll()
    err = capsys.readouterr().err
    assert err.startswith("[tiny] 3/3 trials, front 3, fastest 1.00ms@0.5")  # the baseline is not counted
    assert err.rstrip().endswith("failed 1")
    with Progress(run, budget=3, quiet=True) as p:
        p.poll()
    assert capsys.readouterr().err == ""


def test_a_study_that_cannot_be_read_does_not_stop_the_search(capsys):
    def broken():
        raise RuntimeError("database is locked")

    with Progress(SimpleNamespace(name="x", load_study=broken), budget=2) as p:
        p.poll()
    assert capsys.readouterr().err == ""
