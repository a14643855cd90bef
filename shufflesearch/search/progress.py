"""Live progress of a search, read from the study itself (so it is right with many workers):
trials done out of the budget, the Pareto front's size, the best trade-offs so far, an ETA."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from optuna.trial import TrialState
from tqdm import tqdm

from .front import pareto_front
from .storage import is_baseline, read_record


def front_summary(trials: list[Any], objectives: list[str]) -> tuple[int, str]:
    """Size of the (proxy, latency) front over completed feasible trials, and its two ends."""
    front = pareto_front(read_record(t) for t in trials if t.state == TrialState.COMPLETE)
    if not front:
        return 0, ""
    fastest = min(front, key=lambda r: r.latency_ms)
    best = max(front, key=lambda r: r.proxy)
    return len(front), (
        f"fastest {fastest.latency_ms:.2f}ms@{fastest.proxy:.3g} "
        f"best {best.proxy:.3g}@{best.latency_ms:.2f}ms"
    )


class Progress:
    """tqdm bar on stderr (a plain line every few seconds when stderr is not a terminal)."""

    def __init__(self, run: Any, budget: int, quiet: bool = False, interval: float = 2.0) -> None:
        self.run = run
        self.budget = budget
        self.quiet = quiet
        self.interval = interval
        self.bar = None
        self._stop = threading.Event()
        self._study = None
        self._last_line = 0.0
        self._shown = -1  # trials done at the last plain line

    def __enter__(self) -> Progress:
        if not self.quiet:
            self.bar = tqdm(total=self.budget, desc=f"search {self.run.name}", unit="trial",
                            file=sys.stderr, dynamic_ncols=True, disable=not sys.stderr.isatty())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()

    def poll(self) -> None:
        if self.quiet:
            return
        try:
            if self._study is None:
                self._study = self.run.load_study()
            trials = self._study.get_trials(deepcopy=False)
        except Exception:  # a reader must never take the search down
            return
        search = [t for t in trials if not is_baseline(t)]
        done = sum(t.state == TrialState.COMPLETE for t in search)
        failed = sum(t.state in (TrialState.FAIL, TrialState.PRUNED) for t in search)
        n_front, best = front_summary(trials, [])
        if self.bar is not None and not self.bar.disable:
            self.bar.n = min(done, self.budget)
            self.bar.set_postfix_str(f"front {n_front} | {best} | failed {failed}", refresh=False)
            self.bar.refresh()
        elif time.monotonic() - self._last_line > 10 or (done >= self.budget and done != self._shown):
            # (the last line once: the workers' wrap-up is polled too, and it holds no news)
            self._last_line, self._shown = time.monotonic(), done
            print(f"[{self.run.name}] {done}/{self.budget} trials, front {n_front}, {best}, failed {failed}",
                  file=sys.stderr, flush=True)

    def poll_forever(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
