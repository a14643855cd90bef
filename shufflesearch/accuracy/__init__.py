"""How good an architecture is on a proxy task.

Owns: proxy-task data (data), the zero-cost proxies (proxies), the training loop and short
training (training), and the proxy validation study (validation).
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
