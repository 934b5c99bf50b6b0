"""Reference datasets for the verification suite.

Every dataset is returned as a :class:`DataSplits` holding three disjoint
splits: ``train`` (to fit the ANN), ``cal`` (held out of the training data to
calibrate the ANN->SNN conversion, e.g. activation thresholds) and ``test``.

Known datasets (see :data:`DATASETS`):

``"digits"``
    scikit-learn's 8x8 handwritten digits. Ships with scikit-learn, so it
    never needs a download; the default for quick runs and tests.
``"fashion-mnist"``
    Read from the four IDX files, found in ``root``, ``$SNNVERIFY_DATA``,
    the Debian package ``dataset-fashion-mnist``, the user cache, or
    downloaded with torchvision.
``"fashion-mnist-rgb32"``
    Fashion-MNIST in CIFAR-10's input shape: each image padded with 2 pixels
    of background to 32x32 and repeated over 3 channels, so that CIFAR
    architectures run on data that is on disk without a download.
``"cifar10"``
    torchvision's CIFAR-10, with the usual crop/flip augmentation on the
    training split only.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

__all__ = [
    "DATASETS",
    "DataSplits",
    "DatasetNotFoundError",
    "load_dataset",
    "make_loaders",
]

#: Environment variable naming a folder that holds the datasets.
DATA_ENV_VAR = "SNNVERIFY_DATA"
#: Where the Debian package ``dataset-fashion-mnist`` installs its files.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files could not be found (or fetched).

    The message lists every place that was looked at and how to get the data.
    """


@dataclass(frozen=True)
class DataSplits:
    """A dataset split into disjoint train / calibration / test parts.

    ``input_shape`` is the shape of one sample, ``(C, H, W)``, without the
    batch dimension.
    """

    name: str
    train: Dataset
    cal: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]


# --------------------------------------------------------------------------
# helpers


def _cache_dir() -> Path:
    """Return the per-user cache folder, ``$XDG_CACHE_HOME/snnverify``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "snnverify"


def _check_cal_size(cal_size: int, n_train: int) -> None:
    """Raise ValueError unless ``1 <= cal_size < n_train``."""
    if isinstance(cal_size, bool) or not isinstance(cal_size, (int, np.integer)):
        raise ValueError(f"cal_size must be an int, got {cal_size!r}")
    if not 1 <= cal_size < n_train:
        raise ValueError(
            f"cal_size must be >= 1 and smaller than the training set "
            f"({n_train} samples), got {cal_size!r}"
        )


def _split_cal(n_train: int, cal_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministically pick ``cal_size`` of ``n_train`` indices.

    Returns ``(train_indices, cal_indices)``, disjoint, each sorted.
    """
    _check_cal_size(cal_size, n_train)
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_train, generator=generator)
    return perm[cal_size:].sort().values, perm[:cal_size].sort().values


def _tensor_splits(
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    cal_size: int,
    seed: int,
    num_classes: int,
) -> DataSplits:
    """Build :class:`DataSplits` of TensorDatasets, cutting ``cal`` out of train."""
    train_idx, cal_idx = _split_cal(len(x_train), cal_size, seed)
    return DataSplits(
        name=name,
        train=TensorDataset(x_train[train_idx], y_train[train_idx]),
        cal=TensorDataset(x_train[cal_idx], y_train[cal_idx]),
        test=TensorDataset(x_test, y_test),
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
    )


# --------------------------------------------------------------------------
# digits


