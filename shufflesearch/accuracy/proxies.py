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
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..model.arch import Arch
from ..model.compile import build
from ..model.cost import costs
from .data import ProxyData, Split

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


# The score a search maximises by default. The validation run (docs/benchmarks.md, "Zero-cost proxies on digits") found
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


def compute_proxies(arch: Arch, data: ProxyData, names: Iterable[str] | None = None,
                    seed: int = 0) -> dict[str, float]:
    """The zero-cost proxies ``names`` (default: all of ``PROXIES``) for one architecture, plus
    ``"score"`` (``default_score``) when the ensemble's members are among them."""
    names = list(PROXIES) if names is None else list(names)
    unknown = [n for n in names if n not in PROXIES and n != "score"]
    if unknown:
        raise UserError(f"proxy.proxies: unknown proxy '{unknown[0]}' (known: {', '.join(PROXIES)})")
    ctx = ProxyContext(arch, data, seed)
    out = {n: PROXIES[n](ctx) for n in names if n != "score"}
    if all(n in out for n in DEFAULT_ENSEMBLE):
        out["score"] = default_score(out)
    return out


