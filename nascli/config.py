"""Hydra composition: typed schemas for the config groups, and running a command as a Hydra job.

The CLI hands each command's raw arguments to Hydra unchanged, so the whole Hydra grammar works
after the command name (`key=value`, `+key=value`, `--cfg job`, `-m`, `hydra.run.dir=...`).
Library code never reads argv or global config: a job function receives the composed config.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from nascli.cost.lut import MIN_CALIBRATION
from nascli.errors import NascliError, Stopped
from nascli.files import RunLock
from nascli.report.console import RunConsole
from nascli.report.metrics import tensorboard_missing
from nascli.settings import check_fields, option
from nascli.space.arch import Architecture, get_space, load_architecture, space_of
from nascli.space.network import (
    STRIDE_POLICIES,
    WIDTH_ROUNDINGS,
    Network,
    NetworkSettings,
    decode,
)
from nascli.train.distributed import close_process_group, shared_timestamp, world_size

#: the values of the groups that name a fixed set (the other names are each group's YAML files)
SPACE_NAMES = ("proxylessnas", "proxylessnas_enlarged", "mnv3", "nasrl", "nasrl_strides")
DATA_NAMES = ("mnist", "digits", "cifar10", "cifar100", "synthetic", "imagenet", "imagefolder")
COST_NAMES = ("macs", "params", "peak_memory", "sram", "flash", "tunas_pixel1", "lut", "measured")
PATH = "a path"


@dataclass
class SpaceConfig:
    name: str = option(MISSING, choices=SPACE_NAMES)
    width_multiplier: float = option(1.0, gt=0, le=16)
    depth_multiplier: float = option(1.0, ge=1, le=16)
    layers: int | None = option(None, ge=1, le=200)  # NAS-RL spaces: number of conv layers
    width_rounding: str = option("tunas", choices=WIDTH_ROUNDINGS)
    stride_policy: str = option("auto", choices=STRIDE_POLICIES)
    min_final_resolution: int = option(2, ge=1, le=1024)
    dropout: float = option(0.0, ge=0, lt=1)


@dataclass
class DataConfig:
    name: str = option(MISSING, choices=DATA_NAMES)
    root: str | None = option(None, text=PATH)
    resolution: int = option(224, ge=8, le=4096)
    num_classes: int = option(1000, ge=2, le=1_000_000)
    in_channels: int = option(3, ge=1, le=64)
    download: bool = option(True)  # CIFAR archives, when missing from root
    # held out of train (TuNAS's rewards are computed on it)
    valid_fraction: float = option(0.1, gt=0, lt=1)
    test_fraction: float = option(0.2, gt=0, lt=1)  # only for sets without an official test split
    crop_padding: int = option(4, ge=0, le=1024)  # random crop with this zero padding
    flip: bool = option(True)
    num_samples: int = option(2048, ge=10, le=10_000_000)  # synthetic only
    workers: int = option(8, ge=0, le=1024)  # ImageFolder decoding processes


@dataclass
class TrainConfig:
    name: str = option(MISSING, text="the recipe's name")
    epochs: int = option(1, ge=1, le=100_000)
    batch_size: int = option(128, ge=1, le=1_000_000)  # global: split over the ranks (torchrun)
    optimizer: str = option("sgd", choices=("sgd", "rmsprop_tf"))  # rmsprop_tf: TF semantics
    lr_per_256: float = option(0.1, gt=0, le=1000)  # peak lr = lr_per_256 · batch_size / 256
    momentum: float = option(0.9, ge=0, lt=1)
    nesterov: bool = option(True)
    rmsprop_decay: float = option(0.9, ge=0, lt=1)
    rmsprop_epsilon: float = option(1.0, gt=0, le=1e3)
    warmup_fraction: float = option(0.0, ge=0, lt=1)  # linear warmup over this share of steps
    schedule: str = option("cosine", choices=("cosine", "constant"))  # after the warmup
    label_smoothing: float = option(0.0, ge=0, lt=1)
    weight_decay: float = option(0.0, ge=0, lt=1)  # L2 on conv/linear kernels, not BN/biases
    decay_classifier: bool = option(False)  # TuNAS leaves the classifier undecayed
    ema_decay: float | None = option(None, gt=0, lt=1)  # EMA of weights (evaluated and saved)
    grad_clip_norm: float | None = option(None, gt=0)
    # PyTorch convention; None keeps TuNAS's 0.01 (TF 0.99)
    bn_momentum: float | None = option(None, gt=0, le=1)
    sync_bn: bool = option(False)  # under torchrun; TuNAS keeps per-replica statistics
    amp: str = option("none", choices=("none", "bf16", "fp16"))
    channels_last: Any = option("auto", choices=("auto", True, False))  # auto: on CUDA only
    compile: bool = option(False)  # torch.compile the model
    eval_batch_size: int = option(500, ge=1, le=1_000_000)
    log_every: int = option(10, ge=1, le=1_000_000)  # steps between progress updates
    checkpoint_every: int = option(200, ge=0)  # steps between checkpoints (0: epoch ends only)


@dataclass
class CostConfig:
    name: str = option(MISSING, choices=COST_NAMES)
    target: float | None = option(None, gt=0)  # the cost a search aims at, in the model's units
    # lut: a table file; default: the user cache for these settings
    path: str | None = option(None, text=PATH)
    # Latency measurement protocol (lut, measured, and `nascli profile-latency`).
    backend: str = option("torch", choices=("torch", "torchscript", "onnxruntime"))
    threads: int | None = option(None, ge=1, le=4096)  # default: the number of physical cores
    batch_size: int = option(1, ge=1, le=65536)
    warmup: int = option(10, ge=0, le=1_000_000)
    runs: int = option(30, ge=1, le=1_000_000)
    channels_last: bool = option(False)
    # steady: malloc keeps freed memory (see cost/timing.py) | default
    allocator: str = option("steady", choices=("steady", "default"))
    # profile-latency: end-to-end archs the correction is fitted on, and other archs the LUT is
    # validated on
    calibrate: int = option(50, ge=MIN_CALIBRATION, le=100_000)
    validate: int = option(50, ge=2, le=100_000)
    rounds: int = option(10, ge=1, le=10_000)  # profile-latency: end-to-end rounds over the archs
    in_network: bool = option(True)  # profile-latency: layers timed inside a network
    probe_every: int = option(64, ge=0)  # profile-latency: layers between drift probes (0: none)
    cache: bool = option(True)  # profile-latency: also store the table in the user cache


@dataclass
class ProxiesConfig:
    """`nascli proxies`: which column is the accuracy, and which proxies to rank."""

    accuracy: str = option("valid_top1", text="a column of the input")
    names: Any = option(None, text="a list of proxy names")


@dataclass
class BoardConfig:
    """`board=`: a microcontroller's memories, the int8 budgets of `nascli design-space`."""

    name: str = option(MISSING, choices=("stm32f746", "stm32f412", "stm32h743", "none"))
    sram: float | None = option(None, gt=0)  # bytes
    flash: float | None = option(None, gt=0)  # bytes


