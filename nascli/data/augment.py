"""Batched augmentation and normalisation on the training device.

Random parameters come from a generator keyed by (seed, epoch, step), drawn for the *global* batch
on the CPU: the same sample gets the same crop whatever the number of ranks, and a resumed run
draws exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def keyed_generator(*keys: int) -> torch.Generator:
    """A CPU generator whose state depends only on `keys` (well mixed, stable across runs)."""
    seed = int(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


def crop_flip_params(
    batch: int, padding: int, flip: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets (y, x) in [0, 2·padding] and flip flags for a global batch."""
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    return offsets[0], offsets[1], flips & flip


def crop_flip(
    images: torch.Tensor, padding: int, oy: torch.Tensor, ox: torch.Tensor, flips: torch.Tensor
) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, as one gather over the whole batch."""
    b, c, h, w = images.shape
    device = images.device
    oy, ox, flips = oy.to(device), ox.to(device), flips.to(device)
    if padding:
        images = F.pad(images, (padding, padding, padding, padding))
    rows = oy[:, None] + torch.arange(h, device=device)
    cols = ox[:, None] + torch.arange(w, device=device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return images[
        torch.arange(b, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


class Normalize:
    """uint8 images -> float input of the configured size and channels, standardised."""

    def __init__(self, mean: list[float], std: list[float], resolution: int, channels: int):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.resolution = resolution
        self.channels = channels

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            size = (self.resolution, self.resolution)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        if x.shape[1] != self.channels:  # grey data for a network configured for colour
            x = x.expand(-1, self.channels, -1, -1)
        return x
