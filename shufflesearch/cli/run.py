"""Commands that search or study: run, space (read a space file), guidelines bench (the device
bench), proxies validate. A search-space file becomes a SearchSpace here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from tqdm import tqdm

from ..accuracy.data import load_data
from ..accuracy.fidelity import FidelitySettings
from ..accuracy.validation import format_report as format_validation
from ..accuracy.validation import plot_report, validate_proxies, validation_set
from ..common.threads import check_workers, torch_threads
from ..common.yamlio import read_yaml
from ..errors import UserError
from ..guidelines.calibration import save
from ..guidelines.microbench import FULL, QUICK, bench, format_tables, n_measurements
from ..measure.target import BACKENDS
from ..search.engine import search
from ..search.ladder import describe_check
from ..search.reader import read_section
from ..search.space import load_space
from ..search.storage import study_attr
from .output import print_json

# --- run / space ------------------------------------------------------------------------------


def add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a search-space YAML file, e.g. search_spaces/v2.yaml")
    p.add_argument("--budget", type=int, default=200, help="completed search trials to reach (default 200)")
    p.add_argument("--name", help="run name: the folder runs/NAME (default: the space file's stem)")
    p.add_argument("--runs", default="runs", help="where run folders live (default runs/)")
    p.add_argument("--workers", default="auto",
                   help="worker processes on this machine: auto (default: one per usable core, at "
                        "most one per trial still to run) or a number >= 1")
    p.add_argument("--storage", help="an RDB URL (e.g. postgresql://...) shared by many machines")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def cmd_run(args: argparse.Namespace) -> int:
    workers = check_workers(args.workers)
    run = search(args.space, args.budget, name=args.name, runs_root=args.runs,
                 storage=args.storage, workers=workers, quiet=args.quiet)
    if run.space.fidelity is not None:  # the run's self-check, printed even when --quiet
        print(describe_check(study_attr(run.load_study(), "check")))
    if not args.quiet:
        print(f"done: {run.root}  (review: shufflesearch pareto {run.root})")
    return 0


def add_space(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a search-space YAML file")
    p.add_argument("--sample", type=int, default=20, help="also sample this many architectures (default 20)")


def cmd_space(args: argparse.Namespace) -> int:
    space = load_space(args.space)
    archs = space.sample_random(args.sample, space.seed) if args.sample else []
    print(f"{args.space}: ok")
    print(f"  objectives: {', '.join(f'{n} ({d})' for n, d in space.objectives)}")
    print(f"  stages: {len(space.stages)}; baselines: {', '.join(space.baselines) or 'none'}")
    if args.sample:
        print(f"  sampled {len(archs)} distinct valid architectures out of {args.sample} asked")
    return 0


# --- guidelines bench ----------------------------------------------------------------------


def add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="x1 and x2 widths, 3 rounds (< 2 min)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1, like ARM)")
    p.add_argument("--backend", default="torch", choices=list(BACKENDS),
                   help="runtime the tables are timed on (default torch; the ONNX ones export each block stack)")
    p.add_argument("--out", help="also write the JSON results here")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_bench(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise UserError(f"--threads: must be >= 1, got {args.threads}")
    bar = None
    if not (args.quiet or args.json):
        cfg = QUICK if args.quick else FULL
        bar = tqdm(total=n_measurements(cfg["scales"], cfg["rounds"]), desc="guideline bench",
                   unit="run", file=sys.stderr)
    try:
        res = bench(args.quick, args.threads, progress=bar.update if bar else None, backend=args.backend)
    finally:
        if bar:
            bar.close()
    d = res.to_dict()
    saved = []
    if args.backend == "torch":
        # `guidelines ARCH` and the search read the calibration of the torch inference form;
        # another runtime's tables are shown (and written to --out) without replacing it.
        path = save(res.calibration)
        bench_path = path.with_suffix(".bench.json")
        bench_path.write_text(json.dumps(d, indent=2))
        saved = [str(path) + " (used by `guidelines ARCH` and the search)", str(bench_path)]
    if args.out:
        try:
            with open(args.out, "w") as f:
                json.dump(d, f, indent=2)
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot write ({e.strerror})") from None
    if args.json:
        print_json(d)
        return 0
    c = res.calibration
    print(format_tables(res.results, res.comparisons))
    print(f"calibration ({c.n_points} blocks, median fit error {c.median_rel_error:.0%}): "
          f"{c.ms_per_gmac:.3f} ms/GMAC compute, {c.ms_per_melem:.3f} ms per M elements moved, "
          f"{c.ms_per_op * 1e3:.1f} us per op")
    saved += [args.out] if args.out else []
    print(f"{args.backend}: " + (f"saved {' and '.join(saved)}" if saved else "not saved (no --out)"))
    return 0


# --- proxies ------------------------------------------------------------------------------


def add_proxies(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a search-space YAML, or {proxy: {...}, fidelity: {...}, archs: [...]}")
    p.add_argument("--n", type=int, default=30, help="architectures to sample (default 30)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds of the longest training per arch (default: the file's fidelity.check.seeds)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps of the longest training, the ground truth (default: fidelity.check.steps)")
    p.add_argument("--rungs", default=None,
                   help="ladder rungs as steps, e.g. 30,90,270, or `none` (default: the file's fidelity.rungs)")
    p.add_argument("--ladder-seeds", type=int, default=1,
                   help="seeds of the ladder per arch (default 1, as in a search; 2+ adds its noise ceiling)")
    p.add_argument("--data", default=None,
                   help="proxy task instead of the file's: digits, npz:PATH or folder:PATH")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="where to train (default: the file's fidelity.device, auto)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the architecture sample")
    p.add_argument("--out", default=None,
                   help="folder for validation.json, validation.png and rows.jsonl (resumable; "
                        "several processes may share it to split the work)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: report the architectures already in --out/rows.jsonl")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")


def cmd_proxies(args: argparse.Namespace) -> int:
    if args.n < 3:
        raise UserError(f"--n: {args.n} must be >= 3")
    if args.threads < 1:
        raise UserError(f"--threads: must be >= 1, got {args.threads}")
    with torch_threads(args.threads):
        return _validate_proxies(args)


def _ladder_settings(args: argparse.Namespace, doc: object) -> FidelitySettings | None:
    # The file's fidelity block, read as a space's (defaults when absent).
    fid = read_section("fidelity", doc.get("fidelity") if isinstance(doc, dict) else None, args.space)
    if args.rungs is None:
        return fid
    if args.rungs.strip().lower() == "none":
        return None
    try:
        rungs = [int(x) for x in args.rungs.split(",")]
    except ValueError:
        raise UserError(f"--rungs: {args.rungs!r} must be comma-separated integers or none") from None
    return read_section("fidelity", {**(fid or FidelitySettings()).to_dict(), "rungs": rungs}, "--rungs")


def _validate_proxies(args: argparse.Namespace) -> int:
    # Either a minimal file {proxy: {...}, archs: [...]} or a search space to sample from.
    doc = read_yaml(args.space)
    vset = validation_set(doc, args.space)
    if vset is None:
        space = load_space(args.space)
        vset = space.sample_random(args.n, seed=args.sample_seed), dict(space.raw["proxy"])
    archs, proxy = vset
    fid = _ladder_settings(args, doc)
    check = (fid or FidelitySettings()).check
    steps = args.steps if args.steps is not None else check.steps
    seeds = args.seeds if args.seeds is not None else check.seeds
    if steps < 1:
        raise UserError(f"--steps: {steps} must be >= 1")
    device = args.device or (fid.device if fid else "auto")
    proxy = dict(proxy)
    names = proxy.pop("proxies", None) or None  # what to compute: no search score to serve
    spec = read_section("proxy", proxy, args.space).data  # the file's block, read as a space's
    if args.data is not None:
        spec = dataclasses.replace(spec, name=args.data)
    data = load_data(spec)
    quiet = args.quiet or args.json
    out = Path(args.out) if args.out else None
    if args.report_only and out is None:
        raise UserError("--report-only: needs --out, the folder whose rows.jsonl to report")
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot create ({e.strerror})") from None
    report = validate_proxies(archs, data, seeds=seeds, names=names, steps=steps,
                              progress=None if quiet else lambda m: print(m, file=sys.stderr, flush=True),
                              rows_path=str(out / "rows.jsonl") if out else None,
                              rungs=fid.rungs if fid else None, ladder_seeds=args.ladder_seeds,
                              device=device, train=not args.report_only)
    if out is not None:
        try:
            (out / "validation.json").write_text(json.dumps(report, indent=2))
            plot_report(report, str(out / "validation.png"))
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot write ({e.strerror})") from None
    if args.json:
        print_json(report)
    else:
        print(format_validation(report))
        if args.out:
            print(f"wrote {Path(args.out) / 'validation.json'} and {Path(args.out) / 'validation.png'}")
    return 0
