"""Proxy validation: do the cheap estimators rank architectures the way training does?

``validate_proxies`` trains a set of architectures (seeds included) and reports each proxy's
rank correlation with the trained accuracy, with bootstrap CIs and the seed-noise ceiling."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..common.stats import bootstrap_ci, kendall_tau, spearman_rho
from ..errors import UserError
from ..model.arch import Arch, resolve_arch
from ..model.cost import costs
from .data import ProxyData
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
                     rows_path: str | None = None) -> dict[str, Any]:
    """The validity report: every proxy (seed 0) and ``seeds`` short trainings per architecture,
    then ``rank_report`` of each proxy (and the default score) against the mean accuracy.

    With ``rows_path`` each finished architecture is appended there as one JSON line, and rows
    already present (same archid, steps, seeds, lr) are reused: an interrupted run resumes."""
    if len(archs) < 3:
        raise UserError(f"validate needs at least 3 architectures, got {len(archs)}")
    if seeds < 1:
        raise UserError(f"--seeds: {seeds} must be >= 1")
    names = list(names or PROXIES)
    done: dict[str, dict[str, Any]] = {}
    if rows_path and os.path.exists(rows_path):
        with open(rows_path) as f:
            for line in f:
                r = json.loads(line)
                if (r.get("steps"), r.get("lr"), len(r["val_acc"])) == (steps, lr, seeds):
                    done[r["archid"]] = r
    rows = []
    for i, a in enumerate(archs):
        if a.archid in done and set(names) <= set(done[a.archid]["scores"]):
            rows.append(done[a.archid])
            continue
        t0 = time.perf_counter()
        sc = compute_proxies(a, data, names)
        zc = time.perf_counter() - t0
        runs = [short_train(a, data, steps=steps, lr=lr, seed=s) for s in range(seeds)]
        rows.append({
            "archid": a.archid,
            "arch": a.to_dict(),
            "steps": steps,
            "lr": lr,
            "scores": sc,
            "zero_cost_seconds": zc,
            "val_acc": [r["val_acc"] for r in runs],
            "train_loss_sum": [r["train_loss_sum"] for r in runs],
            "train_seconds": [r["seconds"] for r in runs],
        })
        if rows_path:
            with open(rows_path, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
        if progress is not None:
            progress(f"[{i + 1}/{len(archs)}] {a.archid} acc={np.mean(rows[-1]['val_acc']):.3f} "
                     f"proxies {zc:.1f}s train {sum(rows[-1]['train_seconds']):.0f}s")
    return report_from_rows(rows, data, n_boot=n_boot)


def report_from_rows(rows: list[dict[str, Any]], data: ProxyData, n_boot: int = 1000) -> dict[str, Any]:
    """``rank_report`` over per-architecture rows (as written by ``validate_proxies``)."""
    truth = np.array([np.mean(r["val_acc"]) for r in rows])
    seed_accs = np.array([r["val_acc"] for r in rows]).T  # (seeds, archs)
    params = np.array([costs(Arch.from_dict(r["arch"]).replace(num_classes=data.num_classes),
                             data.resolution).params for r in rows], dtype=np.float64)
    score_names = [n for n in rows[0]["scores"] if all(n in r["scores"] for r in rows)]
    scores = {n: np.array([r["scores"][n] for r in rows]) for n in score_names}
    # Training-speed proxy (Ru et al. 2021): lower loss sum is better, so negate it.
    scores["neg_train_loss_sum"] = -np.array([np.mean(r["train_loss_sum"]) for r in rows])
    report = rank_report(scores, truth, params, seed_accs, n_boot=n_boot)
    report.update({
        "data": {"name": data.spec.name, "resolution": data.resolution, "batch": data.spec.batch,
                 "num_classes": data.num_classes, "train": len(data.train.y), "val": len(data.val.y)},
        "short_train": {"steps": rows[0].get("steps"), "lr": rows[0].get("lr"),
                        "seeds": len(rows[0]["val_acc"])},
        "default_ensemble": list(DEFAULT_ENSEMBLE),
        "archs": rows,
    })
    return report


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
