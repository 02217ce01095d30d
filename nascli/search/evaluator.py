"""Candidate evaluation for multi-trial strategies: train one architecture from scratch with a
recipe (the `train=` group) and report its valid top-1. The random baseline uses it for every
candidate; grid search, NAS-RL and regularized evolution are meant to reuse it unchanged.

Each evaluation has its own directory: the trainer's `last.pt`, `best.pt` and `metrics.csv`
while it runs, `result.json` when it is done (a later `evaluate` of the same directory returns
it without training), `error.txt` with the traceback when it failed. An interrupted evaluation
resumes from its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console

from nascli.cost.analytic import network_cost
from nascli.cost.timing import physical_cores
from nascli.data.source import DataSource, load_data
from nascli.errors import NascliError
from nascli.files import InUse, RunLock, write_json
from nascli.nn.builder import build_model
from nascli.space.arch import format_indices, get_space, graph_prefix_space
from nascli.space.network import NetworkSettings, decode
from nascli.space.spaces import SearchSpace
from nascli.train.distributed import Context, context
from nascli.train.engine import Interrupted, Trainer

#: What a failed evaluation may raise and still be reported as one row (anything else stops
#: the run: a bug must not be hidden as a failed candidate).
EVALUATION_ERRORS = (NascliError, RuntimeError, ValueError)


class Evaluator:
    """Trains architectures of `space` with `recipe` on `data`, each from the same seed.

    `identity` is what every evaluation's checkpoint is tied to (besides the architecture's
    indices): a resumed evaluation with another recipe, data or space is refused."""

    def __init__(
        self,
        space: SearchSpace,
        net_settings: NetworkSettings,
        recipe: DictConfig,
        data: DataSource,
        ctx: Context,
        seed: int,
        identity: dict[str, Any],
        console: Console,
        last_epochs: int = 0,
    ):
        """`last_epochs` > 0 adds `valid_top1_last` to every result: the highest valid top-1
        of the last `last_epochs` epochs (NAS-RL's reward reads it)."""
        self.last_epochs = last_epochs
        self.space = space
        self.net_settings = net_settings
        self.recipe = recipe
        self.data = data
        self.ctx = ctx
        self.seed = seed
        self.identity = identity
        self.console = console

    def space_of(self, indices: Sequence[int]) -> SearchSpace:
        """The space `indices` belong to: `space`, or in a NAS-RL space grown by a depth
        schedule, the shallower space whose indices are their prefix."""
        if self.space.graph and len(indices) != self.space.num_decisions:
            return graph_prefix_space(self.space, len(indices))
        return self.space

    def evaluate(self, indices: Sequence[int], run_dir: Path) -> dict[str, Any]:
        """Train `indices` in `run_dir` (resuming; returning a stored result), return its
        status, valid top-1 (last epoch and best), params, MACs, train seconds and images."""
        result_path = run_dir / "result.json"
        if result_path.exists():
            return json.loads(result_path.read_text())
        network = decode(self.space_of(indices), tuple(indices), self.net_settings)
        cost = network_cost(network)
        torch.manual_seed(self.seed)
        model = build_model(network)
        run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(run_dir) if self.ctx.is_main else contextlib.nullcontext():
            return self._train(indices, network, cost, model, run_dir)

    def _train(
        self, indices: Sequence[int], network: Any, cost: Any, model: Any, run_dir: Path
    ) -> dict[str, Any]:
        """`evaluate`'s training, with `run_dir` locked by this process (the main rank): two
        processes never train the same architecture in the same directory."""
        result_path = run_dir / "result.json"
        if result_path.exists():  # finished by another process before this one locked it
            return json.loads(result_path.read_text())
        trainer = Trainer(
            model,
            self.recipe,
            self.data,
            self.ctx,
            seed=self.seed,
            run_dir=run_dir,
            fingerprint={**self.identity, "indices": format_indices(indices)},
            console=self.console,
        )
        outcome = trainer.fit()
        result = {
            "status": "done",
            "valid_top1": outcome.history[-1].get("valid_top1"),
            "best_valid_top1": outcome.best_valid_top1,
            "params": cost.params,
            "macs": cost.macs,
            "train_seconds": outcome.train_seconds,
            "images": outcome.steps * self.recipe.batch_size,
        }
        if self.last_epochs:
            tail = [row["valid_top1"] for row in outcome.history[-self.last_epochs :]]
            result["valid_top1_last"] = max(tail)
        if self.ctx.is_main:
            write_json(result_path, result)
        return result

    def try_evaluate(self, indices: Sequence[int], run_dir: Path) -> dict[str, Any]:
        """`evaluate`, with a failure (out of memory, divergence, a bad recipe for this
        architecture) returned as `{"status": "failed", "error": <first line>}` and its
        traceback written to `run_dir/error.txt`, never dropped."""
        try:
            return self.evaluate(indices, run_dir)
        except InUse:  # another process trains it: not this architecture's failure
            raise
        except EVALUATION_ERRORS as error:
            return record_failure(run_dir, error)


def record_failure(run_dir: Path, error: BaseException) -> dict[str, Any]:
    """The failed row of an evaluation, with the traceback kept in `run_dir/error.txt`."""
    text = str(error).strip()
    message = text.splitlines()[0] if text else repr(error)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").write_text(
        "".join(traceback.format_exception(type(error), error, error.__traceback__))
    )
    return {"status": "failed", "error": message[:200]}


