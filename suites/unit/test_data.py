"""Unit tests for snnverify.data (no network: every test is offline)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from snnverify import data
from snnverify.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    DataSplits,
    DatasetNotFoundError,
    load_dataset,
    make_loaders,
)

FMNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Keep tests away from the machine's data: no env var, empty Debian dir and cache."""
    monkeypatch.delenv("SNNVERIFY_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    system_dir = tmp_path / "usr-share-datasets" / "fashion-mnist"
    system_dir.mkdir(parents=True)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", system_dir)


# --------------------------------------------------------------------------
# digits


def _digits_raw_rows(splits: DataSplits) -> dict[str, list[bytes]]:
    """Undo the scalar standardisation and return raw 0..16 pixel rows per split."""
    xs = {k: getattr(splits, k).tensors[0].double() for k in ("train", "cal", "test")}
    allx = torch.cat(list(xs.values()))
    lo, hi = allx.min(), allx.max()  # pixel values 0 and 16 both occur
    out = {}
    for k, x in xs.items():
        raw = (x - lo) / (hi - lo) * 16
        assert torch.allclose(raw, raw.round(), atol=1e-3), "not an affine map of 0..16"
        rows = raw.round().to(torch.uint8).reshape(len(x), -1).numpy()
        out[k] = [r.tobytes() for r in rows]
    return out


def test_digits_shapes_dtypes_and_sizes():
    s = load_dataset("digits")
    assert s.name == "digits" and s.num_classes == 10 and s.input_shape == (1, 8, 8)
    assert (len(s.train), len(s.cal), len(s.test)) == (1797 - 360 - 180, 180, 360)
    for ds in (s.train, s.cal, s.test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
        assert y.dtype == torch.int64 and y.min() >= 0 and y.max() <= 9
    # stratified test split: every class represented in proportion
    counts = torch.bincount(s.test.tensors[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_splits_partition_the_dataset():
    from sklearn.datasets import load_digits

    s = load_dataset("digits", seed=3)
    rows = _digits_raw_rows(s)
    ref = load_digits()
    full = Counter(r.astype(np.uint8).tobytes() for r in ref.data)
    combined = Counter(rows["train"]) + Counter(rows["cal"]) + Counter(rows["test"])
    assert combined == full  # every sample used exactly once
    # labels go with their images
    label_of = {r.astype(np.uint8).tobytes(): int(t) for r, t in zip(ref.data, ref.target)}
    for k in ("train", "cal", "test"):
        labels = getattr(s, k).tensors[1].tolist()
        for r, lab in zip(rows[k], labels):
            assert label_of[r] == lab or full[r] > 1


def test_digits_standardised_on_train():
    s = load_dataset("digits")
    x = s.train.tensors[0]
    assert abs(x.mean().item()) < 1e-4
    assert abs(x.std(unbiased=False).item() - 1) < 1e-4
    # cal/test use the same (train) statistics, so they are not exactly standardised
    assert abs(s.test.tensors[0].mean().item()) < 0.2


def test_digits_deterministic_and_seed_dependent():
    a, b = load_dataset("digits", seed=1), load_dataset("digits", seed=1)
    for k in ("train", "cal", "test"):
        for ta, tb in zip(getattr(a, k).tensors, getattr(b, k).tensors):
            assert torch.equal(ta, tb)
    c = load_dataset("digits", seed=2)
    assert Counter(_digits_raw_rows(a)["cal"]) != Counter(_digits_raw_rows(c)["cal"])


def test_digits_cal_size():
    s = load_dataset("digits", cal_size=7)
    assert len(s.cal) == 7 and len(s.train) == 1437 - 7


# --------------------------------------------------------------------------
# Fashion-MNIST from generated IDX files


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_fmnist(folder: Path, *, gz: bool, n_train=30, n_test=10, seed=0):
    """Write the four IDX files; return the raw arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        payload = _idx_bytes(arr, 0x803 if arr.ndim == 3 else 0x801)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)
    return arrays


def _unnormalise(x: torch.Tensor) -> np.ndarray:
    raw = (x.double() * FASHION_MNIST_STD + FASHION_MNIST_MEAN) * 255
    assert torch.allclose(raw, raw.round(), atol=1e-3)
    return raw.round().to(torch.uint8).squeeze(1).numpy()


def _check_fmnist(s: DataSplits, arrays) -> None:
    n_train = len(arrays["train-labels-idx1-ubyte"])
    assert s.name == "fashion-mnist" and s.num_classes == 10 and s.input_shape == (1, 28, 28)
    assert len(s.train) + len(s.cal) == n_train
    assert len(s.test) == len(arrays["t10k-labels-idx1-ubyte"])
    x, y = s.test.tensors
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28) and y.dtype == torch.int64
    # test keeps file order: exact pixel and label round trip
    assert np.array_equal(_unnormalise(x), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    # train + cal are exactly the training file (as pairs image/label)
    got = sorted(
        (img.tobytes(), int(lab))
        for part in (s.train, s.cal)
        for img, lab in zip(_unnormalise(part.tensors[0]), part.tensors[1])
    )
    want = sorted(
        (img.tobytes(), int(lab))
        for img, lab in zip(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"])
    )
    assert got == want


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_fmnist_from_root(tmp_path, gz):
    arrays = _write_fmnist(tmp_path / "fm", gz=gz)
    s = load_dataset("fashion-mnist", root=tmp_path / "fm", download=False, cal_size=5)
    assert len(s.cal) == 5
    _check_fmnist(s, arrays)


@pytest.mark.parametrize("sub", ["", "fashion-mnist"])
def test_fmnist_from_env(tmp_path, monkeypatch, sub):
    env = tmp_path / "env"
    arrays = _write_fmnist(env / sub, gz=True, seed=4)
    monkeypatch.setenv("SNNVERIFY_DATA", str(env))
    _check_fmnist(load_dataset("fashion-mnist", download=False, cal_size=3), arrays)


def test_fmnist_root_beats_env_and_system_dir(tmp_path, monkeypatch):
    arrays = _write_fmnist(tmp_path / "root", gz=False, seed=1)
    _write_fmnist(tmp_path / "env", gz=False, seed=2)
    _write_fmnist(data.FASHION_MNIST_SYSTEM_DIR, gz=True, seed=3)
    monkeypatch.setenv("SNNVERIFY_DATA", str(tmp_path / "env"))
    s = load_dataset("fashion-mnist", root=tmp_path / "root", download=False, cal_size=3)
    _check_fmnist(s, arrays)


def test_fmnist_from_system_dir(tmp_path):
    arrays = _write_fmnist(data.FASHION_MNIST_SYSTEM_DIR, gz=True, seed=5)
    _check_fmnist(load_dataset("fashion-mnist", download=False, cal_size=3), arrays)


def test_fmnist_rgb32_is_fmnist_padded_with_background_in_three_channels(tmp_path):
    _write_fmnist(tmp_path, gz=False, n_train=20)
    grey = load_dataset("fashion-mnist", root=tmp_path, download=False, cal_size=4, seed=2)
    rgb = load_dataset("fashion-mnist-rgb32", root=tmp_path, download=False, cal_size=4, seed=2)
    assert rgb.name == "fashion-mnist-rgb32" and rgb.input_shape == (3, 32, 32) and rgb.num_classes == 10
    for part in ("train", "cal", "test"):
        (x, y), (x28, y28) = getattr(rgb, part).tensors, getattr(grey, part).tensors
        assert x.shape == (len(x28), 3, 32, 32) and torch.equal(y, y28)
        assert torch.equal(x[:, :, 2:30, 2:30], x28.expand(-1, 3, -1, -1))
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        raw = (x.double() * FASHION_MNIST_STD + FASHION_MNIST_MEAN) * 255
        assert raw[..., border].abs().max() < 1e-3  # the padding is pixel value 0


def test_fmnist_cal_split_deterministic(tmp_path):
    _write_fmnist(tmp_path, gz=False, n_train=50)
    a = load_dataset("fashion-mnist", root=tmp_path, download=False, cal_size=10, seed=7)
    b = load_dataset("fashion-mnist", root=tmp_path, download=False, cal_size=10, seed=7)
    c = load_dataset("fashion-mnist", root=tmp_path, download=False, cal_size=10, seed=8)
    assert torch.equal(a.cal.tensors[0], b.cal.tensors[0])
    assert not torch.equal(a.cal.tensors[0], c.cal.tensors[0])


def test_fmnist_default_cal_size_too_large_for_tiny_data(tmp_path):
    _write_fmnist(tmp_path, gz=False)
    with pytest.raises(ValueError, match="5000"):
        load_dataset("fashion-mnist", root=tmp_path, download=False)


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize(
    "target, corrupt",
    [
        ("train-images-idx3-ubyte", lambda b: (0x802).to_bytes(4, "big") + b[4:]),  # wrong magic
        ("train-labels-idx1-ubyte", lambda b: (0x803).to_bytes(4, "big") + b[4:]),  # images magic
        ("t10k-images-idx3-ubyte", lambda b: b[:-7]),  # truncated data
        ("t10k-labels-idx1-ubyte", lambda b: b[:6]),  # truncated header
        ("train-images-idx3-ubyte", lambda b: b + b"\x00"),  # trailing byte
    ],
    ids=["magic", "labels-magic", "truncated", "short-header", "trailing"],
)
def test_fmnist_corrupt_idx_names_file(tmp_path, gz, target, corrupt):
    _write_fmnist(tmp_path, gz=False)
    path = tmp_path / target
    payload = corrupt(path.read_bytes())
    if gz:
        path.unlink()
        path = tmp_path / f"{target}.gz"
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_dataset("fashion-mnist", root=tmp_path, download=False, cal_size=3)


def test_fmnist_truncated_gzip_stream_names_file(tmp_path):
    _write_fmnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_dataset("fashion-mnist", root=tmp_path, download=False, cal_size=3)


def test_fmnist_image_label_count_mismatch(tmp_path):
    _write_fmnist(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(_idx_bytes(np.zeros(29, np.uint8), 0x801))
    with pytest.raises(ValueError, match=re.escape(str(labels))):
        load_dataset("fashion-mnist", root=tmp_path, download=False, cal_size=3)


def test_fmnist_missing_lists_every_searched_path(tmp_path, monkeypatch):
    env = tmp_path / "env"
    env.mkdir()
    (env / "train-images-idx3-ubyte").write_bytes(b"")  # incomplete folder is not enough
    monkeypatch.setenv("SNNVERIFY_DATA", str(env))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", download=False)
    msg = str(info.value)
    searched = [
        env,
        env / "fashion-mnist",
        data.FASHION_MNIST_SYSTEM_DIR,
        tmp_path / "xdg-cache" / "snnverify" / "FashionMNIST" / "raw",
    ]
    for p in searched:
        assert str(p) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "SNNVERIFY_DATA" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_fmnist_missing_with_root_lists_root(tmp_path):
    root = tmp_path / "nothing-here"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", root=root, download=False)
    msg = str(info.value)
    for p in (root, root / "fashion-mnist", data.FASHION_MNIST_SYSTEM_DIR):
        assert str(p) in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_fmnist_failed_download_reported(tmp_path, monkeypatch):
    """download=True with a stubbed torchvision class that fails: no network used."""
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading: <urlopen error no network>")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", download=True)
    msg = str(info.value)
    assert "no network" in msg and str(data.FASHION_MNIST_SYSTEM_DIR) in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_fmnist_download_uses_cache_raw_folder(tmp_path, monkeypatch):
    """A stubbed download that writes torchvision's raw layout is then parsed."""
    import torchvision.datasets

    written = {}

    class FakeDownload:
        def __init__(self, root, train=True, download=False):
            assert download
            written.update(_write_fmnist(Path(root) / "FashionMNIST" / "raw", gz=False, seed=9))

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeDownload)
    s = load_dataset("fashion-mnist", download=True, cal_size=4)
    _check_fmnist(s, written)
    assert Path(tmp_path / "xdg-cache" / "snnverify" / "FashionMNIST" / "raw").is_dir()


REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not all((REAL_FMNIST / f"{n}.gz").is_file() for n in FMNIST_NAMES),
    reason=f"{REAL_FMNIST} missing (apt-get install dataset-fashion-mnist)",
)
def test_fmnist_real_system_package(monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", REAL_FMNIST)
    s = load_dataset("fashion-mnist", download=False)
    assert (len(s.train), len(s.cal), len(s.test)) == (55000, 5000, 10000)
    assert abs(s.train.tensors[0].mean().item()) < 0.01
    assert abs(s.train.tensors[0].std().item() - 1) < 0.01


# --------------------------------------------------------------------------
# CIFAR-10 from a generated dataset in torchvision's on-disk format


def _write_cifar(root: Path, monkeypatch, per_batch=4, n_test=6):
    """Write cifar-10-batches-py/ and register the files' md5 sums with torchvision.

    torchvision verifies every file's md5 (``CIFAR10._check_integrity`` for the
    batches, ``check_integrity`` in ``_load_meta`` for batches.meta); we point
    those checksums at our generated files, so the real integrity check runs.
    """
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name, obj):
        (folder / name).write_bytes(pickle.dumps(obj))
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    train_imgs, train_list = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        train_imgs.append(x)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        train_list.append(dump(f"data_batch_{i}", {"data": x, "labels": labels}))
    test_x = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_y = [int(v) for v in rng.integers(0, 10, n_test)]
    test_list = [dump("test_batch", {"data": test_x, "labels": test_y})]
    meta_name, meta_md5 = dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", test_list)
    monkeypatch.setattr(CIFAR10, "meta", {"filename": meta_name, "key": "label_names", "md5": meta_md5})
    chw = lambda a: a.reshape(-1, 3, 32, 32)  # noqa: E731
    return chw(np.concatenate(train_imgs)), chw(test_x), test_y


def _cifar_expected(img_chw: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img_chw.astype(np.float32) / 255)
    return (x - torch.tensor(CIFAR10_MEAN)[:, None, None]) / torch.tensor(CIFAR10_STD)[:, None, None]


def test_cifar10_from_generated_files(tmp_path, monkeypatch):
    train_x, test_x, test_y = _write_cifar(tmp_path, monkeypatch)
    s = load_dataset("cifar10", root=tmp_path, download=False, cal_size=5, seed=1)
    assert s.name == "cifar10" and s.num_classes == 10 and s.input_shape == (3, 32, 32)
    assert (len(s.train), len(s.cal), len(s.test)) == (15, 5, 6)
    # cal and train indices partition the training set
    assert sorted(s.train.indices + s.cal.indices) == list(range(20))
    # test: unaugmented, normalised with the CIFAR-10 constants, labels kept
    for i in range(len(s.test)):
        x, y = s.test[i]
        assert x.shape == (3, 32, 32) and y == test_y[i]
        assert torch.allclose(x, _cifar_expected(test_x[i]), atol=1e-5)
        assert torch.equal(x, s.test[i][0])
    # cal: unaugmented copies of the chosen training images
    for j, idx in enumerate(s.cal.indices):
        assert torch.allclose(s.cal[j][0], _cifar_expected(train_x[idx]), atol=1e-5)
    # train: augmented (random crop with padding / flip) -> not always the plain image
    torch.manual_seed(0)
    idx0 = s.train.indices[0]
    draws = [s.train[0][0] for _ in range(20)]
    assert all(d.shape == (3, 32, 32) for d in draws)
    assert any(not torch.allclose(d, _cifar_expected(train_x[idx0]), atol=1e-5) for d in draws)


def test_cifar10_from_env(tmp_path, monkeypatch):
    _write_cifar(tmp_path / "env", monkeypatch)
    monkeypatch.setenv("SNNVERIFY_DATA", str(tmp_path / "env"))
    a = load_dataset("cifar10", download=False, cal_size=4, seed=0)
    b = load_dataset("cifar10", download=False, cal_size=4, seed=0)
    c = load_dataset("cifar10", download=False, cal_size=4, seed=5)
    assert a.cal.indices == b.cal.indices != c.cal.indices


def test_cifar10_missing(tmp_path):
    root = tmp_path / "no-cifar"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", root=root, download=False)
    msg = str(info.value)
    assert str(root / "cifar-10-batches-py") in msg and "download=True" in msg


def test_cifar10_corrupt_checksum_is_not_found(tmp_path, monkeypatch):
    _write_cifar(tmp_path, monkeypatch)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DatasetNotFoundError):
        load_dataset("cifar10", root=tmp_path, download=False, cal_size=2)


# --------------------------------------------------------------------------
# argument validation and loaders


def test_unknown_name_lists_known():
    with pytest.raises(ValueError) as info:
        load_dataset("mnist-ish", download=False)
    msg = str(info.value)
    assert "mnist-ish" in msg
    for name in ("digits", "fashion-mnist", "fashion-mnist-rgb32", "cifar10"):
        assert name in msg
    assert set(data.DATASETS) == {"digits", "fashion-mnist", "fashion-mnist-rgb32", "cifar10"}


@pytest.mark.parametrize("bad", [0, -3, 1437, 10_000, 2.5])
def test_bad_cal_size(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        load_dataset("digits", cal_size=bad)


def test_largest_valid_cal_size():
    s = load_dataset("digits", cal_size=1436)
    assert len(s.train) == 1 and len(s.cal) == 1436


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"batch_size": -1}, {"eval_batch_size": 0}])
def test_bad_batch_size(kw):
    s = load_dataset("digits")
    (name, value), = kw.items()
    with pytest.raises(ValueError, match=re.escape(f"{name} must be an int >= 1, got {value!r}")):
        make_loaders(s, **kw)


def test_make_loaders():
    s = load_dataset("digits")
    train, cal, test = make_loaders(s, batch_size=100, eval_batch_size=50, seed=3)
    assert train.batch_size == 100 and cal.batch_size == 50 and test.batch_size == 50
    assert train.num_workers == cal.num_workers == test.num_workers == 0
    # seeded shuffle: same seed -> same order; test loader keeps dataset order
    train2, _, _ = make_loaders(s, batch_size=100, seed=3)
    xa, ya = next(iter(train))
    xb, yb = next(iter(train2))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, s.train.tensors[0][:100])
    xc, _ = next(iter(cal))
    assert xc.shape == (50, 1, 8, 8) and not torch.equal(xc, s.cal.tensors[0][:50])
    assert torch.equal(torch.cat([b[0] for b in test]), s.test.tensors[0])
    assert sum(len(b[1]) for b in train) == len(s.train)
