"""`nascli build`: an architecture -> standalone model, layer table, arch.json and exports."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console

from nascli import __version__
from nascli.config import network_settings, run_directory
from nascli.cost.analytic import NetworkCost, network_cost
from nascli.errors import NascliError, missing_extra
from nascli.files import atomic_path, write_json
from nascli.nn.builder import build_model
from nascli.nn.export import ONNX_MODULES, export_onnx, export_torchscript
from nascli.report.tables import human, layer_rows, layer_table
from nascli.space.arch import Architecture, get_space, load_architecture, space_of
from nascli.space.network import Network, decode


def arch_record(arch: Architecture, network: Network, cost: NetworkCost) -> dict[str, Any]:
    """What `arch.json` holds: enough to rebuild the network, and a readable layer table."""
    settings = network.settings
    return {
        "space": arch.space,
        "indices": arch.text,
        "resolution": settings.resolution,
        "num_classes": settings.num_classes,
        "in_channels": settings.in_channels,
        "width_multiplier": settings.width_multiplier,
        "stride_policy": settings.stride_policy,
        "min_final_resolution": settings.min_final_resolution,
        "totals": {
            "params": cost.params,
            "macs": cost.macs,
            "peak_memory_bytes": cost.peak_memory_bytes,
        },
        "layers": layer_rows(network, cost),
        "nascli_version": __version__,
    }


def configured_network(cfg: DictConfig) -> tuple[Architecture, Network]:
    """The architecture `arch=` names, decoded with the space and data settings of `cfg`. An
    arch.json or run directory brings its own space."""
    if cfg.arch is None:
        raise NascliError(
            "no architecture given: pass arch=<indices | reference name | arch.json | run dir>"
        )
    space = get_space(space_of(str(cfg.arch)) or cfg.space.name)
    arch = load_architecture(str(cfg.arch), space)
    return arch, decode(space, arch.indices, network_settings(cfg))


def run(cfg: DictConfig) -> None:
    console = Console()
    arch, network = configured_network(cfg)
    space = get_space(arch.space)
    cost = network_cost(network)

    torch.manual_seed(cfg.seed)
    model = build_model(network).eval()
    settings = network.settings
    title = (
        f"{space.title} · {settings.resolution}×{settings.resolution}×{settings.in_channels}"
        f" · {settings.num_classes} classes · width ×{settings.width_multiplier:g}"
    )
    console.print(layer_table(network, cost, title))
    console.print(
        f"params {cost.params:,} ({human(cost.params)}) · MACs {cost.macs:,} "
        f"({human(cost.macs)}) · peak activation memory {human(cost.peak_memory_bytes, 'B')}"
    )
    console.print(f"indices {arch.text}")

    out = run_directory()
    out.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, settings.in_channels, settings.resolution, settings.resolution)
    no_onnx = missing_extra("export", *ONNX_MODULES)
    with console.status("exporting TorchScript" + ("" if no_onnx else " and ONNX")):
        with atomic_path(out / "model.pt") as path:
            export_torchscript(model, path)
        if not no_onnx:
            with atomic_path(out / "model.onnx") as path:
                export_onnx(model, example, path)
    write_json(out / "arch.json", arch_record(arch, network, cost))
    if no_onnx:
        console.print(f"model.onnx not written: {no_onnx}", markup=False)
    console.print(
        f"wrote {out}/arch.json, model.pt (TorchScript)" + ("" if no_onnx else ", model.onnx")
    )
