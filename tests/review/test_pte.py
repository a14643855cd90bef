"""The bundle's model.pte (review/pte.py): the program it writes computes what the training form
computes, read back here by ExecuTorch's own runtime API, for the batch it was asked for."""

from __future__ import annotations

import torch

from shufflesearch.model.arch import Arch, Stage, Stem
from shufflesearch.model.compile import build
from shufflesearch.review.pte import PTE, export_pte
from tests.review.test_export import random_state

# One V2 and one V1 stage (a group conv, a channel shuffle), so both unit kinds are lowered.
TINY = Arch(stages=(Stage("v2", 24, 2), Stage("v1", 48, 1, groups=2)), stem=Stem(channels=8), head=64,
            num_classes=7)


def test_export_pte_runs_what_the_training_form_computes(tmp_path):
    model = build(TINY)
    model.load_state_dict(random_state(TINY, seed=2, fc_scale=0.3))  # logits O(1): a wrong op shows
    model.eval()
    path = tmp_path / PTE
    y, ref, info = export_pte(model, path, res=32, batch=2, threads=1)
    scale = ref.abs().max().item()
    assert y.shape == ref.shape == (2, 7) and scale > 0.1
    assert (y - ref).abs().max().item() <= 1e-3 * scale  # BN folding reorders float32 sums
    assert info["batch"] == 2 and info["resolution"] == 32 and info["threads"] == 1
    assert info["delegated_nodes"] > info["portable_nodes"]  # XNNPACK runs most of the network
    assert info["torch_ms"] > 0 and info["executorch_ms"] > 0 and info["latency_ratio"] > 0

    # The file on its own, through ExecuTorch's public API, on an input export_pte never saw.
    from executorch.runtime import Runtime

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    (out,) = Runtime.get().load_program(path).load_method("forward").execute([x])
    with torch.no_grad():
        want = model(x)
    assert (out - want).abs().max().item() <= 1e-3 * want.abs().max().item()
