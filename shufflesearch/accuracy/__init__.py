"""How good an architecture is on a proxy task.

Owns: proxy-task data (data) and the packaged task's builder (make_fashion), the zero-cost
proxies (proxies), the training loop and short training (training), the fidelity ladder
(fidelity), the run's self-check (check), and the study that validates the proxies and the
ladder against longer training (validation).
May import: common, model, measure, guidelines and errors. Takes Archs: a caller that has a
search space samples it and passes the Archs in.
"""

from __future__ import annotations

from .data import DataSpec, ProxyData, load_data
from .fidelity import CheckSettings, FidelitySettings
from .proxies import PROXIES, compute_proxies
from .training import train_arch

__all__ = ["PROXIES", "CheckSettings", "DataSpec", "FidelitySettings", "ProxyData", "compute_proxies",
           "load_data", "train_arch"]
