"""Tests of evomal.tasks.datasets: offline datasets, splits, preprocessing and the file-format parsers."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import socket
import struct
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from evomal.tasks import datasets as data
from evomal.tasks.datasets import downloads, idx, registry
from evomal.tasks.datasets import load_task

OFFLINE_CLASSIFICATION = ["digits", "breast_cancer", "wine", "iris"]
POOLED = OFFLINE_CLASSIFICATION + ["diabetes"]  # no official test split
SMALL_MNIST1D = {"num_samples": 1000}


@pytest.fixture
def no_network(monkeypatch):
    """Make every attempt to reach the network fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _options(name):
    return dict(SMALL_MNIST1D) if name == "mnist1d" else {}


# --------------------------------------------------------------------------------------------------
# registry and arguments
# --------------------------------------------------------------------------------------------------


def test_registry_lists_every_dataset():
    expected = {
        "digits", "breast_cancer", "wine", "iris", "diabetes", "mnist1d", "fashion_mnist",
        "mnist", "cifar10", "cifar100", "svhn", "california",
    }
    assert expected <= set(data.list_datasets())
    assert data.list_datasets() == sorted(data.list_datasets())


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="unknown dataset 'nope'") as info:
        load_task("nope")
    for name in ("digits", "fashion_mnist", "cifar10"):
        assert name in str(info.value)


def test_unknown_option_is_named_with_allowed_ones():
    with pytest.raises(ValueError, match="'colour'") as info:
        load_task("mnist1d", colour=True)
    assert "num_samples" in str(info.value) and "split_seed" in str(info.value)
    with pytest.raises(ValueError, match="unknown option 'download'"):
        load_task("iris", download=True)


def test_train_size_limits():
    full = load_task("iris", seed=0)
    n = len(full.y_train)
    with pytest.raises(ValueError, match=rf"train_size=1000.*maximum {n}"):
        load_task("iris", train_size=1000)
    with pytest.raises(ValueError, match="train_size"):
        load_task("iris", train_size=0)


# --------------------------------------------------------------------------------------------------
# offline datasets: loading, splits, preprocessing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POOLED + ["mnist1d"])
def test_offline_dataset_loads_without_network(name, no_network):
    task = load_task(name, seed=0, **_options(name))
    assert task.name == name
    for split in ("train", "val", "test"):
        x, y = task.split(split)
        assert x.dtype == torch.float32 and x.device.type == "cpu"
        assert x.shape[1:] == task.input_shape and len(x) == len(y) > 0
        assert torch.isfinite(x).all()
        if task.kind == "classification":
            assert y.dtype == torch.int64 and y.shape == (len(x),)
            assert 0 <= int(y.min()) and int(y.max()) < task.num_classes
        else:
            assert y.dtype == torch.float32 and y.shape == (len(x), 1)
    if task.kind == "classification":
        assert task.num_outputs == task.num_classes
    else:
        assert task.num_outputs == task.num_classes == 1
    if name == "mnist1d":
        assert task.input_shape == (40,)


def test_expected_shapes_and_sizes():
    digits = load_task("digits")
    assert digits.input_shape == (64,) and digits.num_classes == 10
    n = 1797
    assert len(digits.y_test) == round(0.2 * n)
    assert len(digits.y_val) == round(0.1 * (n - round(0.2 * n)))
    assert len(digits.y_train) + len(digits.y_val) + len(digits.y_test) == n
    diabetes = load_task("diabetes")
    assert diabetes.kind == "regression" and diabetes.input_shape == (10,)
    sizes = [len(diabetes.y_train), len(diabetes.y_val), len(diabetes.y_test)]
    assert sum(sizes) == 442 and sizes[1] == sizes[2] == round(0.2 * 442)


@pytest.mark.parametrize("name", POOLED + ["mnist1d"])
def test_splits_disjoint_and_seeded(name):
    a = load_task(name, seed=0, **_options(name))
    b = load_task(name, seed=0, **_options(name))
    c = load_task(name, seed=1, **_options(name))
    ia = a.info["indices"]
    tr, va, te = (set(ia[s].tolist()) for s in ("train", "val", "test"))
    assert not tr & va
    if name in POOLED:  # train / val / test all come from one pool
        assert not tr & te and not va & te
        assert len(tr | va | te) == len(a.y_train) + len(a.y_val) + len(a.y_test)
    for split in ("train", "val", "test"):
        xa, ya = a.split(split)
        xb, yb = b.split(split)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        np.testing.assert_array_equal(ia[split], b.info["indices"][split])
    assert not np.array_equal(ia["val"], c.info["indices"]["val"])
    assert not torch.equal(a.x_val, c.x_val)
    # split_seed decouples the split from `seed`
    d = load_task(name, seed=5, split_seed=0, **_options(name))
    np.testing.assert_array_equal(d.info["indices"]["val"], ia["val"])


