"""Proxy validation: do the cheap estimators rank architectures the way training does?

``validate_proxies`` trains a set of architectures (seeds included) and reports each proxy's
rank correlation with the trained accuracy, with bootstrap CIs and the seed-noise ceiling.
With ``rungs`` it also runs the fidelity ladder (fidelity.py) on every architecture and
reports τ of each rung's estimators (val_acc, SoTL) against the longest training."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..common.stats import bootstrap_ci, kendall_tau, spearman_rho
from ..errors import UserError
from ..measure.env import compute_lock
from ..model.arch import Arch, resolve_arch
from ..model.cost import costs
from .check import check_seeds, check_training, noise_ceiling
from .data import ProxyData
from .fidelity import FidelitySettings, ladder_run
from .proxies import DEFAULT_ENSEMBLE, PROXIES, compute_proxies
from .training import short_train

# --- validation: do the proxies rank architectures the way training does? --------------------


def top_k_precision(proxy: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of the proxy's k best architectures that are among the k best by training."""
    k = max(1, min(k, len(truth)))
    return len(set(np.argsort(-proxy)[:k]) & set(np.argsort(-truth)[:k])) / k


def rank_report(scores: dict[str, np.ndarray], truth: np.ndarray, params: np.ndarray,
                seed_accs: np.ndarray | None = None, n_boot: int = 1000, buckets: int = 3,
                seed: int = 0) -> dict[str, Any]:
    """Pure statistics of a validation run.

    ``scores[name]`` and ``truth`` (mean short-training accuracy) hold one value per
    architecture; ``seed_accs`` is (seeds, archs). For each proxy: Kendall τ and Spearman ρ with
    bootstrap CIs, τ within #params buckets (equal-count, sorted by #params; averaged), and
    top-k precision (k = ⌈n/5⌉). The noise ceiling is the mean τ between training seeds.
    """
    n = len(truth)
    k = max(1, math.ceil(n / 5))
    order = np.argsort(params, kind="stable")
    groups = [g for g in np.array_split(order, buckets) if len(g) >= 3]
    out: dict[str, Any] = {"n": n, "top_k": k, "buckets": len(groups), "proxies": {}}
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        s = np.where(np.isfinite(s), s, np.nanmin(np.where(np.isfinite(s), s, np.nan)) - 1)
        within = [kendall_tau(s[g], truth[g]) for g in groups]
        within = [w for w in within if math.isfinite(w)]
        out["proxies"][name] = {
            "kendall_tau": kendall_tau(s, truth),
            "kendall_tau_ci": list(bootstrap_ci(kendall_tau, s, truth, n_boot=n_boot, seed=seed)),
            "spearman_rho": spearman_rho(s, truth),
            "spearman_rho_ci": list(bootstrap_ci(spearman_rho, s, truth, n_boot=n_boot, seed=seed)),
            "tau_within_params_buckets": float(np.mean(within)) if within else float("nan"),
            "top_k_precision": top_k_precision(s, truth, k),
        }
    if seed_accs is not None and len(seed_accs) >= 2:
        pairs = [kendall_tau(seed_accs[i], seed_accs[j])
                 for i in range(len(seed_accs)) for j in range(i + 1, len(seed_accs))]
        pairs = [p for p in pairs if math.isfinite(p)]
        out["noise_ceiling_tau"] = float(np.mean(pairs)) if pairs else float("nan")
    return out


