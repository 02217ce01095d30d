"""Benchmark: weight-sharing health. Does the supernet score children as training them alone would?

For each space, the shared weights train with the default search's budget (`nascli search`'s
recipe and strategy: 230 steps of 64 images split over 4 architectures, op and filter warmup) with
the policy held uniform, once per variant (how the weights start, or another setting). Then
`--archs` fixed children spread over the cost range (evenly spaced quantiles of the Pixel-1 cost
of 4,000 uniform draws), plus the space's reference architectures, are scored through the
supernet (BN on batch statistics, the 1,000 valid digits in 4 shuffled batches of 250), and each
is trained standalone from scratch on the same number of images (the same recipe: 230 steps of
64) and scored on the same valid split, BN on the same batches' statistics (and, beside it, on
its running statistics). Printed per variant: the final training loss, the mean valid top-1 of
the random children through the supernet and alone, their ratio (target ≥ 95%), the
references', and Kendall τ (with its p-value) between supernet and standalone accuracy over
every architecture (children and references).

Standalone accuracies do not depend on the variant and are cached in `--cache`.

Two variants change the training itself rather than a setting, to measure two suspects of
weight sharing: `...,lazy_momentum` moves only the weight entries a step's gradient reached and
keeps the other entries' momentum as it was (TuNAS, like nascli, lets momentum keep moving the
slices of a max-size weight that a step did not use), and `...,full_depth` trains with every
skippable layer kept, so the depth never changes from step to step. With `--children
full_depth` every child is scored (through the supernet and alone) with its skippable layers
kept, so the two trainings are compared on children both saw; the references are left out.

    python scripts/bench_supernet.py [--spaces proxylessnas mnv3] [--archs 12]
        [--variants tunas same_start] [--children spread|full_depth]
        [-- extra overrides of nascli search]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from scipy.stats import kendalltau

import nascli.config
from nascli.cost.models import make_cost_model
from nascli.data import load_data
from nascli.nn.supernet import Supernet
from nascli.report.machine import machine_line
from nascli.search.health import (
    spread_over_cost,
    standalone_top1,
    supernet_top1,
    train_shared_uniform,
)
from nascli.search.tunas import TunasSearch, TunasSettings
from nascli.space.arch import format_indices, get_space, largest_indices
from nascli.space.references import references_in
from nascli.space.schema import Zero
from nascli.train.distributed import Context

SAME = ["strategy.zero_init_residual=true", "strategy.tied_kernels=true"]
SAME += ["strategy.zero_init_se=true", "strategy.zero_init_width=false"]
TUNAS = [o.replace("true", "false") for o in SAME]
WIDTH = [*SAME[:3], "strategy.zero_init_width=true"]  # the same start with widths: tunas_cpu's
#: Named sets of overrides of `nascli search`'s config, each explicit about every switch of the
#: same start. `same_start+width` is strategy=tunas_cpu's.
VARIANTS = {
    "tunas": TUNAS,
    "zero_residual": [*TUNAS, "strategy.zero_init_residual=true"],
    "tied_kernels": [*TUNAS, "strategy.tied_kernels=true"],
    "residual+kernels": [
        *SAME[:2],
        "strategy.zero_init_se=false",
        "strategy.zero_init_width=false",
    ],
    "same_start": SAME,
    # The other suspects, each on top of the same start.
    "same_start,1arch": [*SAME, "strategy.archs_per_rank=1"],  # 64 images per BN, 1 child
    "same_start,no_warmup": [
        *SAME,
        "strategy.op_warmup_fraction=0",
        "strategy.filter_warmup_fraction=0",
    ],
    "same_start,lr/3": [*SAME, "train.lr_per_256=0.033"],
    "same_start,lr*3": [*SAME, "train.lr_per_256=0.3"],
    "same_start,no_momentum": [*SAME, "train.momentum=0", "train.nesterov=false"],
    "same_start+width": WIDTH,
    "same_start+width,lr*3": [*WIDTH, "train.lr_per_256=0.3"],
    "same_start+width,1arch": [*WIDTH, "strategy.archs_per_rank=1"],
    "same_start+width,no_momentum": [*WIDTH, "train.momentum=0", "train.nesterov=false"],
    # These two change the training itself (HOOKS below), on the default's settings.
    "same_start+width,lazy_momentum": WIDTH,
    "same_start+width,full_depth": WIDTH,
    "tunas,no_warmup": [
        *TUNAS,
        "strategy.op_warmup_fraction=0",
        "strategy.filter_warmup_fraction=0",
    ],
    "tunas,lr*3": [*TUNAS, "train.lr_per_256=0.3"],
}


def skippable(space) -> list[bool]:
    """Per decision: does it offer a skip (`Zero`)?"""
    return [any(isinstance(c, Zero) for c in d.choices) for d in space.decisions]


def kept_layers(space, indices) -> tuple[int, ...]:
    """`indices` with every skippable layer kept (the largest child's choice there)."""
    keep = largest_indices(space)
    return tuple(k if s else i for i, k, s in zip(indices, keep, skippable(space), strict=True))


def lazy_momentum(search: TunasSearch) -> None:
    """The optimiser moves only entries whose gradient is not zero, and keeps the momentum of
    the others as it was: the slices a step did not use stand still."""
    optimizer, step = search.optimizer, search.optimizer.step

    def masked_step(*args, **kwargs):
        kept = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None and bool((still := param.grad == 0).any()):
                    buffer = optimizer.state[param].get("momentum_buffer")
                    buffer = None if buffer is None else buffer.clone()
                    kept.append((param, still, param.detach().clone(), buffer))
        result = step(*args, **kwargs)
        with torch.no_grad():
            for param, still, before, buffer in kept:
                param[still] = before[still]
                if buffer is not None:
                    optimizer.state[param]["momentum_buffer"][still] = buffer[still]
        return result

    optimizer.step = masked_step


def full_depth(search: TunasSearch) -> None:
    """Every sampled child keeps all its skippable layers (never mixed with the skip)."""
    sample, space = search.sample, search.net.space
    skips, keep = torch.tensor(skippable(space)), torch.tensor(largest_indices(space))

    def without_skips(step, p_op, p_filter):
        indices, mixed, replaced = sample(step, p_op, p_filter)
        return torch.where(skips, keep, indices), mixed & ~skips, replaced

    search.sample = without_skips


#: Variants that change the training itself (applied to the search before it trains).
HOOKS = {
    "same_start+width,lazy_momentum": lazy_momentum,
    "same_start+width,full_depth": full_depth,
}


def compose_search(overrides: list[str]):
    with initialize_config_module(config_module="nascli.conf", version_base=None):
        return compose(config_name="search", overrides=overrides)


def save_json(path: Path, value) -> None:
    """Written after every result, so an interrupted run keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.1%} ± {statistics.stdev(values):.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--spaces", nargs="+", default=["proxylessnas", "proxylessnas_enlarged", "mnv3"]
    )
    parser.add_argument("--variants", nargs="+", default=["tunas", "same_start"], choices=VARIANTS)
    parser.add_argument("--archs", type=int, default=12, help="random children per space (≥ 8)")
    parser.add_argument(
        "--children",
        choices=["spread", "full_depth"],
        default="spread",
        help="full_depth: the children with every skippable layer kept, no references",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench_supernet/standalone.json"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_supernet/results.json"))
    parser.add_argument("overrides", nargs="*", help="extra overrides of nascli search")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=200)  # a log file keeps the table whole
    console.print(machine_line(), soft_wrap=True)
    cache = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    ctx = Context(0, 1, torch.device("cpu"))
    table = Table(title="weight-sharing health after the default search's training budget")
    for column in ("space", "variant", "final loss", "children: supernet", "alone", "ratio"):
        table.add_column(column)
    for column in ("alone, running BN",):
        table.add_column(column)
    for column in ("reference: supernet / alone", "Kendall τ (p)", "train s"):
        table.add_column(column)

    for space_name in args.spaces:
        base = [f"space={space_name}", f"seed={args.seed}", *args.overrides]
        cfg = compose_search(base)
        space = get_space(space_name)
        net_settings = nascli.config.network_settings(cfg)
        data = load_data(cfg.data)
        cost_model = make_cost_model(cfg.cost, space, net_settings, "cpu")
        children = spread_over_cost(space, cost_model, args.archs, args.seed)
        references = dict(references_in(space))
        if args.children == "full_depth":
            children, references = [kept_layers(space, c) for c in children], {}
        archs = [*children, *references.values()]
        recipe = json.dumps(OmegaConf.to_container(cfg.train, resolve=True), sort_keys=True)
        alone, running = {}, {}
        for number, indices in enumerate(archs):
            key = f"{space_name}|{format_indices(indices)}|{recipe}|{args.seed}|{net_settings}"
            key += "|batch+running"
            if key not in cache:
                tick = time.perf_counter()
                cache[key] = standalone_top1(
                    space, indices, net_settings, cfg.train, data, args.seed
                )
                save_json(args.cache, cache)
                console.print(
                    f"{space_name}: standalone {number + 1}/{len(archs)} {cache[key][0]:.1%} "
                    f"on batch statistics, {cache[key][1]:.1%} on running statistics "
                    f"({time.perf_counter() - tick:.0f} s)"
                )
            alone[indices], running[indices] = cache[key]

        for variant in args.variants:
            cfg = compose_search([*base, *VARIANTS[variant]])
            settings = TunasSettings.from_config(cfg.strategy)
            torch.manual_seed(args.seed)
            net = Supernet(space, net_settings, settings.supernet_init)
            search = TunasSearch(
                net, cfg.train, settings, data, cost_model, None, ctx, seed=args.seed
            )
            if variant in HOOKS:
                HOOKS[variant](search)
            tick = time.perf_counter()
            losses = train_shared_uniform(search)
            seconds = time.perf_counter() - tick
            through = {indices: supernet_top1(net, indices, data) for indices in archs}
            first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
            sup = [through[a] for a in children]
            sol = [alone[a] for a in children]
            # Rank agreement over every architecture scored both ways, references included.
            tau, p = kendalltau([through[a] for a in archs], [alone[a] for a in archs])
            ratio = statistics.mean(sup) / statistics.mean(sol)
            refs = " · ".join(
                f"{name} {through[a]:.1%} / {alone[a]:.1%}" for name, a in references.items()
            )
            table.add_row(
                space_name, variant, f"{first:.2f} → {last:.2f}", mean_std(sup), mean_std(sol),
                f"{ratio:.1%}", mean_std([running[a] for a in children]), refs or "–",
                f"{tau:+.2f} ({p:.2g})", f"{seconds:.0f}",
            )  # fmt: skip
            results.append(
                {
                    "space": space_name,
                    "variant": variant,
                    "children_set": args.children,
                    "overrides": VARIANTS[variant],
                    "loss_first10": first,
                    "loss_last10": last,
                    "seconds": seconds,
                    "children": [format_indices(a) for a in children],
                    "supernet_top1": sup,
                    "standalone_top1": sol,
                    "standalone_running_top1": [running[a] for a in children],
                    "ratio": ratio,
                    "kendall_tau": tau,
                    "kendall_p": p,
                    "references": {n: [through[a], alone[a]] for n, a in references.items()},
                    "steps": search.total_steps,
                    "batch": cfg.train.batch_size,
                }
            )
            save_json(args.out, results)
            console.print(
                f"{space_name} {variant}: loss {first:.2f} → {last:.2f}, children "
                f"{mean_std(sup)} through the supernet vs {mean_std(sol)} alone "
                f"({ratio:.1%}), τ {tau:+.2f} (p {p:.2g}), {refs or 'no reference'}, "
                f"{seconds:.0f} s",
                soft_wrap=True,
            )
    console.print(table)


if __name__ == "__main__":
    main()
