"""Benchmark: does NAS-RL's controller learn at this scale, and what does it cost?

For each seed, side by side on the same data, recipe and evaluator:
* `strategy=nasrl` (the LSTM controller, m children per step) for N children, and
* N children drawn uniformly at random from the same space, trained the same way.

Prints, per seed, the mean reward ((max valid top-1 of the last epochs)³) of the NAS-RL
children in the last half of the run against the uniform children's, and the controller's time
(sampling and updates) as a share of the wall time. Every child is trained from scratch, so the
run takes N × 2 × seeds child trainings.

    python scripts/bench_nasrl.py [--space proxylessnas] [--layers N] [--children 16]
        [--per-step 4] [--seeds 0 1 2] [--epochs 1] [--width 0.25] [--resolution 32]
        [--threads 1] [--out runs/bench_nasrl]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from rich.console import Console
from rich.table import Table

from nascli.config import configured_space, controller_settings, network_settings
from nascli.cost.models import make_cost_model
from nascli.data import load_data
from nascli.report.machine import machine_line
from nascli.search.evaluator import Evaluator
from nascli.search.nasrl import NasrlSearch, NasrlSettings
from nascli.search.policy import make_controller
from nascli.space.arch import sample_indices
from nascli.train.distributed import context


class TimedController:
    """The controller, with the seconds spent in `sample` and `update` counted."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name):
        attribute = getattr(self.inner, name)
        if name not in ("sample", "update"):
            return attribute

        def timed(*args, **kwargs):
            tick = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - tick

        return timed


def run_seed(args: argparse.Namespace, seed: int, console: Console) -> dict[str, float]:
    overrides = [
        "strategy=nasrl",
        f"space={args.space}",
        "cost=macs",  # the cost column only: NAS-RL's reward has no cost term
        "train=candidate_cpu",
        f"train.epochs={args.epochs}",
        f"space.width_multiplier={args.width}",
        f"data.resolution={args.resolution}",
        f"seed={seed}",
    ]
    if args.layers is not None:
        overrides.append(f"space.layers={args.layers}")
    with initialize_config_module(config_module="nascli.conf", version_base=None):
        cfg = compose("search", overrides=overrides)
    space = configured_space(cfg)
    net = network_settings(cfg)
    data = load_data(cfg.data)
    out = Path(args.out) / f"s{seed}"
    identity = {"bench": "nasrl", "space": space.name, "epochs": args.epochs,
                "width": args.width, "resolution": args.resolution, "seed": seed}  # fmt: skip
    evaluator = Evaluator(
        space, net, cfg.train, data, context("cpu"), seed, identity, Console(quiet=True), 5
    )
    settings = NasrlSettings(children_per_step=args.per_step, steps=args.children // args.per_step)
    controller_cfg = controller_settings(cfg)
    controller = TimedController(make_controller(space, controller_cfg, "cpu", seed))
    cost = make_cost_model(cfg.cost, space, net)
    search = NasrlSearch(settings, controller, controller_cfg.lr, evaluator, cost, out, seed)
    tick = time.perf_counter()
    while search.position < search.total:
        search.advance()
    wall = time.perf_counter() - tick
    half = search.children[len(search.children) // 2 :]
    uniform = []
    drawn = sample_indices(space, len(search.children), torch.Generator().manual_seed(seed))
    for n, indices in enumerate(drawn.tolist()):
        result = evaluator.try_evaluate(indices, out / "uniform" / str(n))
        accuracy = result.get("valid_top1_last") if result["status"] == "done" else None
        uniform.append(0.0 if accuracy is None else accuracy**settings.reward_power)
    rewards = [c["reward"] for c in search.children]
    console.print(f"seed {seed}: nasrl rewards {[round(r, 3) for r in rewards]}", soft_wrap=True)
    return {
        "nasrl_first": statistics.mean(rewards[: len(rewards) // 2]),
        "nasrl_last": statistics.mean(c["reward"] for c in half),
        "uniform": statistics.mean(uniform),
        "controller_share": controller.seconds / wall,
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="proxylessnas")
    parser.add_argument("--layers", type=int, default=None, help="a NAS-RL space's depth")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--children", type=int, default=16)
    parser.add_argument("--per-step", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench_nasrl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    rows = {seed: run_seed(args, seed, console) for seed in args.seeds}
    table = Table(title=f"NAS-RL vs uniform children · {machine_line()}", title_justify="left")
    for column in ("seed", "nasrl 1st half", "nasrl 2nd half", "uniform", "ratio 2nd/uniform",
                   "controller share of wall"):  # fmt: skip
        table.add_column(column, justify="right")
    for seed, r in rows.items():
        table.add_row(
            str(seed), f"{r['nasrl_first']:.3f}", f"{r['nasrl_last']:.3f}", f"{r['uniform']:.3f}",
            f"{r['nasrl_last'] / max(r['uniform'], 1e-12):.2f}", f"{r['controller_share']:.2%}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"space {args.space}, {args.children} children per strategy and seed, {args.per_step} "
        f"per controller step, {args.epochs} epoch(s) each, width ×{args.width}, "
        f"{args.resolution} px, {args.threads} thread(s)"
    )


if __name__ == "__main__":
    main()
