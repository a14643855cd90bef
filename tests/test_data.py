from __future__ import annotations

import numpy as np
import pytest
import torch

from shufflesearch.accuracy.data import DataSpec, load_data, stratified_split
from shufflesearch.errors import UserError


def test_digits_is_sklearns_bundled_set():
    d = load_data(DataSpec(resolution=16))
    # scikit-learn documents the digits set as 1,797 8x8 images of 10 classes.
    assert len(d.train.y) + len(d.val.y) == 1797
    assert d.num_classes == 10
    assert d.train.x.shape[1:] == (3, 16, 16)
    assert d.train.x.dtype == torch.float32 and d.train.y.dtype == torch.int64
    # greyscale replicated to three identical channels
    assert torch.equal(d.train.x[:, 0], d.train.x[:, 2])


def test_split_is_stratified_disjoint_and_seeded():
    d1 = load_data(DataSpec(resolution=8, val_fraction=0.25, seed=3))
    d2 = load_data(DataSpec(resolution=8, val_fraction=0.25, seed=3))
    d3 = load_data(DataSpec(resolution=8, val_fraction=0.25, seed=4))
    assert torch.equal(d1.val.x, d2.val.x)
    assert not torch.equal(d1.val.x, d3.val.x)
    counts = torch.bincount(d1.val.y, minlength=10).float()
    total = torch.bincount(torch.cat([d1.train.y, d1.val.y]), minlength=10).float()
    assert torch.all((counts / total - 0.25).abs() < 0.02)
    y = np.array([0] * 10 + [1] * 5)
    tr, va = stratified_split(y, 0.2, 0)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == 15
    assert sorted(y[va].tolist()) == [0, 0, 1]


def test_normalised_with_training_statistics():
    d = load_data(DataSpec(resolution=8))
    m = d.train.x.mean(dim=(0, 2, 3))
    s = d.train.x.std(dim=(0, 2, 3))
    assert torch.allclose(m, torch.zeros(3), atol=1e-4)
    assert torch.allclose(s, torch.ones(3), atol=1e-3)


def test_npz_source_all_layouts(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 12, 12, 3), dtype=np.uint8)
    y = np.repeat(np.arange(4), 10)
    np.savez(tmp_path / "a.npz", images=x, labels=y)
    np.savez(tmp_path / "b.npz", x=x.transpose(0, 3, 1, 2), y=y)
    a = load_data(DataSpec(name=f"npz:{tmp_path / 'a.npz'}", resolution=12))
    b = load_data(DataSpec(name=f"npz:{tmp_path / 'b.npz'}", resolution=12))
    assert a.num_classes == 4
    assert torch.allclose(a.train.x, b.train.x)
    # no resize at the native size: pixel (0,0,0) of the first training image is recoverable
    first = stratified_split(y, 0.2, 0)[0][0]
    raw = x[first, 0, 0, 0] / 255.0
    assert a.train.x[0, 0, 0, 0].item() * a.std[0] + a.mean[0] == pytest.approx(raw, abs=1e-5)


def test_folder_source(tmp_path):
    from PIL import Image

    for c, colour in (("cat", 30), ("dog", 220)):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.new("L", (10 + i, 10), colour).save(tmp_path / c / f"{i}.png")
    d = load_data(DataSpec(name=f"folder:{tmp_path}", resolution=8, val_fraction=0.4))
    assert d.classes == ("cat", "dog") and d.num_classes == 2
    assert len(d.val.y) == 4 and d.train.x.shape[1:] == (3, 8, 8)
    # the darker class stays darker after normalisation
    cat = d.train.x[d.train.y == 0].mean()
    dog = d.train.x[d.train.y == 1].mean()
    assert cat < dog


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"name": "mnist"}, "proxy.name"),
        ({"resolution": 4}, "proxy.resolution"),
        ({"batch": 1}, "proxy.batch"),
        ({"val_fraction": 1.0}, "proxy.val_fraction"),
    ],
)
def test_bad_spec_names_the_field(kw, field):
    with pytest.raises(UserError, match=field):
        DataSpec(**kw)


def test_bad_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_data(DataSpec(name=f"npz:{tmp_path / 'missing.npz'}"))
    np.savez(tmp_path / "bad.npz", foo=np.zeros(3))
    with pytest.raises(UserError, match="'x'"):
        load_data(DataSpec(name=f"npz:{tmp_path / 'bad.npz'}"))
    with pytest.raises(UserError, match="proxy.colour"):
        DataSpec.from_dict({"colour": 1})


def test_from_search_space_proxy_block():
    s = DataSpec.from_dict({"dataset": "digits", "resolution": 16, "batch": 32, "proxies": None,
                            "short_train_top_k": 0})
    assert s == DataSpec(resolution=16, batch=32)


def test_batch_helpers():
    d = load_data(DataSpec(resolution=8, batch=50))
    b = d.batch("train", seed=1)
    assert b.x.shape[0] == 50
    assert torch.equal(b.x, d.batch("train", seed=1).x)
    seen = torch.cat([s.y for s in d.batches("val", seed=0)])
    assert torch.equal(seen.sort().values, d.val.y.sort().values)
