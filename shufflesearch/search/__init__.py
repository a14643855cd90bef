"""The search: a space of architectures, and the Optuna loop that explores it.

Owns: the search space (space), its typed config (config: a model per section of a space
file, and the YAML reference) and the reader of space files (reader), the run folder
(runfolder), the one door to its Optuna storage (storage: trial and study attributes, claims,
steps), one trial's evaluation (evaluator), objectives and sampler (objective), the worker loop
(worker), the fidelity ladder and its self-check (ladder) with its promotion rule (promotion),
baselines and short training of the front (baselines), fault injection (faults), the front and
knee (front), the end-of-run side-by-side re-timing (retime), trial records (records), progress
display (progress), and ``search()`` (engine).
May import: common, model, measure, guidelines, accuracy and errors.
"""

from __future__ import annotations

from .config import SpaceConfig
from .engine import search
from .records import GuidelineSummary, RungResult, TrialRecord
from .runfolder import Run, load_run
from .space import SearchSpace, load_space

__all__ = ["GuidelineSummary", "Run", "RungResult", "SearchSpace", "SpaceConfig", "TrialRecord",
           "load_run", "load_space", "search"]
