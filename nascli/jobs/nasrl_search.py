"""`nascli search strategy=nasrl`: NAS-RL's multi-trial search (Zoph & Le 2017) with its LSTM
controller (`controller=lstm`, the default of `strategy=nasrl`), every child trained from
scratch by the shared evaluator with the `train=` recipe.

The run directory holds `children/<n>/` (each child's training run), `children.csv` (every
child: controller step, indices, cost, valid top-1, reward, params, MACs, time), `search_log.csv`
(one row per controller step: mean reward, baseline, mean |advantage|, entropy, best so far),
`last.pt` (children so far, the step's batch, baseline and controller: rerunning with `out=`
resumes, a child in training from its own checkpoint), `arch.json` and `summary.json` of the
child with the best valid top-1, and `plots/rewards.png`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from nascli.config import (
    configured_space,
    controller_settings,
    fingerprint_sections,
    network_settings,
    run_directory,
)
from nascli.cost.analytic import network_cost
from nascli.cost.models import make_cost_model
from nascli.data import load_data
from nascli.errors import NascliError
from nascli.files import write_json
from nascli.report import plots
from nascli.report.console import RunConsole
from nascli.report.records import arch_record
from nascli.report.summary import RunSummary
from nascli.report.tables import result_table
from nascli.search.budgets import rejected_counts
from nascli.search.driver import drive
from nascli.search.evaluator import EvaluatorSpec, evaluate_in_processes
from nascli.search.nasrl import NasrlSearch, NasrlSettings
from nascli.search.policy import CategoricalPolicy, PolicyAdam, make_controller
from nascli.search.tunas import default_target
from nascli.space.arch import parse_indices
from nascli.space.network import decode
from nascli.train.checkpoint import load_checkpoint
from nascli.train.distributed import context, world_size

#: How a run is driven or extended, not what it searched: a sweep's jobs and the collecting
#: run share its checkpoint, and a finished search can be given a uniform reference later.
DRIVING = ("child", "collect", "reference")


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    sections = fingerprint_sections(cfg, "space", "strategy", "controller", "data", "train", "cost")
    sections["strategy"] = {k: v for k, v in sections["strategy"].items() if k not in DRIVING}
    return {"command": "search", **sections, "seed": cfg.seed}


def train_sweep_child(
    search: NasrlSearch, slot: int, out: Path, cfg: DictConfig, console: RunConsole
) -> None:
    """One job of a sweep over a step's children (a cluster launcher's unit): the run's state
    from its checkpoint, read only; the child trained into its own directory."""
    checkpoint = out / "last.pt"
    if checkpoint.exists():
        search.load_state(load_checkpoint(checkpoint, fingerprint(cfg))["search"])
    number, result = search.train_one(slot)
    done = "nothing to train (over a budget or already trained)" if result is None else (
        f"{result['status']}" + (f", valid top-1 {result['best_valid_top1']:.2%}"
                                 if result["status"] == "done" else "")
    )  # fmt: skip
    console.print(
        f"child {number} (step {number // search.settings.children_per_step}, slot {slot}): "
        f"{done}. When the step's children are trained, run the same command without "
        f"strategy.child and with strategy.collect=true out={out} to update the controller",
        soft_wrap=True,
    )


def last_half_reward(children: list[dict[str, Any]]) -> float | None:
    """The mean reward of the second half of the searched children (what the controller has
    learned, against the uniform reference)."""
    half = [c["reward"] for c in children[len(children) // 2 :]]
    return sum(half) / len(half) if half else None


def run_nasrl(cfg: DictConfig) -> None:
    started = time.perf_counter()
    if world_size() > 1:
        raise NascliError("strategy=nasrl runs in one process: start it without torchrun")
    settings = NasrlSettings.from_config(cfg.strategy)
    console = RunConsole()
    ctx = context(cfg.device)
    space = configured_space(cfg)
    net_settings = network_settings(cfg)
    cost_cfg = cfg.cost
    if space.graph and cost_cfg.name == "tunas_pixel1":  # the search's default cost group
        # TuNAS's Pixel-1 model knows its own spaces only; NAS-RL's reward has no cost term,
        # so the cost column falls back to MACs (said in the header).
        cost_cfg = OmegaConf.merge(cost_cfg, {"name": "macs", "target": None})
    if settings.depth_start is not None and not space.graph:
        raise NascliError(
            "strategy.depth_start (NAS-RL's depth schedule) needs a NAS-RL space: space=nasrl"
        )
    cost_model = make_cost_model(cost_cfg, space, net_settings)
    target = default_target(cost_cfg.name, space.name, cost_cfg.target)
    controller_cfg = controller_settings(cfg)
    controller = make_controller(space, controller_cfg, "cpu", cfg.seed)
    if isinstance(controller, CategoricalPolicy):  # standard Adam over the logits
        controller.adam = PolicyAdam(
            controller.logits.shape,
            controller_cfg.adam_beta1,
            controller_cfg.adam_beta2,
            controller_cfg.adam_epsilon,
            "mean",
        )
    data = load_data(cfg.data)
    out = run_directory()
    out.mkdir(parents=True, exist_ok=True)
    identity = {
        "command": "search-child",
        **fingerprint_sections(cfg, "space", "data", "train"),
        "seed": cfg.seed,
    }
    spec = EvaluatorSpec.of_config(cfg, identity, settings.reward_epochs)
    evaluator = spec.build(console, data, ctx)
    pool = None
    if settings.workers > 1:

        def pool(jobs: list) -> None:
            evaluate_in_processes(spec, jobs, settings.workers)

    search = NasrlSearch(
        settings,
        controller,
        controller_cfg.lr,
        evaluator,
        cost_model,
        out,
        cfg.seed,
        pool,
        lambda child_space: make_cost_model(cost_cfg, child_space, net_settings),
    )
    if settings.child is not None:
        train_sweep_child(search, settings.child, out, cfg, console)
        return
    epochs = min(settings.reward_epochs, cfg.train.epochs)
    header = (
        f"search {space.title} · strategy nasrl ({controller_cfg.name} controller, "
        f"{settings.children_per_step} children × {settings.steps} steps, reward (max valid "
        f"top-1 of the last {epochs} epoch(s))^{settings.reward_power:g}) · recipe "
        f"{cfg.train.name} ({cfg.train.epochs} epochs) · data {data.name} · cost "
        f"{cost_model.name}"
    )
    if settings.depth_start is not None:
        every = settings.depth_every or 1
        header += (
            f" · depth {settings.depth_start} layers, + {settings.depth_step} every {every} "
            f"children, at most {space.graph_layers}"
        )
    rows, seconds = drive(
        search, out, fingerprint(cfg), console, header, tensorboard=cfg.tensorboard
    )
    best = search.best()
    if best is None:
        raise NascliError(f"every child failed; see {out}/children/*/error.txt")
    best_indices = [int(v) for v in best["indices"].split(":")]
    space = evaluator.space_of(best_indices)  # under a depth schedule, the child's own depth
    arch = parse_indices(space, best["indices"])
    network = decode(space, arch.indices, net_settings)
    cost = network_cost(network)
    done = [c for c in search.children if c["status"] == "done"]
    summary = RunSummary.of_architecture(
        arch,
        cost,
        command="search",
        strategy="nasrl",
        seed=cfg.seed,
        cost_model=cost_model.name,
        cost=float(best["cost"]),
        cost_units=cost_model.units,
        target=target,
        valid_top1=float(best["best_valid_top1"]),
        images=int(sum(c["images"] for c in done)),
        seconds=seconds,
        wall_seconds=time.perf_counter() - started,
        details={
            "controller": controller_cfg.name,
            "children": len(search.children),
            "failed": sum(c["status"] == "failed" for c in search.children),
            "rejected": rejected_counts(search.children),
            "controller_steps": len(rows),
            "reward_first_step": rows[0]["reward"] if rows else None,
            "reward_last_step": rows[-1]["reward"] if rows else None,
            "reward_last_half": last_half_reward(search.children),
            "reference_children": len(search.reference),
            "reference_reward": search.reference_reward(),
        },
    )
    record = arch_record(arch, network, cost)
    record["search"] = summary.search_record()
    write_json(out / "arch.json", record)
    summary.write(out / "summary.json")
    (out / "plots").mkdir(exist_ok=True)
    reference = [c["reward"] for c in search.reference]
    plots.reward_curve(out / "plots" / "rewards.png", pd.DataFrame(search.children),
                       pd.DataFrame(rows), reference)  # fmt: skip
    table = result_table(
        arch, space.title, cost, cost_model.name, float(best["cost"]), cost_model.units, target
    )
    table.add_row("valid top-1", f"{best['best_valid_top1']:.2%} (child {best['child']})")
    failed = summary.details["failed"]
    table.add_row("children · steps", f"{len(search.children)} · {len(rows)} ({failed} failed)")
    if rows:
        table.add_row("mean reward", f"{rows[0]['reward']:.3f} → {rows[-1]['reward']:.3f}")
    table.add_row("search time", f"{seconds:.0f} s")
    console.print(table)
    console.print(
        f"wrote {out}/arch.json, summary.json, children.csv, search_log.csv, plots/; next: "
        f"`nascli retrain arch={out}`",
        soft_wrap=True,
    )
