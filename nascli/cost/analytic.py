"""Params, MACs and peak activation memory of an architecture, from its layer list alone.

Conventions (stated once, used everywhere):

* **Params** are trainable parameters: conv/linear weights and biases, BN γ and β (running
  statistics are buffers, not parameters), as `sum(p.numel() for p in model.parameters())`.
* **MACs** are multiply-accumulates of convolutions and linear layers (including the SE's 1×1
  convs), as `torch.utils.flop_counter` counts them divided by 2; BN, activations, pooling,
  residual adds and the SE gate multiply are not counted. torchvision's "GFLOPS" are these MACs.
* **Peak memory** is the largest sum of live activation tensors during batch-1 inference, in
  bytes, with BN folded and activations in place: at each primitive op the live set is the op's
  input, its output, and any tensor kept for later (an IBN's residual input, an SE's gate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nascli.space.network import LayerArgs, Network


@dataclass(frozen=True)
class LayerCost:
    params: int
    macs: int
    peak_elements: int


@dataclass(frozen=True)
class NetworkCost:
    params: int
    macs: int
    peak_memory_bytes: int
    layers: tuple[LayerCost, ...]


def _bn(channels: int, bn: bool = True) -> int:
    return 2 * channels if bn else 0


def layer_cost(layer: LayerArgs) -> LayerCost:
    """Params, MACs and peak live activation elements of one layer."""
    c_in, c_out, k = layer.in_channels, layer.out_channels, layer.kernel
    hw_in, hw_out = layer.in_resolution**2, layer.out_resolution**2
    a_in, a_out = c_in * hw_in, c_out * hw_out
    kept = a_in if layer.residual else 0
    if layer.kind == "conv":
        params = k * k * c_in * c_out + (c_out if layer.bias else 0) + _bn(c_out, layer.bn)
        return LayerCost(params, k * k * c_in * c_out * hw_out, a_in + a_out)
    if layer.kind == "sepconv":
        params = k * k * c_in + _bn(c_in) + c_in * c_out + _bn(c_out)
        macs = (k * k * c_in + c_in * c_out) * hw_out
        depthwise = c_in * hw_out
        peak = max(a_in + depthwise, kept + depthwise + a_out)
        return LayerCost(params, macs, peak)
    if layer.kind == "ibn":
        mid, se = layer.mid_channels, layer.se_channels
        params = c_in * mid + _bn(mid) + k * k * mid + _bn(mid) + mid * c_out + _bn(c_out)
        macs = c_in * mid * hw_in + k * k * mid * hw_out + mid * c_out * hw_out
        expanded, depthwise = mid * hw_in, mid * hw_out
        peak = max(a_in + expanded, kept + expanded + depthwise, kept + depthwise + a_out)
        if se:
            params += mid * se + se + se * mid + mid
            macs += 2 * mid * se
            # pooled vector, hidden, gate, then the gated copy of the depthwise output
            peak = max(peak, kept + 2 * depthwise + mid + se)
        return LayerCost(params, macs, peak)
    if layer.kind == "gap":
        return LayerCost(0, 0, a_in + a_out)
    if layer.kind == "linear":
        return LayerCost(c_in * c_out + c_out, c_in * c_out, c_in + c_out)
    raise ValueError(f"unknown layer kind {layer.kind!r}")


def network_cost(network: Network, bytes_per_element: int = 4) -> NetworkCost:
    layers = tuple(layer_cost(layer) for layer in network.layers)
    return NetworkCost(
        params=sum(c.params for c in layers),
        macs=sum(c.macs for c in layers),
        peak_memory_bytes=max(c.peak_elements for c in layers) * bytes_per_element,
        layers=layers,
    )


def count_params(model: nn.Module) -> int:
    """Params of any built module, as the analytic count defines them."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one image through any built module (torch's FLOP counter / 2, one forward pass),
    as the analytic count defines them."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros((1, *input_shape)))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
