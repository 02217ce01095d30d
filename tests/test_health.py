"""Weight-sharing health (search/health.py): uniform-child training of the shared weights must
learn, so that the supernet's accuracy can tell children apart."""

import pytest
import torch
from omegaconf import OmegaConf

from nascli.config import CostConfig, DataConfig, TrainConfig
from nascli.cost.models import make_cost_model
from nascli.data import load_data
from nascli.nn.supernet import Supernet
from nascli.search.health import (
    accuracy_signal,
    spread_over_cost,
    supernet_top1,
    train_shared_uniform,
)
from nascli.search.tunas import TunasSearch, TunasSettings
from nascli.space.network import NetworkSettings
from nascli.space.spaces import SPACES
from nascli.train.distributed import Context

SETTINGS = NetworkSettings(resolution=16, num_classes=10, in_channels=1, width_multiplier=0.25)


def digits():
    cfg = {"name": "mnist", "resolution": 16, "num_classes": 10, "in_channels": 1}
    return load_data(OmegaConf.merge(OmegaConf.structured(DataConfig), cfg, {"crop_padding": 1}))


def uniform_training(data, same_start: bool, steps: int = 150):
    """The shared weights of a quarter-width ProxylessNAS supernet on the digits at 16 px,
    trained with uniform children (4 per step of 32 images) and the search's warmups."""
    space = SPACES["proxylessnas"]
    train = {"name": "t", "batch_size": 32, "epochs": 2, "lr_per_256": 0.4}
    train |= {"weight_decay": 5e-5, "label_smoothing": 0.1, "warmup_fraction": 0.05}
    train_cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), train)
    cost_cfg = OmegaConf.merge(OmegaConf.structured(CostConfig), {"name": "tunas_pixel1"})
    cost = make_cost_model(cost_cfg, space, SETTINGS)
    flags = {k: same_start for k in ("zero_init_residual", "tied_kernels", "zero_init_se")}
    settings = TunasSettings(archs_per_rank=4, **flags)
    torch.manual_seed(0)
    net = Supernet(space, SETTINGS, settings.supernet_init)
    ctx = Context(0, 1, torch.device("cpu"))
    search = TunasSearch(net, train_cfg, settings, data, cost, None, ctx, seed=0)
    losses = train_shared_uniform(search, steps)
    children = spread_over_cost(space, cost, 4, seed=0)
    return sum(losses[-10:]) / 10, [supernet_top1(net, c, data) for c in children]


@pytest.mark.slow
def test_uniform_child_training_learns_with_the_same_start_and_not_without():
    """The regression this guards: with TuNAS's independent initialisers the loss stays at
    chance (ln 10 = 2.30) over a short budget and children score ~10%; with every child
    starting as the same function it falls well below and every child scores far above."""
    data = digits()
    loss, accuracies = uniform_training(data, same_start=True)
    assert loss < 2.0 and min(accuracies) > 0.3, (loss, accuracies)
    control_loss, control = uniform_training(data, same_start=False)
    assert control_loss > 2.2 and max(control) < 0.2, (control_loss, control)


def test_children_spread_over_the_cost_range_are_sorted_and_span_it():
    space = SPACES["proxylessnas"]
    cost_cfg = OmegaConf.merge(OmegaConf.structured(CostConfig), {"name": "tunas_pixel1"})
    cost = make_cost_model(cost_cfg, space, SETTINGS)
    children = spread_over_cost(space, cost, 6, seed=1, pool=500)
    costs = [cost.cost(c) for c in children]
    assert costs == sorted(costs) and len(set(children)) == 6
    pool = cost(torch.tensor(children)).tolist()
    assert pool == pytest.approx(costs)
    assert costs[-1] - costs[0] > 40  # ms: the cheapest and the dearest of 500 draws


def test_the_accuracy_signal_is_clear_a_third_of_the_way_from_chance():
    signal = accuracy_signal([0.1] * 90 + [0.39] * 10, num_classes=10)
    assert signal.chance == 0.1 and signal.final == pytest.approx(0.39)
    assert signal.threshold == pytest.approx(0.4) and not signal.clear
    assert "chosen by its cost alone" in signal.warning()
    clear = accuracy_signal([0.1] * 90 + [0.9] * 10, num_classes=10)
    assert clear.clear and clear.warning() is None
    # Only the last tenth counts: an early spike is not a signal.
    assert not accuracy_signal([0.9] * 10 + [0.1] * 90, num_classes=10).clear