def validate_proxies(archs: Sequence[Arch], data: ProxyData, seeds: int = 2,
                     names: Sequence[str] | None = None, steps: int = 150, lr: float = 0.05,
                     n_boot: int = 1000, progress: Callable[[str], None] | None = None,
                     rows_path: str | None = None, rungs: Sequence[int] | None = None,
                     ladder_seeds: int = 1, device: str | None = "auto",
                     train: bool = True) -> dict[str, Any]:
    """The validity report: every proxy (seed 0) and ``seeds`` trainings of ``steps`` steps per
    architecture (the ground truth: their mean validation accuracy), then ``rank_report`` of
    each proxy (and the default score) against it.

    With ``rungs`` (e.g. [30, 90, 270]) each architecture also climbs the fidelity ladder with
    ``ladder_seeds`` seeds (0, 1, ...: one is what a search sees), and the ground-truth
    trainings use the check's seeds (100, 101, ...), so the ladder and the truth share no
    initialisation or batch order.

    With ``rows_path`` each finished architecture is appended there as one JSON line, and rows
    already present (same archid and settings) are reused: an interrupted run resumes. Several
    processes may share one ``rows_path`` to split the work: each claims an architecture with
    a ``.claims/ARCHID`` file beside it (a claim whose process is gone is taken over) and
    reports the rows present when it finishes. ``train=False`` trains nothing and reports the
    rows already in ``rows_path``."""
    if len(archs) < 3:
        raise UserError(f"validate needs at least 3 architectures, got {len(archs)}")
    if seeds < 1:
        raise UserError(f"{seeds} must be >= 1", field="seeds")
    if rungs is not None:
        FidelitySettings(rungs=tuple(rungs))  # the ladder's own rules for its rungs
        if ladder_seeds < 1:
            raise UserError(f"{ladder_seeds} must be >= 1", field="ladder_seeds")
    names = list(names or PROXIES)
    key = {"steps": steps, "lr": lr, "seeds": seeds,
           "rungs": list(rungs) if rungs is not None else None,
           "ladder_seeds": ladder_seeds if rungs is not None else None}

    def read_done() -> dict[str, dict[str, Any]]:
        return _rows_done(rows_path, key, names)

    claims = os.path.join(os.path.dirname(os.path.abspath(rows_path)), ".claims") if rows_path else None
    truth_seeds = check_seeds(seeds) if rungs is not None else list(range(seeds))
    rows = []
    resolved = list(archs)
    skipped = 0
    for i, a in enumerate(resolved):
        done = read_done()
        if a.archid in done:
            rows.append(done[a.archid])
            continue
        if not train or (claims is not None and not _claim(claims, a.archid)):
            skipped += 1
            if progress is not None and train:
                progress(f"[{i + 1}/{len(archs)}] {a.archid} is being trained by another process")
            continue
        t0 = time.perf_counter()
        rows.append(_validation_row(a, data, names, key, truth_seeds, rungs, ladder_seeds, device))
        zc, ladder = rows[-1]["zero_cost_seconds"], rows[-1]["ladder"]
        if rows_path:
            with open(rows_path, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
        if progress is not None:
            lad = (" ladder " + " ".join(f"{r['val_acc']:.3f}" for r in ladder[0])) if ladder else ""
            progress(f"[{i + 1}/{len(archs)}] {a.archid} acc={np.mean(rows[-1]['val_acc']):.3f}{lad} "
                     f"proxies {zc:.1f}s train {time.perf_counter() - t0:.0f}s")
    if skipped:  # rows another process finished meanwhile join the report, in sample order
        mine, final = {r["archid"]: r for r in rows}, read_done()
        rows = [final.get(a.archid) or mine[a.archid] for a in resolved
                if a.archid in final or a.archid in mine]
        skipped = len(resolved) - len(rows)
    if len(rows) < 3:
        raise UserError(f"validate: only {len(rows)} architectures finished here ({skipped} not "
                        "trained yet); run again when they are done")
    if skipped and progress is not None and not train:
        progress(f"{skipped} architecture(s) not trained yet are left out of this report")
    elif skipped and progress is not None:
        progress(f"{skipped} architecture(s) left out: another process is training them; "
                 "run again with the same --out when it is done to report all")
    return report_from_rows(rows, data, n_boot=n_boot)


def _rows_done(rows_path: str | None, key: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """The rows already in ``rows_path`` for these settings and proxies, by archid."""
    done: dict[str, dict[str, Any]] = {}
    if rows_path and os.path.exists(rows_path):
        with open(rows_path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill: train that arch again
                    continue
                if r.get("key", _old_key(r)) == key and set(names) <= set(r["scores"]):
                    done[r["archid"]] = r
    return done


def _validation_row(a: Arch, data: ProxyData, names: list[str], key: dict[str, Any],
                    truth_seeds: list[int], rungs: Sequence[int] | None, ladder_seeds: int,
                    device: str | None) -> dict[str, Any]:
    """One architecture's row: its proxies, its ladder (with ``rungs``) and its ground truth."""
    steps, lr = key["steps"], key["lr"]
    t0 = time.perf_counter()
    with compute_lock():  # never score or train while a search on this machine times
        sc = compute_proxies(a, data, names)
    zc = time.perf_counter() - t0
    ladder = ([ladder_run(a, data, rungs, seed=s, lr=lr, device=device) for s in range(ladder_seeds)]
              if rungs is not None else None)
    if rungs is not None:  # the truth as the run's check makes it: scored on the check split
        runs = [check_training(a, data, steps, [s], lr=lr, device=device) for s in truth_seeds]
        for r in runs:
            r["val_acc"], r["train_loss_sum"] = r["val_acc"][0], r["train_loss_sum"][0]
    else:
        with compute_lock():
            runs = [short_train(a, data, steps=steps, lr=lr, seed=s, device=device) for s in truth_seeds]
    return {
        "archid": a.archid,
        "arch": a.to_dict(),
        "key": key,
        "steps": steps,
        "lr": lr,
        "scores": sc,
        "zero_cost_seconds": zc,
        "val_acc": [r["val_acc"] for r in runs],
        "train_loss_sum": [r["train_loss_sum"] for r in runs],
        "train_seconds": [r["seconds"] for r in runs],
        "truth_seeds": truth_seeds,
        "ladder": ladder,
    }


def _old_key(r: Mapping[str, Any]) -> dict[str, Any]:
    # rows written before the ladder existed: short training only
    return {"steps": r.get("steps"), "lr": r.get("lr"), "seeds": len(r["val_acc"]),
            "rungs": None, "ladder_seeds": None}


def _claim(folder: str, archid: str) -> bool:
    """Create ``folder/archid`` holding our pid; False when a live process holds it."""


    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, archid)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(open(path).read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid == os.getpid():
                return True
            if pid and _alive(pid):
                return False
            try:  # its process is gone: take the claim over
                os.unlink(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _alive(pid: int) -> bool:


    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def report_from_rows(rows: list[dict[str, Any]], data: ProxyData, n_boot: int = 1000) -> dict[str, Any]:
    """``rank_report`` over per-architecture rows (as written by ``validate_proxies``)."""
    truth = np.array([np.mean(r["val_acc"]) for r in rows])
    seed_accs = np.array([r["val_acc"] for r in rows]).T  # (seeds, archs)
    params = np.array([costs(Arch.from_dict(r["arch"]).replace(num_classes=data.num_classes),
                             data.resolution).params for r in rows], dtype=np.float64)
    score_names = [n for n in rows[0]["scores"] if all(n in r["scores"] for r in rows)]
    scores = {n: np.array([r["scores"][n] for r in rows]) for n in score_names}
    # Training-speed proxy (Ru et al. 2021): lower loss sum is better, so negate it.
    neg_loss = -np.array([np.mean(r["train_loss_sum"]) for r in rows], dtype=float)
    if np.isfinite(neg_loss).all():  # rows of an interrupted older version may lack it
        scores["neg_train_loss_sum"] = neg_loss
    report = rank_report(scores, truth, params, seed_accs, n_boot=n_boot)
    if all(r.get("ladder") for r in rows):
        report["ladder"] = ladder_report(rows, truth, seed_accs, n_boot=n_boot)
    report.update({
        "data": {"name": data.spec.name, "resolution": data.resolution, "batch": data.spec.batch,
                 "num_classes": data.num_classes, "train": len(data.train.y), "val": len(data.val.y)},
        "short_train": {"steps": rows[0].get("steps"), "lr": rows[0].get("lr"),
                        "seeds": len(rows[0]["val_acc"]),
                        "seed_values": rows[0].get("truth_seeds", list(range(len(rows[0]["val_acc"]))))},
        "default_ensemble": list(DEFAULT_ENSEMBLE),
        "archs": rows,
    })
    return report


def ladder_report(rows: list[dict[str, Any]], truth: np.ndarray, seed_accs: np.ndarray,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """τ (bootstrap CI) of each rung's estimators against the longest training's mean
    accuracy ``truth``. The estimate of a rung is its seed-0 value (what a search sees); with
    several ladder seeds, the ladder's own noise ceiling per rung is τ between them."""
    rungs = [r["steps"] for r in rows[0]["ladder"][0]]
    out: dict[str, Any] = {"rungs": rungs, "ladder_seeds": len(rows[0]["ladder"]), "estimators": {},
                           "noise_ceiling_tau": noise_ceiling(seed_accs) if len(seed_accs) >= 2 else float("nan"),
                           "seconds_per_arch": [float(np.mean([sum(x["seconds"] for x in lad)
                                                               for lad in r["ladder"]])) for r in rows]}
    for est in ("val_acc", "sotl"):
        per_rung = []
        for k in range(len(rungs)):
            e = np.array([r["ladder"][0][k][est] for r in rows], dtype=float)
            ci = bootstrap_ci(kendall_tau, e, truth, n_boot=n_boot, seed=seed)
            entry = {"steps": rungs[k], "tau": kendall_tau(e, truth), "tau_ci": [ci.lo, ci.hi]}
            if len(rows[0]["ladder"]) >= 2:
                per_seed = np.array([[r["ladder"][s][k][est] for r in rows]
                                     for s in range(len(rows[0]["ladder"]))])
                entry["ladder_noise_ceiling_tau"] = noise_ceiling(per_seed)
            per_rung.append(entry)
        out["estimators"][est] = per_rung
    return out


def format_report(report: dict[str, Any]) -> str:
    """The report as a table, best Kendall τ first."""
    lines = [
        f"{report['n']} architectures, {report['short_train']['seeds']} training seeds × "
        f"{report['short_train']['steps']} steps, data {report['data']['name']} "
        f"{report['data']['resolution']}px",
        f"noise ceiling (τ between training seeds): {report.get('noise_ceiling_tau', float('nan')):.3f}",
        f"{'proxy':<20}{'τ':>7}  {'τ 95% CI':<16}{'ρ':>7}  {'ρ 95% CI':<16}"
        f"{'τ|params':>9}{'top-' + str(report['top_k']):>8}",
    ]
    items = sorted(report["proxies"].items(), key=lambda kv: -np.nan_to_num(kv[1]["kendall_tau"], nan=-9))
    for name, r in items:
        tci, rci = r["kendall_tau_ci"], r["spearman_rho_ci"]
        lines.append(
            f"{name:<20}{r['kendall_tau']:>7.3f}  [{tci[0]:+.2f}, {tci[1]:+.2f}]   "
            f"{r['spearman_rho']:>7.3f}  [{rci[0]:+.2f}, {rci[1]:+.2f}]   "
            f"{r['tau_within_params_buckets']:>9.3f}{r['top_k_precision']:>8.2f}"
        )
    lad = report.get("ladder")
    if lad:
        lines += ["",
                  f"fidelity ladder: rungs {lad['rungs']} (prefixes of one {lad['rungs'][-1]}-step "
                  f"schedule, seed 0) against the {report['short_train']['steps']}-step training above "
                  f"(noise ceiling {lad['noise_ceiling_tau']:.3f})",
                  f"{'rung':<6}{'steps':>6}  {'estimator':<10}{'τ':>7}  {'τ 95% CI':<16}"]
        for est, per in lad["estimators"].items():
            for k, e in enumerate(per, 1):
                lo, hi = e["tau_ci"]
                lines.append(f"{k:<6}{e['steps']:>6}  {est:<10}{e['tau']:>7.3f}  [{lo:+.2f}, {hi:+.2f}]")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str) -> None:
    """A PNG grid: each proxy against mean short-training accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["archs"]
    acc = [float(np.mean(r["val_acc"])) for r in rows]
    names = list(report["proxies"])
    cols = 3
    nr = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nr, cols, figsize=(4 * cols, 3.2 * nr), squeeze=False)
    for ax, name in zip(axes.flat, names):
        if name == "neg_train_loss_sum":
            xs = [-float(np.mean(r["train_loss_sum"])) for r in rows]
        else:
            xs = [r["scores"][name] for r in rows]
        if name in ("params", "macs"):
            ax.set_xscale("log")
        ax.scatter(xs, acc, s=14)
        ax.set_title(f"{name}  τ={report['proxies'][name]['kendall_tau']:.2f}", fontsize=9)
        ax.set_ylabel("val acc (short training)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def validation_set(doc: Any, where: str) -> tuple[list[Arch], dict[str, Any]] | None:
    """The architectures and proxy block of a minimal validation file ``{proxy: {...}, archs:
    [arch or preset name, ...]}`` (already parsed); None when ``doc`` is not one (the caller
    then reads it as a search space and samples from it)."""
    if not (isinstance(doc, dict) and "archs" in doc and "space" not in doc):
        return None
    if not isinstance(doc["archs"], list) or not doc["archs"]:
        raise UserError(f"{where}: archs: must be a non-empty list of architectures or presets")
    # A preset name or an arch file named inside the file is input, resolved as it is read.
    archs = [resolve_arch(a) if isinstance(a, str) else Arch.from_dict(a, f"{where}: archs[{i}]")
             for i, a in enumerate(doc["archs"])]
    return archs, dict(doc.get("proxy") or {})

