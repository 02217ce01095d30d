"""What a run writes about its architecture: the `arch.json` record."""

from __future__ import annotations

from typing import Any

from nascli import __version__
from nascli.cost.analytic import NetworkCost
from nascli.report.tables import layer_rows
from nascli.space.arch import Architecture
from nascli.space.network import Network


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
        # only when not TuNAS's (older arch.json files have no such key)
        **({"width_rounding": w} if (w := settings.width_rounding) != "tunas" else {}),
        "stride_policy": settings.stride_policy,
        "min_final_resolution": settings.min_final_resolution,
        "totals": {
            "params": cost.params,
            "macs": cost.macs,
            "peak_memory_bytes": cost.peak_memory_bytes,
            "sram_bytes": cost.sram_bytes,
            "flash_bytes": cost.flash_bytes,
        },
        "layers": layer_rows(network, cost),
        "nascli_version": __version__,
    }
