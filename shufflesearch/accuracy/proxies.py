"""Accuracy proxies: zero-cost scores, short training, and how well they rank architectures.

Every proxy scores the *training form* of a freshly initialised network (seeded) on one seeded
batch of the proxy task (data.py). Definitions follow REFERENCE.md ("Training-free accuracy
proxies"); higher is better for all of them.

  params     #parameters (baseline: many proxies turn out to count parameters)
  macs       multiply-accumulates at the proxy resolution (baseline)
  grad_norm  Σ_layers ‖∂CE/∂W‖₂ over conv/linear weights          (Abdelfattah et al. 2021)
  snip       Σ |W ⊙ ∂CE/∂W| over conv/linear weights               (Lee et al. 2019)
  synflow    log Σ |θ ⊙ ∂R/∂θ|, θ→|θ|, BN bypassed, float64, one all-ones input, R = Σ output;
             data-free                                             (Tanaka et al. 2020)
  jacob_cov  −Σ(log(λ+1e-5) + 1/(λ+1e-5)), λ = eig(corrcoef(J)), J = ∂Σy/∂x per sample
                                                                   (Mellor et al. 2021, v1)
  naswot     slogdet(K), K = Σ_ReLUs c·cᵀ + (1−c)(1−c)ᵀ, c = (ReLU input > 0) per sample
                                                                   (Mellor et al. 2021, v2)

``compute_proxies`` shares one forward pass between naswot/jacob_cov/grad_norm/snip, so the
zero-cost scoring of a 1x V2 at the default proxy settings stays well under a second
(bench/proxy_cost.py). ``short_train`` is the expensive but honest proxy; ``validate_proxies``
measures how well each cheap proxy ranks architectures the way short training does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model.arch import Arch, resolve_arch
from ..model.compile import build
from ..model.cost import costs
from .data import ProxyData, Split
from ..errors import UserError

# --- the shared context -----------------------------------------------------------------------


class ProxyContext:
    """One architecture on one batch: the seeded model and the passes several proxies share.

    Each pass is computed at most once, on first use, so asking for one proxy costs one proxy.
    """

    def __init__(self, arch: Arch, data: ProxyData, seed: int = 0) -> None:
        self.arch = arch.replace(num_classes=data.num_classes)
        self.data = data
        self.seed = seed
        self.batch: Split = data.batch("train", seed=seed)

    def fresh_model(self) -> nn.Module:
        """The training-form network, initialised from ``seed`` (global RNG left untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return build(self.arch).train()  # BN on batch statistics, as the references do

    @cached_property
    def costs(self) -> Any:
        return costs(self.arch, self.data.resolution)

    @cached_property
    def _forward(self) -> dict[str, Any]:
        """One forward pass with ReLU hooks (for naswot) and an input that needs gradients
        (for jacob_cov); the graph is kept for the backward passes below."""
        model = self.fresh_model()
        x = self.batch.x.clone().requires_grad_(True)
        n = x.shape[0]
        k = torch.zeros(n, n, dtype=torch.float64)

        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            c = (inp[0].detach().reshape(n, -1) > 0).float()  # binary activation code
            # c·cᵀ + (1−c)(1−c)ᵀ = 2c·cᵀ − s·1ᵀ − 1·sᵀ + F (s = row sums, F = units): one matmul.
            # Counts of agreeing units (Mellor et al. eq. 2); exact in float32 below 2^24.
            s = c.sum(1, keepdim=True)
            k.add_((2 * (c @ c.T) - s - s.T + c.shape[1]).double())

        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
        try:
            out = model(x)
        finally:
            for h in handles:
                h.remove()
        return {"model": model, "x": x, "out": out, "K": k}

    @cached_property
    def weight_grads(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(W, ∂CE/∂W) for every conv and linear weight: the labelled backward pass."""
        f = self._forward
        weights = [m.weight for m in f["model"].modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        loss = F.cross_entropy(f["out"], self.batch.y)
        grads = torch.autograd.grad(loss, weights, retain_graph=True)
        return [(w.detach(), g) for w, g in zip(weights, grads)]

    @cached_property
    def input_jacobian(self) -> torch.Tensor:
        """J = ∂Σy/∂x, one row per sample: (N, 3·R·R)."""
        f = self._forward
        (j,) = torch.autograd.grad(f["out"].sum(), f["x"], retain_graph=True)
        return j.reshape(j.shape[0], -1)


# --- the proxies ------------------------------------------------------------------------------


def params_proxy(ctx: ProxyContext) -> float:
    return float(ctx.costs.params)


def macs_proxy(ctx: ProxyContext) -> float:
    return float(ctx.costs.macs)


def grad_norm(ctx: ProxyContext) -> float:
    return float(sum(g.norm() for _, g in ctx.weight_grads))


def snip(ctx: ProxyContext) -> float:
    return float(sum((w * g).abs().sum() for w, g in ctx.weight_grads))


def synflow(ctx: ProxyContext) -> float:
    model = ctx.fresh_model()
    # BN bypassed: with a constant input its batch statistics would zero every activation.
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.BatchNorm2d):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], nn.Identity())
    model = model.double()  # the product of |θ| over ~50 layers underflows/overflows float32
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    r = ctx.data.resolution
    x = torch.ones(1, model.arch.in_channels, r, r, dtype=torch.float64)  # data-free by design
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(model(x).sum(), params)
    score = sum(float((p.detach() * g).abs().sum()) for p, g in zip(params, grads))
    return math.log(score) if score > 0 else float("-inf")


def jacob_cov(ctx: ProxyContext) -> float:
    j = ctx.input_jacobian.to(torch.float64)
    corr = torch.corrcoef(j)
    corr = torch.nan_to_num(corr, nan=0.0)  # a zero-variance row (dead net) correlates with nothing
    lam = torch.linalg.eigvalsh(corr)
    k = 1e-5
    return float(-(torch.log(lam.clamp_min(0) + k) + 1.0 / (lam.clamp_min(0) + k)).sum())


def naswot(ctx: ProxyContext) -> float:
    _sign, logdet = torch.linalg.slogdet(ctx._forward["K"])
    return float(logdet)


PROXIES: dict[str, Callable[[ProxyContext], float]] = {
    "params": params_proxy,
    "macs": macs_proxy,
    "grad_norm": grad_norm,
    "snip": snip,
    "synflow": synflow,
    "jacob_cov": jacob_cov,
    "naswot": naswot,
}
NEEDS_LABELS = frozenset({"grad_norm", "snip"})  # the others never read y

# --- the default score ------------------------------------------------------------------------

# The ensemble the search maximises, fixed BEFORE any validation ground truth was looked at
# (REFERENCE.md: rank-sum ensembles of NASWOT + synflow + jacob_cov reach τ ≈ 0.70 on
# NAS-Bench-201). A search trial scores one architecture alone, so a rank over a population is
# not available; instead each member is put on a per-architecture log-like scale and divided by
# a fixed spread. The spreads (ENSEMBLE_SCALE) are the standard deviations of each log-scaled
# proxy over 16 random architectures of search_spaces/v2.yaml (sample_random seed 12345, not the
# validation seed) on the default proxy task (digits, 32 px, batch 64) — computed from the
# proxies alone, before any short training was run. Equal weights: no tuning on accuracy.
DEFAULT_ENSEMBLE: tuple[str, ...] = ("naswot", "synflow", "jacob_cov")
ENSEMBLE_SCALE: dict[str, float] = {"naswot": 27.6, "synflow": 8.86, "jacob_cov": 0.0357}


def _log_scale(name: str, v: float) -> float:
    """Put a proxy on a log-like scale: jacob_cov spans orders of magnitude (its 1/λ terms), so
    it is compared as −log(−score); the others are already logs (naswot, synflow)."""
    if name == "jacob_cov":
        return -math.log(max(-v, 1e-12)) if v < 0 else math.log1p(v)
    if name in ("params", "macs", "grad_norm", "snip"):
        return math.log(max(v, 1e-12))
    return v


def default_score(scores: dict[str, float], ensemble: Sequence[str] = DEFAULT_ENSEMBLE) -> float:
    """THE per-architecture scalar the search maximises: Σ log-scaled member / fixed spread.

    Depends on nothing but this architecture's scores, so trials can be scored independently.
    """
    missing = [n for n in ensemble if n not in scores]
    if missing:
        raise UserError(f"default_score needs proxies {missing}; computed only {sorted(scores)}")
    total = 0.0
    for n in ensemble:
        v = scores[n]
        if not math.isfinite(v):
            return float("-inf")
        total += _log_scale(n, v) / ENSEMBLE_SCALE.get(n, 1.0)
    return total


# The score a search maximises by default. The validation run (README, "Accuracy proxies") found
# no zero-cost proxy that ranks v2.yaml architectures by short-training accuracy better than
# chance on the digits task: the NASWOT + synflow + jacob_cov ensemble had Kendall τ −0.11,
# grad_norm/snip/synflow were negative, and MACs (τ 0.12) and #params (τ 0.10) were the highest,
# all with 95% intervals spanning zero, under a seed-to-seed noise ceiling of 0.46. MACs is
# therefore the honest default: it is free, exact, and the literature's strong baseline
# (REFERENCE.md: FLOPs ρ ≈ 0.71 on NAS-Bench-201). "ensemble" keeps the fixed ensemble.
DEFAULT_SCORE = "macs"
SCORES = ("macs", "params", "ensemble", "naswot", "synflow", "jacob_cov", "grad_norm", "snip")


def needed_for(score: str) -> tuple[str, ...]:
    """The proxies a score is computed from."""
    return DEFAULT_ENSEMBLE if score == "ensemble" else (score,)


def proxy_score(scores: dict[str, float], score: str = DEFAULT_SCORE) -> float:
    """The per-architecture scalar a search maximises: ``default_score`` for "ensemble", else
    the named proxy on its log-like scale (ln MACs, ln #params, ...)."""
    if score == "ensemble":
        return default_score(scores)
    if score not in scores:
        raise UserError(f"proxy.score: {score} was not computed (computed: {sorted(scores)})")
    v = scores[score]
    return _log_scale(score, v) if math.isfinite(v) else float("-inf")


def compute_proxies(arch: Arch | str, data: ProxyData, names: Iterable[str] | None = None,
                    seed: int = 0) -> dict[str, float]:
    """The zero-cost proxies ``names`` (default: all of ``PROXIES``) for one architecture, plus
    ``"score"`` (``default_score``) when the ensemble's members are among them."""
    names = list(PROXIES) if names is None else list(names)
    unknown = [n for n in names if n not in PROXIES and n != "score"]
    if unknown:
        raise UserError(f"proxy.proxies: unknown proxy '{unknown[0]}' (known: {', '.join(PROXIES)})")
    ctx = ProxyContext(resolve_arch(arch), data, seed)
    out = {n: PROXIES[n](ctx) for n in names if n != "score"}
    if all(n in out for n in DEFAULT_ENSEMBLE):
        out["score"] = default_score(out)
    return out


# --- short training ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, data: ProxyData, which: str = "val") -> float:
    """Top-1 accuracy of ``model`` (eval mode: BN running statistics) on one split."""
    was = model.training
    model.eval()
    correct = total = 0
    for b in data.batches(which, shuffle=False, n=256):
        correct += int((model(b.x).argmax(1) == b.y).sum())
        total += len(b.y)
    model.train(was)
    return correct / max(total, 1)


def train_model(model: nn.Module, data: ProxyData, *, steps: int = 150, lr: float = 0.05,
                weight_decay: float = 5e-4, seed: int = 0,
                on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train ``model`` in place for ``steps`` SGD steps (Nesterov momentum 0.9, cosine decay from
    ``lr``, batches of ``data.spec.batch`` in a seeded order). Shared with the `train` command.

    Returns ``train_loss_sum`` (Σ of the per-step training losses: the training-speed proxy of
    Ru et al. 2021) and ``losses`` (one per step). ``on_step(step, loss)`` reports progress.
    """
    if steps < 1:
        raise UserError(f"steps: {steps} must be >= 1")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    losses: list[float] = []
    epoch = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while len(losses) < steps:
            for b in data.batches("train", seed=seed * 1000 + epoch):
                if len(b.y) < 2:  # BN cannot train on a single sample
                    continue
                loss = F.cross_entropy(model(b.x), b.y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                if on_step is not None:
                    on_step(len(losses), losses[-1])
                if len(losses) >= steps:
                    break
            epoch += 1
    return {"train_loss_sum": float(sum(losses)), "losses": losses}


def short_train(arch: Arch | str, data: ProxyData, *, steps: int = 150, lr: float = 0.05,
                seed: int = 0) -> dict[str, Any]:
    """The short-training proxy: a seeded fresh network trained ``steps`` steps on the proxy
    task. Returns ``val_acc``, ``train_loss_sum`` (lower is better), ``steps``, ``seconds``."""
    a = resolve_arch(arch).replace(num_classes=data.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(a)
    t0 = time.perf_counter()
    h = train_model(model, data, steps=steps, lr=lr, seed=seed)
    return {
        "val_acc": evaluate(model, data, "val"),
        "train_loss_sum": h["train_loss_sum"],
        "steps": steps,
        "seconds": time.perf_counter() - t0,
    }


# --- validation: do the proxies rank architectures the way training does? --------------------


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _ci(fn: Callable[[np.ndarray, np.ndarray], float], a: np.ndarray, b: np.ndarray,
        n_boot: int, rng: np.random.Generator) -> list[float]:
    """95% percentile bootstrap interval over architectures (resampled with replacement)."""
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, len(a), len(a))
        v = fn(a[i], b[i])
        if math.isfinite(v):
            vals.append(v)
    if not vals:
        return [float("nan"), float("nan")]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


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
    rng = np.random.default_rng(seed)
    n = len(truth)
    k = max(1, math.ceil(n / 5))
    order = np.argsort(params, kind="stable")
    groups = [g for g in np.array_split(order, buckets) if len(g) >= 3]
    out: dict[str, Any] = {"n": n, "top_k": k, "buckets": len(groups), "proxies": {}}
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        s = np.where(np.isfinite(s), s, np.nanmin(np.where(np.isfinite(s), s, np.nan)) - 1)
        within = [_tau(s[g], truth[g]) for g in groups]
        within = [w for w in within if math.isfinite(w)]
        out["proxies"][name] = {
            "kendall_tau": _tau(s, truth),
            "kendall_tau_ci": _ci(_tau, s, truth, n_boot, rng),
            "spearman_rho": _rho(s, truth),
            "spearman_rho_ci": _ci(_rho, s, truth, n_boot, rng),
            "tau_within_params_buckets": float(np.mean(within)) if within else float("nan"),
            "top_k_precision": top_k_precision(s, truth, k),
        }
    if seed_accs is not None and len(seed_accs) >= 2:
        pairs = [_tau(seed_accs[i], seed_accs[j])
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
    import json
    import os

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
    resolved = [resolve_arch(a) for a in archs]
    for i, a in enumerate(resolved):
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


def load_validation_set(path: str, n: int, seed: int = 0) -> tuple[list[Arch], dict[str, Any]]:
    """The architectures and proxy block to validate on, from either a search-space YAML
    (``n`` archs via ``sample_random``) or a minimal file ``{proxy: {...}, archs: [arch or
    preset name, ...]}`` (all its archs, ``n`` ignored)."""
    import yaml

    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(doc, dict) and "archs" in doc and "space" not in doc:
        if not isinstance(doc["archs"], list) or not doc["archs"]:
            raise UserError(f"{path}: archs: must be a non-empty list of architectures or presets")
        archs = [resolve_arch(a) if isinstance(a, str) else Arch.from_dict(a, f"{path}: archs[{i}]")
                 for i, a in enumerate(doc["archs"])]
        return archs, dict(doc.get("proxy") or {})
    from ..search.space import load_space

    space = load_space(path)
    return space.sample_random(n, seed=seed), dict(space.proxy)