def test_split_rows_are_the_indexed_rows():
    """The stored indices really point at the rows of each split (checked against raw sklearn data)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    task = load_task("digits", seed=3)
    mean = np.asarray(task.info["x_mean"])
    std = np.asarray(task.info["x_std"])
    for split in ("train", "val", "test"):
        idx = task.info["indices"][split]
        expected = (raw.data[idx] - mean) / std
        np.testing.assert_allclose(task.split(split)[0].numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(task.split(split)[1].numpy(), raw.target[idx])
    # no duplicated row content across splits beyond what the raw data itself duplicates
    hashes = {s: {hashlib.sha1(r.tobytes()).hexdigest() for r in raw.data[task.info["indices"][s]]}
              for s in ("train", "val", "test")}
    raw_dups = len(raw.data) - len({hashlib.sha1(r.tobytes()).hexdigest() for r in raw.data})
    assert len(hashes["train"] & hashes["test"]) <= raw_dups


@pytest.mark.parametrize("name", OFFLINE_CLASSIFICATION + ["mnist1d"])
def test_classification_splits_are_stratified(name):
    task = load_task(name, seed=2, **_options(name))
    everything = torch.cat([task.y_train, task.y_val, task.y_test])
    overall = torch.bincount(everything, minlength=task.num_classes).double() / len(everything)
    splits = ("train", "val") if name == "mnist1d" else ("train", "val", "test")  # mnist1d: official test
    for split in splits:
        y = task.split(split)[1]
        share = torch.bincount(y, minlength=task.num_classes).double() / len(y)
        assert torch.all((share - overall).abs() <= 1.0 / len(y) + 0.01), (split, share, overall)


@pytest.mark.parametrize("name", POOLED + ["mnist1d"])
def test_standardisation_uses_training_statistics(name):
    task = load_task(name, seed=0, **_options(name))
    x = task.x_train.double().reshape(len(task.x_train), -1)
    if name == "mnist1d":  # one global mean / std for the signal
        assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(unbiased=False)) - 1) < 1e-4
    else:
        std = x.std(dim=0, unbiased=False)
        varying = std > 1e-6
        assert torch.all(x.mean(dim=0).abs() < 1e-5)
        assert torch.all((std[varying] - 1).abs() < 1e-4)
    # statistics recomputed with the validation split included differ: val was not used
    both = torch.cat([task.x_train, task.x_val]).double().reshape(-1, x.shape[1])
    assert float((both.mean(dim=0)).abs().max()) > 1e-4
    if task.kind == "regression":
        y = task.y_train.double()
        assert abs(float(y.mean())) < 1e-5 and abs(float(y.std(unbiased=False)) - 1) < 1e-4
        assert task.info["y_std"] > 0
        y_all = torch.cat([task.y_train, task.y_val]).double()
        assert abs(float(y_all.mean())) > 1e-4


@pytest.mark.parametrize("name", ["digits", "diabetes"])
def test_train_size_subset(name):
    full = load_task(name, seed=4)
    sub = load_task(name, seed=4, train_size=100)
    assert len(sub.y_train) == 100
    assert set(sub.info["indices"]["train"].tolist()) <= set(full.info["indices"]["train"].tolist())
    np.testing.assert_array_equal(sub.info["indices"]["val"], full.info["indices"]["val"])
    np.testing.assert_array_equal(sub.info["indices"]["test"], full.info["indices"]["test"])
    again = load_task(name, seed=4, train_size=100)
    assert torch.equal(sub.x_train, again.x_train)
    if name == "digits":
        counts = torch.bincount(sub.y_train, minlength=10)
        assert int(counts.max()) - int(counts.min()) <= 2  # stratified: about 10 per class


def test_mnist1d_leaves_global_rngs_untouched():
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    torch_before = torch.get_rng_state()
    load_task("mnist1d", **SMALL_MNIST1D)
    np.testing.assert_array_equal(np.random.get_state()[1], np_before)
    assert random.getstate() == py_before
    assert torch.equal(torch.get_rng_state(), torch_before)


def test_mnist1d_default_size_and_data_seed(no_network):
    task = load_task("mnist1d")
    assert len(task.y_train) + len(task.y_val) == 4000 and len(task.y_test) == 1000
    other = load_task("mnist1d", data_seed=7, num_samples=1000)
    assert len(other.y_test) == 200


def test_nan_and_inf_are_refused(monkeypatch):
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))

    @data.register_dataset("broken")
    def _broken() -> data.RawData:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(100, 3))
        x[7, 1] = np.nan
        return data.RawData("classification", x, np.arange(100) % 2, 2, "tabular", "test")

    @data.register_dataset("broken_reg")
    def _broken_reg() -> data.RawData:
        rng = np.random.default_rng(0)
        y = rng.normal(size=(100, 1))
        y[:] = np.inf
        return data.RawData("regression", rng.normal(size=(100, 3)), y, 1, "tabular", "test")

    with pytest.raises(ValueError, match=r"dataset 'broken'.*(train|val|test) split.*NaN"):
        load_task("broken")
    with pytest.raises(ValueError, match=r"dataset 'broken_reg'.*train split.*targets"):
        load_task("broken_reg")


def test_tensors_follow_device_argument():
    task = load_task("iris", device=torch.device("cpu"))
    assert all(t.device.type == "cpu" for t in (task.x_train, task.y_val, task.x_test))


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST (real files from the Debian package)
# --------------------------------------------------------------------------------------------------

needs_fashion = pytest.mark.skipif(
    not Path(data.FASHION_MNIST_SYSTEM_DIR, "train-images-idx3-ubyte.gz").exists(),
    reason="dataset-fashion-mnist is not installed",
)


@needs_fashion
def test_fashion_mnist_real_files(no_network):
    task = load_task("fashion_mnist", seed=0)
    assert task.input_shape == (1, 28, 28) and task.num_classes == 10
    assert len(task.y_train) == 54000 and len(task.y_val) == 6000 and len(task.y_test) == 10000
    assert torch.equal(torch.bincount(task.y_test), torch.full((10,), 1000))
    assert torch.equal(torch.bincount(task.y_val), torch.full((10,), 600))
    assert abs(float(task.x_train.double().mean())) < 1e-4
    assert abs(float(task.x_train.double().std()) - 1) < 1e-3
    mean, std = task.info["x_mean"][0], task.info["x_std"][0]
    assert 0.2 < mean < 0.4 and 0.3 < std < 0.4  # pixel statistics in [0, 1] units
    pixels = task.x_test * std + mean
    assert float(pixels.min()) > -1e-4 and float(pixels.max()) < 1 + 1e-4


def test_fashion_mnist_missing_directory_is_explained(tmp_path, no_network):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_task("fashion_mnist", data_dir=str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "apt-get install dataset-fashion-mnist" in message and "download" in message


# --------------------------------------------------------------------------------------------------
# download-backed datasets: parsers fed with small files in the real formats
# --------------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_set(folder: Path, n_train=60, n_test=30, side=28, seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, size=(n_train, side, side)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, size=(n_test, side, side)),
        "t10k-labels-idx1-ubyte.gz": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    blobs = {}
    for name, array in arrays.items():
        blobs[name] = gzip.compress(_idx_bytes(array))
        (folder / name).write_bytes(blobs[name])
    return blobs


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_loaders_parse_generated_files(name, tmp_path, no_network):
    _write_idx_set(tmp_path)
    task = load_task(name, data_dir=str(tmp_path), seed=0)
    assert task.input_shape == (1, 28, 28)
    assert len(task.y_train) == 54 and len(task.y_val) == 6 and len(task.y_test) == 30
    raw = data.read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert raw.shape == (30, 28, 28) and raw.dtype == np.uint8
    mean, std = task.info["x_mean"][0], task.info["x_std"][0]
    restored = (task.x_test[:, 0] * std + mean) * 255
    np.testing.assert_allclose(restored.numpy(), raw, atol=1e-3)


def test_read_idx_uncompressed_and_corrupted(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    plain = tmp_path / "plain-idx3-ubyte"
    plain.write_bytes(_idx_bytes(array))
    np.testing.assert_array_equal(data.read_idx(plain), array)

    bad_magic = tmp_path / "bad.gz"
    bad_magic.write_bytes(gzip.compress(b"\x12\x34" + _idx_bytes(array)[2:]))
    with pytest.raises(ValueError, match=r"bad\.gz.*magic"):
        data.read_idx(bad_magic)

    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(_idx_bytes(array)[:-5]))
    with pytest.raises(ValueError, match=r"short\.gz.*wrong length"):
        data.read_idx(short)

    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(gzip.compress(_idx_bytes(array))[:-12])
    with pytest.raises(ValueError, match=r"truncated\.gz"):
        data.read_idx(truncated)


def test_idx_set_with_corrupted_member_names_file(tmp_path):
    _write_idx_set(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx_bytes(np.arange(59) % 10)))  # 59 labels for 60 images
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        load_task("mnist", data_dir=str(tmp_path))


@pytest.fixture
def http_folder(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path / "served"``: (folder, base URL, requested paths)."""
    import functools
    import http.server
    import threading

    folder = tmp_path / "served"
    folder.mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):  # record each request once, print nothing
            requested.append(f"{self.path} {int(code)}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()


def test_mnist_missing_files_and_download(tmp_path, monkeypatch, http_folder):
    served, base, requested = http_folder
    blobs = _write_idx_set(served)
    target = tmp_path / "target"
    with pytest.raises(FileNotFoundError, match=r"download=True"):
        load_task("mnist", data_dir=str(target))

    assert all(r.urls[0].startswith("https://") for r in idx._MNIST_REMOTES)  # the first mirror is https
    good = [downloads.RemoteFile(r.filename, (base + "missing/" + r.filename, base + r.filename), "md5",
                                 hashlib.md5(blobs[r.filename]).hexdigest()) for r in idx._MNIST_REMOTES]
    monkeypatch.setattr(idx, "_MNIST_REMOTES", good)
    task = load_task("mnist", data_dir=str(target), download=True)
    # the first mirror answers 404, the second serves the file
    assert len(task.y_test) == 30
    assert sorted(requested) == sorted([f"/missing/{n} 404" for n in blobs] + [f"/{n} 200" for n in blobs])
    assert sorted(p.name for p in target.iterdir()) == sorted(blobs)

    # a checksum mismatch is refused and leaves no file behind
    bad = [downloads.RemoteFile(r.filename, r.urls[-1:], "md5", "0" * 32) for r in good]
    monkeypatch.setattr(idx, "_MNIST_REMOTES", bad)
    other = tmp_path / "other"
    with pytest.raises(ValueError, match=r"checksum mismatch.*train-images-idx3-ubyte\.gz"):
        load_task("mnist", data_dir=str(other), download=True)
    assert not any(other.iterdir())


def test_download_option_must_be_boolean(tmp_path):
    with pytest.raises(ValueError, match="download"):
        load_task("mnist", data_dir=str(tmp_path), download="yes")


def _tar_gz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def _cifar_records(labels: list[tuple[int, ...]], rng) -> tuple[bytes, np.ndarray]:
    images = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    rows = [bytes(lab) + img.tobytes() for lab, img in zip(labels, images)]
    return b"".join(rows), images


def test_cifar10_binary_archive(tmp_path, no_network):
    rng = np.random.default_rng(0)
    members, train_images = {}, []
    for i in range(1, 6):
        blob, imgs = _cifar_records([((j + i) % 10,) for j in range(20)], rng)
        members[f"cifar-10-batches-bin/data_batch_{i}.bin"] = blob
        train_images.append(imgs)
    blob, test_images = _cifar_records([(j % 10,) for j in range(30)], rng)
    members["cifar-10-batches-bin/test_batch.bin"] = blob
    archive = tmp_path / "cifar-10-binary.tar.gz"
    _tar_gz(archive, members)

    x_train, y_train, x_test, y_test = data.read_cifar(archive, "cifar10")
    assert x_train.shape == (100, 3, 32, 32) and x_test.shape == (30, 3, 32, 32)
    np.testing.assert_array_equal(x_train, np.concatenate(train_images))
    np.testing.assert_array_equal(x_test, test_images)
    np.testing.assert_array_equal(y_test, np.arange(30) % 10)

    task = load_task("cifar10", data_dir=str(tmp_path))
    assert task.input_shape == (3, 32, 32) and task.num_classes == 10
    assert len(task.y_train) == 90 and len(task.y_val) == 10 and len(task.y_test) == 30
    assert len(task.info["x_mean"]) == 3  # per-channel normalisation
    per_channel = task.x_train.double().mean(dim=(0, 2, 3))
    assert torch.all(per_channel.abs() < 1e-4)

    # the unpacked folder is accepted too
    unpacked = tmp_path / "unpacked" / "cifar-10-batches-bin"
    unpacked.mkdir(parents=True)
    for name, blob in members.items():
        (unpacked / name.split("/")[1]).write_bytes(blob)
    again = data.read_cifar(unpacked.parent, "cifar10")
    np.testing.assert_array_equal(again[0], x_train)


def test_cifar_corrupted_archives(tmp_path):
    rng = np.random.default_rng(1)
    blob, _ = _cifar_records([(1,)] * 4, rng)
    members = {f"cifar-10-batches-bin/data_batch_{i}.bin": blob for i in range(1, 6)}
    members["cifar-10-batches-bin/test_batch.bin"] = blob[:-7]  # not a whole number of records
    bad_length = tmp_path / "cifar-10-binary.tar.gz"
    _tar_gz(bad_length, members)
    with pytest.raises(ValueError, match=r"cifar-10-binary\.tar\.gz.*test_batch\.bin.*wrong length"):
        data.read_cifar(bad_length, "cifar10")

    members["cifar-10-batches-bin/test_batch.bin"] = blob
    good = tmp_path / "good.tar.gz"
    _tar_gz(good, members)
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r"truncated\.tar\.gz"):
        data.read_cifar(truncated, "cifar10")

    folder = tmp_path / "missing"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_task("cifar10", data_dir=str(folder))


