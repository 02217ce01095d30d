"""CIFAR-10 / CIFAR-100 reading, from tiny archives in the official python format."""

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from nascli.data.cifar import CIFAR_ARCHIVES, load_cifar
from nascli.errors import NascliError


def pixel(k, c, row, col):
    """The value written for image `k` (train first, then test) at channel, row, column."""
    return (11 * k + 85 * c + 7 * row + col) % 256


def write_cifar_archive(
    path: Path, name: str = "cifar10", *, per_batch: int = 2, n_test: int = 3
) -> dict[str, np.ndarray]:
    """Write a tiny archive in the official layout to `path`; return the expected arrays.

    Image k is filled by `pixel`; labels are k % 10 (CIFAR-10) or 37 * k % 100 (CIFAR-100).
    The rows are flattened the official way: the R plane, then G, then B, each row-major.
    """
    spec = CIFAR_ARCHIVES[name]
    sizes = [per_batch] * len(spec.train_members) + [n_test] * len(spec.test_members)
    k = np.arange(sum(sizes)).reshape(-1, 1, 1, 1)
    c, row, col = np.ogrid[:3, :32, :32]
    images = pixel(k, c, row, col).astype(np.uint8)
    labels = np.arange(len(images)) % 10 if name == "cifar10" else 37 * np.arange(len(images)) % 100
    members = {}
    start = 0
    for member, size in zip(spec.train_members + spec.test_members, sizes, strict=True):
        batch = {
            b"batch_label": member.encode(),
            b"data": images[start : start + size].reshape(size, 3072),
            spec.label_key: labels[start : start + size].tolist(),
            b"filenames": [f"img_{i}.png".encode() for i in range(start, start + size)],
        }
        if name == "cifar100":
            batch[b"coarse_labels"] = [500 + i for i in range(size)]  # out of range on purpose
        members[member] = pickle.dumps(batch, protocol=2)
        start += size
    meta = "batches.meta" if name == "cifar10" else "meta"
    members[meta] = pickle.dumps({b"label_names": [b"x"] * 10}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        for member, raw in members.items():
            info = tarfile.TarInfo(f"{spec.folder}/{member}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    n_train = per_batch * len(spec.train_members)
    return {
        "train_images": images[:n_train],
        "train_labels": labels[:n_train],
        "test_images": images[n_train:],
        "test_labels": labels[n_train:],
    }


def patch_spec(monkeypatch, name: str = "cifar10", **changes) -> None:
    monkeypatch.setitem(CIFAR_ARCHIVES, name, dataclasses.replace(CIFAR_ARCHIVES[name], **changes))


def as_dict(loaded: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    return dict(
        zip(("train_images", "train_labels", "test_images", "test_labels"), loaded, strict=True)
    )


@pytest.fixture
def serve(tmp_path):
    """Serve a folder over HTTP on localhost; yield a function mapping a file name to its URL."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, lambda filename: f"http://127.0.0.1:{server.server_port}/{filename}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    # A proxy from the environment would otherwise carry the localhost requests elsewhere.
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")


def test_cifar10_from_archive(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    expected = write_cifar_archive(archive, per_batch=2, n_test=3)
    # The helper writes the official flat rows: byte 1024 * c + 32 * row + col, R plane first.
    with tarfile.open(archive) as tar:
        raw = tar.extractfile("cifar-10-batches-py/data_batch_2").read()
    row = pickle.loads(raw, encoding="bytes")[b"data"][1]
    assert row[0] == pixel(3, 0, 0, 0) and row[1024] == pixel(3, 1, 0, 0)
    assert row[2048 + 32 * 5 + 6] == pixel(3, 2, 5, 6)
    loaded = as_dict(load_cifar("cifar10", tmp_path, download=False))
    train_x, train_y, test_x, test_y = loaded.values()
    assert train_x.shape == (10, 3, 32, 32) and test_x.shape == (3, 3, 32, 32)
    assert train_x.dtype == test_x.dtype == torch.uint8
    assert train_y.dtype == test_y.dtype == torch.int64
    assert all(t.is_contiguous() for t in loaded.values())
    for k, c, row, col in [(0, 0, 0, 0), (3, 1, 0, 0), (7, 2, 31, 5), (9, 0, 1, 2)]:
        assert train_x[k, c, row, col] == pixel(k, c, row, col)
    assert test_x[2, 1, 4, 9] == pixel(12, 1, 4, 9)
    assert train_x[0, 1, 0, 0] == 85 and train_x[0, 2, 0, 0] == 170 and train_x[0, 0, 1, 0] == 7
    # Train is data_batch_1 .. data_batch_5 in order, two images each.
    assert train_y.tolist() == list(range(10)) and test_y.tolist() == [0, 1, 2]
    for key, tensor in loaded.items():
        np.testing.assert_array_equal(tensor.numpy(), expected[key])


def test_cifar10_extracted_folder_matches_archive_and_wins(tmp_path):
    archive = tmp_path / "archive" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    write_cifar_archive(archive)
    extracted = tmp_path / "extracted"
    with tarfile.open(archive) as tar:
        tar.extractall(extracted, filter="data")
    # A broken archive next to the folder shows that the folder is read first.
    (extracted / "cifar-10-python.tar.gz").write_bytes(b"not a tar")
    from_archive = load_cifar("cifar10", archive.parent, download=False)
    from_folder = load_cifar("cifar10", str(extracted), download=False)
    for a, b in zip(from_archive, from_folder, strict=True):
        assert torch.equal(a, b)


def test_cifar100_uses_fine_labels(tmp_path):
    expected = write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", "cifar100", per_batch=4)
    train_x, train_y, test_x, test_y = load_cifar("cifar100", tmp_path, download=False)
    assert train_x.shape == (4, 3, 32, 32) and test_x.shape == (3, 3, 32, 32)
    assert train_y.tolist() == [0, 37, 74, 11] and test_y.tolist() == [48, 85, 22]
    np.testing.assert_array_equal(test_x.numpy(), expected["test_images"])


def test_offline_download_fails_with_one_line(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"
    patch_spec(monkeypatch, url=url)
    root = tmp_path / "data"
    with pytest.raises(NascliError) as info:
        load_cifar("cifar10", root)
    message = str(info.value)
    assert "cannot download CIFAR-10" in message and url in message and str(root) in message
    assert "\n" not in message and info.value.__cause__ is None
    assert list(root.iterdir()) == []


def test_missing_without_download(tmp_path):
    with pytest.raises(NascliError, match=r"cifar-100-python\.tar\.gz") as info:
        load_cifar("cifar100", tmp_path, download=False)
    assert "CIFAR-100 not found" in str(info.value) and "data.download=true" in str(info.value)


def test_unknown_name(tmp_path):
    with pytest.raises(NascliError, match="cifar10, cifar100"):
        load_cifar("mnist", tmp_path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_member(path: Path) -> None:
    with tarfile.open(path) as tar:
        kept = [(info, tar.extractfile(info).read()) for info in tar if "batch_3" not in info.name]
    with tarfile.open(path, "w:gz") as tar:
        for info, raw in kept:
            tar.addfile(info, io.BytesIO(raw))


def _rewrite_batch(path: Path, batch: object) -> None:
    extracted = path.parent / "x"
    with tarfile.open(path) as tar:
        tar.extractall(extracted, filter="data")
    (extracted / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch))
    with tarfile.open(path, "w:gz") as tar:
        tar.add(extracted / "cifar-10-batches-py", "cifar-10-batches-py")


@pytest.mark.parametrize(
    ("damage", "detail"),
    [
        (_truncate, ""),
        (_drop_member, "no cifar-10-batches-py/data_batch_3"),
        (
            lambda p: _rewrite_batch(p, {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}),
            "test_batch: ValueError: labels outside [0, 10)",
        ),
        (
            lambda p: _rewrite_batch(p, {b"data": np.zeros((1, 3000), np.uint8), b"labels": [1]}),
            "test_batch: ValueError",
        ),
        (lambda p: _rewrite_batch(p, {b"labels": [1]}), "test_batch: KeyError: b'data')"),
        (lambda p: _rewrite_batch(p, {b"data": os.getcwd}), "refusing to load"),
    ],
    ids=["truncated", "missing-member", "label-range", "bad-shape", "missing-key", "code"],
)
def test_unreadable_archive(tmp_path, damage, detail):
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_archive(archive)
    damage(archive)
    with pytest.raises(NascliError, match="not a readable CIFAR-10 archive") as info:
        load_cifar("cifar10", tmp_path, download=False)
    assert detail in str(info.value) and str(archive) in str(info.value)
    assert "\n" not in str(info.value)


def test_download_from_local_server(tmp_path, serve, monkeypatch):
    folder, url_of = serve
    archive = folder / "cifar-10-python.tar.gz"
    expected = write_cifar_archive(archive)
    served = archive.read_bytes()
    patch_spec(monkeypatch, url=url_of(archive.name), md5=hashlib.md5(served).hexdigest())
    root = tmp_path / "new" / "data"
    train_x, _, _, test_y = load_cifar("cifar10", root)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]
    assert (root / "cifar-10-python.tar.gz").read_bytes() == served
    np.testing.assert_array_equal(train_x.numpy(), expected["train_images"])
    assert test_y.tolist() == [0, 1, 2]


def test_download_md5_mismatch_removes_file(tmp_path, serve, monkeypatch):
    folder, url_of = serve
    write_cifar_archive(folder / "cifar-10-python.tar.gz")
    patch_spec(monkeypatch, url=url_of("cifar-10-python.tar.gz"), md5="0" * 32)
    with pytest.raises(NascliError, match="md5") as info:
        load_cifar("cifar10", tmp_path / "data")
    assert "\n" not in str(info.value)
    assert list((tmp_path / "data").iterdir()) == []


def test_download_http_error(tmp_path, serve, monkeypatch):
    _, url_of = serve
    patch_spec(monkeypatch, url=url_of("nothing-here.tar.gz"))
    with pytest.raises(NascliError, match=r"cannot download CIFAR-10 .*\(HTTP 404"):
        load_cifar("cifar10", tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []
