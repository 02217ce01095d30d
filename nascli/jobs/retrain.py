"""`nascli retrain`: train an architecture from scratch with a named recipe, then test it."""

from __future__ import annotations

import time
from typing import Any

import torch
from omegaconf import DictConfig
from rich.table import Table

from nascli.config import configured_network, fingerprint_sections, run_directory
from nascli.cost.analytic import network_cost
from nascli.data import load_data
from nascli.errors import Stopped
from nascli.files import write_json
from nascli.nn.builder import build_model
from nascli.report.console import RunConsole
from nascli.report.records import arch_record
from nascli.report.summary import RunSummary
from nascli.report.tables import human
from nascli.train.distributed import context
from nascli.train.engine import Interrupted, Trainer


def fingerprint(cfg: DictConfig, indices: str, world: int) -> dict[str, Any]:
    """What identifies a training run: resuming demands that all of it is unchanged."""

    return {
        "command": "retrain",
        "indices": indices,
        **fingerprint_sections(cfg, "space", "data", "train"),
        "seed": cfg.seed,
        "world_size": world,
    }


def history_table(history: list[dict[str, Any]]) -> Table:
    table = Table(title="training", title_justify="left")
    for column in ("epoch", "train loss", "train top1", "valid loss", "valid top1", "lr", "time"):
        table.add_column(column, justify="right")
    for row in history:
        table.add_row(
            str(row["epoch"]),
            f"{row['train_loss']:.3f}",
            f"{row['train_top1']:.2%}",
            f"{row['valid_loss']:.3f}" if "valid_loss" in row else "–",
            f"{row['valid_top1']:.2%}" if "valid_top1" in row else "–",
            f"{row['lr']:.3g}",
            f"{row['train_seconds']:.0f} s",
        )
    return table


def run(cfg: DictConfig) -> None:
    started = time.perf_counter()
    ctx = context(cfg.device)
    console = RunConsole(quiet=not ctx.is_main)
    arch, network = configured_network(cfg)
    cost = network_cost(network)
    torch.manual_seed(cfg.seed)
    model = build_model(network)
    data = load_data(cfg.data)
    out = run_directory()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "arch.json", arch_record(arch, network, cost))
    console.print(
        f"retrain {arch.space} · {cost.params:,} params · {human(cost.macs)} MACs · "
        f"data {data.name} ({', '.join(f'{k} {v:,}' for k, v in data.sizes.items())}) · "
        f"recipe {cfg.train.name} · {ctx.world} × {ctx.device}",
        soft_wrap=True,
    )
    trainer = Trainer(
        model,
        cfg.train,
        data,
        ctx,
        seed=cfg.seed,
        run_dir=out,
        fingerprint=fingerprint(cfg, arch.text, ctx.world),
        console=console,
        tensorboard=cfg.tensorboard,
    )
    try:
        outcome = trainer.fit()
    except Interrupted as stop:
        raise Stopped(stop.signum, f"at step {stop.step}", out) from None
    test = trainer.evaluate("test")
    summary = RunSummary.of_architecture(
        arch,
        cost,
        command="retrain",
        strategy=None,
        seed=cfg.seed,
        world_size=ctx.world,
        valid_top1=outcome.best_valid_top1,
        test_top1=test.top1,
        images=outcome.steps * cfg.train.batch_size,
        seconds=outcome.train_seconds,
        wall_seconds=time.perf_counter() - started,
        details={
            "data": data.name,
            "recipe": cfg.train.name,
            "test_loss": test.loss,
            "test_images": test.images,
            "best_epoch": outcome.best_epoch,
            "epochs": cfg.train.epochs,
            "steps": outcome.steps,
            "images_per_second": outcome.images_per_second,
            "resumed_from_step": outcome.resumed_from,
            "replica_checksums": outcome.replica_checksums,
            "device": str(ctx.device),
        },
    )
    if ctx.is_main:
        summary.write(out / "summary.json")
    console.print(history_table(outcome.history))
    console.print(
        f"test top1 [bold]{test.top1:.2%}[/] on {test.images:,} images · best valid "
        f"{outcome.best_valid_top1 or 0:.2%} (epoch {outcome.best_epoch}) · "
        f"{outcome.images_per_second:,.0f} img/s · wrote {out}/summary.json, last.pt, best.pt",
        soft_wrap=True,
    )