@dataclass
class BudgetConfig:
    """`budget.*` of `nascli search` and `random-baseline`: hard budgets for whichever strategy
    runs, the same as its `strategy.max_<name>` (a `board=` sets `sram` and `flash`)."""

    params: float | None = option(None, gt=0)
    macs: float | None = option(None, gt=0)
    peak_memory: float | None = option(None, gt=0)  # bytes (fp32 live set)
    sram: float | None = option(None, gt=0)  # bytes (int8 peak activation, MCUNet)
    flash: float | None = option(None, gt=0)  # bytes (int8 weights + int32 biases)


@dataclass
class DesignConfig:
    """`nascli design-space`: the grid of (width multiplier, resolution) spaces and samples."""

    widths: Any = option(None, text="a list of width multipliers in (0, 16]")
    resolutions: Any = option(None, text="a list of resolutions from 8 to 4096")
    samples: int = option(1000, ge=1, le=10_000_000)
    max_cost: float | None = option(None, gt=0)
    plot: int = option(5, ge=0, le=1000)


@dataclass
class Config:
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # A plain mapping: its schema comes with the strategy it names (`strategy_settings`).
    strategy: Any = MISSING
    # RL strategies' controller (`nascli search` only; schema: search/policy.py
    # ControllerSettings).
    controller: Any = None
    cost: CostConfig = field(default_factory=CostConfig)
    # build/retrain: indices (0:1:...), a reference name, an arch.json or a run dir
    arch: str | None = option(None, text="an architecture")
    # `nascli proxies`: the run directory or CSV to score, and how (conf/proxies.yaml).
    input: str | None = option(None, text=PATH)
    proxies: Any = None
    # `nascli design-space`: the board's memories and the grid (conf/design_space.yaml).
    board: Any = None
    design: Any = None
    # `nascli search`'s hard budgets, strategy-independent (conf/search.yaml).
    budget: Any = None
    seed: int = option(0, ge=0, lt=2**32)
    # Log rows also as TensorBoard events in <out>/tensorboard (needs the tensorboard package).
    tensorboard: bool = option(False)
    device: str = option(
        "auto", text="auto, cpu, cuda, cuda:N or mps", pattern=r"auto|cpu|cuda(:\d+)?|mps"
    )
    out: str = option(MISSING, text=PATH)


