"""ImageNet-layout folders (root/train/<class>/*, root/val/<class>/*) decoded by torchvision.

torchvision is an optional extra: JPEG decoding and the Inception-style crop run per image in
DataLoader worker processes; the flip and normalisation run batched on the training device.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from nascli.data.augment import Normalize, keyed_generator
from nascli.data.source import SPLITS, Batch, DataSource, split_fractions, stratified_split
from nascli.errors import NascliError

IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
EVAL_CROP_FRACTION = 0.875  # TuNAS's eval crop: 224 of 256 of the short side


def import_torchvision() -> Any:
    try:
        import torchvision
    except Exception as error:  # missing, or a wheel built for another torch
        raise NascliError(
            f"ImageFolder data needs torchvision ({type(error).__name__}: {error}); install a "
            "torchvision build matching your torch: pip install 'nascli[vision]'"
        ) from None
    return torchvision


class ImageFolderData(DataSource):
    """Train and valid (a fixed stratified hold-out of root/train) and test (root/val)."""

    def __init__(self, cfg: Any):
        tv = import_torchvision()
        transforms, datasets = tv.transforms, tv.datasets
        root = Path(cfg.root or ".")
        for folder in ("train", "val"):
            if not (root / folder).is_dir():
                raise NascliError(f"{root / folder} not found: data.root must hold train/ and val/")
        self.name = cfg.name
        self.num_classes = cfg.num_classes
        self.workers = cfg.workers
        self.flip = cfg.flip
        bicubic = transforms.InterpolationMode.BICUBIC
        res = cfg.resolution
        train_tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(res, (0.08, 1.0), (3 / 4, 4 / 3), bicubic),
                transforms.PILToTensor(),
            ]
        )
        eval_tf = transforms.Compose(
            [
                transforms.Resize(round(res / EVAL_CROP_FRACTION), bicubic),
                transforms.CenterCrop(res),
                transforms.PILToTensor(),
            ]
        )
        train = datasets.ImageFolder(root / "train", transform=train_tf)
        if len(train.classes) > cfg.num_classes:
            raise NascliError(
                f"{root / 'train'} has {len(train.classes)} classes; set "
                f"data.num_classes={len(train.classes)}"
            )
        index = stratified_split(torch.tensor(train.targets), split_fractions(cfg, has_test=True))
        valid = datasets.ImageFolder(root / "train", transform=eval_tf)
        self.sets = {
            "train": (train, index["train"]),
            "valid": (valid, index["valid"]),
            "test": (datasets.ImageFolder(root / "val", transform=eval_tf), None),
        }
        self.sizes = {
            name: len(ds) if idx is None else len(idx) for name, (ds, idx) in self.sets.items()
        }
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD, res, cfg.in_channels)
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> ImageFolderData:
        self.device = device
        return self

    def _loader(self, split: str, order: list[int], batch: int) -> Iterator[Batch]:
        dataset, subset = self.sets[split]
        indices = order if subset is None else subset[order].tolist()
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, indices),
            batch_size=batch,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device)

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
        # Worker crops are seeded through torch's RNG: repeatable, but not bit-exact on resume.
        order = torch.randperm(self.sizes[split], generator=keyed_generator(seed, epoch))
        local = global_batch // world
        steps = range(start_step, self.steps_per_epoch(global_batch, split))
        mine = [
            i
            for step in steps
            for i in order[step * global_batch + rank * local :][:local].tolist()
        ]
        for step, (images, labels) in zip(steps, self._loader(split, mine, local), strict=True):
            if augment and self.flip:
                generator = keyed_generator(seed, epoch, step, 1 + SPLITS.index(split))
                flips = (torch.rand(global_batch, generator=generator) < 0.5)[
                    rank * local : (rank + 1) * local
                ].to(images.device)
                images = torch.where(flips[:, None, None, None], images.flip(-1), images)
            yield self.normalize(images), labels

    def eval_batches(
        self, split: str, batch_size: int, rank: int = 0, world: int = 1
    ) -> Iterator[Batch]:
        for images, labels in self._loader(
            split, list(range(rank, self.sizes[split], world)), batch_size
        ):
            yield self.normalize(images), labels
