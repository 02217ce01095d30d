"""One interface over every data set: deterministic, shardable batches of float tensors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch

from nascli.data.augment import Normalize, crop_flip, crop_flip_params, keyed_generator
from nascli.errors import NascliError

SPLITS = ("train", "valid", "test")
SPLIT_SEED = 0  # the train/valid/test split is fixed, whatever the run's seed
Batch = tuple[torch.Tensor, torch.Tensor]


class DataSource(ABC):
    """Batches for training (shuffled per epoch, augmented) and evaluation (in order).

    `global_batch` images per step are split evenly over `world` ranks; rank `rank` gets its
    slice, so N ranks together see exactly what one process sees with the same global batch.
    """

    name: str
    num_classes: int
    sizes: dict[str, int]

    def steps_per_epoch(self, global_batch: int, split: str = "train") -> int:
        steps = self.sizes[split] // global_batch
        if steps == 0:
            raise NascliError(
                f"the {split} split of {self.name} has {self.sizes[split]} images, fewer than one "
                f"batch of {global_batch}; lower train.batch_size"
            )
        return steps

    @abstractmethod
    def batches(
        self,
        split: str,
        seed: int,
        epoch: int,
        start_step: int,
        global_batch: int,
        rank: int = 0,
        world: int = 1,
        augment: bool = True,
    ) -> Iterator[Batch]:
        """The epoch's shuffled batches from `start_step` on (the order depends on seed, epoch)."""

    @abstractmethod
    def eval_batches(
        self, split: str, batch_size: int, rank: int = 0, world: int = 1
    ) -> Iterator[Batch]:
        """Every image of `split` once, in order; rank r gets images r, r+world, ..."""

    def to(self, device: torch.device) -> DataSource:
        return self


def stratified_split(
    labels: torch.Tensor, fractions: dict[str, float], seed: int = SPLIT_SEED
) -> dict[str, torch.Tensor]:
    """Index sets with the same class proportions; the first split listed gets the remainder."""
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in fractions}
    names = list(fractions)
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        start = 0
        for name in names[1:]:
            count = round(fractions[name] * len(members))
            parts[name].append(members[start : start + count])
            start += count
        parts[names[0]].append(members[start:])
    return {name: torch.sort(torch.cat(chunks)).values for name, chunks in parts.items()}


class InMemoryData(DataSource):
    """uint8 image tensors held on the training device; augmentation is batched there too."""

    def __init__(
        self,
        name: str,
        splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
        num_classes: int,
        resolution: int,
        in_channels: int,
        crop_padding: int,
        flip: bool,
    ):
        self.name = name
        self.num_classes = num_classes
        self.splits = splits
        self.sizes = {split: len(labels) for split, (_, labels) in splits.items()}
        self.crop_padding = crop_padding
        self.flip = flip
        images, labels = splits["train"]
        stored = images.shape[1]
        if stored not in (1, in_channels):
            raise NascliError(
                f"{name} images have {stored} channels; set data.in_channels={stored}"
            )
        if int(labels.max()) >= num_classes:
            raise NascliError(
                f"{name} has labels up to {int(labels.max())}; set "
                f"data.num_classes={int(labels.max()) + 1} or more"
            )
        # Per-channel statistics of the train split (a sample keeps this fast on big sets).
        sample = images[:10_000].float()
        mean = sample.mean(dim=(0, 2, 3)).tolist()
        std = sample.std(dim=(0, 2, 3)).clamp_min(1.0).tolist()
        self.normalize = Normalize(mean, std, resolution, in_channels)

    def to(self, device: torch.device) -> InMemoryData:
        self.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self.splits.items()}
        return self

    def batches(
        self,
        split: str,
        seed: int,
        epoch: int,
        start_step: int,
        global_batch: int,
        rank: int = 0,
        world: int = 1,
        augment: bool = True,
    ) -> Iterator[Batch]:
        images, labels = self.splits[split]
        order = torch.randperm(
            len(labels), generator=keyed_generator(seed, epoch, SPLITS.index(split))
        )
        local = global_batch // world
        for step in range(start_step, self.steps_per_epoch(global_batch, split)):
            chosen = order[step * global_batch : (step + 1) * global_batch]
            params: Any = None
            if augment:
                generator = keyed_generator(seed, epoch, step, 1 + SPLITS.index(split))
                params = crop_flip_params(global_batch, self.crop_padding, self.flip, generator)
            mine = slice(rank * local, (rank + 1) * local)
            index = chosen[mine].to(labels.device)
            batch = images[index]
            if params is not None:
                batch = crop_flip(batch, self.crop_padding, *(p[mine] for p in params))
            yield self.normalize(batch), labels[index]

    def eval_batches(
        self, split: str, batch_size: int, rank: int = 0, world: int = 1
    ) -> Iterator[Batch]:
        images, labels = self.splits[split]
        mine = torch.arange(rank, len(labels), world, device=labels.device)
        for start in range(0, len(mine), batch_size):
            index = mine[start : start + batch_size]
            yield self.normalize(images[index]), labels[index]


def split_fractions(cfg: Any, has_test: bool) -> dict[str, float]:
    fractions = {"train": 0.0, "valid": float(cfg.valid_fraction)}
    if not has_test:
        fractions["test"] = float(cfg.test_fraction)
    if sum(fractions.values()) >= 1.0:
        raise NascliError("data.valid_fraction + data.test_fraction must be below 1")
    return fractions


def in_memory(
    cfg: Any, images: torch.Tensor, labels: torch.Tensor, test: tuple | None = None
) -> InMemoryData:
    """Split (stratified, fixed) and wrap one labelled image tensor; `test` if the set has one."""
    index = stratified_split(labels, split_fractions(cfg, has_test=test is not None))
    splits = {name: (images[i], labels[i]) for name, i in index.items()}
    if test is not None:
        splits["test"] = test
    return InMemoryData(
        cfg.name,
        splits,
        num_classes=cfg.num_classes,
        resolution=cfg.resolution,
        in_channels=cfg.in_channels,
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
    )


def load_data(cfg: Any) -> DataSource:
    """The data set `cfg` (the `data` config group) names."""
    name = cfg.name
    if name == "mnist":
        from nascli.data.embedded import load_mnist_5k

        return in_memory(cfg, *load_mnist_5k())
    if name == "digits":
        from nascli.data.embedded import load_sklearn_digits

        return in_memory(cfg, *load_sklearn_digits())
    if name in ("cifar10", "cifar100"):
        from nascli.data.cifar import load_cifar

        if cfg.root is None:
            raise NascliError(f"data={name} needs data.root=<folder for the archive>")
        train_x, train_y, test_x, test_y = load_cifar(name, cfg.root, download=cfg.download)
        return in_memory(cfg, train_x, train_y, test=(test_x, test_y))
    if name == "synthetic":
        generator = torch.Generator().manual_seed(SPLIT_SEED)
        shape = (cfg.num_samples, cfg.in_channels, cfg.resolution, cfg.resolution)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, cfg.num_classes, (cfg.num_samples,), generator=generator)
        return in_memory(cfg, images, labels)
    if name in ("imagenet", "imagefolder"):
        from nascli.data.imagefolder import ImageFolderData

        return ImageFolderData(cfg)
    raise NascliError(f"unknown data set {name!r}")