ConfigStore.instance().store(name="config_schema", node=Config)
GROUP_SCHEMAS = {"space": SpaceConfig, "data": DataConfig, "train": TrainConfig, "cost": CostConfig}


def group_options(config_name: str = "config") -> dict[str, tuple[list[str], str | None]]:
    """Per config group the root config `config_name` composes: its options (the YAML files of
    `conf/<group>/`) and the one selected, read from the defaults lists without composing."""
    from importlib import resources

    root = resources.files("nascli.conf")
    chosen: dict[str, str] = {}

    def read(name: str) -> None:
        for entry in OmegaConf.to_container(OmegaConf.load(str(root / f"{name}.yaml")))["defaults"]:
            if isinstance(entry, str):
                if entry not in ("_self_", "config_schema"):
                    read(entry)
                continue
            for key, value in entry.items():
                chosen[key.removeprefix("override ").strip()] = value

    read(config_name)
    groups = sorted(
        p.name for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")
    )
    return {
        group: (
            sorted(f.name[:-5] for f in (root / group).iterdir() if f.name.endswith(".yaml")),
            chosen.get(group),
        )
        for group in groups
        if group in chosen
    }


def strategy_settings(cfg: Any) -> Any:
    """The typed, checked settings of the strategy the `strategy` group names."""
    from nascli.search.registry import STRATEGIES, resolve

    name = cfg.get("name") if isinstance(cfg, DictConfig) else None
    if name not in STRATEGIES:
        raise NascliError(f"strategy.name={name!r}: expected one of {', '.join(STRATEGIES)}")
    return resolve(STRATEGIES[name].settings).from_config(cfg)


