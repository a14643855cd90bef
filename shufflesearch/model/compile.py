"""Arch → nn.Module, the training form → the inference form, and torchvision's weights."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..common.threads import torch_threads
from ..errors import UserError
from .arch import Arch
from .units import ShuffleNet, ShuffleNetInference


def build(arch: Arch, inference: bool = False, num_classes: int | None = None,
          channels_last: bool = True) -> nn.Module:
    """The network of ``arch`` (the public ``shufflesearch.build`` also takes a preset name or
    an arch file).

    ``inference=False`` gives the training form (conv, BN and ReLU modules whose paths match
    the OpGraph's node names). ``inference=True`` gives the eval-mode inference form of a
    freshly initialised network; use ``to_inference`` to convert a trained one.
    ``num_classes`` overrides the Arch's classifier width (e.g. for the proxy task).
    ``channels_last`` is the inference form's memory format (the target's ``channels_last``).
    """
    model = ShuffleNet(arch, num_classes)
    return to_inference(model, channels_last) if inference else model


def to_inference(model: ShuffleNet, channels_last: bool = True) -> nn.Module:
    """The inference form of a training-form model: same outputs as ``model.eval()``, with
    BN folded into the convs, the V2 concat + shuffle merged into one copy, and (by default)
    NHWC memory format, which oneDNN's CPU kernels run faster (bench/compile_speed.py)."""
    if not isinstance(model, ShuffleNet):
        raise TypeError(f"expected a training-form ShuffleNet, got {type(model).__name__}")
    with torch.no_grad():
        inf = ShuffleNetInference(model.eval(), channels_last).eval()
    if channels_last:
        inf = inf.to(memory_format=torch.channels_last)
    return inf


# --- the compiled deploy form ------------------------------------------------------------------

# Inductor settings of the AOTInductor package. freezing: the weights become constants, so
# oneDNN's convs get them pre-packed in their blocked layout once, at compile time, instead of
# reordering them on every call (at batch 1 that reorder is a large share of a 1x1 conv).
PACKAGE_CONFIG: dict[str, object] = {"freezing": True}
PACKAGE_FORM = 1  # bump when what compile_package builds changes (part of cache keys)


def compile_package(inference: nn.Module, input_shape: tuple[int, int, int, int], path: str | Path,
                    threads: int = 1) -> Path:
    """Compile the inference form ``inference`` (eval) into an AOTInductor package at ``path``
    (a ``.pt2`` zip: the generated C++ and its shared library, the weights frozen inside) for
    exactly ``input_shape`` and ``threads`` intra-op threads (inductor writes the thread count
    into its kernels). Written under a temporary name first, so a reader never sees half.
    Costs tens of seconds (bench/torch_form.py), which is why a search times the eager form
    and the package is built for export and side-by-side comparison."""
    import torch._inductor  # lazy: heavy to import (seconds), needed only for a package

    path = Path(path)
    x = torch.zeros(input_shape)
    # The package names its inner folder after the file: compile under the final name, in a
    # private folder beside it.
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        with torch_threads(threads), torch.no_grad():
            prog = torch.export.export(inference.eval(), (x,))
            torch._inductor.aoti_compile_and_package(prog, package_path=str(staged),
                                                     inductor_configs=dict(PACKAGE_CONFIG))
        os.replace(staged, path)
    return path


def load_package(path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The compiled model of ``compile_package``'s file: call it on one input of the shape it
    was compiled for; returns the logits."""
    import torch._inductor  # lazy: heavy to import (seconds), needed only for a package

    runner = torch._inductor.aoti_load_package(str(path))

    def run(x: torch.Tensor) -> torch.Tensor:
        y = runner(x)
        return y[0] if isinstance(y, (list, tuple)) else y

    return run


# --- torchvision weights ---------------------------------------------------------------------

_TV_RULES = [  # torchvision ShuffleNetV2 key → ours (applied in order, first match wins)
    (r"^conv1\.0\.", "stem.conv."),
    (r"^conv1\.1\.", "stem.bn."),
    (r"^conv5\.0\.", "head.conv."),
    (r"^conv5\.1\.", "head.bn."),
    (r"^fc\.", "fc."),
]
_TV_BRANCH = {  # index inside torchvision's branch Sequential → our module
    ("branch1", "0"): "proj.dw.conv", ("branch1", "1"): "proj.dw.bn",
    ("branch1", "2"): "proj.pw.conv", ("branch1", "3"): "proj.pw.bn",
    ("branch2", "0"): "main.pw1.conv", ("branch2", "1"): "main.pw1.bn",
    ("branch2", "3"): "main.dw.conv", ("branch2", "4"): "main.dw.bn",
    ("branch2", "5"): "main.pw2.conv", ("branch2", "6"): "main.pw2.bn",
}


def torchvision_key(key: str) -> str:
    """Our parameter path for one key of torchvision's ShuffleNetV2 state_dict."""
    m = re.match(r"^stage(\d)\.(\d+)\.(branch[12])\.(\d+)\.(.+)$", key)
    if m:
        stage, unit, branch, idx, rest = m.groups()
        return f"stages.{int(stage) - 2}.{unit}.{_TV_BRANCH[(branch, idx)]}.{rest}"
    for pat, rep in _TV_RULES:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    raise KeyError(key)


def convert_torchvision_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        try:
            out[torchvision_key(k)] = v
        except KeyError:
            raise UserError(f"not a torchvision ShuffleNetV2 state_dict: unexpected key '{k}'") from None
    return out


def check_state_dict_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                          what: str = "weights", error: type[UserError] = UserError) -> None:
    """Raise ``error`` naming the first key that is missing, unexpected or of the wrong shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    if missing or extra:
        raise error(f"{what} do not fit this architecture: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, v in state_dict.items():
        if tuple(own[k].shape) != tuple(v.shape):
            hint = " (the Arch's num_classes differs from the weights')" if k.startswith("fc.") else ""
            raise error(f"{what} do not fit this architecture: {k} has shape {tuple(v.shape)}, it needs "
                        f"{tuple(own[k].shape)}{hint}")


def load_torchvision_weights(model: ShuffleNet, state_dict: dict[str, torch.Tensor]) -> ShuffleNet:
    """Load torchvision's ``shufflenet_v2_x*`` weights into the matching preset's training form
    (e.g. ``build("shufflenet_v2_x1_0")``). Shapes are checked; returns ``model``."""
    ours = convert_torchvision_state_dict(state_dict)
    check_state_dict_fits(model, ours, "torchvision weights")
    model.load_state_dict(ours)
    return model
