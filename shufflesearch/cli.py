"""The `shufflesearch` command: a table of subcommands, each parse → call → print.

Logic lives in the modules; a command function turns arguments into one call and prints the
result. Bad input raises UserError, which is printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from .errors import UserError


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --- show ---------------------------------------------------------------------------------


def _add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", nargs="?", help="a preset name or an arch file (.yaml/.json)")
    p.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--list", action="store_true", help="list the presets")


def cmd_show(args: argparse.Namespace) -> int:
    from .arch import PRESETS, resolve_arch
    from .cost import costs, format_costs

    if args.list or not args.arch:
        for name in PRESETS:
            print(name)
        return 0
    arch = resolve_arch(args.arch)
    c = costs(arch, args.resolution)
    if args.json:
        _print_json({"archid": arch.archid, "arch": arch.to_dict(), **c.to_dict()})
    else:
        print(format_costs(arch, c))
    return 0


# --- the table ------------------------------------------------------------------------------

# name -> (help, add_arguments, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "show": ("per-unit channels, params, MACs and MAC of one architecture", _add_show, cmd_show),
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


if __name__ == "__main__":
    sys.exit(main())
