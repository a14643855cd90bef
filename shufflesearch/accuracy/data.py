"""Proxy-task datasets: small, offline, deterministic.

A proxy task is what the accuracy proxies (proxies.py) and short training see. It is not the
deployment target: ShuffleNets are fully convolutional with global pooling, so the same Arch
runs on both and only the classifier width and the input size differ (DESIGN.md).

Sources (``DataSpec.name``):
  "fashion"     the default: a stratified 15,000-image subset of Fashion-MNIST (28x28
                greyscale clothing, 10 classes, MIT licence) that ships inside this package
                (``assets/fashion.npz``, built by ``make_fashion.py``), so nothing is
                downloaded. Chosen because it can rank architectures: on it the seed-to-seed
                ranking of trained networks agrees (docs/accuracy.md, "The default: Fashion-MNIST").
  "digits"      scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes);
                ships inside the scikit-learn wheel. Every network reaches 96-98% on it, so
                it cannot rank architectures: it serves tests and quick runs.
  "idx:PATH"    a folder of MNIST-style IDX files (``train-images-idx3-ubyte[.gz]``,
                ``train-labels-idx1-ubyte[.gz]``, and ``t10k-*`` when present), the raw
                files torchvision's MNIST-family datasets read.
  "folder:PATH" one sub-folder per class, image files inside (read with Pillow).
  "npz:PATH"    a NumPy .npz with images under ``x`` (or ``images``) and integer labels
                under ``y`` (or ``labels``); images (N,H,W), (N,H,W,C) or (N,C,H,W).

Every source gives the same thing: a stratified, seeded three-way split of float32 tensors
(N, 3, R, R), normalised with the *training* split's per-channel mean and std:
  train   what every training step draws from;
  val     what the fidelity ladder scores (val_acc at each rung);
  check   what the run's self-check scores its longer trainings on: images the ladder never
          scored, so the check's truth is not the estimate's own test set.
Greyscale is replicated to 3 channels (a stride-0 view, no copy) because an Arch's stem
expects ``in_channels = 3``.

Why 32 px by default: the digits hold 8x8 of information, so a larger canvas adds cost, not
signal. With the papers' stem (conv stride 2 + max-pool) and three stride-2 stages the last
map at 32 px is 1x1; the network still trains (the stage-4 depthwise conv reduces to its centre
tap), but stage-4 kernel sizes become invisible. Spaces that search stage-4 kernels, or use
the paper's stem on real photos, should set ``resolution: 64`` (last map 2x2, ~4x the cost).
"""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..common.settings import SettingError, check_settings, setting
from ..errors import UserError, first_line

BUNDLED = ("fashion", "digits")  # sources that ship with the package or its dependencies
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _source_error(name: str) -> str | None:
    if name in BUNDLED or name.startswith(("folder:", "npz:", "idx:")):
        return None
    return f"{name!r} is not 'fashion', 'digits', 'idx:PATH', 'folder:PATH' or 'npz:PATH'"


@dataclass(frozen=True)
class DataSpec:
    """A proxy task: where its images come from, their size, the batch, and the split."""

    name: str = setting("fashion", check=_source_error, doc="the images: fashion, digits, "
                        "idx:PATH, folder:PATH or npz:PATH (see the module docstring)")
    resolution: int = setting(32, lo=8, hi=1024, doc="square input side in pixels (32: the "
                              "digits hold 8x8 of information; 64 to see stage-4 kernels)")
    batch: int = setting(64, lo=2, hi=4096, doc="batch of zero-cost proxies and short training "
                         "(batch norm needs 2 samples)")
    val_fraction: float = setting(0.2, lo=0.05, hi=0.95, doc="share of every class the ladder "
                                  "validates on")
    check_fraction: float = setting(0.2, lo=0.05, hi=0.95, doc="share of every class only the "
                                    "run's self-check scores (val + check stay below 0.9)")
    seed: int = setting(0, doc="seeds the split, nothing else")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.val_fraction + self.check_fraction >= 0.9:
            raise SettingError("check_fraction", f"val_fraction + check_fraction = "
                               f"{self.val_fraction + self.check_fraction:g} must stay below 0.9 "
                               "(training needs the rest)", type(self).__name__)


class Split(NamedTuple):
    x: torch.Tensor  # (N, 3, R, R) float32, normalised
    y: torch.Tensor  # (N,) int64 class indices


