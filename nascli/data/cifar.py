"""CIFAR-10 / CIFAR-100 from the official python archives, downloaded when allowed."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nascli.errors import NascliError


@dataclass(frozen=True)
class CifarArchive:
    """Where one CIFAR archive comes from and how its pickled batches are laid out."""

    filename: str
    url: str
    md5: str
    folder: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    label_key: bytes


CIFAR_ARCHIVES: dict[str, CifarArchive] = {
    "cifar10": CifarArchive(
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
    ),
    "cifar100": CifarArchive(
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        ("train",),
        ("test",),
        b"fine_labels",
    ),
}
_DISPLAY = {"cifar10": ("CIFAR-10", 10), "cifar100": ("CIFAR-100", 100)}
# The batches are pickles, so a tampered file could run code; these globals are all that
# numpy arrays written by Python 2 (the official files) or by Python 3 need.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, pickle.UnpicklingError)
_DECODE_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError)


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    # KeyError's str() is the repr of its key; the key itself reads better.
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    text = " ".join(text.split()) or "no detail"
    return f"{type(error).__name__}: {text}"[:160]


def _decode(raw: bytes, label_key: bytes, classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise ValueError("data is not a uint8 array")
    images = data.reshape(-1, 3, 32, 32)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (len(images),):
        raise ValueError(f"{len(images)} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels outside [0, {classes})")
    return images, labels


def _read_members(source: Path, spec: CifarArchive) -> dict[str, bytes]:
    wanted = {f"{spec.folder}/{m}": m for m in spec.train_members + spec.test_members}
    raw: dict[str, bytes] = {}
    if source.is_dir():
        raw = {m: (source / m).read_bytes() for m in wanted.values() if (source / m).is_file()}
    else:
        # Reading in archive order decompresses the gzip stream once instead of once per seek.
        with tarfile.open(source, "r:gz") as tar:
            for info in tar:
                member = wanted.get(info.name.removeprefix("./"))
                if member and (file := tar.extractfile(info)) is not None:
                    raw[member] = file.read()
    missing = [name for name, m in wanted.items() if m not in raw]
    if missing:
        raise KeyError(f"no {missing[0]}")
    return raw


def _download(spec: CifarArchive, display: str, root: Path) -> Path:
    dest = root / spec.filename
    tmp = dest.with_name(f".{spec.filename}.part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(spec.url, timeout=30) as response, tmp.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != spec.md5:
            raise NascliError(
                f"downloaded {spec.filename} from {spec.url} has md5 {digest.hexdigest()}, "
                f"expected {spec.md5}; removed it, try again or put a good copy in {root}"
            )
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException) as error:
        raise NascliError(
            f"cannot download {display} from {spec.url} ({_reason(error)}); put {spec.filename} "
            f"in {root} or set data.root=<folder holding it>"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def load_cifar(
    name: str, root: str | Path, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (train_images uint8 N×3×32×32, train_labels int64 N, test_images, test_labels)."""
    if name not in CIFAR_ARCHIVES:
        raise NascliError(f"unknown dataset {name!r}; choose from {', '.join(CIFAR_ARCHIVES)}")
    spec, (display, classes) = CIFAR_ARCHIVES[name], _DISPLAY[name]
    root = Path(root).expanduser()
    source = root / spec.folder
    if not source.is_dir():
        source = root / spec.filename
        if not source.is_file():
            if not download:
                raise NascliError(
                    f"{display} not found: put {spec.filename} (or the extracted {spec.folder}/) "
                    f"in {root}, or set data.download=true"
                )
            source = _download(spec, display, root)
    where = ""
    try:
        raw = _read_members(source, spec)
        parts = {}
        for member in spec.train_members + spec.test_members:
            where = f"{member}: "
            parts[member] = _decode(raw.pop(member), spec.label_key, classes)
    except (*_READ_ERRORS, *_DECODE_ERRORS) as error:
        raise NascliError(
            f"{source} is not a readable {display} archive ({where}{_reason(error)})"
        ) from None
    out: list[torch.Tensor] = []
    for members in (spec.train_members, spec.test_members):
        images, labels = zip(*(parts[m] for m in members), strict=True)
        out += [torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))]
    return out[0], out[1], out[2], out[3]