def apply_budgets(cfg: DictConfig) -> None:
    """Copy each `budget.<name>` into the strategy's `max_<name>`, so that strategies read
    their budgets from their own settings alone (`nascli.search.budgets`). A budget given both
    ways with different values is refused. A cost budget stays each strategy's own: the cost
    target of TuNAS and the gradient strategies, the random baseline's window, Zen's and the
    grid's `max_cost`."""
    budget, strategy = cfg.get("budget"), cfg.get("strategy")
    if not isinstance(budget, DictConfig) or not isinstance(strategy, DictConfig):
        return
    for name, value in check_fields(BudgetConfig, _plain(budget), "budget").items():
        if value is None:
            continue
        key = f"max_{name}"
        if key not in strategy:
            raise NascliError(f"budget.{name}: strategy {strategy.get('name')} takes no {key}")
        given = strategy[key]
        if given is not None and float(given) != float(value):
            raise NascliError(
                f"budget.{name}={value:g} and strategy.{key}={given:g} disagree: give one"
            )
        strategy[key] = value


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def validate(cfg: DictConfig) -> None:
    """Every leaf of a composed config checked against its declared rule (type, range,
    choices) and the settings that combine several leaves, before a job does any work: a bad
    value is one `NascliError` line naming the key, the value and what is allowed."""
    for group, schema in GROUP_SCHEMAS.items():
        check_fields(schema, _plain(cfg[group]), group)
    top = {key: cfg[key] for key in ("arch", "input", "seed", "device", "tensorboard")}
    check_fields(Config, top, "")
    if top.get("tensorboard") and (missing := tensorboard_missing()):
        raise NascliError(missing)
    if isinstance(cfg.get("proxies"), DictConfig):
        check_fields(ProxiesConfig, _plain(cfg.proxies), "proxies")
    if isinstance(cfg.get("board"), DictConfig):
        check_fields(BoardConfig, _plain(cfg.board), "board")
    if isinstance(cfg.get("design"), DictConfig):
        design_grid(cfg)
    if isinstance(cfg.get("budget"), DictConfig):
        check_fields(BudgetConfig, _plain(cfg.budget), "budget")
    strategy_settings(cfg.strategy)
    controller_settings(cfg)
    network_settings(cfg)


def design_grid(cfg: DictConfig) -> tuple[list[float], list[int]]:
    """The checked `design.widths` and `design.resolutions` of `nascli design-space`."""
    values = check_fields(DesignConfig, _plain(cfg.design), "design")
    grid = []
    for key, low, high, kind in (("widths", 0, 16, float), ("resolutions", 7, 4096, int)):
        items = values[key]
        ok = isinstance(items, list) and items
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)
        ok = ok and all(low < v <= high for v in items)
        ok = ok and (kind is float or all(float(v).is_integer() for v in items))
        if not ok:
            what = "numbers in (0, 16]" if kind is float else "integers from 8 to 4096"
            raise NascliError(f"design.{key}={items!r}: expected a non-empty list of {what}")
        grid.append([kind(v) for v in items])
    return grid[0], grid[1]


def controller_settings(cfg: DictConfig) -> Any:
    """The checked `controller=` settings (None where the command composes no controller);
    a controller other than TuNAS's categoricals is refused for a strategy that has none."""
    if not isinstance(cfg.get("controller"), DictConfig):
        return None
    from nascli.search.policy import ControllerSettings
    from nascli.search.registry import STRATEGIES

    settings = ControllerSettings.from_config(_plain(cfg.controller))
    own = STRATEGIES[cfg.strategy.name].controller
    if settings.name is not None and own is None:
        with_one = ", ".join(n for n, e in STRATEGIES.items() if e.controller)
        raise NascliError(
            f"controller={settings.name}: strategy={cfg.strategy.name} has no controller "
            f"(strategies with one: {with_one})"
        )
    return settings if settings.name is not None else replace(settings, name=own)


def configured_space(cfg: DictConfig):
    """The space `cfg.space` names, deepened by its `depth_multiplier` (a NAS-RL space: at
    its `layers`)."""
    return get_space(
        cfg.space.name, cfg.space.get("depth_multiplier", 1.0), cfg.space.get("layers")
    )