@dataclass(frozen=True)
class ProxyData:
    train: Split
    val: Split
    check: Split
    num_classes: int
    classes: tuple[str, ...]  # class names, index order
    spec: DataSpec
    mean: tuple[float, ...]  # per-channel training mean used to normalise
    std: tuple[float, ...]

    @property
    def resolution(self) -> int:
        return self.spec.resolution

    def split(self, which: str) -> Split:
        """One split by name: ``train``, ``val`` or ``check``."""
        if which not in ("train", "val", "check"):
            raise ValueError(f"split {which!r}: must be train, val or check")
        return getattr(self, which)

    def batch(self, which: str = "train", n: int | None = None, seed: int = 0) -> Split:
        """A seeded random batch of ``n`` (default ``spec.batch``) samples from one split."""
        s = self.split(which)
        n = min(n or self.spec.batch, len(s.y))
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(s.y), generator=g)[:n]
        return Split(s.x[idx], s.y[idx])

    def batches(self, which: str = "train", seed: int = 0, shuffle: bool = True,
                n: int | None = None) -> Iterator[Split]:
        """One pass over a split in batches of ``n`` (default ``spec.batch``), seeded order."""
        s = self.split(which)
        n = n or self.spec.batch
        idx = (torch.randperm(len(s.y), generator=torch.Generator().manual_seed(seed))
               if shuffle else torch.arange(len(s.y)))
        for i in range(0, len(idx), n):
            j = idx[i:i + n]
            yield Split(s.x[j], s.y[j])


# --- sources: each returns images (N, C, H, W) float in [0, 1], labels (N,), class names ------


def _digits() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    x = d.images.astype(np.float32)[:, None] / 16.0  # pixel values are 0..16
    return x, d.target.astype(np.int64), [str(c) for c in d.target_names]


def _fashion() -> tuple[np.ndarray, np.ndarray, list[str]]:
    path = Path(__file__).parent / "assets" / "fashion.npz"
    with np.load(path, allow_pickle=False) as z:
        return z["x"].astype(np.float32)[:, None] / 255.0, z["y"].astype(np.int64), [str(c) for c in z["classes"]]


