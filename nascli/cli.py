"""The `nascli` command line: thin Typer commands that hand their arguments to Hydra.

Everything after a command's name is Hydra's command line: overrides such as `space=mnv3
arch=mobilenet_v2 data=imagenet`, `--cfg job` to print the composed config, `-m` to sweep,
`hydra.run.dir=...`. Each command then calls one plain job function.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Annotated

import typer
from omegaconf import DictConfig

from nascli import __version__
from nascli.config import group_options, run_hydra_job
from nascli.errors import NascliError

app = typer.Typer(
    name="nascli",
    help="Hardware-aware neural architecture search (TuNAS, random search, Zen-NAS, "
    "NAS-RL).\n\n"
    "Options of a command are Hydra overrides after its name, e.g. "
    "`nascli build space=mnv3 arch=... out=runs/x`; `--cfg job` prints the composed config, "
    "`-m` sweeps.\n\n"
    "Exit codes: 0 done · 2 usage (a bad value, an unknown option or key, checked before any "
    "work) · 3 training diverged · 4 some random-baseline candidates failed · 128+N "
    "interrupted by signal N (rerun with the same out= to resume).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
EPILOG = "Hydra's own options: --cfg job | --info | -m key=a,b | --hydra-help."


# command -> (help, job module with a `run(cfg)` function or None if not available yet,
#             whether it writes a run directory)
COMMANDS: dict[str, tuple[str, str | None, bool]] = {
    "search": (
        "Search a space for an architecture under a cost target "
        "(strategy=tunas|random|zen|nasrl|grid|proxyless|fbnet, controller=lstm for an RL one). "
        "With no overrides: TuNAS on the embedded digits, Pixel-1 latency target, minutes on a "
        "CPU; rerun with out=<run dir> to resume.",
        "nascli.jobs.search",
        True,
    ),
    "random-baseline": (
        "Latency-matched random baseline (= `search strategy=random`): architectures sampled "
        "uniformly inside a cost window, each trained with the same recipe, best on valid; "
        "rerun with out=<run dir> to resume.",
        "nascli.jobs.search",
        True,
    ),
    "proxies": (
        "Rank zero-shot proxies (zen, grad_norm, synflow, naswot, params, macs, random) "
        "against known accuracies: input=<random-baseline run dir | CSV with indices and "
        "valid_top1>; prints Kendall τ and Spearman ρ, writes a plot.",
        "nascli.jobs.proxies",
        True,
    ),
    "profile-latency": (
        "Measure latency on this machine: a lookup table of every layer of a space, validated "
        "end to end on random architectures (cost=lut finds it); arch=A times one network.",
        "nascli.jobs.profile_latency",
        True,
    ),
    "build": (
        "Build an architecture (arch=indices|reference|arch.json|run dir): layer table, "
        "params, MACs, arch.json, TorchScript and ONNX exports.",
        "nascli.jobs.build",
        True,
    ),
    "retrain": (
        "Train an architecture from scratch with a named recipe (train=cpu_quick|tunas_mobile) "
        "and report test accuracy; rerun with out=<run dir> to resume.",
        "nascli.jobs.retrain",
        True,
    ),
    "design-space": (
        "Choose the design space before searching (MCUNet's TinyNAS): rank every (width "
        "multiplier, resolution) of a grid by the mean MACs of its sampled architectures that "
        "fit the board's int8 SRAM and Flash (board=stm32f746|stm32f412|stm32h743|none); "
        "writes design_space.csv and a CDF plot, prints the winner's overrides.",
        "nascli.jobs.design_space",
        True,
    ),
    "spaces": (
        "List the search spaces: decisions, indices length, size and reference architectures.",
        "nascli.jobs.spaces",
        False,
    ),
}


def _job(name: str, module: str | None) -> Callable[[DictConfig], None]:
    if module is not None:
        return importlib.import_module(module).run

    def not_available(cfg: DictConfig) -> None:
        raise NascliError(f"`nascli {name}` is not available in nascli {__version__} yet")

    return not_available


# Commands whose defaults differ from the root config's (conf/<name>.yaml).
ROOT_CONFIGS = {
    "search": "search",
    "random-baseline": "random_baseline",
    "proxies": "proxies",
    "design-space": "design_space",
}


def groups_epilog(config_name: str) -> str:
    """The config groups, their options and this command's default (marked *), then Hydra's
    own options: one paragraph per group so the help keeps them on their own lines."""
    lines = ["Config groups (GROUP=OPTION; * the default here, GROUP.KEY=VALUE for one key):"]
    for group, (options, default) in group_options(config_name).items():
        names = " | ".join(f"{o}*" if o == default else o for o in options)
        lines.append(f"{group}: {names}")
    return "\n\n".join([*lines, EPILOG])


def _register(name: str, help: str, module: str | None, writes: bool) -> None:
    def command(ctx: typer.Context) -> None:
        run_hydra_job(
            name,
            _job(name, module),
            list(ctx.args),
            write_run_dir=writes,
            config_name=ROOT_CONFIGS.get(name, "config"),
        )

    app.command(
        name,
        context_settings=HYDRA_ARGS,
        epilog=groups_epilog(ROOT_CONFIGS.get(name, "config")),
        help=help,
        options_metavar="[HYDRA OPTIONS] [KEY=VALUE]...",
    )(command)


for _name, (_help, _module, _writes) in COMMANDS.items():
    _register(_name, _help, _module, _writes and _module is not None)


@app.command("compare")
def compare_runs(
    runs: Annotated[
        list[str],
        typer.Argument(help="Run directories of search, random-baseline or retrain runs."),
    ],
    plot: Annotated[
        str, typer.Option(help="Accuracy-vs-cost plot to write ('' for none).")
    ] = "compare.png",
) -> None:
    """Side-by-side table of runs: strategy, space, target, cost, params, MACs, valid and test
    top-1, time and images processed; and one accuracy-vs-cost plot."""
    from pathlib import Path

    from nascli.jobs.compare import compare
    from nascli.report.tables import output_console

    try:
        compare([Path(r) for r in runs], Path(plot) if plot else None, output_console(220))
    except NascliError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nascli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Hardware-aware neural architecture search."""


def main() -> None:
    app()
