"""Weight-sharing health: does the supernet score children as training them alone would?

A one-shot search is only as good as its accuracy signal. These pieces measure it the way
`scripts/bench_supernet.py` and the tests do: train the shared weights as the search does while
the policy is still uniform (children drawn independently per decision, the search's op and
filter warmups, no rewards), then score fixed children through the supernet (BN on batch
statistics, as in the reward pass) and compare with the same children trained standalone on the
same number of images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from rich.console import Console

from nascli.cost.models import CostModel
from nascli.data.source import DataSource
from nascli.nn.builder import build_model
from nascli.nn.supernet import Sample, Supernet
from nascli.search.tunas import TunasSearch
from nascli.space.arch import sample_indices
from nascli.space.network import NetworkSettings, decode
from nascli.space.spaces import SearchSpace
from nascli.train.distributed import Context
from nascli.train.engine import Trainer


def train_shared_uniform(search: TunasSearch, steps: int | None = None) -> list[float]:
    """Train `search`'s shared weights for `steps` (default: its whole schedule) with uniform
    children and its warmups; the policy is never updated. Returns each step's mean loss."""
    losses = []
    for t in range(search.total_steps if steps is None else steps):
        p_op, p_filter = search.warmups(t)
        indices, mixed, _ = search.sample(t, p_op, p_filter)
        loss = search.update_weights(t, search.local_samples(indices, mixed))
        losses.append(float(search.ctx.all_reduce(loss.reshape(1)).item()) / search.archs)
    return losses


@torch.no_grad()
def batch_statistics_top1(
    forward: Callable[[torch.Tensor], torch.Tensor],
    data: DataSource,
    split: str = "valid",
    batch: int = 250,
) -> float:
    """Top-1 of `forward` on `split` in fixed shuffled batches of `batch` (the remainder is
    left out). Shuffled: the stored splits are sorted by class, and BN normalises with each
    batch's own statistics here."""
    correct = count = 0
    for images, labels in data.batches(split, 0, 0, 0, batch, augment=False):
        correct += int((forward(images).argmax(1) == labels).sum())
        count += len(labels)
    return correct / max(count, 1)


def supernet_top1(
    net: Supernet, indices: Sequence[int], data: DataSource, split: str = "valid", batch: int = 250
) -> float:
    """Top-1 of one child through the supernet, BN on batch statistics as in TuNAS's reward
    pass, as in TuNAS's search."""
    was_training = net.training
    net.eval()  # dropout off; the supernet's BN uses batch statistics in every mode
    sample = Sample.of(indices)
    top1 = batch_statistics_top1(lambda x: net(x, sample), data, split, batch)
    net.train(was_training)
    return top1


def standalone_top1(
    space: SearchSpace,
    indices: Sequence[int],
    settings: NetworkSettings,
    train_cfg,
    data: DataSource,
    seed: int,
    device: str = "cpu",
    batch: int = 250,
) -> tuple[float, float]:
    """Valid top-1 of the child trained alone from scratch with the recipe `train_cfg`: as
    `supernet_top1` evaluates it through the supernet (BN on the statistics of the same
    batches), and as a deployed model is evaluated (BN on its running statistics, which after
    a few hundred steps at TF's momentum 0.99 still lag the weights)."""
    torch.manual_seed(seed)
    model = build_model(decode(space, tuple(int(i) for i in indices), settings))
    ctx = Context(0, 1, torch.device(device))
    trainer = Trainer(
        model, train_cfg, data, ctx, seed=seed, run_dir=None, fingerprint={},
        console=Console(quiet=True),
    )  # fmt: skip
    trainer.fit()
    running = trainer.evaluate("valid").top1
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()  # batch statistics; dropout stays off
    return batch_statistics_top1(model, data, "valid", batch), running


def spread_over_cost(
    space: SearchSpace, cost_model: CostModel, num: int, seed: int, pool: int = 4000
) -> list[tuple[int, ...]]:
    """`num` uniformly drawn architectures at evenly spaced quantiles of the cost, from the
    cheapest to the dearest of a pool: children that differ in what a search must tell apart."""
    generator = torch.Generator().manual_seed(seed)
    drawn = sample_indices(space, pool, generator)
    order = cost_model(drawn).argsort()
    picks = torch.linspace(0, pool - 1, num).round().long()
    return [tuple(int(i) for i in drawn[order[p]]) for p in picks]


#: The reward accuracy counts as a signal once it covers a third of the way from chance to 100%.
CLEAR_FRACTION = 1 / 3


@dataclass(frozen=True)
class AccuracySignal:
    """How far a search's reward accuracy (the supernet's valid top-1 on the reward batches)
    rose above chance by the end of the run."""

    chance: float
    final: float  # mean over the last tenth of the logged steps
    threshold: float

    @property
    def clear(self) -> bool:
        return self.final >= self.threshold

    def warning(self) -> str | None:
        """None when the signal is clear; else one line for the user."""
        if self.clear:
            return None
        return (
            f"the supernet's reward accuracy ended at {self.final:.1%} (chance {self.chance:.1%}"
            f", clear from {self.threshold:.1%}): it never told architectures apart, so this "
            "result was chosen by its cost alone. Train the shared weights longer "
            "(train.epochs=...), with a larger recipe, or check the supernet's start "
            "(strategy.zero_init_residual / tied_kernels / zero_init_se)"
        )


def accuracy_signal(qualities: Sequence[float], num_classes: int) -> AccuracySignal:
    chance = 1.0 / num_classes
    last = max(1, round(0.1 * len(qualities)))
    final = sum(qualities[-last:]) / last if qualities else chance
    return AccuracySignal(chance, final, chance + CLEAR_FRACTION * (1 - chance))
