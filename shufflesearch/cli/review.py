"""Commands that read a run: pareto, report, export."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from ..review.export import export_arch
from ..review.html import write_report
from ..review.pareto import (
    export_info,
    format_breaks,
    format_failed,
    format_pareto,
    load_records,
    load_reference_note,
    pareto_rows,
    pick_trial,
    run_check_text,
)
from ..search.records import completed, failed
from ..search.retime import retime_run
from .output import print_artefacts, print_json

# --- pareto / report / export (review a run) ---------------------------------------------------


def add_pareto(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder, e.g. runs/v2")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON list of rows")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    p.add_argument("--all", action="store_true", help="every completed trial, not just the front and baselines")
    p.add_argument("--failed", action="store_true", help="list failed/pruned trials and their reasons")
    p.add_argument("--retime", action="store_true",
                   help="re-time the front and the baselines side by side now (stored in the run) before showing it")


def cmd_pareto(args: argparse.Namespace) -> int:
    run, records = load_records(args.run)
    if args.retime and completed(records):
        retime_run(run, say=None if (args.json or args.csv) else
                   (lambda m: print(f"pareto: {m}", file=sys.stderr, flush=True)))
        run, records = load_records(args.run)
    if args.failed:
        bad = failed(records)
        if args.json:
            print_json([{"trial": r.trial, "state": r.state, "archid": r.archid or None,
                        "fail_reason": r.fail_reason} for r in bad])
        elif args.csv:
            w = csv.writer(sys.stdout)
            w.writerow(["trial", "state", "archid", "fail_reason"])
            w.writerows([r.trial, r.state, r.archid, r.fail_reason] for r in bad)
        else:
            print(format_failed(records))
        return 0
    rows = pareto_rows(records, all_trials=args.all)
    if args.json:
        print_json([r.to_dict() for r in rows])
    elif args.csv:
        w = csv.writer(sys.stdout)
        flat = [{**{k: v for k, v in r.to_dict().items() if k not in ("penalties", "breaks", "ratio_ci", "ties",
                                                                      "dominated_by")},
                 **r.penalties, "breaks": format_breaks(r.breaks),
                 "ratio_ci_low": r.ratio_ci[0] if r.ratio_ci else None,
                 "ratio_ci_high": r.ratio_ci[1] if r.ratio_ci else None,
                 "ties": " ".join(map(str, r.ties)),
                 "dominated_by": "" if r.dominated_by is None else " ".join(map(str, r.dominated_by))}
                for r in rows]
        if flat:
            w.writerow(flat[0].keys())
            w.writerows(d.values() for d in flat)
    elif not rows:
        n, done = len(failed(records)), len(completed(records))
        if done:  # every completed trial breaks a constraint: nothing is on the front
            print(f"{run.root}: no feasible trial yet ({done} completed, all infeasible: see --all)")
        else:
            print(f"{run.root}: no completed trials yet" + (f" ({n} failed: see --failed)" if n else ""))
    else:
        print(format_pareto(rows, [n for n, _ in run.space.objectives], reference=load_reference_note(args.run)))
        check = run_check_text(args.run)
        if check:
            print(check)
    return 0


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder, e.g. runs/v2")
    p.add_argument("--out", help="the HTML file (default RUN/report.html)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.run) / "report.html"
    page = write_report(args.run, out, log=None if args.quiet else
                        (lambda m: print(f"report: {m}", file=sys.stderr, flush=True)))
    print(f"wrote {page} ({page.stat().st_size // 1024} KB, self-contained: open it in a browser, "
          "works offline)")
    return 0


def add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder, e.g. runs/v2")
    pick = p.add_mutually_exclusive_group(required=True)
    pick.add_argument("--trial", type=int, help="this trial number (see `shufflesearch pareto RUN`)")
    pick.add_argument("--knee", action="store_true", help="the knee of the (proxy, latency) front")
    pick.add_argument("--max-latency", type=float, metavar="MS",
                      help="the best proxy on the front at or under this measured latency")
    p.add_argument("--out", required=True, help="folder for the bundle (created if missing)")
    onnx = p.add_mutually_exclusive_group()
    onnx.add_argument("--onnx", dest="onnx", action="store_true", default=None,
                      help="require model.onnx (default: written when onnx/onnxruntime are installed)")
    onnx.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip model.onnx")
    p.add_argument("--int8", action="store_true",
                   help="also write model.int8.onnx, calibrated on the run's proxy task")
    p.add_argument("--aoti", action="store_true",
                   help="also write model.aoti.pt2, the inference form compiled by AOTInductor for "
                        "the run's target (batch, resolution, threads; tens of seconds)")
    p.add_argument("--executorch", action="store_true",
                   help="also write model.pte, the ExecuTorch program (XNNPACK) for the run's target "
                        "(batch, resolution, threads; tens of seconds; needs the [executorch] extra)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_export(args: argparse.Namespace) -> int:
    run, records = load_records(args.run)
    rec = pick_trial(records, trial=args.trial, use_knee=args.knee, max_latency=args.max_latency)
    quiet = args.quiet or args.json

    def log(msg: str) -> None:
        print(f"export: {msg}", file=sys.stderr, flush=True)

    if not quiet:
        log(f"trial {rec.trial} ({rec.archid}): proxy {rec.proxy:.4f}, "
            f"{rec.latency_ms:.3f} ms measured")
    info = export_info(rec, run.name)
    check = run_check_text(args.run)
    if check:  # report.md carries the run's self-check beside the rung the estimate comes from
        info["self_check"] = " / ".join(line.strip() for line in check.splitlines())
    res = export_arch(rec.arch, args.out, info=info,
                      resolution=run.space.target.resolution, onnx=args.onnx,
                      channels_last=run.space.target.channels_last,
                      log=None if quiet else log, int8=args.int8, data=run.space.data,
                      aoti=args.aoti, batch=run.space.target.batch, threads=run.space.target.threads,
                      executorch=args.executorch)
    if args.json:
        print_json({"trial": rec.trial, **res.to_dict()})
        return 0
    print(f"exported trial {rec.trial} = {res.archid} ({res.params:,} params) to {res.out_dir}/")
    print_artefacts(res)
    return 0
