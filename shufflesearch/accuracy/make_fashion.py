"""Build the packaged proxy task: a stratified Fashion-MNIST subset (``assets/fashion.npz``).

Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, MIT licence): 70,000 28x28 greyscale images of
clothing in 10 classes, in the IDX format of the original MNIST. Debian's
``dataset-fashion-mnist`` package installs the four IDX files under
``/usr/share/datasets/fashion-mnist``; the official repository ships the same files.

    python -m shufflesearch.accuracy.make_fashion /usr/share/datasets/fashion-mnist

draws ``PER_CLASS`` images of every class from the 60,000 training images with a fixed seed
and writes them, as uint8 with their labels and class names, to ``assets/fashion.npz``
(compressed, about 8 MB). The same command always writes the same arrays.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .data import read_idx_dir

PER_CLASS = 1500  # 15,000 images: train / val / check splits of 9,000 / 3,000 / 3,000
SEED = 20171025  # fixed: the subset is part of the package and must not change between builds
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")  # the dataset's own label names, index order
OUT = Path(__file__).parent / "assets" / "fashion.npz"


def make_subset(idx_dir: str | Path, per_class: int = PER_CLASS, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)): ``per_class`` training images per class,
    drawn without replacement with ``seed``, in a class-interleaved, seeded order."""
    x, y = read_idx_dir(idx_dir, parts=("train",))
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                           for c in range(len(CLASSES))])
    keep = rng.permutation(keep)
    return x[keep], y[keep]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("idx_dir", help="folder with the Fashion-MNIST IDX files (.gz or not)")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    x, y = make_subset(a.idx_dir)
    np.savez_compressed(a.out, x=x, y=y, classes=np.asarray(CLASSES))
    print(f"{a.out}: {len(y)} images, {Path(a.out).stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
