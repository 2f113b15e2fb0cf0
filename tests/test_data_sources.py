"""Data sources read real-format fixtures built here: IDX files, CIFAR pickles, PNG folders, saved HF datasets."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slimkit.data import load_data
from slimkit.data.cifar import RestrictedUnpickler
from slimkit.data.idx import DEFAULT_PATH as FMNIST_PATH
from slimkit.errors import DataError, UnsafeFileError

# ---------------------------------------------------------------- digits


def test_digits_sizes_classes_and_fixed_split():
    from sklearn.datasets import load_digits

    a = load_data("digits", (1, 8, 8))
    b = load_data("digits", (1, 8, 8), seed=7)  # the split must not move with --seed
    assert len(a.train) + len(a.val) == 1797
    assert len(a.val) == 359  # round(0.2 * 1797)
    assert a.class_names == [str(i) for i in range(10)] and a.num_classes == 10
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    # Together the two splits are exactly scikit-learn's images, scaled 0..16 -> 0..255.
    bunch = load_digits()
    scaled = np.round(bunch.images * 255 / 16).astype(np.uint8)
    expected = sorted((int(t), im.tobytes()) for im, t in zip(scaled, bunch.target))
    got = sorted(
        (int(y), x.numpy().tobytes())
        for split in (a.train, a.val)
        for x, y in zip(split.images, split.labels)
    )
    assert got == expected


def test_subsets_are_seeded_rows_of_the_full_split():
    full = load_data("digits", (1, 8, 8))
    sub = load_data("digits", (1, 8, 8), train_samples=100, val_samples=30)
    again = load_data("digits", (1, 8, 8), train_samples=100, val_samples=30)
    assert (len(sub.train), len(sub.val)) == (100, 30)
    assert torch.equal(sub.train.images, again.train.images) and torch.equal(sub.val.labels, again.val.labels)
    rows = {(x.numpy().tobytes(), int(y)) for x, y in zip(full.train.images, full.train.labels)}
    assert all((x.numpy().tobytes(), int(y)) in rows for x, y in zip(sub.train.images, sub.train.labels))
    bigger = load_data("digits", (1, 8, 8), train_samples=10**6)
    assert len(bigger.train) == len(full.train)


def test_unknown_source_is_a_data_error():
    with pytest.raises(DataError, match="unknown data source 'nope'"):
        load_data("nope:/x")


# ---------------------------------------------------------------- fashion-mnist (IDX)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: 0, 0, type 0x08 (ubyte), ndim, big-endian uint32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(root: Path, gz: bool, n_train: int = 5, n_val: int = 3, h: int = 4, w: int = 3) -> dict:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([9, 0, 3, 7, 1][:n_train], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_val, h, w), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([2, 8, 5][:n_val], dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        (root / (name + ".gz")).write_bytes(gzip.compress(data)) if gz else (root / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx_round_trip(tmp_path, gz):
    arrays = write_idx_set(tmp_path, gz)
    b = load_data(f"fashion-mnist:{tmp_path}", (1, 4, 3))
    assert torch.equal(b.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert b.train.labels.tolist() == [9, 0, 3, 7, 1]
    assert torch.equal(b.val.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert b.val.labels.tolist() == [2, 8, 5]
    assert b.class_names[0] == "T-shirt/top" and b.class_names[9] == "Ankle boot" and b.num_classes == 10
    # Default mean/std 0.5: pixel p becomes (p / 255 - 0.5) / 0.5.
    x, _ = b.train.tensors()
    p = int(arrays["train-images-idx3-ubyte"][2, 3, 1])
    assert x[2, 0, 3, 1].item() == pytest.approx((p / 255 - 0.5) / 0.5, abs=1e-6)


def test_fashion_mnist_resizes_and_matches_channels(tmp_path):
    write_idx_set(tmp_path, gz=True)
    b = load_data(f"fashion-mnist:{tmp_path}", (3, 8, 6), train_samples=4, val_samples=2)
    x, y = b.train.tensors()
    assert x.shape == (4, 3, 8, 6) and len(b.val) == 2
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey copied to all three channels


def _corrupt(root: Path, name: str, fn) -> None:
    path = root / name
    path.write_bytes(fn(path.read_bytes()))


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("train-images-idx3-ubyte", lambda d: d[:-1], "truncated or corrupt"),
        ("train-images-idx3-ubyte", lambda d: d[:10], "truncated header"),
        ("t10k-images-idx3-ubyte", lambda d: bytes([0, 0, 0x09]) + d[3:], "value type 0x09"),
        ("t10k-labels-idx1-ubyte", lambda d: b"\x01" + d[1:], "bad magic number"),
        ("train-labels-idx1-ubyte", lambda d: bytes([0, 0, 8, 3]) + d[4:], "3 dimensions, expected 1"),
        ("train-labels-idx1-ubyte", lambda d: idx_bytes(np.array([1, 2], dtype=np.uint8)), "5 images but"),
        ("train-labels-idx1-ubyte", lambda d: idx_bytes(np.array([1, 2, 3, 4, 10], dtype=np.uint8)), "label 10"),
    ],
)
def test_fashion_mnist_corrupt_files_name_the_file(tmp_path, name, damage, message):
    write_idx_set(tmp_path, gz=False)
    _corrupt(tmp_path, name, damage)
    with pytest.raises(DataError, match=message) as err:
        load_data(f"fashion-mnist:{tmp_path}", (1, 4, 3))
    assert name in str(err.value)


def test_fashion_mnist_truncated_gzip_and_missing_files(tmp_path):
    write_idx_set(tmp_path, gz=True)
    _corrupt(tmp_path, "train-images-idx3-ubyte.gz", lambda d: d[: len(d) // 2])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_data(f"fashion-mnist:{tmp_path}", (1, 4, 3))
    write_idx_set(tmp_path / "fresh", gz=True)
    (tmp_path / "fresh" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"no t10k-labels-idx1-ubyte\[.gz\]"):
        load_data(f"fashion-mnist:{tmp_path / 'fresh'}", (1, 4, 3))
    with pytest.raises(DataError, match="not found"):
        load_data(f"fashion-mnist:{tmp_path / 'absent'}")


def test_fashion_mnist_default_path_hint(monkeypatch, tmp_path):
    import slimkit.data.idx as idx

    monkeypatch.setattr(idx, "DEFAULT_PATH", str(tmp_path / "none"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist")


@pytest.mark.skipif(not Path(FMNIST_PATH).is_dir(), reason="dataset-fashion-mnist not installed")
def test_installed_fashion_mnist_has_the_published_sizes():
    b = load_data("fashion-mnist", (1, 28, 28))
    assert (len(b.train), len(b.val)) == (60000, 10000)
    assert b.train.labels.bincount().tolist() == [6000] * 10 and b.val.labels.bincount().tolist() == [1000] * 10


# ---------------------------------------------------------------- cifar10 (python pickles)


class Py2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2's cPickle wrote the CIFAR batches: every string as a
    byte string (SHORT_BINSTRING/BINSTRING) and numpy's globals under numpy.core."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())
        self.memoize(obj)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


CLASSES = [f"class {i}" for i in range(10)]


def write_cifar(root: Path, per_batch: int = 2, n_test: int = 3) -> tuple[np.ndarray, list, np.ndarray, list]:
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    train_data, train_labels = [], []
    for k in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {"batch_label": f"training batch {k} of 5", "labels": labels, "data": data,
                 "filenames": [f"img_{k}_{i}.png" for i in range(per_batch)]}  # fmt: skip
        (root / f"data_batch_{k}").write_bytes(py2_pickle(batch))
        train_data.append(data)
        train_labels += labels
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test[0, 0], test[0, 1024 + 32 * 2 + 5], test[0, 2048 + 32 * 31 + 31] = 11, 22, 33
    test_labels = [4, 0, 9][:n_test]
    test_batch = {"batch_label": "testing batch 1 of 1", "labels": test_labels, "data": test}
    (root / "test_batch").write_bytes(py2_pickle(test_batch))
    meta = {"num_cases_per_batch": per_batch, "label_names": CLASSES, "num_vis": 3072}
    (root / "batches.meta").write_bytes(py2_pickle(meta))
    return np.concatenate(train_data), train_labels, test, test_labels


def test_cifar10_round_trip(tmp_path):
    train, train_labels, test, test_labels = write_cifar(tmp_path / "cifar-10-batches-py")
    b = load_data(f"cifar10:{tmp_path}", (3, 32, 32))  # the parent folder works too
    assert b.class_names == CLASSES
    assert b.train.images.shape == (10, 3, 32, 32) and b.train.labels.tolist() == train_labels
    assert b.val.labels.tolist() == test_labels
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, each plane row-major 32x32.
    assert b.val.images[0, 0, 0, 0] == 11 and b.val.images[0, 1, 2, 5] == 22 and b.val.images[0, 2, 31, 31] == 33
    assert b.train.images[7, 1, 3, 4] == train[7, 1024 + 3 * 32 + 4]
    assert torch.equal(b.train.images.reshape(10, -1), torch.from_numpy(train))


def test_cifar10_without_meta_uses_standard_names_and_subsets(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "batches.meta").unlink()
    b = load_data(f"cifar10:{tmp_path}", (1, 16, 16), train_samples=4, val_samples=1)
    assert b.class_names[0] == "airplane" and b.class_names[9] == "truck"
    assert (len(b.train), len(b.val)) == (4, 1)
    assert b.train.tensors()[0].shape == (4, 1, 16, 16)


def test_cifar10_reads_python3_protocol_4_resaves(tmp_path):
    write_cifar(tmp_path)
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": [3, 5]}, protocol=4))
    b = load_data(f"cifar10:{tmp_path}")
    assert b.val.labels.tolist() == [3, 5]
    assert b.val.images[1, 2, 31, 31] == (3072 + 2048 + 31 * 32 + 31) % 256  # row 1, blue plane, pixel (31, 31)


class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("which", ["os.system", "builtins.exec", "subprocess.call"])
def test_cifar10_refuses_code_in_pickles_and_runs_nothing(tmp_path, protocol, which):
    import builtins
    import subprocess

    marker = tmp_path / "pwned"
    fn, args = {
        "os.system": (os.system, (f"touch {marker}",)),
        "builtins.exec": (builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.call": (subprocess.call, (["touch", str(marker)],)),
    }[which]
    write_cifar(tmp_path)
    # The payload comes first, as a crafted batch would put it: reading it would run the command.
    evil = {"labels": _Payload(fn, *args), "data": np.zeros((1, 3072), dtype=np.uint8)}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=protocol))
    with pytest.raises(UnsafeFileError, match=rf"refusing to load global \w+\.{fn.__name__} ") as err:
        load_data(f"cifar10:{tmp_path}")
    assert "data_batch_3" in str(err.value)
    assert not marker.exists()


def test_restricted_unpickler_refuses_object_arrays():
    blob = py2_pickle({"data": np.array([1, "x"], dtype=object)})
    with pytest.raises(UnsafeFileError, match="object dtype"):
        RestrictedUnpickler(io.BytesIO(blob)).load()


def _write(obj):
    return lambda p: p.write_bytes(py2_pickle(obj))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:500]), "not a readable CIFAR pickle"),
        (_write({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}), r"shape \(N, 3072\)"),
        (_write({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}), "2 images but 1 labels"),
        (_write({"data": np.zeros((1, 3072), np.uint8), "labels": [12]}), "labels must be in 0..9"),
        (_write([1, 2]), "expected a dict"),
        (lambda p: p.unlink(), "no test_batch"),
    ],
)
def test_cifar10_malformed_batches(tmp_path, mutate, message):
    write_cifar(tmp_path)
    mutate(tmp_path / "test_batch")
    with pytest.raises(DataError, match=message):
        load_data(f"cifar10:{tmp_path}")


def test_cifar10_missing_path_and_batches(tmp_path):
    with pytest.raises(DataError, match="needs a path"):
        load_data("cifar10")
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"cifar10:{tmp_path / 'absent'}")
    with pytest.raises(DataError, match="no data_batch_N"):
        load_data(f"cifar10:{tmp_path}")


# ---------------------------------------------------------------- imagefolder


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def grey(value: int, h: int = 4, w: int = 6) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


def test_imagefolder_train_val_layout_exact_pixels(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    save_png(tmp_path / "train" / "dog" / "a.png", rgb)
    save_png(tmp_path / "train" / "cat" / "b.png", grey(7))
    save_png(tmp_path / "train" / "cat" / "c.png", grey(9))
    save_png(tmp_path / "val" / "dog" / "d.png", grey(200))
    b = load_data(f"imagefolder:{tmp_path}", (3, 4, 6))
    assert b.class_names == ["cat", "dog"]
    assert b.train.labels.tolist() == [0, 0, 1] and b.val.labels.tolist() == [1]
    assert torch.equal(b.train.images[2], torch.from_numpy(rgb).permute(2, 0, 1))  # H x W x RGB -> C x H x W
    assert (b.train.images[0] == 7).all() and b.train.images[0].shape == (3, 4, 6)  # L -> RGB copies the grey
    assert (b.val.images[0] == 200).all()


def test_imagefolder_rgb_to_grey_uses_the_luma_weights(tmp_path):
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    save_png(tmp_path / "train" / "x" / "a.png", pixels)
    save_png(tmp_path / "val" / "x" / "b.png", pixels)
    b = load_data(f"imagefolder:{tmp_path}", (1, 1, 4))
    # ITU-R 601-2 luma: 0.299 R + 0.587 G + 0.114 B, rounded: 76.2, 149.7, 29.1, 255.
    assert b.train.images[0, 0, 0].tolist() == [76, 150, 29, 255]


def test_imagefolder_resizes_mixed_sizes_to_the_input_size(tmp_path):
    save_png(tmp_path / "a" / "1.png", grey(50, 5, 7))
    save_png(tmp_path / "a" / "2.png", grey(60, 40, 30))
    save_png(tmp_path / "b" / "3.png", np.full((9, 9, 3), (10, 20, 30), dtype=np.uint8))
    save_png(tmp_path / "b" / "4.png", grey(70, 3, 3))
    b = load_data(f"imagefolder:{tmp_path}", (3, 3, 4))
    images = torch.cat([b.train.images, b.val.images])
    assert images.shape == (4, 3, 3, 4)
    # A uniform image stays uniform at any size: the filter weights sum to one.
    assert sorted(tuple(im[:, 0, 0].tolist()) for im in images) == [(10, 20, 30), (50,) * 3, (60,) * 3, (70,) * 3]
    assert all((im == im[:, :1, :1]).all() for im in images)


def test_imagefolder_fixed_stratified_split(tmp_path):
    for k, cls in enumerate(["ant", "bee"]):
        for i in range(5):
            save_png(tmp_path / cls / f"{i}.png", grey(10 * k + i))
    a = load_data(f"imagefolder:{tmp_path}", (1, 4, 6))
    b = load_data(f"imagefolder:{tmp_path}", (1, 4, 6), seed=5)
    assert (len(a.train), len(a.val)) == (8, 2) and sorted(a.val.labels.tolist()) == [0, 1]
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    values = lambda split: [int(im[0, 0, 0]) for im in split.images]  # noqa: E731
    assert sorted(values(a.train) + values(a.val)) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    assert all(v // 10 == y for v, y in zip(values(a.train), a.train.labels.tolist()))
    (tmp_path / "train").mkdir()
    for cls in ("ant", "bee"):
        (tmp_path / cls).rename(tmp_path / "train" / cls)
    c = load_data(f"imagefolder:{tmp_path}", (1, 4, 6))  # train/ without val/: split the same way
    assert c.class_names == ["ant", "bee"] and torch.equal(c.val.images, a.val.images)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="needs a path"):
        load_data("imagefolder")
    with pytest.raises(DataError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'absent'}")
    with pytest.raises(DataError, match="no class subfolders"):
        load_data(f"imagefolder:{tmp_path}")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_data(f"imagefolder:{tmp_path}")
    bad = tmp_path / "empty_class" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        load_data(f"imagefolder:{tmp_path}")
    save_png(tmp_path / "s" / "train" / "a" / "1.png", grey(1))
    save_png(tmp_path / "s" / "val" / "zzz" / "1.png", grey(1))
    with pytest.raises(DataError, match="classes missing from train/: zzz"):
        load_data(f"imagefolder:{tmp_path / 's'}")


# ---------------------------------------------------------------- hf (save_to_disk)


def hf_dataset(values: list[int], labels: list[int], names: list[str] | None = ("no", "yes")):
    import datasets

    images = [Image.fromarray(np.full((3, 5, 3), (v, v + 1, v + 2), dtype=np.uint8)) for v in values]
    label = datasets.ClassLabel(names=list(names)) if names else datasets.Value("int64")
    features = datasets.Features({"img": datasets.Image(), "note": datasets.Value("string"), "label": label})
    return datasets.Dataset.from_dict({"img": images, "note": ["n"] * len(values), "label": labels}, features=features)


def test_hf_dataset_dict_round_trip(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": hf_dataset([0, 10, 20], [1, 0, 1]), "test": hf_dataset([30, 40], [0, 1])})
    dd.save_to_disk(str(tmp_path / "ds"))
    b = load_data(f"hf:{tmp_path / 'ds'}", (3, 3, 5))
    assert b.class_names == ["no", "yes"]
    assert b.train.labels.tolist() == [1, 0, 1] and b.val.labels.tolist() == [0, 1]
    assert b.train.images[1, :, 0, 0].tolist() == [10, 11, 12] and b.val.images[1, :, 2, 4].tolist() == [40, 41, 42]
    grey = load_data(f"hf:{tmp_path / 'ds'}", (1, 6, 10), val_samples=1)
    # Uniform (v, v+1, v+2) -> luma rounds to v + 1 (0.299 v + 0.587 (v + 1) + 0.114 (v + 2) = v + 0.815).
    assert grey.train.images.shape == (3, 1, 6, 10) and (grey.train.images[2] == 21).all() and len(grey.val) == 1


def test_hf_single_dataset_split_and_int_labels(tmp_path):
    hf_dataset(list(range(0, 100, 10)), [0, 1, 2] * 3 + [2], names=None).save_to_disk(str(tmp_path / "ds"))
    b = load_data(f"hf:{tmp_path / 'ds'}", (3, 3, 5))
    assert b.class_names == ["0", "1", "2"]
    assert sorted(b.val.labels.tolist()) == [0, 1, 2] and len(b.train) == 7
    values = sorted(int(v) for v in torch.cat([b.train.images, b.val.images])[:, 0, 0, 0])
    assert values == list(range(0, 100, 10))


def test_hf_errors(tmp_path):
    import datasets

    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        load_data(f"hf:{tmp_path}")
    datasets.Dataset.from_dict({"x": [1, 2], "label": [0, 1]}).save_to_disk(str(tmp_path / "noimg"))
    with pytest.raises(DataError, match="no column of type Image"):
        load_data(f"hf:{tmp_path / 'noimg'}")
    datasets.DatasetDict({"other": hf_dataset([1], [0])}).save_to_disk(str(tmp_path / "notrain"))
    with pytest.raises(DataError, match="no 'train' split"):
        load_data(f"hf:{tmp_path / 'notrain'}")
    hf_dataset([5], [0]).save_to_disk(str(tmp_path / "one"))  # one image: it stays in train, val is empty
    with pytest.raises(DataError, match=r"is empty \(train 1, val 0 images\)"):
        load_data(f"hf:{tmp_path / 'one'}")
    hf_dataset([], [], names=("a", "b")).save_to_disk(str(tmp_path / "zero"))  # datasets cannot reload this
    with pytest.raises(DataError, match="zero"):
        load_data(f"hf:{tmp_path / 'zero'}")