def _load_digits(root, download: bool, cal_size: int | None, seed: int) -> DataSplits:
    """scikit-learn digits: 1797 8x8 images, 20 % stratified test split.

    Pixels (0..16) are scaled to [0, 1], then standardised with the scalar
    mean and std of the final training split. ``root`` and ``download`` are
    ignored: the data ships with scikit-learn.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed
    )
    train_idx, cal_idx = _split_cal(len(x_rest), 180 if cal_size is None else cal_size, seed)
    train_np = x_rest[train_idx.numpy()]
    mean, std = float(train_np.mean()), float(train_np.std())

    def prep(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - mean) / std).float().unsqueeze(1)

    y_rest_t = torch.from_numpy(y_rest)
    return DataSplits(
        name="digits",
        train=TensorDataset(prep(train_np), y_rest_t[train_idx]),
        cal=TensorDataset(prep(x_rest[cal_idx.numpy()]), y_rest_t[cal_idx]),
        test=TensorDataset(prep(x_test), torch.from_numpy(y_test)),
        num_classes=10,
        input_shape=(1, 8, 8),
    )


# --------------------------------------------------------------------------
# Fashion-MNIST


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (optionally gzipped).

    Raises ValueError naming the file if it is not a valid IDX file with the
    expected ``magic`` (wrong magic, truncated, trailing bytes, bad gzip).
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read IDX file ({exc})") from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "trailing bytes in"
        raise ValueError(
            f"{path}: {what} IDX file: dims {dims} need {expected} bytes, found {len(raw)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    """Return the four Fashion-MNIST files in ``folder`` (plain or .gz), or None."""
    found = {}
    for key, name in FASHION_MNIST_FILES.items():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _fashion_mnist_not_found(searched: list[Path], error: BaseException | None) -> DatasetNotFoundError:
    """Build the error listing the searched folders and how to get the data."""
    names = ", ".join(FASHION_MNIST_FILES.values())
    lines = [f"Fashion-MNIST not found: need {names} (each plain or .gz). Looked in:"]
    lines += [f"  {p}" for p in searched]
    if error is not None:
        lines.append(f"Download failed: {type(error).__name__}: {error}")
    lines += [
        "To get it, either:",
        "  - apt-get install dataset-fashion-mnist   (installs into "
        f"{FASHION_MNIST_SYSTEM_DIR})",
        f"  - set {DATA_ENV_VAR} to a folder holding the four IDX files",
        "  - allow download (download=True, needs internet access)",
    ]
    return DatasetNotFoundError("\n".join(lines))


def _locate_fashion_mnist(root, download: bool) -> dict[str, Path]:
    """Find the four Fashion-MNIST IDX files, downloading them if allowed."""
    if root is not None:
        folders = [Path(root), Path(root) / "fashion-mnist"]
    elif os.environ.get(DATA_ENV_VAR):
        env = Path(os.environ[DATA_ENV_VAR])
        folders = [env, env / "fashion-mnist"]
    else:
        folders = []
    cache_root = _cache_dir()
    cache_raw = cache_root / "FashionMNIST" / "raw"  # torchvision's layout
    folders += [FASHION_MNIST_SYSTEM_DIR, cache_raw]
    for folder in folders:
        files = _find_idx_files(folder)
        if files is not None:
            return files
    if not download:
        raise _fashion_mnist_not_found(folders, None)
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root=str(cache_root), train=True, download=True)
    except Exception as exc:  # no internet, mirror down, bad checksum...
        raise _fashion_mnist_not_found(folders, exc) from exc
    files = _find_idx_files(cache_raw)
    if files is None:
        raise _fashion_mnist_not_found(folders, None)
    return files


def _load_fashion_mnist(root, download: bool, cal_size: int | None, seed: int) -> DataSplits:
    """Fashion-MNIST from IDX files: 60000 train (minus cal) / 10000 test, 28x28."""
    files = _locate_fashion_mnist(root, download)

    def read(images_key: str, labels_key: str) -> tuple[torch.Tensor, torch.Tensor]:
        images = _read_idx(files[images_key], _IDX_IMAGES_MAGIC)
        labels = _read_idx(files[labels_key], _IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(
                f"{files[labels_key]}: {len(labels)} labels for {len(images)} images "
                f"in {files[images_key]}"
            )
        if labels.size and labels.max() > 9:
            raise ValueError(f"{files[labels_key]}: label {labels.max()} out of range 0..9")
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
        return x, torch.from_numpy(labels.astype(np.int64))

    x_train, y_train = read("train_images", "train_labels")
    x_test, y_test = read("test_images", "test_labels")
    return _tensor_splits(
        "fashion-mnist", x_train, y_train, x_test, y_test,
        cal_size=5000 if cal_size is None else cal_size, seed=seed, num_classes=10,
    )


def _load_fashion_mnist_rgb32(root, download: bool, cal_size: int | None, seed: int) -> DataSplits:
    """Fashion-MNIST as 3x32x32 images: 2 pixels of background (a standardised 0) on every
    side, the grey image repeated over 3 channels; the same splits as ``"fashion-mnist"``."""
    splits = _load_fashion_mnist(root, download, cal_size, seed)
    background = -FASHION_MNIST_MEAN / FASHION_MNIST_STD

    def reshape(part: TensorDataset) -> TensorDataset:
        x, y = part.tensors
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=background).expand(-1, 3, -1, -1)
        return TensorDataset(x, y)  # a view: the 3 channels share one copy of the pixels

    return DataSplits(
        name="fashion-mnist-rgb32",
        train=reshape(splits.train),
        cal=reshape(splits.cal),
        test=reshape(splits.test),
        num_classes=10,
        input_shape=(3, 32, 32),
    )


# --------------------------------------------------------------------------
# CIFAR-10


def _load_cifar10(root, download: bool, cal_size: int | None, seed: int) -> DataSplits:
    """torchvision CIFAR-10; augmentation (crop + flip) on the train split only."""
    from torchvision import datasets, transforms

    if root is None:
        root = os.environ.get(DATA_ENV_VAR) or _cache_dir()
    root = Path(root)
    normalize = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    plain = transforms.Compose([transforms.ToTensor(), normalize])
    augmented = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize,
    ])
    try:
        train_aug = datasets.CIFAR10(str(root), train=True, transform=augmented, download=download)
        train_plain = datasets.CIFAR10(str(root), train=True, transform=plain, download=False)
        test = datasets.CIFAR10(str(root), train=False, transform=plain, download=False)
    except Exception as exc:  # missing/corrupt files (RuntimeError) or failed download
        folder = root / datasets.CIFAR10.base_folder
        how = (
            f"Download failed: {type(exc).__name__}: {exc}\n" if download
            else "Downloading was not allowed (download=False).\n"
        )
        raise DatasetNotFoundError(
            f"CIFAR-10 not found or corrupted. Looked in:\n  {folder}\n{how}"
            "To get it, either:\n"
            "  - call load_dataset('cifar10', download=True) with internet access\n"
            f"  - extract {datasets.CIFAR10.url} into {root}\n"
            f"  - set {DATA_ENV_VAR} (or pass root=) to a folder holding "
            f"{datasets.CIFAR10.base_folder}/"
        ) from exc
    train_idx, cal_idx = _split_cal(len(train_aug), 5000 if cal_size is None else cal_size, seed)
    return DataSplits(
        name="cifar10",
        train=Subset(train_aug, train_idx.tolist()),
        cal=Subset(train_plain, cal_idx.tolist()),
        test=test,
        num_classes=10,
        input_shape=(3, 32, 32),
    )


# --------------------------------------------------------------------------
# public API

#: Registry: dataset name -> loader(root, download, cal_size, seed).
DATASETS: dict[str, Callable[..., DataSplits]] = {
    "digits": _load_digits,
    "fashion-mnist": _load_fashion_mnist,
    "fashion-mnist-rgb32": _load_fashion_mnist_rgb32,
    "cifar10": _load_cifar10,
}


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    download: bool = True,
    cal_size: int | None = None,
    seed: int = 0,
) -> DataSplits:
    """Load dataset ``name`` split into train / calibration / test.

    The calibration split is drawn from the training data with a
    ``torch.Generator`` seeded by ``seed`` (deterministic, disjoint from train
    and test). ``cal_size`` defaults per dataset (180 for digits, 5000
    otherwise) and must satisfy ``1 <= cal_size < len(training data)``.

    Raises ValueError for an unknown name or bad ``cal_size``, and
    :class:`DatasetNotFoundError` when the data cannot be found or fetched.
    """
    loader = DATASETS.get(name)
    if loader is None:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    if cal_size is not None:
        _check_cal_size(cal_size, n_train=cal_size + 1)  # type and lower bound, before loading
    return loader(root, download, cal_size, seed)


def make_loaders(
    splits: DataSplits,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Return ``(train_loader, cal_loader, test_loader)`` for ``splits``.

    Train and calibration loaders shuffle with generators seeded from
    ``seed``; the test loader keeps order. Calibration and test use
    ``eval_batch_size`` (default: ``batch_size``). ``num_workers=0``.
    """
    if eval_batch_size is None:
        eval_batch_size = batch_size
    for label, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{label} must be an int >= 1, got {value!r}")
    train = DataLoader(
        splits.train, batch_size=batch_size, shuffle=True, num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
    cal = DataLoader(
        splits.cal, batch_size=eval_batch_size, shuffle=True, num_workers=0,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    test = DataLoader(splits.test, batch_size=eval_batch_size, shuffle=False, num_workers=0)
    return train, cal, test
