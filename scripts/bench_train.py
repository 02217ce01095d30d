"""Benchmark: training throughput of nascli's engine against a minimal hand-written loop.

Both train the same model (ProxylessNAS-Mobile at the small-image proxy settings), on the same
batches (the embedded digits, the same batched augmentation), with SGD+Nesterov at the same batch
size, for the same number of steps; runs alternate to share any drift of the machine. The engine's
time includes everything it does besides the step: lr schedule, EMA-free bookkeeping, syncs every
`log_every` steps, the progress bar and checkpoints. Target: engine ≥ 0.95× the plain loop.

    python scripts/bench_train.py [--epochs 2] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from nascli.config import DataConfig, TrainConfig
from nascli.data import load_data
from nascli.nn.builder import build_model
from nascli.report.machine import machine_line
from nascli.space.arch import get_space
from nascli.space.network import NetworkSettings, decode
from nascli.space.references import references_in
from nascli.train.distributed import Context
from nascli.train.engine import Trainer

CONF = Path(__file__).resolve().parent.parent / "conf"


def model() -> torch.nn.Module:
    space = get_space("proxylessnas")
    settings = NetworkSettings(resolution=32, num_classes=10, in_channels=1)
    torch.manual_seed(0)
    return build_model(decode(space, references_in(space)["proxylessnas_mobile"], settings))


def plain_loop(data, recipe, epochs: int) -> float:
    net = model().train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        for x, y in data.batches("train", 0, epoch, 0, recipe.batch_size):
            loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            images += len(y)
    loss.item()
    return images / (time.perf_counter() - start)


def engine(data, recipe, epochs: int) -> float:
    cfg = OmegaConf.merge(recipe, {"epochs": epochs})
    cpu = Context(rank=0, world=1, device=torch.device("cpu"))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            model(), cfg, data, cpu, seed=0, run_dir=Path(run_dir), fingerprint={},
            console=Console(quiet=True),
        )  # fmt: skip
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
    return trainer.total_steps * cfg.batch_size / seconds


def data_only(data, recipe) -> float:
    images = 0
    start = time.perf_counter()
    for x, _ in data.batches("train", 0, 0, 0, recipe.batch_size):
        images += len(x)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    schema = OmegaConf.structured(DataConfig)
    # No valid split: neither side evaluates, both only train.
    data_cfg = OmegaConf.merge(
        schema, OmegaConf.load(CONF / "data/mnist.yaml"), {"valid_fraction": 0}
    )
    data = load_data(data_cfg)
    recipe = OmegaConf.merge(
        OmegaConf.structured(TrainConfig), OmegaConf.load(CONF / "train/cpu_quick.yaml")
    )
    plain, ours = [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(data, recipe, args.epochs))
        ours.append(engine(data, recipe, args.epochs))
    table = Table(title=f"training throughput, batch {recipe.batch_size}, images/s (median of "
                  f"{args.repeats} runs of {args.epochs} epochs)")  # fmt: skip
    table.add_column("what")
    table.add_column("images/s", justify="right")
    table.add_row("data pipeline alone (crop, normalise)", f"{data_only(data, recipe):,.0f}")
    table.add_row("plain PyTorch loop", f"{statistics.median(plain):,.0f}")
    table.add_row("nascli engine (cpu_quick)", f"{statistics.median(ours):,.0f}")
    ratio = statistics.median(ours) / statistics.median(plain)
    table.add_row("ratio engine / plain (target ≥ 0.95)", f"{ratio:.3f}")
    console = Console()
    console.print(table)
    console.print(machine_line())


if __name__ == "__main__":
    main()
