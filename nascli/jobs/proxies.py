"""`nascli proxies input=<run dir | CSV>`: how well each zero-shot proxy ranks architectures
whose accuracy is known.

The input is a run directory (its `candidates.csv`, e.g. of `nascli random-baseline`, or its
`population.csv`) or any CSV with an `indices` column and an accuracy column
(`proxies.accuracy`, default `valid_top1`; rows without one, such as failed candidates, are
skipped). When the input comes from a nascli run its own config fixes the space and the input
shape, so the networks are scored as they were trained. Proxy settings (batch, repeats, γ, BN
term, residuals, synflow variant) are the `strategy=zen` group's.

Writes `proxies.csv` (one row per architecture: its accuracy and every proxy's score),
`correlations.csv` (Kendall τ and Spearman ρ of each proxy against the accuracy, and its
seconds per architecture) and `plots/proxies.png`. `te_nas_rank` is TE-NAS's rank sum over the
input's architectures; its two parts (`te_ntk`, `te_regions`) are scored and listed with it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from nascli.config import configured_space, network_settings, run_directory
from nascli.errors import NascliError
from nascli.files import write_csv
from nascli.report import plots
from nascli.report.console import RunConsole
from nascli.report.ranking import kendall, spearman
from nascli.search.proxies import (
    POPULATION_PROXIES,
    PROXIES,
    ProxySettings,
    scorable,
    score,
    te_nas_rank,
)
from nascli.space.arch import parse_indices
from nascli.space.network import decode
from nascli.train.engine import progress_bar, stop_requests

CANDIDATE_FILES = ("candidates.csv", "population.csv")


def read_input(path: Path, accuracy: str) -> tuple[pd.DataFrame, DictConfig | None, Path]:
    """The rows to score (with an accuracy), the config of the run they come from (if any),
    and the CSV read."""
    if path.is_dir():
        found = [path / name for name in CANDIDATE_FILES if (path / name).is_file()]
        if not found:
            raise NascliError(f"{path} has no {' or '.join(CANDIDATE_FILES)}")
        csv, run = found[0], path
    elif path.is_file():
        csv, run = path, path.parent
    else:
        raise NascliError(f"input not found: {path}")
    try:
        frame = pd.read_csv(csv, dtype={"indices": str})
    except (OSError, ValueError) as error:
        raise NascliError(f"cannot read {csv}: {error}") from None
    missing = [c for c in ("indices", accuracy) if c not in frame.columns]
    if missing:
        raise NascliError(
            f"{csv} has no column {', '.join(missing)} (columns: {', '.join(frame.columns)}); "
            "set proxies.accuracy=<column>"
        )
    frame = frame[frame[accuracy].notna()].reset_index(drop=True)
    if len(frame) < 3:
        raise NascliError(f"{csv} has {len(frame)} rows with an accuracy; correlations need ≥ 3")
    config_path = run / ".hydra" / "config.yaml"
    run_cfg = OmegaConf.load(config_path) if config_path.is_file() else None
    return frame, run_cfg, csv


def run(cfg: DictConfig) -> None:
    console = RunConsole()
    options = cfg.proxies
    if not cfg.input:
        raise NascliError(
            "no input: pass input=<run dir | CSV with indices and accuracies>, e.g. the "
            "directory of a `nascli random-baseline` run"
        )
    names = list(options.names)
    available = (*PROXIES, *POPULATION_PROXIES)
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise NascliError(
            f"unknown proxy {', '.join(unknown) or '(none given)'}; "
            f"available: {', '.join(available)}"
        )
    # a rank over the whole set is computed from its per-architecture parts, scored as well
    scored = list(dict.fromkeys(p for n in names for p in POPULATION_PROXIES.get(n, (n,))))
    settings = ProxySettings.from_mapping(cfg.strategy)
    frame, run_cfg, csv = read_input(Path(cfg.input), options.accuracy)
    source = run_cfg if run_cfg is not None else cfg
    space = configured_space(source)
    net_settings = network_settings(source)
    out = run_directory()
    out.mkdir(parents=True, exist_ok=True)
    console.print(
        f"proxies {', '.join(names)} · {len(frame)} architectures of {space.title} from {csv} · "
        f"{net_settings.resolution}px × {net_settings.in_channels} channels "
        f"({'the run' if run_cfg is not None else 'this config'}'s settings) · batch "
        f"{settings.batch_size}, repeat {settings.repeat}, BN term {settings.bn_term}",
        soft_wrap=True,
    )
    rows: list[dict[str, Any]] = []
    seconds = dict.fromkeys(scored, 0.0)
    with stop_requests() as requested, progress_bar(console, True) as progress:
        task = progress.add_task("scoring", total=len(frame), status="")
        for i, record in frame.iterrows():
            indices = parse_indices(space, str(record["indices"])).indices
            net = scorable(decode(space, indices, net_settings))
            row: dict[str, Any] = {
                "indices": record["indices"],
                options.accuracy: record[options.accuracy],
            }
            for k, name in enumerate(scored):
                generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + int(i) * 101 + k)
                tick = time.perf_counter()
                row[name] = score(name, net, settings, generator)
                seconds[name] += time.perf_counter() - tick
            rows.append(row)
            progress.update(task, advance=1)
            if requested.signum:  # scores take seconds: nothing worth resuming
                raise NascliError(
                    f"interrupted after {len(rows)} of {len(frame)} architectures",
                    exit_code=128 + requested.signum,
                )
    scores = pd.DataFrame(rows)
    for name, (condition, regions) in POPULATION_PROXIES.items():
        if name in names:  # te_ntk is −κ
            scores[name] = te_nas_rank(-scores[condition], scores[regions])
            seconds[name] = seconds[condition] + seconds[regions]
    rows = scores.to_dict("records")
    records = []
    listed = scored + [n for n in names if n in POPULATION_PROXIES]
    for name in listed:
        tau = kendall(scores[name], scores[options.accuracy])
        rho = spearman(scores[name], scores[options.accuracy])
        records.append(
            {
                "proxy": name,
                "kendall_tau": tau.statistic,
                "kendall_p": tau.pvalue,
                "spearman_rho": rho.statistic,
                "spearman_p": rho.pvalue,
                "n": len(scores),
                "seconds_per_arch": seconds[name] / len(scores),
            }
        )
    stats = pd.DataFrame(records)
    write_csv(out / "proxies.csv", rows)
    write_csv(out / "correlations.csv", stats.to_dict("records"))
    (out / "plots").mkdir(exist_ok=True)
    plots.proxy_scatter(out / "plots" / "proxies.png", scores, listed, options.accuracy, stats)
    table = Table(
        title=f"rank correlation with {options.accuracy} ({len(scores)} architectures)",
        title_justify="left",
    )
    for column in ("proxy", "Kendall τ (p)", "Spearman ρ (p)", "time/arch"):
        table.add_column(column, justify="right" if column != "proxy" else "left")
    for item in stats.itertuples():
        table.add_row(
            item.proxy,
            f"{item.kendall_tau:+.3f} ({item.kendall_p:.2g})",
            f"{item.spearman_rho:+.3f} ({item.spearman_p:.2g})",
            f"{item.seconds_per_arch * 1000:.0f} ms",
        )
    console.print(table)
    console.print(f"wrote {out}/proxies.csv, correlations.csv, plots/proxies.png", soft_wrap=True)
