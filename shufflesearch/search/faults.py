"""Fault injection for the reliability tests and bench/fault_injection.py: kill this process at
a named point, as kill -9 or the OOM killer would."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

log = logging.getLogger("shufflesearch.search")


FAULT_ENV = "SHUFFLESEARCH_FAULT"  # fault injection for the reliability tests, see fault_point
_fault_hits: dict[str, int] = {}


def fault_point(name: str, hold: Any = None) -> None:
    """``SHUFFLESEARCH_FAULT=NAME:N[,NAME:N...]`` kills this process with SIGKILL (as kill -9 or
    the OOM killer would) the Nth time it reaches point NAME: ``sample``, ``latency`` (holding
    the timing lock, as a measurement does), ``proxies`` (holding the compute lock),
    ``storage`` (half of a trial's results written). A no-op unless the variable is set."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    _fault_hits[name] = n = _fault_hits.get(name, 0) + 1
    if f"{name}:{n}" not in spec.replace(" ", "").split(","):
        return
    log.warning("fault injection: SIGKILL at %s #%d", name, n)
    with hold() if hold is not None else contextlib.nullcontext():
        os.kill(os.getpid(), signal.SIGKILL)
