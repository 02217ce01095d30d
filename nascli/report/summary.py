"""One results schema: the `summary.json` every command writes, and its reader.

The common fields mean the same thing in every command, so runs of different strategies and
commands compare field by field; what only one strategy has sits beside them under names of its
own (`details`). `read_summary` also reads the previous format (format 1: no `format` key, each
command with its own names for the same things).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nascli.cost.analytic import NetworkCost
from nascli.errors import NascliError
from nascli.files import write_json
from nascli.space.arch import Architecture

FORMAT = 2


@dataclass
class RunSummary:
    """What a finished run reports. Accuracies are fractions; `images` are the images trained
    on (0 when nothing is trained); `seconds` is the run's own work (the search loop, the
    candidates' or the network's training, the scoring or the timing), `wall_seconds` the whole
    command from start to end."""

    command: str  # search (random-baseline is `search strategy=random`) | retrain | profile-latency
    strategy: str | None  # tunas | random | zen for a search; None otherwise
    space: str
    seed: int
    world_size: int = 1
    indices: str | None = None
    cost_model: str | None = None
    cost: float | None = None
    cost_units: str | None = None
    target: float | None = None
    params: int | None = None
    macs: int | None = None
    valid_top1: float | None = None  # a trained network's (best candidate, best epoch)
    test_top1: float | None = None
    supernet_top1: float | None = None  # a weight-shared search's reward accuracy at the end
    chance_top1: float | None = None
    images: int | None = None
    seconds: float | None = None
    wall_seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_architecture(
        cls, arch: Architecture, analytic: NetworkCost, /, **fields: Any
    ) -> RunSummary:
        """The summary of a run whose result (or subject) is `arch`: its space, indices,
        params and MACs filled in from it and its analytic costs."""
        return cls(
            space=arch.space,
            indices=arch.text,
            params=analytic.params,
            macs=analytic.macs,
            **fields,
        )

    @property
    def relative_to_target(self) -> float | None:
        if self.cost is None or not self.target:
            return None
        return self.cost / self.target - 1

    def record(self) -> dict[str, Any]:
        """The JSON object: the format, the common fields, then the details."""
        common = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"}
        common["relative_to_target"] = self.relative_to_target
        clash = set(common) & set(self.details)
        if clash or "format" in self.details:
            raise ValueError(f"details may not reuse common names: {sorted(clash)}")
        return {"format": FORMAT, **common, **self.details}

    def search_record(self) -> dict[str, Any]:
        """What `arch.json` says about the search that found the architecture."""
        keys = ("cost_model", "cost", "cost_units", "target")
        return {k: getattr(self, k) for k in keys}

    def write(self, path: Path) -> None:
        write_json(path, self.record())


COMMON = tuple(f.name for f in fields(RunSummary) if f.name != "details")


def from_record(record: dict[str, Any]) -> RunSummary:
    """A summary from its JSON object (this format or the previous one)."""
    if record.get("format") == FORMAT:
        values = {k: record.get(k) for k in COMMON}
        details = {k: v for k, v in record.items() if k not in (*COMMON, "format")}
        details.pop("relative_to_target", None)
        return RunSummary(**values, details=details)
    if "format" in record:
        raise NascliError(f"summary format {record['format']} is not one this nascli reads")
    return _from_format_1(record)


def _from_format_1(old: dict[str, Any]) -> RunSummary:
    strategy = old.get("strategy")
    retrain = strategy is None and "test_top1" in old
    command = "retrain" if retrain else "search"
    known = {k: old[k] for k in COMMON if k in old and k not in ("command", "strategy")}
    if strategy == "tunas":
        known.pop("valid_top1", None)  # the reward accuracy was never a trained network's
        supernet = old.get("reward_top1_final", old.get("final_valid_quality"))
        known["supernet_top1"] = supernet
    if retrain:
        known["valid_top1"] = old.get("best_valid_top1")
    known["seconds"] = old.get("search_seconds", old.get("train_seconds"))
    known.setdefault("space", old.get("space"))
    known.setdefault("seed", old.get("seed"))
    details = {k: v for k, v in old.items() if k not in COMMON}
    return RunSummary(command=command, strategy=strategy, **known, details=details)


def read_summary(run: Path) -> RunSummary:
    """The summary of a finished run directory; one line when there is none or it is broken."""
    path = run / "summary.json"
    if not path.is_file():
        raise NascliError(f"{run} has no summary.json (not a finished nascli run)")
    try:
        record = json.loads(path.read_text())
    except ValueError as error:
        raise NascliError(f"cannot read {path}: {error}") from None
    summary = from_record(record)
    if "format" not in record and summary.command == "retrain" and summary.images is None:
        summary.images = record.get("steps", 0) * _batch_size(run)  # format 1 did not say
    return summary


def _batch_size(run: Path) -> int:
    config = run / ".hydra" / "config.yaml"
    if not config.is_file():
        return 0
    from omegaconf import OmegaConf

    return int(OmegaConf.load(config).train.batch_size)