def network_settings(cfg: DictConfig) -> NetworkSettings:
    """The network settings a config describes (space options + the data's input shape)."""
    try:
        return NetworkSettings(
            resolution=cfg.data.resolution,
            num_classes=cfg.data.num_classes,
            in_channels=cfg.data.in_channels,
            width_multiplier=cfg.space.width_multiplier,
            stride_policy=cfg.space.stride_policy,
            min_final_resolution=cfg.space.min_final_resolution,
            dropout=cfg.space.dropout,
            width_rounding=cfg.space.get("width_rounding", "tunas"),
        )
    except ValueError as error:
        raise NascliError(str(error)) from None


#: Settings that do not change what a run computes: a run may resume with different values.
NOT_FINGERPRINTED = frozenset(
    {"log_every", "checkpoint_every", "eval_batch_size", "workers", "root", "iterations"}
)


def fingerprint_sections(cfg: DictConfig, *names: str) -> dict[str, Any]:
    """The config groups `names`, resolved, without the settings a resume may change: what
    identifies a run in its checkpoints."""
    sections = {}
    for name in names:
        values = OmegaConf.to_container(cfg[name], resolve=True)
        sections[name] = {k: v for k, v in values.items() if k not in NOT_FINGERPRINTED}
    return sections


def run_directory() -> Path:
    """This job's run directory (a sweep job's own sub-directory under -m)."""
    return Path(HydraConfig.get().runtime.output_dir)


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def run_hydra_job(
    command: str,
    job: Callable[[DictConfig], None],
    args: list[str],
    write_run_dir: bool = True,
    config_name: str = "config",
) -> None:
    """Compose the config `config_name` with `args` (Hydra's own command line), run `job`."""

    held = _HeldStderr(sys.stderr)
    lock = RunLock(Path("."))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    checked = False  # validated by `precheck` before Hydra started (not under -m, --cfg, ...)

    @hydra.main(version_base=None, config_path="pkg://nascli.conf", config_name=config_name)
    def task(cfg: DictConfig) -> None:
        held.release()
        try:
            if not checked:
                validate(cfg)
            apply_budgets(cfg)  # checked by `precheck` too, but this is the job's own config
            own = write_run_dir and not lock.held and rank0 and not trains_one_unit(cfg)
            if own:  # no plain out= given, or one job of a sweep
                lock.directory = run_directory()
                lock.acquire()
            try:
                job(cfg)
            finally:
                if own:
                    lock.release()
        except Stopped as stop:  # a checkpoint was written: how to resume, not an error
            RunConsole().print(str(stop), soft_wrap=True, markup=False)
            sys.exit(stop.exit_code)
        except NascliError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)

    hydra_args = [f"hydra.job.name={command}"]
    overrides = [a for a in args if _is_override(a)]
    options = [a for a in args if not _is_override(a)]
    if world_size() > 1:  # under torchrun: one run directory, written by rank 0 only
        if not any(a.startswith("out=") for a in overrides):
            overrides.insert(0, f"out=runs/{command}/{shared_timestamp()}")
        if write_run_dir and not rank0:
            hydra_args += ["hydra.output_subdir=null", "hydra/job_logging=none"]
    if not write_run_dir:  # commands that only print: no run directory, no log file
        hydra_args += [
            "hydra.output_subdir=null",
            "hydra.run.dir=.",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ]
    if not any(o in INSPECTING for o in options):
        composed = precheck(config_name, [f"hydra.job.name={command}", *overrides])
        checked = True
        given = [a.split("=", 1)[1] for a in overrides if a.startswith("out=")]
        plain = given and "${" not in given[-1]
        if write_run_dir and plain and rank0 and not trains_one_unit(composed):
            lock.directory = Path(given[-1]).expanduser()  # before Hydra writes into it
            try:
                lock.acquire()
            except NascliError as error:
                raise SystemExit(_usage(str(error))) from None
    saved = sys.argv, sys.stderr
    # Hydra's argparse wants options before the overrides; accept them in any order.
    sys.argv = [f"nascli {command}", *options, *hydra_args, *overrides]
    sys.stderr = held
    try:
        task()
    except SystemExit as stop:
        # Hydra reports a composition error (unknown option or key, a value of the wrong type,
        # bad override syntax) in several lines and exits 1, before any job starts: usage.
        if stop.code == 1 and not held.released:
            print(f"error: {one_line(held.discard())}", file=saved[1])
            raise SystemExit(2) from None
        raise
    finally:
        sys.argv, sys.stderr = saved
        held.release()
        lock.release()
        close_process_group()


