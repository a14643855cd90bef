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


# --- latency --------------------------------------------------------------------------------


def _add_latency(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="a preset name or an arch file; or `build-table` / `validate` (the predictor)")
    p.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--max-seconds", type=float, default=1.0, help="time cap per measurement (default 1)")
    p.add_argument("--remeasure", action="store_true", help="ignore the cache and time again")
    p.add_argument("--n", type=int, default=50, help="validate: random architectures (default 50)")
    p.add_argument("--space", help="build-table/validate: sample from this search space YAML")
    p.add_argument("--seed", type=int, default=0, help="build-table/validate: sampling seed")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_latency(args: argparse.Namespace) -> int:
    from .latency import LatencyCache, TargetSpec, measure_arch

    spec = TargetSpec(args.resolution, args.batch, args.threads, args.channels_last, args.backend)
    if args.max_seconds <= 0:
        raise UserError(f"--max-seconds: must be > 0, got {args.max_seconds}")
    if args.arch in ("build-table", "validate"):
        from .predictor import cli_predictor

        return cli_predictor(args, spec)
    lat = measure_arch(args.arch, spec, cache=LatencyCache(), remeasure=args.remeasure,
                       max_seconds=args.max_seconds)
    if args.json:
        _print_json(lat.to_dict())
    else:
        src = "cached" if lat.cached else "measured"
        print(f"{lat.median_ms:.3f} ms median, IQR {lat.iqr_ms:.3f} ms ({100 * lat.rel_iqr:.1f}%), "
              f"n={lat.n}, {src}; {spec.resolution}x{spec.resolution} batch {spec.batch}, "
              f"{spec.threads} thread(s), {spec.backend}; {lat.fingerprint['cpu']}")
    return 0


# --- run / validate ---------------------------------------------------------------------------


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a search-space YAML file, e.g. search_spaces/v2.yaml")
    p.add_argument("--budget", type=int, default=200, help="completed search trials to reach (default 200)")
    p.add_argument("--name", help="run name: the folder runs/NAME (default: the space file's stem)")
    p.add_argument("--runs", default="runs", help="where run folders live (default runs/)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--storage", help="an RDB URL (e.g. postgresql://...) shared by many machines")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def cmd_run(args: argparse.Namespace) -> int:
    from .search import search

    run = search(args.space, args.budget, name=args.name, runs_root=args.runs,
                 storage=args.storage, workers=args.workers, quiet=args.quiet)
    if not args.quiet:
        print(f"done: {run.root}  (review: shufflesearch pareto {run.root})")
    return 0


def _add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a search-space YAML file")
    p.add_argument("--sample", type=int, default=20, help="also sample this many architectures (default 20)")


def cmd_validate(args: argparse.Namespace) -> int:
    from .space import load_space

    space = load_space(args.space)
    archs = space.sample_random(args.sample, space.seed) if args.sample else []
    print(f"{args.space}: ok")
    print(f"  objectives: {', '.join(f'{n} ({d})' for n, d in space.objectives)}")
    print(f"  stages: {len(space.stages)}; baselines: {', '.join(space.baselines) or 'none'}")
    if args.sample:
        print(f"  sampled {len(archs)} distinct valid architectures out of {args.sample} asked")
    return 0


# --- the table ------------------------------------------------------------------------------

# name -> (help, add_arguments, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "run": ("search a space: shufflesearch run search_spaces/v2.yaml --budget 200", _add_run, cmd_run),
    "validate": ("check a search-space YAML file without running it", _add_validate, cmd_validate),
    "show": ("per-unit channels, params, MACs and MAC of one architecture", _add_show, cmd_show),
    "latency": ("measured latency of one architecture (median, IQR, n), and the latency predictor", _add_latency, cmd_latency),
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
