from __future__ import annotations

import numpy as np
import pytest
import torch

from shufflesearch.accuracy.data import DataSpec, load_data, stratified_split
from shufflesearch.errors import UserError


def test_digits_is_sklearns_bundled_set():
    d = load_data(DataSpec(name="digits", resolution=16))
    # scikit-learn documents the digits set as 1,797 8x8 images of 10 classes.
    assert len(d.train.y) + len(d.val.y) + len(d.check.y) == 1797
    assert d.num_classes == 10
    assert d.train.x.shape[1:] == (3, 16, 16)
    assert d.train.x.dtype == torch.float32 and d.train.y.dtype == torch.int64
    # greyscale replicated to three identical channels
    assert torch.equal(d.train.x[:, 0], d.train.x[:, 2])


def test_split_is_stratified_disjoint_and_seeded():
    d1 = load_data(DataSpec(name="digits", resolution=8, val_fraction=0.25, seed=3))
    d2 = load_data(DataSpec(name="digits", resolution=8, val_fraction=0.25, seed=3))
    d3 = load_data(DataSpec(name="digits", resolution=8, val_fraction=0.25, seed=4))
    assert torch.equal(d1.val.x, d2.val.x)
    assert not torch.equal(d1.val.x, d3.val.x)
    counts = torch.bincount(d1.val.y, minlength=10).float()
    total = torch.bincount(torch.cat([d1.train.y, d1.val.y, d1.check.y]), minlength=10).float()
    assert torch.all((counts / total - 0.25).abs() < 0.02)
    y = np.array([0] * 10 + [1] * 5)
    tr, va = stratified_split(y, 0.2, 0)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == 15
    assert sorted(y[va].tolist()) == [0, 0, 1]


def test_normalised_with_training_statistics():
    d = load_data(DataSpec(name="digits", resolution=8))
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
    first = stratified_split(y, 0.2, 0, 0.2)[0][0]
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
        ({"name": "mnist"}, "DataSpec.name: 'mnist' is not 'fashion'"),
        ({"resolution": 4}, r"DataSpec.resolution: 4 is out of range \[8, 1024\]"),
        ({"batch": 1}, "DataSpec.batch: 1 is out of range"),
        ({"val_fraction": 1.0}, "DataSpec.val_fraction: 1.0 is out of range"),
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


def test_a_mapping_names_the_specs_fields_not_the_yaml_keys():
    assert load_data({"name": "digits", "resolution": 8}).spec == DataSpec(name="digits", resolution=8)
    with pytest.raises(UserError, match="DataSpec has no field 'dataset'"):  # the reader's spelling
        load_data({"dataset": "digits"})


def test_batch_helpers():
    d = load_data(DataSpec(name="digits", resolution=8, batch=50))
    b = d.batch("train", seed=1)
    assert b.x.shape[0] == 50
    assert torch.equal(b.x, d.batch("train", seed=1).x)
    seen = torch.cat([s.y for s in d.batches("val", seed=0)])
    assert torch.equal(seen.sort().values, d.val.y.sort().values)


# --- the default task: the packaged Fashion-MNIST subset, IDX files, the check split ----------


def _write_idx(path, arr: np.ndarray, type_byte: int) -> None:
    # The IDX layout as LeCun et al. describe it: two zero bytes, the type byte, the number of
    # dimensions, each dimension as a big-endian uint32, then the data.
    head = bytes([0, 0, type_byte, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(head + arr.astype(">u1" if type_byte == 0x08 else ">i4").tobytes())


def test_idx_source_reads_the_mnist_layout(tmp_path):
    import gzip

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    y = np.repeat(np.arange(3), 10).astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", x, 0x08)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", y, 0x08)
    raw = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 1])  # magic 0x00000801, as in MNIST's label files
    # a gzipped t10k part joins the training part
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(
        bytes([0, 0, 8, 3]) + (6).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + x[:6].tobytes()))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
        bytes([0, 0, 8, 1]) + (6).to_bytes(4, "big") + y[:6].tobytes()))
    d = load_data(DataSpec(name=f"idx:{tmp_path}", resolution=28))
    assert len(d.train.y) + len(d.val.y) + len(d.check.y) == 36
    assert d.num_classes == 3
    with pytest.raises(UserError, match="IDX"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
        (tmp_path / "bad" / "train-labels-idx1-ubyte").write_bytes(raw)
        load_data(DataSpec(name=f"idx:{tmp_path / 'bad'}"))


def test_default_task_is_the_packaged_fashion_subset():
    spec = DataSpec()
    assert spec.name == "fashion"
    d = load_data(DataSpec(resolution=28))
    # Fashion-MNIST: 10 classes of 28x28 greyscale images (Xiao et al. 2017); the subset holds
    # 1,500 of each class (make_fashion.PER_CLASS), split 60/20/20 per class.
    assert d.num_classes == 10 and d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"
    for part, n in (("train", 9000), ("val", 3000), ("check", 3000)):
        y = d.split(part).y
        assert len(y) == n
        assert torch.bincount(y, minlength=10).tolist() == [n // 10] * 10
    # the three parts are disjoint images (compare raw pixels, not positions)
    keys = [{hash(x[0].numpy().tobytes()) for x in d.split(p).x[:500]} for p in ("train", "val", "check")]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    # greyscale kept as one channel in memory, read as three
    assert d.train.x.stride(1) == 0 and torch.equal(d.train.x[:, 0], d.train.x[:, 2])


def test_check_split_is_apart_from_validation():
    y = np.repeat(np.arange(5), 20)
    tr, va, ck = stratified_split(y, 0.2, 0, 0.25)
    assert len(va) == 20 and len(ck) == 25 and len(tr) == 55
    assert set(tr).isdisjoint(va) and set(tr).isdisjoint(ck) and set(va).isdisjoint(ck)
    with pytest.raises(UserError, match="check_fraction"):
        DataSpec(val_fraction=0.5, check_fraction=0.45)



def test_the_packaged_subset_is_drawn_per_class_and_reproducibly(tmp_path, capsys):
    from shufflesearch.accuracy import make_fashion

    # As many training images per class as the package draws, in 2x2 images whose first two
    # pixels spell the image's index, so a drawn image names the training image it came from.
    n = make_fashion.PER_CLASS
    y = np.tile(np.arange(10), n).astype(np.uint8)
    idx = np.arange(10 * n)
    x = np.stack([idx // 256, idx % 256, idx * 0, idx * 0], axis=1).astype(np.uint8).reshape(-1, 2, 2)
    _write_idx(tmp_path / "train-images-idx3-ubyte", x, 0x08)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", y, 0x08)
    xs, ys = make_fashion.make_subset(tmp_path, per_class=3, seed=1)
    assert xs.shape == (30, 2, 2) and np.bincount(ys).tolist() == [3] * 10
    src = xs[:, 0, 0].astype(int) * 256 + xs[:, 0, 1]
    assert (y[src] == ys).all() and len(set(src.tolist())) == 30  # labels kept, none drawn twice
    again = make_fashion.make_subset(tmp_path, per_class=3, seed=1)
    assert (again[0] == xs).all() and (again[1] == ys).all()
    assert not (make_fashion.make_subset(tmp_path, per_class=3, seed=2)[0] == xs).all()
    out = tmp_path / "fashion.npz"
    assert make_fashion.main([str(tmp_path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: {10 * n} images, ")
    with np.load(out) as z:
        assert np.bincount(z["y"]).tolist() == [n] * 10 and z["x"].shape == (10 * n, 2, 2)
        assert z["classes"].tolist() == list(make_fashion.CLASSES)