def test_cifar100_binary_fine_and_coarse(tmp_path):
    rng = np.random.default_rng(2)
    train_labels = [(j % 20, j % 100) for j in range(200)]
    test_labels = [(j % 20, (3 * j) % 100) for j in range(100)]
    train_blob, _ = _cifar_records(train_labels, rng)
    test_blob, test_images = _cifar_records(test_labels, rng)
    _tar_gz(
        tmp_path / "cifar-100-binary.tar.gz",
        {"cifar-100-binary/train.bin": train_blob, "cifar-100-binary/test.bin": test_blob},
    )
    fine = load_task("cifar100", data_dir=str(tmp_path))
    assert fine.num_classes == 100 and len(fine.y_train) + len(fine.y_val) == 200
    np.testing.assert_array_equal(fine.y_test.numpy(), [lab[1] for lab in test_labels])
    coarse = load_task("cifar100", data_dir=str(tmp_path), label_mode="coarse")
    assert coarse.num_classes == 20
    np.testing.assert_array_equal(coarse.y_test.numpy(), [lab[0] for lab in test_labels])
    with pytest.raises(ValueError, match="label_mode"):
        load_task("cifar100", data_dir=str(tmp_path), label_mode="medium")


def test_svhn_mat_files(tmp_path, no_network):
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    for name, n in (("train_32x32.mat", 50), ("test_32x32.mat", 20)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(-1, 1)  # labels 1..10, 10 means digit 0
        savemat(tmp_path / name, {"X": x, "y": y})
    images, labels = data.read_svhn_mat(tmp_path / "test_32x32.mat")
    assert images.shape == (20, 3, 32, 32) and images.dtype == np.uint8
    assert labels.tolist() == [(i % 10 + 1) % 10 for i in range(20)]
    from scipy.io import loadmat

    raw = loadmat(tmp_path / "test_32x32.mat")["X"]
    np.testing.assert_array_equal(images[4, 2], raw[:, :, 2, 4])  # (H, W, C, N) -> (N, C, H, W)

    task = load_task("svhn", data_dir=str(tmp_path))
    assert task.input_shape == (3, 32, 32) and len(task.y_train) == 45 and len(task.y_test) == 20

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(50))
    (corrupt / "test_32x32.mat").write_bytes((tmp_path / "test_32x32.mat").read_bytes())
    with pytest.raises(ValueError, match=r"train_32x32\.mat"):
        load_task("svhn", data_dir=str(corrupt))
    with pytest.raises(FileNotFoundError, match="svhn"):
        load_task("svhn", data_dir=str(tmp_path / "absent"))


