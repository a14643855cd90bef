"""The `shufflesearch` command: a table of subcommands, each parse → call → print.

Logic lives in the modules; a command function turns arguments into one call and prints the
result. Bad input raises UserError, which is printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

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
    from .model.arch import PRESETS, resolve_arch
    from .model.cost import costs, format_costs

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
    from .measure.cache import LatencyCache
    from .measure.target import TargetSpec
    from .measure.protocol import measure_arch

    spec = TargetSpec(args.resolution, args.batch, args.threads, args.channels_last, args.backend)
    if args.max_seconds <= 0:
        raise UserError(f"--max-seconds: must be > 0, got {args.max_seconds}")
    if args.arch in ("build-table", "validate"):
        from .measure.predictor import cli_predictor

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
    from .search.engine import search

    run = search(args.space, args.budget, name=args.name, runs_root=args.runs,
                 storage=args.storage, workers=args.workers, quiet=args.quiet)
    if not args.quiet:
        print(f"done: {run.root}  (review: shufflesearch pareto {run.root})")
    return 0


def _add_validate(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", help="a search-space YAML file")
    p.add_argument("--sample", type=int, default=20, help="also sample this many architectures (default 20)")


def cmd_validate(args: argparse.Namespace) -> int:
    from .search.space import load_space

    space = load_space(args.space)
    archs = space.sample_random(args.sample, space.seed) if args.sample else []
    print(f"{args.space}: ok")
    print(f"  objectives: {', '.join(f'{n} ({d})' for n, d in space.objectives)}")
    print(f"  stages: {len(space.stages)}; baselines: {', '.join(space.baselines) or 'none'}")
    if args.sample:
        print(f"  sampled {len(archs)} distinct valid architectures out of {args.sample} asked")
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
    p.add_argument("--latency", action="store_true",
                   help="measure latency (batch 1, 1 thread, at --resolution) for report.md")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_export_arch(args: argparse.Namespace) -> int:
    from .review.export import export_arch

    quiet = args.quiet or args.json

    def log(msg: str) -> None:
        print(f"export: {msg}", file=sys.stderr, flush=True)

    info = {}
    if args.latency:
        from .measure.cache import LatencyCache
        from .measure.target import TargetSpec
        from .measure.protocol import measure_arch

        if not quiet:
            log("measuring latency")
        lat = measure_arch(args.arch, TargetSpec(resolution=args.resolution), cache=LatencyCache())
        info = {"latency": lat.to_dict()}
    res = export_arch(args.arch, args.out, state_dict=args.weights, info=info, resolution=args.resolution,
                      onnx=args.onnx, torch_export=not args.no_pt2, log=None if quiet else log)
    if args.json:
        _print_json(res.to_dict())
        return 0
    print(f"exported {res.archid} ({res.params:,} params) to {res.out_dir}/")
    _print_artefacts(res)
    return 0


# --- check / guidelines ---------------------------------------------------------------------


def _add_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="a preset name or an arch file (.yaml/.json)")
    p.add_argument("--resolution", type=int, default=224, help="input size (default 224)")
    p.add_argument("--settings", help="a YAML/JSON file of GuidelineSettings fields")
    p.add_argument("--all", action="store_true", help="list every finding, not the worst 8")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def cmd_check(args: argparse.Namespace) -> int:
    from .guidelines.checks import GuidelineSettings, check, format_report, load_calibration

    settings = None
    if args.settings:
        import yaml

        try:
            d = yaml.safe_load(open(args.settings))
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"{args.settings}: cannot read settings ({e.__class__.__name__})") from None
        settings = GuidelineSettings.from_dict(d or {})
    r = check(args.arch, args.resolution, settings, load_calibration())
    if args.json:
        _print_json(r.to_dict())
    else:
        print(format_report(args.arch, r, limit=10**9 if args.all else 8))
    return 0


def _add_guidelines(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="x1 and x2 widths, 3 rounds (< 2 min)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1, like ARM)")
    p.add_argument("--out", help="also write the JSON results here")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_guidelines(args: argparse.Namespace) -> int:
    from .guidelines.calibration import save
    from .guidelines.microbench import bench, format_tables, n_measurements

    if args.threads < 1:
        raise UserError(f"--threads: must be >= 1, got {args.threads}")
    bar = None
    if not (args.quiet or args.json):
        from tqdm import tqdm

        from .guidelines.microbench import FULL, QUICK

        cfg = QUICK if args.quick else FULL
        bar = tqdm(total=n_measurements(cfg["scales"], cfg["rounds"]), desc="guideline bench",
                   unit="run", file=sys.stderr)
    try:
        res = bench(args.quick, args.threads, progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    path = save(res.calibration)
    d = res.to_dict()
    bench_path = path.with_suffix(".bench.json")
    bench_path.write_text(json.dumps(d, indent=2))
    if args.out:
        try:
            with open(args.out, "w") as f:
                json.dump(d, f, indent=2)
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot write ({e.strerror})") from None
    if args.json:
        _print_json(d)
        return 0
    c = res.calibration
    print(format_tables(res.results, res.comparisons))
    print(f"calibration ({c.n_points} blocks, median fit error {c.median_rel_error:.0%}): "
          f"{c.ms_per_gmac:.3f} ms/GMAC compute, {c.ms_per_melem:.3f} ms per M elements moved, "
          f"{c.ms_per_op * 1e3:.1f} us per op")
    print(f"saved {path} (used by `check` and the search) and {bench_path}"
          + (f" and {args.out}" if args.out else ""))
    return 0


# --- proxies ------------------------------------------------------------------------------


def _add_proxies(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["validate"],
                   help="validate: rank proxies and the fidelity ladder against the longest training")
    p.add_argument("space", help="a search-space YAML, or {proxy: {...}, fidelity: {...}, archs: [...]}")
    p.add_argument("--n", type=int, default=30, help="architectures to sample (default 30)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds of the longest training per arch (default: the file's fidelity.check.seeds, 2)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps of the longest training, the ground truth (default: fidelity.check.steps, 810)")
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
    from pathlib import Path

    import torch

    from .accuracy.data import DataSpec, load_data
    from .accuracy.fidelity import FidelitySettings
    from .accuracy.validation import (
        format_report,
        load_fidelity,
        load_validation_set,
        plot_report,
        validate_proxies,
    )

    if args.n < 3:
        raise UserError(f"--n: {args.n} must be >= 3")
    if args.threads < 1:
        raise UserError(f"--threads: must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    archs, proxy = load_validation_set(args.space, args.n, args.sample_seed)
    fid = load_fidelity(args.space)
    if args.rungs is not None:
        if args.rungs.strip().lower() == "none":
            fid = None
        else:
            try:
                rungs = [int(x) for x in args.rungs.split(",")]
            except ValueError:
                raise UserError(f"--rungs: {args.rungs!r} must be comma-separated integers or none") from None
            base = (fid or FidelitySettings()).to_dict()
            fid = FidelitySettings.from_dict({**base, "rungs": rungs}, "--rungs")
    check = (fid or FidelitySettings()).check
    steps = args.steps if args.steps is not None else check.steps
    seeds = args.seeds if args.seeds is not None else check.seeds
    if steps < 1:
        raise UserError(f"--steps: {steps} must be >= 1")
    device = args.device or (fid.device if fid else "auto")
    if args.data is not None:
        proxy = {**proxy, "dataset": args.data}
        proxy.pop("name", None)
    try:
        data = load_data(DataSpec.from_dict(proxy))
    except UserError as e:  # name the flag the user typed, not the file's field
        raise UserError(str(e).replace("proxy.name", "--data", 1) if args.data else str(e)) from None
    names = proxy.get("proxies") or None
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
        _print_json(report)
    else:
        print(format_report(report))
        if args.out:
            print(f"wrote {Path(args.out) / 'validation.json'} and {Path(args.out) / 'validation.png'}")
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
    from .accuracy.data import DataSpec
    from .accuracy.training import train_arch

    try:
        spec = DataSpec(name=args.data, resolution=args.resolution, batch=args.batch)
    except UserError as e:  # name the flag the user typed, not the search space's field
        msg = str(e)
        for field, flag in (("proxy.name", "--data"), ("proxy.resolution", "--resolution"),
                            ("proxy.batch", "--batch")):
            msg = msg.replace(field, flag, 1)
        raise UserError(msg) from None
    m = train_arch(args.arch, spec, args.epochs, args.out, lr=args.lr, seed=args.seed,
                   threads=args.threads, quiet=args.quiet or args.json, device=args.device)
    if args.json:
        _print_json(m)
        return 0
    f = m["final"]
    print(f"trained {m['archid']} for {args.epochs} epoch(s) on {args.data}: val_acc {f['val_acc']:.4f} "
          f"(best {f['best_val_acc']:.4f}), train_acc {f['train_acc']:.4f}, {m['seconds']:.1f}s")
    print(f"wrote {args.out}/weights.pt, arch.yaml, metrics.json "
          f"(bundle it: shufflesearch export-arch {args.out}/arch.yaml --weights {args.out}/weights.pt --out DIR)")
    return 0


# --- pareto / report / export (review a run) ---------------------------------------------------


def _add_pareto(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder, e.g. runs/v2")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print a JSON list of rows")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    p.add_argument("--all", action="store_true", help="every completed trial, not just the front and baselines")
    p.add_argument("--failed", action="store_true", help="list failed/pruned trials and their reasons")


def cmd_pareto(args: argparse.Namespace) -> int:
    from .search.records import failed
    from .review.pareto import format_failed, format_pareto, load_records, pareto_rows

    run, records = load_records(args.run)
    if args.failed:
        bad = failed(records)
        if args.json:
            _print_json([{k: r.get(k) for k in ("trial", "state", "archid", "fail_reason")} for r in bad])
        elif args.csv:
            import csv

            w = csv.writer(sys.stdout)
            w.writerow(["trial", "state", "archid", "fail_reason"])
            w.writerows([r["trial"], r["state"], r.get("archid", ""), r["fail_reason"]] for r in bad)
        else:
            print(format_failed(records))
        return 0
    rows = pareto_rows(records, all_trials=args.all)
    if args.json:
        _print_json([r.to_dict() for r in rows])
    elif args.csv:
        import csv

        w = csv.writer(sys.stdout)
        flat = [{**{k: v for k, v in r.to_dict().items() if k != "penalties"}, **r.penalties} for r in rows]
        if flat:
            w.writerow(flat[0].keys())
            w.writerows(d.values() for d in flat)
    elif not rows:
        n = len(failed(records))
        print(f"{run.root}: no completed trials yet" + (f" ({n} failed: see --failed)" if n else ""))
    else:
        print(format_pareto(rows, [n for n, _ in run.space.objectives]))
    return 0


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder, e.g. runs/v2")
    p.add_argument("--out", help="the HTML file (default RUN/report.html); PNGs go beside it")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .review.html import write_report

    out = Path(args.out) if args.out else Path(args.run) / "report.html"
    res = write_report(args.run, out, log=None if args.quiet else
                       (lambda m: print(f"report: {m}", file=sys.stderr, flush=True)))
    print(f"wrote {res.html} ({res.html.stat().st_size // 1024} KB, self-contained) and "
          f"{', '.join(p.name for p in res.pngs)} beside it")
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_export(args: argparse.Namespace) -> int:
    from .model.arch import Arch
    from .review.export import export_arch
    from .review.pareto import export_info, load_records, pick_trial

    run, records = load_records(args.run)
    rec = pick_trial(records, trial=args.trial, use_knee=args.knee, max_latency=args.max_latency)
    quiet = args.quiet or args.json

    def log(msg: str) -> None:
        print(f"export: {msg}", file=sys.stderr, flush=True)

    if not quiet:
        log(f"trial {rec['trial']} ({rec['archid']}): proxy {rec['proxy']:.4f}, "
            f"{rec['latency_ms']:.3f} ms measured")
    res = export_arch(Arch.from_dict(rec["arch"]), args.out, info=export_info(rec, run.name),
                      resolution=int(run.space.target["resolution"]), onnx=args.onnx,
                      log=None if quiet else log)
    if args.json:
        _print_json({"trial": rec["trial"], **res.to_dict()})
        return 0
    print(f"exported trial {rec['trial']} = {res.archid} ({res.params:,} params) to {res.out_dir}/")
    _print_artefacts(res)
    return 0


def _print_artefacts(res: Any) -> None:
    """One line per artefact of an ExportResult (shared by export and export-arch)."""
    for name, path in res.files.items():
        diff = res.max_abs_diff.get(name)
        note = f"verified, max abs diff {diff:.3g}" if diff is not None else "verified"
        print(f"  {path.name:<11} {note}")
    for name, why in res.skipped.items():
        print(f"  {name:<11} skipped: {why}")


# --- the table ------------------------------------------------------------------------------

# name -> (help, add_arguments, run)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "run": ("search a space: shufflesearch run search_spaces/v2.yaml --budget 200", _add_run, cmd_run),
    "validate": ("check a search-space YAML file without running it", _add_validate, cmd_validate),
    "pareto": ("the non-dominated trials of a run (proxy vs measured latency), knee, baselines", _add_pareto, cmd_pareto),
    "report": ("one self-contained HTML report of a run, with PNG plots beside it", _add_report, cmd_report),
    "export": ("export a run's trial (--trial N, --knee, --max-latency MS) as a verified bundle", _add_export, cmd_export),
    "show": ("per-unit channels, params, MACs and MAC of one architecture", _add_show, cmd_show),
    "latency": ("measured latency of one architecture (median, IQR, n), and the latency predictor", _add_latency, cmd_latency),
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
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
