import sys

import pytest
import torch
from omegaconf import OmegaConf

from nascli.config import DataConfig
from nascli.data import load_data
from nascli.data.augment import Normalize, crop_flip, crop_flip_params, keyed_generator
from nascli.data.source import stratified_split
from nascli.errors import NascliError
from tests.test_data_cifar import write_cifar_archive


def data_config(name: str, **overrides) -> DataConfig:
    base = OmegaConf.load(f"conf/data/{name}.yaml")
    return OmegaConf.merge(OmegaConf.structured(DataConfig), base, overrides)


@pytest.fixture(scope="module")
def mnist():
    return load_data(data_config("mnist"))


def test_embedded_mnist_is_real_offline_and_split_stratified(mnist):
    assert mnist.sizes == {"train": 3000, "valid": 1000, "test": 1000}
    seen = []
    for split, (images, labels) in mnist.splits.items():
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 32, 32)
        assert torch.bincount(labels, minlength=10).tolist() == [mnist.sizes[split] // 10] * 10
        assert images[:, :, :2].max() == 0  # the 2-pixel border added around 28×28 digits
        assert images.float().mean() > 20  # real strokes, not an empty placeholder
        seen.append(images.flatten(1))
    everything = torch.cat(seen)
    assert len(torch.unique(everything, dim=0)) == len(everything)  # no image in two splits


def test_split_is_fixed_whatever_the_run_seed():
    labels = torch.arange(100) % 4
    first = stratified_split(labels, {"train": 0, "valid": 0.2, "test": 0.1})
    torch.manual_seed(123)
    again = stratified_split(labels, {"train": 0, "valid": 0.2, "test": 0.1})
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert [len(first[k]) for k in ("train", "valid", "test")] == [72, 20, 8]


def test_batches_are_deterministic_and_resume_mid_epoch(mnist):
    full = list(mnist.batches("train", seed=3, epoch=1, start_step=0, global_batch=256))
    again = list(mnist.batches("train", seed=3, epoch=1, start_step=0, global_batch=256))
    tail = list(mnist.batches("train", seed=3, epoch=1, start_step=4, global_batch=256))
    other_epoch = next(mnist.batches("train", seed=3, epoch=2, start_step=0, global_batch=256))
    assert len(full) == 3000 // 256
    for (x, y), (x2, y2) in zip(full, again, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for (x, y), (x2, y2) in zip(full[4:], tail, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(full[0][1], other_epoch[1])


def test_ranks_together_see_exactly_the_single_process_batch(mnist):
    single = next(mnist.batches("train", 0, 0, 0, global_batch=64))
    shards = [
        next(mnist.batches("train", 0, 0, 0, global_batch=64, rank=r, world=2)) for r in (0, 1)
    ]
    assert torch.equal(torch.cat([s[0] for s in shards]), single[0])  # augmentation included
    assert torch.equal(torch.cat([s[1] for s in shards]), single[1])
    evals = [torch.cat([y for _, y in mnist.eval_batches("test", 300, r, 2)]) for r in (0, 1)]
    assert sorted(torch.cat(evals).tolist()) == sorted(mnist.splits["test"][1].tolist())


def test_crop_flip_against_slicing_by_hand():
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    oy, ox, flips = torch.tensor([0, 2]), torch.tensor([1, 0]), torch.tensor([False, True])
    out = crop_flip(images, 1, oy, ox, flips)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    assert torch.equal(out[0], padded[0, :, 0:4, 1:6])
    assert torch.equal(out[1], padded[1, :, 2:6, 0:5].flip(-1))
    no_op = crop_flip(images, 0, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                      torch.tensor([False, False]))  # fmt: skip
    assert torch.equal(no_op, images)


def test_augmentation_parameters_depend_only_on_their_key():
    a = crop_flip_params(8, 4, True, keyed_generator(1, 2, 3))
    b = crop_flip_params(8, 4, True, keyed_generator(1, 2, 3))
    c = crop_flip_params(8, 4, True, keyed_generator(1, 2, 4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert not crop_flip_params(64, 4, False, keyed_generator(0))[2].any()  # flip disabled
    offsets = crop_flip_params(1000, 2, True, keyed_generator(0))[0]
    assert offsets.min() == 0 and offsets.max() == 4


def test_normalize_resizes_and_expands_grey_to_colour():
    images = torch.full((2, 1, 8, 8), 10, dtype=torch.uint8)
    out = Normalize([10.0], [2.0], resolution=16, channels=3)(images)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, torch.zeros_like(out))


def test_digits_and_synthetic_sets():
    digits = load_data(data_config("digits", resolution=16))
    x, _ = next(digits.eval_batches("test", 7))
    assert x.shape == (7, 1, 16, 16) and sum(digits.sizes.values()) == 1797
    synthetic = load_data(data_config("synthetic", resolution=20, in_channels=3, num_samples=100))
    x, _ = next(synthetic.batches("train", 0, 0, 0, global_batch=10))
    assert x.shape == (10, 3, 20, 20)


def test_cifar_archive_through_the_data_group(tmp_path):
    write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10", per_batch=20, n_test=6)
    data = load_data(data_config("cifar10", root=str(tmp_path), download=False))
    assert data.sizes == {"train": 90, "valid": 10, "test": 6}
    x, y = next(data.batches("train", 0, 0, 0, global_batch=8))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64


def test_mismatched_settings_are_one_line_errors(mnist):
    with pytest.raises(NascliError, match="num_classes"):
        load_data(data_config("mnist", num_classes=5))
    with pytest.raises(NascliError, match="fewer than one batch"):
        mnist.steps_per_epoch(4096)
    with pytest.raises(NascliError, match=r"data\.root"):
        load_data(data_config("cifar10", root=None))


def test_imagefolder_without_torchvision_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as on a machine without it
    with pytest.raises(NascliError, match=r"pip install 'nascli\[vision\]'"):
        load_data(data_config("imagefolder", root=str(tmp_path), num_classes=2))