def _california_rows(n: int, rng) -> np.ndarray:
    return np.column_stack([
        rng.uniform(-124, -114, n),  # longitude
        rng.uniform(32, 42, n),  # latitude
        rng.integers(1, 52, n),  # median age
        rng.integers(100, 5000, n),  # total rooms
        rng.integers(20, 1000, n),  # total bedrooms
        rng.integers(50, 3000, n),  # population
        rng.integers(20, 1000, n),  # households
        rng.uniform(0.5, 15, n),  # median income
        rng.uniform(15000, 500001, n),  # median house value
    ])


def test_california_archive(tmp_path, no_network):
    rng = np.random.default_rng(4)
    table = _california_rows(100, rng)
    text = "\n".join(",".join(f"{v:.6f}" for v in row) for row in table).encode()
    _tar_gz(tmp_path / "cal_housing.tgz", {"CaliforniaHousing/cal_housing.data": text})
    x, y = data.read_california(tmp_path / "cal_housing.tgz")
    assert x.shape == (100, 8) and y.shape == (100, 1)
    np.testing.assert_allclose(x[:, 0], table[:, 7], rtol=1e-6)  # MedInc
    np.testing.assert_allclose(x[:, 2], table[:, 3] / table[:, 6], rtol=1e-5)  # AveRooms
    np.testing.assert_allclose(x[:, 7], table[:, 0], rtol=1e-6)  # Longitude
    np.testing.assert_allclose(y[:, 0], table[:, 8] / 1e5, rtol=1e-6)

    task = load_task("california", data_dir=str(tmp_path), seed=0)
    assert task.kind == "regression" and task.input_shape == (8,)
    assert [len(task.y_train), len(task.y_val), len(task.y_test)] == [60, 20, 20]
    y_orig = task.y_test.double() * task.info["y_std"] + task.info["y_mean"]
    np.testing.assert_allclose(y_orig[:, 0].numpy(), y[task.info["indices"]["test"], 0], rtol=1e-5)

    good = (tmp_path / "cal_housing.tgz").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cal_housing.tgz").write_bytes(good[: len(good) - 40])
    with pytest.raises(ValueError, match=r"cal_housing\.tgz"):
        load_task("california", data_dir=str(bad))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    _tar_gz(wrong / "cal_housing.tgz", {"CaliforniaHousing/cal_housing.data": b"1,2,3\n4,5,6\n"})
    with pytest.raises(ValueError, match=r"cal_housing\.tgz.*9"):
        load_task("california", data_dir=str(wrong))


