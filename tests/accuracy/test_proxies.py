from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from shufflesearch import Arch, Stage, Stem, build
from shufflesearch.accuracy.data import DataSpec, ProxyData, Split, load_data
from shufflesearch.accuracy.proxies import (
    DEFAULT_ENSEMBLE,
    PROXIES,
    ProxyContext,
    compute_proxies,
    default_score,
)
from shufflesearch.accuracy.training import short_train
from shufflesearch.accuracy.validation import (
    format_report,
    rank_report,
    top_k_precision,
    validate_proxies,
)
from shufflesearch.cli import main
from shufflesearch.errors import UserError

STEM = Stem(channels=8, stride=1, pool=False)
TINY = [
    Arch(stages=(Stage("v2", 16, 1), Stage("v2", 32, 1)), stem=STEM, head=0),
    Arch(stages=(Stage("v2", 24, 2, kernel=5), Stage("v2", 48, 1)), stem=STEM, head=64),
    Arch(stages=(Stage("v1", 24, 2, groups=2), Stage("v1", 48, 1, groups=2)), stem=STEM, head=0),
]


@pytest.fixture(scope="module")
def data() -> ProxyData:
    return load_data(DataSpec(name="digits", resolution=8, batch=16))


def _with(data: ProxyData, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> ProxyData:
    tr = Split(data.train.x if x is None else x, data.train.y if y is None else y)
    return dataclasses.replace(data, train=tr)


def test_registry_has_the_issue_proxies():
    assert {"params", "macs", "grad_norm", "snip", "synflow", "jacob_cov", "naswot"} <= set(PROXIES)
    assert set(DEFAULT_ENSEMBLE) <= set(PROXIES)


def test_params_is_torchs_own_count(data):
    a = TINY[1]
    s = compute_proxies(a, data, ["params"])
    model = build(a, num_classes=data.num_classes)
    assert s["params"] == sum(p.numel() for p in model.parameters())


def test_seeded_and_deterministic(data):
    a = compute_proxies(TINY[0], data, seed=1)
    b = compute_proxies(TINY[0], data, seed=1)
    c = compute_proxies(TINY[0], data, seed=2)
    assert a == b
    assert a["grad_norm"] != c["grad_norm"]  # another init and batch


def test_synflow_ignores_the_data(data):
    noise = torch.randn_like(data.train.x) * 5
    labels = torch.randint(0, data.num_classes, data.train.y.shape)
    a = compute_proxies(TINY[1], data, ["synflow"])["synflow"]
    b = compute_proxies(TINY[1], _with(data, noise, labels), ["synflow"])["synflow"]
    assert a == b and math.isfinite(a)


def test_grad_norm_and_snip_change_with_labels_others_do_not(data):
    shuffled = data.train.y[torch.randperm(len(data.train.y), generator=torch.Generator().manual_seed(0))]
    a = compute_proxies(TINY[0], data)
    b = compute_proxies(TINY[0], _with(data, y=shuffled))
    assert a["grad_norm"] != b["grad_norm"] and a["snip"] != b["snip"]
    for label_free in ("naswot", "jacob_cov", "synflow", "params"):
        assert a[label_free] == b[label_free]


def test_naswot_kernel_symmetric_psd_scored_with_slogdet(data):
    ctx = ProxyContext(TINY[2], data)
    k = ctx._forward["K"]
    assert torch.equal(k, k.T)
    assert torch.linalg.eigvalsh(k).min() > -1e-6 * k.max()
    # Each sample agrees with itself on every ReLU unit: diag(K) = #ReLU input elements per
    # sample, counted here independently with hooks on a fresh copy of the network.
    model = ctx.fresh_model()
    units = []
    hs = [m.register_forward_hook(lambda _m, i, _o: units.append(i[0][0].numel()))
          for m in model.modules() if isinstance(m, nn.ReLU)]
    model(ctx.batch.x)
    for h in hs:
        h.remove()
    assert torch.all(k.diagonal() == sum(units))
    assert PROXIES["naswot"](ctx) == pytest.approx(float(np.linalg.slogdet(k.numpy())[1]))


def test_jacob_cov_bounded_by_its_definition(data):
    # f(λ) = log(λ+k) + 1/(λ+k) has its minimum 1 at λ+k = 1, so the score −Σf ≤ −N.
    s = compute_proxies(TINY[1], data, ["jacob_cov"])["jacob_cov"]
    assert s <= -data.spec.batch + 1e-6


def test_default_score_is_per_architecture(data):
    s = compute_proxies(TINY[0], data)
    assert s["score"] == default_score(s)
    better = dict(s, naswot=s["naswot"] + 10)
    assert default_score(better) > default_score(s)  # monotone in a member, no population needed
    with pytest.raises(UserError, match="naswot"):
        default_score({"synflow": 1.0, "jacob_cov": -20.0})
    with pytest.raises(UserError, match="proxy.proxies"):
        compute_proxies(TINY[0], data, ["zen"])


def test_short_train_seeded_and_learns(data):
    a = short_train(TINY[0], data, steps=25, lr=0.1, seed=0)
    b = short_train(TINY[0], data, steps=25, lr=0.1, seed=0)
    assert a["val_acc"] == b["val_acc"] and a["train_loss_sum"] == b["train_loss_sum"]
    # ten digit classes: chance is 0.1; 25 steps of a tiny net get well above it
    assert a["val_acc"] > 0.18  # 359 val images: chance 0.10 ± 0.016
    assert a["train_loss_sum"] < 25 * math.log(10)


def test_rank_statistics_against_hand_values():
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    r = rank_report({"good": truth * 2, "bad": -truth, "swap": np.array([1.0, 3.0, 2.0, 4.0])},
                    truth, params=np.arange(4.0), seed_accs=np.stack([truth, truth]), n_boot=50,
                    buckets=1)
    assert r["proxies"]["good"]["kendall_tau"] == pytest.approx(1.0)
    assert r["proxies"]["bad"]["spearman_rho"] == pytest.approx(-1.0)
    assert r["proxies"]["swap"]["kendall_tau"] == pytest.approx(4 / 6)  # 5 concordant, 1 discordant
    assert r["noise_ceiling_tau"] == pytest.approx(1.0)
    lo, hi = r["proxies"]["swap"]["kendall_tau_ci"]
    assert lo <= hi
    assert top_k_precision(np.array([4.0, 3, 2, 1]), np.array([4.0, 1, 2, 3]), 2) == 0.5


def test_validate_proxies_end_to_end(data):
    r = validate_proxies(TINY, data, seeds=2, steps=3, n_boot=20)
    assert r["n"] == 3 and len(r["archs"]) == 3
    assert {"params", "naswot", "score", "neg_train_loss_sum"} <= set(r["proxies"])
    assert all(len(a["val_acc"]) == 2 for a in r["archs"])
    assert "noise_ceiling_tau" in r
    json.dumps(r)  # the report is plain data


def test_cli_proxies_validate(tmp_path, capsys):
    space = tmp_path / "tiny.yaml"
    space.write_text(
        "proxy: {dataset: digits, resolution: 8, batch: 16, proxies: [params, naswot, synflow, jacob_cov]}\n"
        "archs:\n"
        + "".join(f"  - {json.dumps(a.to_dict())}\n" for a in TINY)
    )
    out = tmp_path / "out"
    assert main(["proxies", "validate", str(space), "--steps", "2", "--rungs", "1,2", "--out", str(out),
                 "--quiet"]) == 0
    rep = json.loads((out / "validation.json").read_text())
    assert set(rep["proxies"]) == {"params", "naswot", "synflow", "jacob_cov", "score", "neg_train_loss_sum"}
    assert (out / "validation.png").stat().st_size > 1000
    assert "noise ceiling" in capsys.readouterr().out


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["proxies", "validate", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.yaml" in err[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("proxy: {dataset: imagenet}\narchs: [shufflenet_v2_x0_5, shufflenet_v2_x1_0, shufflenet_v2_x1_5]\n")
    assert main(["proxies", "validate", str(bad)]) == 2
    assert "bad.yaml: proxy.dataset: 'imagenet' is not" in capsys.readouterr().err


def test_search_score_methods():
    import math

    from shufflesearch.accuracy.proxies import DEFAULT_SCORE, default_score, proxy_score

    s = {"macs": math.exp(17.0), "params": math.exp(13.0), "naswot": 500.0, "synflow": 40.0, "jacob_cov": -70.0}
    assert DEFAULT_SCORE == "macs"
    assert proxy_score(s) == pytest.approx(17.0)
    assert proxy_score(s, "params") == pytest.approx(13.0)
    assert proxy_score(s, "naswot") == 500.0
    assert proxy_score(s, "ensemble") == default_score(s)
    assert proxy_score({**s, "macs": float("nan")}) == float("-inf")


def test_validate_with_the_ladder(data):
    r = validate_proxies(TINY, data, seeds=2, names=["params"], steps=4, n_boot=20, rungs=[1, 3],
                         ladder_seeds=2, device="cpu")
    lad = r["ladder"]
    assert lad["rungs"] == [1, 3] and set(lad["estimators"]) == {"val_acc", "sotl"}
    for per in lad["estimators"].values():
        assert [e["steps"] for e in per] == [1, 3]
        assert all("ladder_noise_ceiling_tau" in e and len(e["tau_ci"]) == 2 for e in per)
    row = r["archs"][0]
    assert row["truth_seeds"] == [100, 101]  # kept apart from the ladder's seeds 0, 1
    # the ladder's SoTL at rung 1 is minus the loss of its one step: positive loss, so < 0
    assert all(lad_seed[0]["sotl"] < 0 for lad_seed in row["ladder"])
    assert r["short_train"]["steps"] == 4 and "fidelity ladder" in format_report(r)
    json.dumps(r)


def test_validate_leaves_an_architecture_another_process_holds(data, tmp_path):
    rows = tmp_path / "rows.jsonl"
    claims = tmp_path / ".claims"
    claims.mkdir()
    four = [*TINY, TINY[0].replace(head=32)]
    (claims / four[3].archid).write_text(str(os.getppid()))  # a live process holds it
    r = validate_proxies(four, data, seeds=1, names=["params"], steps=1, n_boot=10, rows_path=str(rows))
    assert r["n"] == 3 and four[3].archid not in {a["archid"] for a in r["archs"]}

    def other_process_finishes(msg: str) -> None:  # it writes its row while we skip its arch
        if "another process" in msg:
            row = json.loads(rows.read_text().splitlines()[0])
            with open(rows, "a") as f:
                f.write(json.dumps({**row, "archid": four[3].archid, "arch": four[3].to_dict()}) + "\n")

    r = validate_proxies(four, data, seeds=1, names=["params"], steps=1, n_boot=10, rows_path=str(rows),
                         progress=other_process_finishes)
    assert [a["archid"] for a in r["archs"]] == [a.archid for a in four]  # all four, in order
    rows.write_text("".join(rows.read_text().splitlines(keepends=True)[:3]))
    (claims / four[3].archid).write_text("999999999")  # its process is gone: taken over
    r = validate_proxies(four, data, seeds=1, names=["params"], steps=1, n_boot=10, rows_path=str(rows))
    assert r["n"] == 4
    assert len(rows.read_text().splitlines()) == 4  # the first three were not trained again
    five = [*four, TINY[1].replace(head=32)]
    r = validate_proxies(five, data, seeds=1, names=["params"], steps=1, n_boot=10, rows_path=str(rows),
                         train=False)
    assert r["n"] == 4 and len(rows.read_text().splitlines()) == 4  # reported, nothing trained


def test_cli_ladder_on_npz_and_folder_data(tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images[:120] * 16).astype(np.uint8), d.target[:120]
    np.savez(tmp_path / "own.npz", x=x, y=y)
    for i in range(24):  # two classes, 12 images each
        c = tmp_path / "imgs" / f"c{y[i] % 2}"
        c.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(c / f"{i}.png")
    space = tmp_path / "set.yaml"
    space.write_text(
        "proxy: {dataset: digits, resolution: 8, batch: 16, proxies: [params]}\n"
        "fidelity: {rungs: [1, 2], check: {steps: 3, seeds: 2}}\n"
        "archs:\n" + "".join(f"  - {json.dumps(a.to_dict())}\n" for a in TINY))
    for src in (f"npz:{tmp_path / 'own.npz'}", f"folder:{tmp_path / 'imgs'}"):
        assert main(["proxies", "validate", str(space), "--data", src, "--json", "--device", "cpu"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["data"]["name"] == src and rep["ladder"]["rungs"] == [1, 2]
        assert rep["short_train"]["steps"] == 3 and rep["short_train"]["seeds"] == 2  # from fidelity.check
    assert main(["proxies", "validate", str(space), "--data", "npz:/nonexistent.npz"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["proxies", "validate", str(space), "--rungs", "5,2"]) == 2
    assert "--rungs" in capsys.readouterr().err
