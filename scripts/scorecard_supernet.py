"""Diagnosis: can the scorecard's TuNAS supernets rank the architectures it retrained?

Reads a `scripts/scorecard.py` output directory at one target: every strategy's winner with
its retrained test top-1 (mean over the retrainings of `retrain<E>_<strategy>/`) and every
random-baseline candidate with its valid top-1 after the baseline's own short training. Each
of them is scored through each TuNAS seed's final supernet (`tunas/<seed>/last.pt`, BN on batch
statistics, the valid split: TuNAS's reward pass). Prints per supernet the spread of those
scores, where TuNAS's own pick ranks, and Kendall τ (p-value) against the standalone numbers.

    python scripts/scorecard_supernet.py [--out runs/scorecard] [--target 40] [--epochs 2]
        [-- the overrides the scorecard ran with]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_module
from rich.console import Console
from rich.table import Table
from scipy.stats import kendalltau

from nascli.config import configured_space, network_settings
from nascli.data import load_data
from nascli.nn.supernet import Supernet
from nascli.report.machine import machine_line
from nascli.search.health import supernet_top1
from nascli.search.tunas import TunasSettings
from nascli.space.arch import parse_indices

STRATEGIES = ("tunas", "random", "zen")


def known_architectures(root: Path, epochs: int) -> list[dict]:
    """Winners (with their retrained test top-1) and random candidates (with their valid)."""

    def runs(strategy: str) -> list[Path]:  # a scorecard can run any subset of strategies
        folder = root / strategy
        return sorted(folder.iterdir()) if folder.is_dir() else []

    archs = []
    for strategy in STRATEGIES:
        for run in runs(strategy):
            retrained = root / f"retrain{epochs}_{strategy}" / run.name
            tests = [
                json.loads(p.read_text())["test_top1"] for p in retrained.glob("*/summary.json")
            ]
            indices = json.loads((run / "summary.json").read_text())["indices"]
            archs.append({"arch": f"{strategy}{run.name}", "indices": indices,
                          "retrained_test": statistics.mean(tests) if tests else None})  # fmt: skip
    for run in runs("random"):
        table = pd.read_csv(run / "candidates.csv", dtype={"indices": str})
        for _, row in table[table["status"] == "done"].iterrows():
            label = f"candidate{run.name}.{row['candidate']}"
            archs.append(
                {"arch": label, "indices": row["indices"], "candidate_valid": row["valid_top1"]}
            )
    return archs


def through_supernet(run: Path, overrides: list[str], archs: list[dict]) -> pd.DataFrame:
    """`archs` with their top-1 through the final supernet of the TuNAS run `run`, best first."""
    with initialize_config_module(config_module="nascli.conf", version_base=None):
        cfg = compose("search", overrides)
    space = configured_space(cfg)
    settings = TunasSettings.from_config(cfg.strategy)
    net = Supernet(space, network_settings(cfg), settings.supernet_init)
    state = torch.load(run / "last.pt", weights_only=False, map_location="cpu")
    net.load_state_dict(state["search"]["supernet"])
    data = load_data(cfg.data)
    rows = []
    for arch in archs:
        indices = parse_indices(space, arch["indices"]).indices
        rows.append({**arch, "through": supernet_top1(net, indices, data)})
    return pd.DataFrame(rows).sort_values("through", ascending=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/scorecard")
    parser.add_argument("--target", default="40")
    parser.add_argument("--epochs", type=int, default=2, help="the retrainings to read")
    parser.add_argument("extra", nargs="*", help="overrides the scorecard ran with")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.out) / args.target
    if not (root / "tunas").is_dir():
        parser.error(f"no TuNAS runs under {root}: no supernet to score architectures through")
    archs = known_architectures(root, args.epochs)
    console = Console()
    table = Table(title=f"{len(archs)} architectures through each TuNAS supernet · "
                        f"{machine_line()}", title_justify="left")  # fmt: skip
    for column in ("supernet", "scores", "spread", "its pick's rank", "τ vs candidates (p)",
                   "τ vs winners (p)"):  # fmt: skip
        table.add_column(column, justify="right")
    for run in sorted((root / "tunas").iterdir()):
        overrides = [*args.extra, f"cost.target={args.target}", f"seed={run.name}"]
        scores = through_supernet(run, overrides, archs)
        rank = scores["arch"].tolist().index(f"tunas{run.name}") + 1
        taus = []
        for column in ("candidate_valid", "retrained_test"):
            known = scores.dropna(subset=[column])
            tau = kendalltau(known["through"], known[column])
            taus.append(f"{tau.statistic:+.2f} ({tau.pvalue:.2f}, {len(known)})")
        low, high = scores["through"].min(), scores["through"].max()
        table.add_row(f"seed {run.name}", f"{low:.1%}–{high:.1%}", f"{high - low:.1%}",
                      f"{rank} of {len(scores)}", *taus)  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
