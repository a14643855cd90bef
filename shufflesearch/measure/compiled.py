"""The torch backend's compiled form: the inference form as an AOTInductor package.

``compiled_runner(arch, spec)`` is ``backends.make_runner(arch, spec)`` for ``backend: torch``
with the inference form compiled ahead of time (``model/compile.py: compile_package``), the
very function that writes a bundle's model.aoti.pt2, so what is timed here is what
``export --aoti`` ships; it is a ``Runner`` like any other, timed by ``timing.time_rounds``. A package is compiled for one input shape and thread count, costs
tens of seconds (bench/torch_form.py), and is cached in ``cache_dir()/aoti`` under the
architecture and ``package_tag``, so a search times the eager form per trial and a caller asks
for this one where it pays: export, a comparison of the deployed forms, a re-time.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..errors import UserError
from ..model.arch import resolve_arch
from ..model.compile import (
    PACKAGE_CONFIG,
    PACKAGE_FORM,
    compile_package,
    load_package,
    to_inference,
)
from .backends import fixed_input, seeded_model, torch_runner
from .env import cache_dir
from .target import TargetSpec, stable_hash
from .timing import Runner

__all__ = ["compiled_runner", "package_tag"]


def package_tag(spec: TargetSpec) -> str:
    """What a package depends on besides the architecture: the shape, the thread count
    inductor compiled for, the compile settings and torch. (It is always compiled from the
    NHWC inference form and inductor picks the layouts inside: ``spec.channels_last`` does not
    enter.)"""
    b, _, h, w = spec.input_shape
    return stable_hash({"shape": [b, h, w], "threads": spec.threads, "config": PACKAGE_CONFIG,
                        "form": PACKAGE_FORM, "torch": torch.__version__})


def compiled_runner(arch: Any, spec: TargetSpec) -> Runner:
    """A ``Runner`` (backend torch) of ``arch``'s inference form as a package, seeded weights
    as every backend's; ``info`` records compile_s, compile_cached, load_s and the path."""
    if spec.backend != "torch":
        raise UserError(f"target.backend: {spec.backend} has no compiled form (only torch)")
    arch = resolve_arch(arch)
    d = cache_dir() / "aoti"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{arch.archid}_{package_tag(spec)}.pt2"
    info: dict[str, Any] = {"compile_cached": path.is_file(), "path": str(path)}
    t0 = time.perf_counter()
    if not info["compile_cached"]:
        compile_package(to_inference(seeded_model(arch)), spec.input_shape, path, spec.threads)
    info["compile_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn = load_package(path)
    info["load_s"] = time.perf_counter() - t0
    return torch_runner(fn, torch.from_numpy(fixed_input(spec.input_shape)), spec.threads, info)
