"""The `shufflesearch` command: a table of subcommands, each parse → call → print.

Logic lives in the stages; a command function turns arguments into calls and prints the result.
This is the edge where a preset name or an arch file becomes an Arch (``resolve_arch``) and a
search-space file becomes a SearchSpace; the stages below take those. Bad input raises
UserError, which is printed as one line with exit code 2.

Owns: the command table and main() (here), the commands by subject (arch: show, latency, check,
export-arch, train; run: run, validate, guidelines, proxies; review: pareto, report, export).
May import: every stage (common, model, measure, guidelines, accuracy, search, review) and
errors; nothing imports cli.

Imports are all at the top, none per command: importing every stage costs about 0.3 s more than
the model stage alone (measured with /usr/bin/time, see README "Architecture"), against the
~1.5 s that torch costs every command anyway, so per-command lazy imports would buy little and
hide the import graph.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ..errors import UserError
from .arch import (
    _add_check,
    _add_export_arch,
    _add_latency,
    _add_show,
    _add_train,
    cmd_check,
    cmd_export_arch,
    cmd_latency,
    cmd_show,
    cmd_train,
)
from .review import _add_export, _add_pareto, _add_report, cmd_export, cmd_pareto, cmd_report
from .run import (
    _add_guidelines,
    _add_proxies,
    _add_run,
    _add_validate,
    cmd_guidelines,
    cmd_proxies,
    cmd_run,
    cmd_validate,
)

# --- the table ------------------------------------------------------------------------------

# name -> (help, add_arguments, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "run": ("search a space: shufflesearch run search_spaces/v2.yaml --budget 200", _add_run, cmd_run),
    "validate": ("check a search-space YAML file without running it", _add_validate, cmd_validate),
    "pareto": ("the non-dominated trials of a run (proxy vs measured latency), knee, baselines", _add_pareto, cmd_pareto),
    "report": ("one self-contained HTML report of a run, with PNG plots beside it", _add_report, cmd_report),
    "export": ("export a run's trial (--trial N, --knee, --max-latency MS) as a verified bundle", _add_export, cmd_export),
    "show": ("per-unit channels, params, MACs and MAC of one architecture", _add_show, cmd_show),
    "latency": ("measured latency of one architecture (ratio to a reference, CI), and the latency predictor", _add_latency, cmd_latency),
    "check": ("G1-G4 guideline findings of one architecture, worst first", _add_check, cmd_check),
    "guidelines": ("device bench: the V2 paper's Tables 1-4 here, and calibration", _add_guidelines, cmd_guidelines),
    "export-arch": ("write and verify a deployable bundle of one architecture", _add_export_arch, cmd_export_arch),
    "train": ("train one architecture on a proxy task; writes weights and metrics", _add_train, cmd_train),
    "proxies": ("accuracy proxies: `proxies validate SPACE.yaml` ranks them against short training", _add_proxies, cmd_proxies),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shufflesearch",
        description="Architecture search over ShuffleNet-family CNNs, judged by measured latency.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `shufflesearch show ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