#: Hydra options under which no single job is composed and run here (sweeps, help, printing)
INSPECTING = frozenset(
    {"-m", "--multirun", "--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help",
     "--shell-completion", "-sc", "--resolve", "-p", "--package"}
)  # fmt: skip


def trains_one_unit(cfg: DictConfig) -> bool:
    """A job that trains one unit of a run (`strategy.candidate=`, `strategy.child=`: one job
    of a sweep on a cluster). It locks that unit's directory while it trains (the evaluator
    does), not the run's, so the jobs of a sweep can run at the same time."""
    from nascli.search.registry import STRATEGIES

    strategy = cfg.get("strategy")
    if not isinstance(strategy, DictConfig):
        return False
    entry = STRATEGIES.get(strategy.get("name"))
    return entry is not None and entry.unit is not None and strategy.get(entry.unit) is not None


def precheck(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose the config as the job will see it and validate it, before Hydra creates a run
    directory: a composition error or a bad value ends the command with one line, exit 2."""
    from hydra import compose, initialize_config_module

    try:
        with initialize_config_module(config_module="nascli.conf", version_base=None):
            cfg = compose(config_name=config_name, overrides=overrides)
    except Exception as error:  # Hydra's and OmegaConf's composition errors: usage
        raise SystemExit(_usage(one_line(str(error)))) from None
    try:
        validate(cfg)
        apply_budgets(cfg)
    except NascliError as error:
        raise SystemExit(_usage(str(error))) from None
    return cfg


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


class _HeldStderr:
    """Holds what is written to stderr until the job starts (so that a composition error can
    be reported as one line), then passes everything through."""

    def __init__(self, stream: Any):
        self.stream, self.released, self._held = stream, False, []

    def write(self, text: str) -> int:
        if self.released:
            return self.stream.write(text)
        self._held.append(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def discard(self) -> str:
        """What was held, dropped from the stream."""
        text = "".join(self._held)
        self._held.clear()
        return text

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.stream.write(self.discard())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def one_line(report: str) -> str:
    """Hydra's multi-line error report as one line: its message, indented listings joined."""
    skipped = ("Set the environment variable HYDRA_FULL_ERROR", "full_key:", "reference_type=",
               "object_type=", "Config search path", "provider=")  # fmt: skip
    parts: list[str] = []
    for raw in report.splitlines():
        line = raw.strip()
        if not line or line.startswith(skipped):
            continue
        if parts and parts[-1].endswith(":") and raw[:1] in ("\t", " "):
            parts[-1] += " " + line
        elif parts and raw[:1] in ("\t", " ") and ": " in parts[-1]:
            parts[-1] += ", " + line
        else:
            parts.append(line)
    return "; ".join(parts) or "could not compose the configuration"


def configured_network(cfg: DictConfig) -> tuple[Architecture, Network]:
    """The architecture `arch=` names, decoded with the space and data settings of `cfg`. An
    arch.json or run directory brings its own space."""
    if cfg.arch is None:
        raise NascliError(
            "no architecture given: pass arch=<indices | reference name | arch.json | run dir>"
        )
    named = space_of(str(cfg.arch))
    if named is None:
        space = configured_space(cfg)
    elif "@" in named:  # an arch.json of a deepened space: its own depth
        space = get_space(named)
    else:
        space = get_space(named, cfg.space.get("depth_multiplier", 1.0))
    arch = load_architecture(str(cfg.arch), space)
    return arch, decode(space, arch.indices, network_settings(cfg))
