"""`nascli build`: an architecture -> standalone model, layer table, arch.json and exports."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from nascli.config import configured_network, run_directory
from nascli.cost.analytic import network_cost
from nascli.errors import missing_extra
from nascli.files import atomic_path, write_json
from nascli.nn.builder import build_model
from nascli.nn.export import ONNX_MODULES, export_onnx, export_torchscript
from nascli.report.console import RunConsole
from nascli.report.records import arch_record
from nascli.report.tables import human, layer_table
from nascli.space.arch import get_space


def run(cfg: DictConfig) -> None:
    console = RunConsole()
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
        f"({human(cost.macs)}) · peak activation memory {human(cost.peak_memory_bytes, 'B')} "
        "(fp32)"
    )
    peak = max(range(len(network.layers)), key=lambda i: cost.layer_sram_bytes[i])
    console.print(
        f"int8 deployment (MCUNet's convention, kB = 1,000 B): SRAM {cost.sram_bytes / 1e3:,.1f} "
        f"kB (set by layer {network.layers[peak].name}) · Flash {cost.flash_bytes / 1e3:,.1f} kB",
        soft_wrap=True,
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
