"""Commands about one architecture: show, guidelines ARCH, export-arch, train (and latency
ARCH, in latency.py). A preset name or an arch file becomes an Arch here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..accuracy.data import DataSpec
from ..accuracy.training import train_arch
from ..common.yamlio import parse_yaml
from ..errors import UserError
from ..guidelines.checks import check, format_report, load_calibration
from ..measure.cache import LatencyCache
from ..measure.protocol import measure_arch
from ..measure.target import TargetSpec
from ..model.arch import PRESETS, resolve_arch
from ..model.cost import costs, format_costs
from ..review.export import export_arch
from ..search.reader import read_section
from .output import print_artefacts, print_json

# --- show ---------------------------------------------------------------------------------


def add_show(p: argparse.ArgumentParser) -> None:
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


# --- export-arch ------------------------------------------------------------------------------


def add_export_arch(p: argparse.ArgumentParser) -> None:
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
    data = DataSpec(name=args.data)

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
                      int8=args.int8, data=data, aoti=args.aoti, executorch=args.executorch)
    if args.json:
        print_json(res.to_dict())
        return 0
    print(f"exported {res.archid} ({res.params:,} params) to {res.out_dir}/")
    print_artefacts(res)
    return 0


# --- guidelines ARCH ---------------------------------------------------------------------------


def add_guidelines(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", metavar="ARCH", help="a preset name or an arch file (.yaml/.json)")
    p.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    p.add_argument("--settings", help="a YAML/JSON file of GuidelineSettings fields")
    p.add_argument("--all", action="store_true", help="list every finding, not the worst 8")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def cmd_guidelines(args: argparse.Namespace) -> int:
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


def add_train(p: argparse.ArgumentParser) -> None:
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
    spec = DataSpec(name=args.data, resolution=args.resolution, batch=args.batch)
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
