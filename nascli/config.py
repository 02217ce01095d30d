"""Hydra composition: typed schemas for the config groups, and running a command as a Hydra job.

The CLI hands each command's raw arguments to Hydra unchanged, so the whole Hydra grammar works
after the command name (`key=value`, `+key=value`, `--cfg job`, `-m`, `hydra.run.dir=...`).
Library code never reads argv or global config: a job function receives the composed config.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig

from nascli.errors import NascliError
from nascli.space.network import NetworkSettings


@dataclass
class SpaceConfig:
    name: str = MISSING
    width_multiplier: float = 1.0
    stride_policy: str = "auto"
    min_final_resolution: int = 4
    dropout: float = 0.0


@dataclass
class DataConfig:
    name: str = MISSING
    root: str | None = None
    resolution: int = 224
    num_classes: int = 1000
    in_channels: int = 3


@dataclass
class Config:
    space: SpaceConfig = field(default_factory=SpaceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # Typed by the issues that implement them; plain mappings until then.
    strategy: Any = MISSING
    train: Any = MISSING
    cost: Any = MISSING
    arch: str | None = None
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


def run_directory() -> Path:
    """This job's run directory (a sweep job's own sub-directory under -m)."""
    return Path(HydraConfig.get().runtime.output_dir)


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def run_hydra_job(
    command: str, job: Callable[[DictConfig], None], args: list[str], write_run_dir: bool = True
) -> None:
    """Compose the config from `args` (Hydra's own command line) and run `job` on it."""

    @hydra.main(version_base=None, config_path="pkg://nascli.conf", config_name="config")
    def task(cfg: DictConfig) -> None:
        try:
            job(cfg)
        except NascliError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(error.exit_code)

    hydra_args = [f"hydra.job.name={command}"]
    if not write_run_dir:  # commands that only print: no run directory, no log file
        hydra_args += [
            "hydra.output_subdir=null",
            "hydra.run.dir=.",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ]
    # Hydra's argparse wants options before the overrides; accept them in any order.
    overrides = [a for a in args if _is_override(a)]
    options = [a for a in args if not _is_override(a)]
    saved = sys.argv
    sys.argv = [f"nascli {command}", *options, *hydra_args, *overrides]
    try:
        task()
    finally:
        sys.argv = saved
