"""The `shufflesearch` command: a table of subcommands, each parse → call → print.

Logic lives in the stages; a command function turns arguments into calls and prints the result.
This is the edge where a preset name or an arch file becomes an Arch (``resolve_arch``) and a
search-space file becomes a SearchSpace; the stages below take those. Bad input raises
UserError, which is printed as one line (naming the option that set the field it names, see
flags.py) with exit code 2.

Owns: the command table and main() (here), the command tree with its old spellings (parser),
the field-to-option table (flags), the commands by subject (arch: show, guidelines ARCH,
export-arch, train; latency: latency ARCH, latency table build|validate, latency transfer;
run: run, space, guidelines bench, proxies validate; review: pareto, report, export).
May import: every stage (common, model, measure, guidelines, accuracy, search, review) and
errors; nothing imports cli.

Imports are all at the top, none per command: importing every stage costs about 0.3 s more than
the model stage alone (measured with /usr/bin/time: docs/benchmarks.md, "Start-up imports"), against the ~1.5 s
that torch costs every command anyway, so per-command lazy imports would buy little and hide
the import graph.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError
from . import arch, latency, review, run
from .flags import error_line
from .parser import OWN, Command, Tree

# --- the table ------------------------------------------------------------------------------

# words -> what it does, its arguments, its function. A group that is also a command (`latency
# ARCH` beside `latency table build`) takes the words that name none of its sub-commands.
COMMANDS: dict[str, Command] = {
    "run": Command("search a space: shufflesearch run search_spaces/v2.yaml --budget 200", run.add_run, run.cmd_run),
    "space": Command("read a search-space file and sample it, without searching", run.add_space, run.cmd_space),
    "pareto": Command("the non-dominated trials of a run (proxy vs measured latency), knee, baselines", review.add_pareto, review.cmd_pareto),
    "report": Command("one self-contained HTML report of a run, with PNG plots beside it", review.add_report, review.cmd_report),
    "export": Command("export a run's trial (--trial N, --knee, --max-latency MS) as a verified bundle", review.add_export, review.cmd_export),
    "show": Command("per-unit channels, params, MACs and MAC of one architecture", arch.add_show, arch.cmd_show),
    "latency": Command("measured latency of one architecture: ratio to a reference network, 95% CI", latency.add_latency, latency.cmd_latency),
    "latency table build": Command("time random architectures unit by unit into the latency predictor's table", latency.add_table_build, latency.cmd_table_build),
    "latency table validate": Command("the latency predictor's error against measurement on other random architectures", latency.add_table_validate, latency.cmd_table_validate),
    "latency transfer": Command("re-time a run's front and baselines on each runtime", latency.add_transfer, latency.cmd_transfer),
    "guidelines": Command("G1-G4 guideline findings of one architecture, worst first", arch.add_guidelines, arch.cmd_guidelines),
    "guidelines bench": Command("device bench: the V2 paper's Tables 1-4 here, and the calibration", run.add_bench, run.cmd_bench),
    "export-arch": Command("write and verify a deployable bundle of one architecture", arch.add_export_arch, arch.cmd_export_arch),
    "train": Command("train one architecture on a proxy task; writes weights and metrics", arch.add_train, arch.cmd_train),
    "proxies validate": Command("rank the zero-cost proxies and the fidelity ladder against longer training", run.add_proxies, run.cmd_proxies),
}
GROUPS = {  # the help of each group
    "latency": "latency of one architecture (latency ARCH), the latency predictor (latency table "
               "build|validate), a run's front on each runtime (latency transfer RUN)",
    "latency table": "the latency predictor's per-unit table: build it, validate it",
    "guidelines": "the G1-G4 guideline findings of one architecture (guidelines ARCH), the device "
                  "bench (guidelines bench)",
    "proxies": "zero-cost proxies: validate ranks them against longer training",
}
# Old spellings, kept for one release: each runs the command it names after a note on stderr.
OLD = {
    "check": "guidelines",
    "validate": "space",
    "latency build-table": "latency table build",
    "latency validate": "latency table validate",
}
BARE = {"guidelines": "guidelines bench"}  # a group called without a word: an old spelling


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shufflesearch",
        description="Architecture search over ShuffleNet-family CNNs, judged by measured latency.",
        epilog="Old spellings (check, validate, latency build-table, latency validate, guidelines "
               "without an architecture) still work in this release, with a note on stderr.",
    )
    tree = Tree(parser, GROUPS)
    own = {words for words in COMMANDS if any(other.startswith(words + " ") for other in COMMANDS)}
    for words, c in COMMANDS.items():
        if words in own:  # its own form, beside its sub-commands
            tree.node(words, GROUPS[words]).description = (
                f"{GROUPS[words]}; the options of {words} {OWN}: {parser.prog} {words} {OWN} -h")
            tree.command(words, c, hidden_word=OWN)
        else:
            tree.command(words, c)
    for old, new in OLD.items():
        tree.old(old, f"{new} {OWN}" if new in own else new, COMMANDS[new],
                 latency.add_old_options if old.startswith("latency ") else None)
    for group, new in BARE.items():
        tree.bare(group, new, COMMANDS[new])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if args._note:
        print(f"note: {args._note}", file=sys.stderr)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"error: {error_line(e, args._flags)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `shufflesearch show ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