def _task_error(rule: str, where: str = "proxy task") -> UserError:
    """Images that cannot serve as a proxy task: the field that named them is DataSpec.name."""
    return UserError(rule, field="name", owner="DataSpec", where=where)


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """One IDX file (plain or .gz): the magic number's type byte and dimension count, the
    big-endian dimensions, then the data (LeCun et al.'s MNIST format)."""
    path = Path(path)
    raw = (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")).read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise _task_error(f"{path}: not an IDX file (bad magic number)", where="")
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    dt = np.dtype(_IDX_DTYPES[raw[2]])
    body = np.frombuffer(raw, dtype=dt, offset=4 + 4 * nd)
    if body.size != int(np.prod(dims)):
        raise _task_error(f"{path}: holds {body.size} values for dimensions {dims}", where="")
    return body.reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx_dir(folder: str | Path, parts: tuple[str, ...] = ("train", "t10k")) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and labels (N,) of the ``parts`` present in an MNIST-style folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise _task_error(f"folder '{folder}' does not exist")
    xs, ys = [], []
    for part in parts:
        xi, yi = _idx_file(folder, f"{part}-images-idx3-ubyte"), _idx_file(folder, f"{part}-labels-idx1-ubyte")
        if xi is None or yi is None:
            continue
        x, y = read_idx(xi), read_idx(yi)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise _task_error(f"{xi}: images {x.shape} and labels {y.shape} do not pair up", where="")
        xs.append(x)
        ys.append(y.astype(np.int64))
    if not xs:
        raise _task_error(f"'{folder}' holds no train-images-idx3-ubyte[.gz] with its labels")
    return np.concatenate(xs), np.concatenate(ys)


def _idx(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    x, y = read_idx_dir(path)
    return x.astype(np.float32)[:, None] / 255.0, y, [str(i) for i in range(int(y.max()) + 1)]


def _folder(path: Path, resolution: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_dir():
        raise _task_error(f"folder '{path}' does not exist")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise _task_error(f"folder '{path}' needs at least 2 class sub-folders, found {len(classes)}")
    xs, ys = [], []
    for ci, c in enumerate(classes):
        files = sorted(f for f in (path / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise _task_error(f"class folder '{path / c}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for f in files:
            try:
                with Image.open(f) as im:
                    # Resize here so that images of different sizes can be stacked.
                    im = im.convert("RGB").resize((resolution, resolution), Image.BILINEAR)
                    xs.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            except (UnidentifiedImageError, OSError) as e:
                raise _task_error(f"cannot read image '{f}': {first_line(e)}") from None
            ys.append(ci)
    return np.stack(xs), np.asarray(ys, dtype=np.int64), classes


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if not path.is_file():
        raise _task_error(f"file '{path}' does not exist")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise _task_error(f"'{path}' is not a readable .npz file: {first_line(e)}") from None
    xk = next((k for k in ("x", "images") if k in z.files), None)
    yk = next((k for k in ("y", "labels") if k in z.files), None)
    if xk is None or yk is None:
        raise _task_error(f"{path}: needs arrays 'x' (or 'images') and 'y' (or 'labels'); has {z.files}", where="")
    x, y = np.asarray(z[xk]), np.asarray(z[yk])
    if y.ndim != 1 or len(y) != len(x):
        raise _task_error(f"{path}: '{yk}' must be 1-D with one label per image ({len(x)}), got shape {y.shape}", where="")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise _task_error(f"{path}: '{yk}' must hold non-negative integer class indices", where="")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # (N, H, W, C) → (N, C, H, W)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise _task_error(f"{path}: '{xk}' must be (N,H,W), (N,H,W,C) or (N,C,H,W) with 1 or 3 channels, got {x.shape}", where="")
    x = x.astype(np.float32)
    if np.issubdtype(z[xk].dtype, np.integer) or x.max() > 1.0:
        x = x / 255.0 if x.max() > 16 else x / max(float(x.max()), 1.0)
    n = int(y.max()) + 1
    names = [str(c) for c in z["classes"]] if "classes" in z.files and len(z["classes"]) == n else None
    return x, y.astype(np.int64), names or [str(i) for i in range(n)]


# --- the split and the tensors ---------------------------------------------------------------


def stratified_split(y: np.ndarray, val_fraction: float, seed: int,
                     check_fraction: float = 0.0) -> tuple[np.ndarray, ...]:
    """Seeded per-class split: each class contributes round(val_fraction·n_c) (≥1 when it has
    ≥2 samples) to validation, so class balance is the same in every part. With
    ``check_fraction`` > 0 a third part (train, val, check) takes round(check_fraction·n_c)
    of each class (≥1 when it has ≥3 samples) after validation has taken its share; the
    validation and training parts are the same whatever ``check_fraction`` is only when it is 0."""
    rng = np.random.default_rng(seed)
    tr, va, ck = [], [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(val_fraction * len(idx)))
        k = min(max(k, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        m = 0
        if check_fraction > 0:
            m = int(round(check_fraction * len(idx)))
            m = min(max(m, 1 if len(idx) >= 3 else 0), max(len(idx) - k - 1, 0))
        va.append(idx[:k])
        ck.append(idx[k:k + m])
        tr.append(idx[k + m:])
    parts = (np.sort(np.concatenate(tr)), np.sort(np.concatenate(va)))
    return (*parts, np.sort(np.concatenate(ck))) if check_fraction > 0 else parts


_SOURCES = {"fashion": _fashion, "digits": _digits}


def load_data(spec: DataSpec | Mapping[str, Any] | None = None) -> ProxyData:
    """The proxy task of ``spec`` (a DataSpec, or its fields by name: ``{"name": "digits"}``):
    a seeded stratified train/val/check split, resized to ``spec.resolution``, replicated to 3
    channels and normalised with the training split's statistics."""
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {f.name for f in dataclasses.fields(DataSpec)})
        if unknown:
            raise UserError(f"DataSpec has no field {unknown[0]!r}")
        spec = DataSpec(**spec)
    spec = spec or DataSpec()
    if spec.name in _SOURCES:
        x, y, classes = _SOURCES[spec.name]()
    elif spec.name.startswith("folder:"):
        x, y, classes = _folder(Path(spec.name[len("folder:"):]).expanduser(), spec.resolution)
    elif spec.name.startswith("idx:"):
        x, y, classes = _idx(Path(spec.name[len("idx:"):]).expanduser())
    else:
        x, y, classes = _npz(Path(spec.name[len("npz:"):]).expanduser())
    num_classes = max(len(classes), int(y.max()) + 1)
    if len(np.unique(y)) < 2:
        raise _task_error(f"{spec.name} has fewer than 2 classes")
    tr, va, ck = stratified_split(y, spec.val_fraction, spec.seed, spec.check_fraction)
    if len(va) == 0 or len(ck) == 0 or len(tr) < 2:
        raise _task_error(f"{spec.name} has too few images ({len(y)}) to split into "
                        "train, val and check")

    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.shape[-1] != spec.resolution or t.shape[-2] != spec.resolution:
        # Bilinear up/down-sampling; antialias only matters when shrinking.
        t = F.interpolate(t, size=(spec.resolution, spec.resolution), mode="bilinear",
                          align_corners=False, antialias=t.shape[-1] > spec.resolution)
    tr_t = torch.from_numpy(tr)
    mean = t[tr_t].mean(dim=(0, 2, 3))
    std = t[tr_t].std(dim=(0, 2, 3)).clamp_min(1e-6)
    t = ((t - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).contiguous()
    if t.shape[1] == 1:  # greyscale: three equal channels for in_channels = 3
        mean, std = mean.expand(3), std.expand(3)
    yt = torch.from_numpy(y)

    def part(ix: np.ndarray) -> Split:
        i = torch.from_numpy(ix)
        xi = t[i]
        # Greyscale stays one channel in memory; the stride-0 view reads as three.
        return Split(xi.expand(-1, 3, -1, -1) if xi.shape[1] == 1 else xi, yt[i])

    return ProxyData(
        train=part(tr), val=part(va), check=part(ck),
        num_classes=num_classes,
        classes=tuple(classes) if len(classes) == num_classes else tuple(str(i) for i in range(num_classes)),
        spec=spec,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )
