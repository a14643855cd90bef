"""Commands about one architecture: show, latency (and the latency predictor), check,
export-arch, train. A preset name or an arch file becomes an Arch here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..accuracy.data import DataSpec, load_data
from ..accuracy.training import train_arch
from ..common.settings import SettingError
from ..common.yamlio import parse_yaml
from ..errors import UserError
from ..guidelines.checks import check, format_report, load_calibration
from ..measure.backends import calibration_images
from ..measure.cache import LatencyCache
from ..measure.drift import measure_seeded
from ..measure.predictor import LatencyTable, build_table, random_archs, table_path, validate
from ..measure.protocol import measure_arch
from ..measure.target import BACKENDS, TargetSpec
from ..model.arch import PRESETS, Arch, resolve_arch
from ..model.cost import costs, format_costs
from ..review.export import export_arch
from ..review.transfer import FILE as TRANSFER_FILE
from ..review.transfer import format_transfer, parse_backends, transfer
from ..search.reader import read_section
from ..search.space import load_space
from .output import print_artefacts, print_json

# --- show ---------------------------------------------------------------------------------


def _add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", nargs="?", help="a preset name or an arch file (.yaml/.json)")
    p.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--list", action="store_true", help="list the presets")


def cmd_show(args: argparse.Namespace) -> int:
    if args.list or not args.arch:
        for name in PRESETS:
            print(name)
        return 0
    arch = resolve_arch(args.arch)
    c = costs(arch, args.resolution)
    if args.json:
        print_json({"archid": arch.archid, "arch": arch.to_dict(), **c.to_dict()})
    else:
        print(format_costs(arch, c))
    return 0


# --- latency --------------------------------------------------------------------------------


def _add_latency(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="a preset name or an arch file; `build-table` / `validate` (the predictor); "
                                "or `transfer RUN` (re-time a run's front on each of --backends)")
    p.add_argument("run", nargs="?", help="transfer: the run folder")
    p.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--backend", default="torch", choices=list(BACKENDS), help="runtime timed (default torch)")
    p.add_argument("--backends", default=",".join(b for b in BACKENDS if b != "executorch"),
                   help="transfer: comma-separated runtimes (default torch and the two onnxruntime "
                        "ones; executorch lowers every point first, tens of seconds each)")
    p.add_argument("--data", default="digits",
                   help="onnxruntime-int8: calibration images from this proxy task's training split (default digits)")
    p.add_argument("--max-seconds", type=float, default=1.0,
                   help="time cap per measurement (default 1; transfer: per point in each runtime's window)")
    p.add_argument("--remeasure", action="store_true", help="ignore the cache and time again")
    p.add_argument("--n", type=int, default=50, help="validate: random architectures (default 50)")
    p.add_argument("--space", help="build-table/validate: sample from this search space YAML")
    p.add_argument("--seed", type=int, default=0, help="build-table/validate: sampling seed")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_latency(args: argparse.Namespace) -> int:
    spec = TargetSpec(args.resolution, args.batch, args.threads, args.channels_last, args.backend)
    if args.max_seconds <= 0:
        raise UserError(f"--max-seconds: must be > 0, got {args.max_seconds}")
    if args.arch == "transfer":
        return _latency_transfer(args)
    if args.run is not None:
        raise UserError(f"latency: unexpected argument {args.run!r} (only `latency transfer RUN` takes two)")
    if args.arch in ("build-table", "validate"):
        return _latency_predictor(args, spec)
    cal = calibration_images(load_data(DataSpec(name=args.data))) if spec.backend == "onnxruntime-int8" else None
    lat = measure_seeded(resolve_arch(args.arch), spec, cache=LatencyCache(), remeasure=args.remeasure,
                         max_seconds=args.max_seconds, calibration=cal)
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


def _latency_transfer(args: argparse.Namespace) -> int:
    """``latency transfer RUN``: the run's front and baselines re-timed on each runtime."""
    if not args.run:
        raise UserError("latency transfer: give the run folder (shufflesearch latency transfer runs/NAME)")
    say = None if (args.quiet or args.json) else (lambda m: print(m, file=sys.stderr))
    d = transfer(args.run, parse_backends(args.backends), seconds_per_point=args.max_seconds, progress=say)
    if args.json:
        print_json(d)
    else:
        print(format_transfer(d))
        print(f"saved {Path(args.run) / TRANSFER_FILE} (shown by `shufflesearch report`)")
    return 0


def _latency_predictor(args: argparse.Namespace, spec: TargetSpec) -> int:
    """``latency build-table`` and ``latency validate``: random architectures from ``--space``
    (else the predictor's built-in space), timed unit by unit / checked against measurement."""
    progress = not (args.quiet or args.json)
    path = table_path(spec)

    def archs(n: int, seed: int) -> list[Arch]:
        return load_space(args.space).sample_random(n, seed) if args.space else random_archs(n, seed)

    if args.arch == "build-table":
        old = LatencyTable.load(path) if path.exists() and not args.remeasure else None
        t = build_table(archs(max(args.n, 1), args.seed), spec, table=old, progress=progress)
        t.save(path)
        info = {"table": str(path), "entries": len(t.entries), "scale": t.scale, "fingerprint": t.fingerprint}
        if args.json:
            print_json(info)
        else:
            print(f"{len(t.entries)} unit entries, scale {t.scale:.3f} → {path}")
        return 0
    t = LatencyTable.load(path)
    v = validate(t, archs(args.n, args.seed + 10_000), max_seconds=args.max_seconds, progress=progress)
    if args.json:
        print_json(v.to_dict())
    else:
        print(f"{v.n} random architectures: {100 * v.within_10:.0f}% within ±10%, median |error| "
              f"{v.median_abs_err_pct:.1f}%, table hit rate {100 * v.table_hit_rate:.0f}%")
    return 0


# --- export-arch ------------------------------------------------------------------------------


def _add_export_arch(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="a preset name or an arch file (.yaml/.json)")
    p.add_argument("--out", required=True, help="folder for the bundle (created if missing)")
    p.add_argument("--weights", help="a state_dict file (.pt) of the training form, e.g. from `train`")
    p.add_argument("--resolution", type=int, default=224, help="input size for checks and exported programs (default 224)")
    onnx = p.add_mutually_exclusive_group()
    onnx.add_argument("--onnx", dest="onnx", action="store_true", default=None,
                      help="require model.onnx (default: written when onnx/onnxruntime are installed)")
    onnx.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip model.onnx")
    p.add_argument("--no-pt2", action="store_true", help="skip model.pt2 (torch.export)")
    p.add_argument("--aoti", action="store_true",
                   help="also write model.aoti.pt2, the inference form compiled by AOTInductor for "
                        "batch 1 at --resolution, 1 thread (tens of seconds)")
    p.add_argument("--int8", action="store_true",
                   help="also write model.int8.onnx, calibrated on --data's training split")
    p.add_argument("--executorch", action="store_true",
                   help="also write model.pte, the ExecuTorch program (XNNPACK) for batch 1 at "
                        "--resolution, 1 thread (tens of seconds; needs the [executorch] extra)")
    p.add_argument("--data", default="digits", help="--int8: proxy task, digits, folder:PATH or npz:PATH (default digits)")
    p.add_argument("--latency", action="store_true",
                   help="measure latency (batch 1, 1 thread, at --resolution) for report.md")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_export_arch(args: argparse.Namespace) -> int:
    arch = resolve_arch(args.arch)
    quiet = args.quiet or args.json
    try:
        proxy = DataSpec(name=args.data)
    except SettingError as e:  # name the flag the user typed
        raise UserError(f"--data: {e.rule}") from None

    def log(msg: str) -> None:
        print(f"export: {msg}", file=sys.stderr, flush=True)

    info = {}
    if args.latency:
        if not quiet:
            log("measuring latency")
        lat = measure_arch(arch, TargetSpec(resolution=args.resolution), cache=LatencyCache())
        info = {"latency": lat.to_dict()}
    res = export_arch(arch, args.out, state_dict=args.weights, info=info, resolution=args.resolution,
                      onnx=args.onnx, torch_export=not args.no_pt2, log=None if quiet else log,
                      int8=args.int8, proxy=proxy, aoti=args.aoti, executorch=args.executorch)
    if args.json:
        print_json(res.to_dict())
        return 0
    print(f"exported {res.archid} ({res.params:,} params) to {res.out_dir}/")
    print_artefacts(res)
    return 0


# --- check / guidelines ---------------------------------------------------------------------


def _add_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="a preset name or an arch file (.yaml/.json)")
    p.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    p.add_argument("--settings", help="a YAML/JSON file of GuidelineSettings fields")
    p.add_argument("--all", action="store_true", help="list every finding, not the worst 8")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def cmd_check(args: argparse.Namespace) -> int:
    settings = None
    if args.settings:
        try:
            text = Path(args.settings).read_text()
        except (OSError, ValueError) as e:  # ValueError: not UTF-8
            raise UserError(f"{args.settings}: cannot read settings ({e.__class__.__name__})") from None
        # The keys of a space's guidelines.settings; empty: every default.
        settings = read_section("guidelines.settings", parse_yaml(text, args.settings), args.settings)
    r = check(resolve_arch(args.arch), args.resolution, settings, load_calibration())
    if args.json:
        print_json(r.to_dict())
    else:
        print(format_report(args.arch, r, limit=10**9 if args.all else 8))
    return 0


# --- train ------------------------------------------------------------------------------------


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="an arch file (e.g. an exported arch.yaml) or a preset name")
    p.add_argument("--data", default="digits", help="proxy task: digits, folder:PATH or npz:PATH (default digits)")
    p.add_argument("--epochs", type=int, required=True, help="passes over the training split")
    p.add_argument("--out", required=True, help="folder for weights.pt, arch.yaml and metrics.json")
    p.add_argument("--resolution", type=int, default=32, help="input size of the proxy task (default 32)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=0.05, help="initial learning rate, cosine decay (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights and batch order (default 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on shared cores extra threads wait on each "
                        "other; see bench/train_threads.py)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to train (default auto: cuda when torch sees one, else cpu)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_train(args: argparse.Namespace) -> int:
    try:
        spec = DataSpec(name=args.data, resolution=args.resolution, batch=args.batch)
    except SettingError as e:  # name the flag the user typed
        flag = {"name": "--data", "resolution": "--resolution", "batch": "--batch"}.get(e.field)
        raise UserError(f"{flag or e}: {e.rule}" if flag else str(e)) from None
    m = train_arch(resolve_arch(args.arch), spec, args.epochs, args.out, lr=args.lr, seed=args.seed,
                   threads=args.threads, quiet=args.quiet or args.json, device=args.device)
    if args.json:
        print_json(m)
        return 0
    f = m["final"]
    print(f"trained {m['archid']} for {args.epochs} epoch(s) on {args.data}: val_acc {f['val_acc']:.4f} "
          f"(best {f['best_val_acc']:.4f}), train_acc {f['train_acc']:.4f}, {m['seconds']:.1f}s")
    print(f"wrote {args.out}/weights.pt, arch.yaml, metrics.json "
          f"(bundle it: shufflesearch export-arch {args.out}/arch.yaml --weights {args.out}/weights.pt --out DIR)")
    return 0