@dataclass(frozen=True)
class EvaluatorSpec:
    """What a worker process needs to build the same `Evaluator` (plain, picklable values)."""

    space: str
    net_settings: NetworkSettings
    recipe: dict[str, Any]
    data: dict[str, Any]
    device: str
    seed: int
    identity: dict[str, Any]
    last_epochs: int = 0

    @classmethod
    def of_config(
        cls, cfg: DictConfig, identity: dict[str, Any], last_epochs: int = 0
    ) -> EvaluatorSpec:
        """From a composed config: its space, network settings, `train` recipe, `data`,
        device and seed."""
        from omegaconf import OmegaConf

        from nascli.config import configured_space, network_settings

        return cls(
            configured_space(cfg).name,  # a deepened space's own name
            network_settings(cfg),
            OmegaConf.to_container(cfg.train, resolve=True),
            OmegaConf.to_container(cfg.data, resolve=True),
            cfg.device,
            cfg.seed,
            identity,
            last_epochs,
        )

    def build(
        self, console: Console, data: DataSource | None = None, ctx: Context | None = None
    ) -> Evaluator:
        """The evaluator, on `data` and `ctx` when the caller has them already (a worker
        process loads the data and makes a one-process context itself)."""
        from omegaconf import OmegaConf

        if data is None:
            data = load_data(OmegaConf.create(self.data))
        if ctx is None:
            ctx = context("cpu" if self.device == "auto" else self.device)
        return Evaluator(
            get_space(self.space),
            self.net_settings,
            OmegaConf.create(self.recipe),
            data,
            ctx,
            self.seed,
            self.identity,
            console,
            self.last_epochs,
        )


def _evaluate_share(spec: EvaluatorSpec, jobs: list[tuple[list[int], str]], threads: int) -> None:
    """One worker process: its share of the jobs, one after another. Results and failures land
    in each job's directory; the parent collects them (and retrains a failed one itself)."""
    torch.set_num_threads(threads)
    evaluator = spec.build(Console(quiet=True))
    for indices, run_dir in jobs:
        try:
            evaluator.evaluate(indices, Path(run_dir))
        except Interrupted:
            return
        except Exception as error:  # reported, never dropped
            record_failure(Path(run_dir), error)


@dataclass(frozen=True)
class PoolReport:
    """What `evaluate_in_processes` did: jobs trained, in how many processes of how many
    threads (all 0 when every job had its result already)."""

    pending: int = 0
    processes: int = 0
    threads: int = 0


def evaluate_in_processes(
    spec: EvaluatorSpec, jobs: list[tuple[Sequence[int], Path]], workers: int
) -> PoolReport:
    """Train the `jobs` (indices, run directory) without a stored result in `workers` spawned
    processes sharing the cores evenly. Ctrl-C reaches the workers too: each checkpoints its
    evaluation, and this raises `Interrupted`."""
    import signal

    pending = [(list(i), str(d)) for i, d in jobs if not (Path(d) / "result.json").exists()]
    if not pending:
        return PoolReport()
    workers = min(workers, len(pending))
    threads = max(1, physical_cores() // workers)
    spawn = torch.multiprocessing.get_context("spawn")
    processes = [
        spawn.Process(target=_evaluate_share, args=(spec, pending[w::workers], threads))
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C and checkpoint
        for process in processes:
            process.join()
        raise Interrupted(0, signal.SIGINT) from None
    return PoolReport(len(pending), workers, threads)
