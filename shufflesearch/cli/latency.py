"""The latency commands: ``latency ARCH`` (time one architecture), ``latency table build`` and
``latency table validate`` (the per-unit latency predictor), ``latency transfer RUN`` (a run's
front re-timed on each runtime). Each takes only the options it uses."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..accuracy.data import DataSpec, load_data
from ..errors import UserError
from ..measure.backends import calibration_images
from ..measure.cache import LatencyCache
from ..measure.drift import measure_seeded
from ..measure.predictor import LatencyTable, build_table, random_archs, table_path, validate
from ..measure.target import BACKENDS, TargetSpec
from ..model.arch import Arch, resolve_arch
from ..review.transfer import FILE as TRANSFER_FILE
from ..review.transfer import format_transfer, parse_backends, transfer
from ..search.space import load_space
from .output import print_json


def _add_target(p: argparse.ArgumentParser) -> None:
    """The target a figure is taken on (a TargetSpec)."""
    p.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--backend", default="torch", choices=list(BACKENDS), help="runtime timed (default torch)")


def _target(args: argparse.Namespace) -> TargetSpec:
    return TargetSpec(args.resolution, args.batch, args.threads, args.channels_last, args.backend)


def _add_max_seconds(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--max-seconds", type=float, default=1.0, help=f"time cap {what} (default 1)")


def _max_seconds(args: argparse.Namespace) -> float:
    if args.max_seconds <= 0:
        raise UserError(f"--max-seconds: must be > 0, got {args.max_seconds}")
    return args.max_seconds


# --- latency ARCH -------------------------------------------------------------------------------


def add_latency(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", metavar="ARCH", help="a preset name or an arch file (.yaml/.json)")
    _add_target(p)
    p.add_argument("--data", default="digits",
                   help="onnxruntime-int8: calibration images from this proxy task's training split (default digits)")
    _add_max_seconds(p, "per measurement")
    p.add_argument("--remeasure", action="store_true", help="ignore the cache and time again")
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_latency(args: argparse.Namespace) -> int:
    spec = _target(args)
    max_seconds = _max_seconds(args)
    cal = calibration_images(load_data(DataSpec(name=args.data))) if spec.backend == "onnxruntime-int8" else None
    lat = measure_seeded(resolve_arch(args.arch), spec, cache=LatencyCache(), remeasure=args.remeasure,
                         max_seconds=max_seconds, calibration=cal)
    if args.json:
        print_json(lat.to_dict())  # ratio, ratio_ci, estimator, reference, protocol included
        return 0
    src = "cached" if lat.cached else "measured"
    where = (f"{spec.resolution}x{spec.resolution} batch {spec.batch}, {spec.threads} thread(s), "
             f"{spec.backend}{', NHWC' if spec.channels_last else ''}; {lat.fingerprint['cpu']}")
    if lat.ratio is None:  # a cached figure from before relative timing
        print(f"{lat.median_ms:.3f} ms median, IQR {lat.iqr_ms:.3f} ms, n={lat.n}, {src}; {where}")
        return 0
    ref = lat.reference or {}
    lo, hi = lat.ratio_ci or (float("nan"), float("nan"))
    spread = f" ± {100 * ref['spread']:.1f}%" if ref.get("spread") is not None else ""
    print(f"{lat.median_ms:.3f} ms = {lat.ratio:.3f} x {ref.get('arch')} ({ref.get('ms', float('nan')):.3f} ms"
          f"{spread}, n={ref.get('n')}); ratio 95% CI {lo:.3f}-{hi:.3f}, {lat.n} rounds, {src}"
          f"{', DRIFTED' if lat.drifted else ''}; {where}")
    return 0


# --- latency table build | validate --------------------------------------------------------------


def _add_table(p: argparse.ArgumentParser, n: str) -> None:
    _add_target(p)
    p.add_argument("--n", type=int, default=50, help=f"random architectures {n} (default 50)")
    p.add_argument("--space", help="sample them from this search-space YAML (default: a built-in space)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _archs(args: argparse.Namespace, n: int, seed: int) -> list[Arch]:
    return load_space(args.space).sample_random(n, seed) if args.space else random_archs(n, seed)


def add_table_build(p: argparse.ArgumentParser) -> None:
    _add_table(p, "whose units are timed")
    p.add_argument("--remeasure", action="store_true", help="start a new table rather than extend this one")


def cmd_table_build(args: argparse.Namespace) -> int:
    spec = _target(args)
    path = table_path(spec)
    old = LatencyTable.load(path) if path.exists() and not args.remeasure else None
    t = build_table(_archs(args, max(args.n, 1), args.seed), spec, table=old,
                    progress=not (args.quiet or args.json))
    t.save(path)
    if args.json:
        print_json({"table": str(path), "entries": len(t.entries), "scale": t.scale, "fingerprint": t.fingerprint})
    else:
        print(f"{len(t.entries)} unit entries, scale {t.scale:.3f} → {path}")
    return 0


def add_table_validate(p: argparse.ArgumentParser) -> None:
    _add_table(p, "predicted and measured (other ones than the table was built from)")
    _add_max_seconds(p, "per measurement")


def cmd_table_validate(args: argparse.Namespace) -> int:
    spec = _target(args)
    max_seconds = _max_seconds(args)
    t = LatencyTable.load(table_path(spec))
    v = validate(t, _archs(args, args.n, args.seed + 10_000), max_seconds=max_seconds,
                 progress=not (args.quiet or args.json))
    if args.json:
        print_json(v.to_dict())
    else:
        print(f"{v.n} random architectures: {100 * v.within_10:.0f}% within ±10%, median |error| "
              f"{v.median_abs_err_pct:.1f}%, table hit rate {100 * v.table_hit_rate:.0f}%")
    return 0


# --- latency transfer RUN --------------------------------------------------------------------------


def add_transfer(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="a run folder, e.g. runs/v2")
    p.add_argument("--backends", default=",".join(b for b in BACKENDS if b != "executorch"),
                   help="comma-separated runtimes (default torch and the two onnxruntime ones; "
                        "executorch lowers every point first, tens of seconds each)")
    _add_max_seconds(p, "per point in each runtime's window")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_transfer(args: argparse.Namespace) -> int:
    """The run's front and baselines re-timed on each runtime."""
    max_seconds = _max_seconds(args)
    say = None if (args.quiet or args.json) else (lambda m: print(m, file=sys.stderr))
    d = transfer(args.run, parse_backends(args.backends), seconds_per_point=max_seconds, progress=say)
    if args.json:
        print_json(d)
    else:
        print(format_transfer(d))
        print(f"saved {Path(args.run) / TRANSFER_FILE} (shown by `shufflesearch report`)")
    return 0


# The options every latency form took before each had its own, read and ignored by the old
# spellings (`latency build-table`, `latency validate`) so that their scripts keep working.
OLD_OPTIONS = (("--resolution", int), ("--batch", int), ("--threads", int), ("--channels-last", None),
               ("--backend", str), ("--backends", str), ("--data", str), ("--max-seconds", float),
               ("--remeasure", None), ("--n", int), ("--space", str), ("--seed", int),
               ("--json", None), ("--quiet", None))


def add_old_options(p: argparse.ArgumentParser) -> None:
    for flag, kind in OLD_OPTIONS:
        if flag not in p._option_string_actions:
            if kind is None:
                p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
            else:
                p.add_argument(flag, type=kind, help=argparse.SUPPRESS)
