"""Which option sets which library field, and the one line an error becomes.

The stages name what was wrong by its field (``epochs``, ``DataSpec.name``); a command names
the option the user typed instead, when it has that option. The message is rebuilt from the
error's parts (``UserError.named``), never edited.
"""

from __future__ import annotations

from collections.abc import Collection

from ..errors import UserError

# The library's name of a field (``Owner.field`` for a settings model's, the argument's name
# for a function's) -> the option that sets it.
FLAGS = {
    "DataSpec.name": "--data",
    "DataSpec.resolution": "--resolution",
    "DataSpec.batch": "--batch",
    "TargetSpec.resolution": "--resolution",
    "TargetSpec.batch": "--batch",
    "TargetSpec.threads": "--threads",
    "TargetSpec.backend": "--backend",
    "resolution": "--resolution",
    "epochs": "--epochs",
    "lr": "--lr",
    "threads": "--threads",
    "seeds": "--seeds",
    "ladder_seeds": "--ladder-seeds",
    "out_dir": "--out",
    "out": "--out",
    "trial": "--trial",
    "max_latency": "--max-latency",
    "backends": "--backends",
    "budget": "--budget",
    "workers": "--workers",
    "name": "--name",
}


def error_line(e: UserError, flags: Collection[str] = ()) -> str:
    """``e`` as one line, naming the option among ``flags`` (the command's) that set its field."""
    flag = FLAGS.get(e.setting) if e.field else None
    return e.named(flag) if flag in flags else str(e)

