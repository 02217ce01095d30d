"""Hydra composition: typed schemas for the config groups, and running a command as a Hydra job.

The CLI hands each command's raw arguments to Hydra unchanged, so the whole Hydra grammar works
after the command name (`key=value`, `+key=value`, `--cfg job`, `-m`, `hydra.run.dir=...`).
Library code never reads argv or global config: a job function receives the composed config.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from nascli.errors import NascliError
from nascli.space.network import NetworkSettings
from nascli.train.distributed import close_process_group, shared_timestamp, world_size


@dataclass
class SpaceConfig:
    name: str = MISSING
    width_multiplier: float = 1.0
    stride_policy: str = "auto"
    min_final_resolution: int = 2
    dropout: float = 0.0


@dataclass
class DataConfig:
    name: str = MISSING
    root: str | None = None
    resolution: int = 224
    num_classes: int = 1000
    in_channels: int = 3
    download: bool = True  # CIFAR archives, when missing from root
    valid_fraction: float = 0.1  # held out of train (TuNAS's rewards are computed on it)
    test_fraction: float = 0.2  # only for sets without an official test split
    crop_padding: int = 4  # random crop with this zero padding (in-memory sets)
    flip: bool = True
    num_samples: int = 2048  # synthetic only
    workers: int = 8  # ImageFolder decoding processes


@dataclass
class TrainConfig:
    name: str = MISSING
    epochs: int = 1
    batch_size: int = 128  # global: split over the ranks under torchrun
    optimizer: str = "sgd"  # sgd (Nesterov) | rmsprop_tf (TensorFlow semantics)
    lr_per_256: float = 0.1  # peak lr = lr_per_256 · batch_size / 256
    momentum: float = 0.9
    nesterov: bool = True
    rmsprop_decay: float = 0.9
    rmsprop_epsilon: float = 1.0
    warmup_fraction: float = 0.0  # linear warmup over this share of the steps
    schedule: str = "cosine"  # cosine | constant (after the warmup)
    label_smoothing: float = 0.0
    weight_decay: float = 0.0  # L2 on conv/linear kernels; never on BN or biases
    decay_classifier: bool = False  # TuNAS leaves the classifier undecayed
    ema_decay: float | None = None  # EMA of weights (evaluated and saved when set)
    grad_clip_norm: float | None = None
    bn_momentum: float | None = None  # PyTorch convention; None keeps TuNAS's 0.01 (TF 0.99)
    sync_bn: bool = False  # under torchrun; TuNAS keeps per-replica statistics
    amp: str = "none"  # none | bf16 | fp16
    channels_last: Any = "auto"  # auto: on CUDA only
    compile: bool = False  # torch.compile the model
    eval_batch_size: int = 500
    log_every: int = 10  # steps between progress updates (and device syncs)
    checkpoint_every: int = 200  # steps between checkpoints (0: at epoch ends only)


@dataclass
class CostConfig:
    name: str = MISSING
    target: float | None = None  # the cost a search aims at, in the model's units
    path: str | None = None  # lut: a table file; default: the user cache for these settings
    # Latency measurement protocol (lut, measured, and `nascli profile-latency`).
    backend: str = "torch"  # torch | torchscript | onnxruntime
    threads: int | None = None  # default: the number of physical cores
    batch_size: int = 1
    warmup: int = 10
    runs: int = 30
    channels_last: bool = False
    allocator: str = "steady"  # steady: malloc keeps freed memory (see cost/timing.py) | default
    calibrate: int = 50  # profile-latency: end-to-end archs the LUT correction is fitted on
    validate: int = 50  # profile-latency: other archs the LUT is validated on
    rounds: int = 10  # profile-latency: end-to-end runs are split into rounds over all the archs
    in_network: bool = True  # profile-latency: map layers to their time inside a network
    probe_every: int = 64  # profile-latency: layers between drift probes (0: no probe)
    cache: bool = True  # profile-latency: also store the table in the user cache


@dataclass
class Config:
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # A plain mapping: its schema comes with the command that reads it.
    strategy: Any = MISSING
    cost: CostConfig = field(default_factory=CostConfig)
    arch: str | None = None
    # `nascli proxies`: the run directory or CSV to score, and how (conf/proxies.yaml).
    input: str | None = None
    proxies: Any = None
    seed: int = 0
    device: str = "auto"
    out: str = MISSING


ConfigStore.instance().store(name="config_schema", node=Config)


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

    @hydra.main(version_base=None, config_path="pkg://nascli.conf", config_name=config_name)
    def task(cfg: DictConfig) -> None:
        try:
            job(cfg)
        except NascliError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)

    hydra_args = [f"hydra.job.name={command}"]
    overrides = [a for a in args if _is_override(a)]
    options = [a for a in args if not _is_override(a)]
    if world_size() > 1:  # under torchrun: one run directory, written by rank 0 only
        if not any(a.startswith("out=") for a in overrides):
            overrides.insert(0, f"out=runs/{command}/{shared_timestamp()}")
        if write_run_dir and int(os.environ.get("RANK", "0")) != 0:
            hydra_args += ["hydra.output_subdir=null", "hydra/job_logging=none"]
    if not write_run_dir:  # commands that only print: no run directory, no log file
        hydra_args += [
            "hydra.output_subdir=null",
            "hydra.run.dir=.",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ]
    # Hydra's argparse wants options before the overrides; accept them in any order.
    saved = sys.argv
    sys.argv = [f"nascli {command}", *options, *hydra_args, *overrides]
    try:
        task()
    finally:
        sys.argv = saved
        close_process_group()
