"""The ShuffleNet V2 paper's four guidelines (G1-G4) as checks, benched on this machine.

Owns: the G1-G4 checkers and their report (checks), the Tables 1-4 micro-bench (microbench) and
the per-machine cost coefficients fitted on it (calibration).
May import: common, model, measure and errors.
"""

from __future__ import annotations

from .calibration import Calibration
from .checks import Finding, GuidelineReport, GuidelineSettings

__all__ = ["Calibration", "Finding", "GuidelineReport", "GuidelineSettings"]