def test_verify_file_and_default_root(tmp_path, monkeypatch):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"evomal")
    downloads.verify_file(path, "sha256", hashlib.sha256(b"evomal").hexdigest())
    with pytest.raises(ValueError, match=r"checksum mismatch for .*blob\.bin"):
        downloads.verify_file(path, "md5", "0" * 32)
    monkeypatch.setenv("EVOMAL_DATA_DIR", str(tmp_path / "root"))
    assert downloads.default_data_root() == tmp_path / "root"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "root" / "svhn")):
        load_task("svhn")


def test_unreachable_mirrors_raise_oserror(tmp_path, monkeypatch):
    from evomal.tasks.datasets import california

    with socket.socket() as s:  # a port that nothing listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    remote = california._CALIFORNIA_REMOTE
    urls = (f"http://127.0.0.1:{port}/a/{remote.filename}", f"http://127.0.0.1:{port}/b/{remote.filename}")
    monkeypatch.setattr(california, "_CALIFORNIA_REMOTE", downloads.RemoteFile(remote.filename, urls, remote.algorithm,
                                                                               remote.digest))
    with pytest.raises(OSError, match=r"could not download cal_housing\.tgz.*/a/cal_housing\.tgz.*/b/cal_housing"):
        load_task("california", data_dir=str(tmp_path), download=True)
    assert not any(tmp_path.iterdir())


def test_validation_fraction_sizes_the_validation_split():
    default = load_task("digits", seed=0)
    larger = load_task("digits", seed=0, validation_fraction=0.25)
    pool = len(default.y_train) + len(default.y_val)
    assert len(larger.y_train) + len(larger.y_val) == pool and len(larger.y_test) == len(default.y_test)
    assert len(larger.y_val) == round(0.25 * pool) and len(default.y_val) == round(0.1 * pool)
    assert set(larger.y_val.tolist()) == set(range(10))  # stratified: every class held out
    for bad in (0, 1, 1.5, "0.2", True):
        with pytest.raises(ValueError, match="validation_fraction"):
            load_task("digits", seed=0, validation_fraction=bad)
    with pytest.raises(ValueError, match="regression sets split 60/20/20"):
        load_task("diabetes", seed=0, validation_fraction=0.3)
