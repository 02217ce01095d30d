"""Params, MACs and peak activation memory of an architecture, from its layer list alone.

Conventions (stated once, used everywhere):

* **Params** are trainable parameters: conv/linear weights and biases, BN γ and β (running
  statistics are buffers, not parameters), as `sum(p.numel() for p in model.parameters())`.
* **MACs** are multiply-accumulates of convolutions and linear layers (including the SE's 1×1
  convs), as `torch.utils.flop_counter` counts them divided by 2; BN, activations, pooling,
  residual adds and the SE gate multiply are not counted. torchvision's "GFLOPS" are these MACs.
* **Peak memory** (`peak_memory`, fp32) is the largest sum of live activation tensors during
  batch-1 inference, in bytes at 4 bytes an element, with BN folded and activations in place:
  at each primitive op the live set is the op's input, its output, and any tensor kept for
  later (an IBN's residual input, an SE's gate).
* **SRAM** (`sram`, int8) is MCUNet's peak activation memory (the official
  `count_peak_activation_size`, MCUNet NeurIPS 2020): one byte an element, batch 1; each conv
  holds its input plus its output; in an inverted bottleneck (or a separable conv) with a
  residual the block's input also stays alive during the depthwise conv (not during the
  project conv, as the official code counts it); a skipped layer holds nothing; the pooling
  layer is not counted, the classifier is; the network's SRAM is the **maximum** over layers,
  never a sum. An SE's tensors are vectors far smaller than its depthwise conv's, so they never
  set a maximum and are left out.
* **NAS-RL's layers** (`space=nasrl`): a layer's input is its channel concatenation (a new
  tensor when it has several sources, smaller maps zero-padded), alive together with its
  output and with every earlier output a later layer still reads (`LayerArgs.kept`), in the
  peak memory and in the SRAM alike; the copy into the concatenation is not counted. The final
  concatenation costs its output plus what is kept.
* **Flash** (`flash`, int8) is the deployed model's weight bytes: every conv and linear weight
  at one byte, plus one int32 bias (4 bytes) per output channel of every conv and linear, into
  which the BN that follows it is folded (SE convs included). Quantisation scales and zero
  points, the runtime and the code are not counted.
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
    sram_bytes: int  # int8 peak activation memory (MCUNet's convention)
    flash_bytes: int  # int8 weights + int32 biases
    layer_sram_bytes: tuple[int, ...]  # each layer's, in `layers` order


def _bn(channels: int, bn: bool = True) -> int:
    return 2 * channels if bn else 0


def layer_cost(layer: LayerArgs) -> LayerCost:
    """Params, MACs and peak live activation elements of one layer."""
    c_in, c_out, k = layer.in_channels, layer.out_channels, layer.kernel
    hw_in, hw_out = layer.in_resolution**2, layer.out_resolution**2
    a_in, a_out = c_in * hw_in, c_out * hw_out
    kept = a_in if layer.residual else 0
    if layer.kind == "conv":
        kh, kw = layer.kernel_size
        params = kh * kw * c_in * c_out + (c_out if layer.bias else 0) + _bn(c_out, layer.bn)
        return LayerCost(params, kh * kw * c_in * c_out * hw_out, a_in + a_out + layer.kept)
    if layer.kind == "concat":
        return LayerCost(0, 0, a_out + layer.kept)
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


INT32_BIAS = 4  # bytes of one folded bias


def layer_sram(layer: LayerArgs) -> int:
    """Int8 bytes the layer needs at its peak, by MCUNet's convention (module docstring)."""
    c_in, c_out = layer.in_channels, layer.out_channels
    hw_in, hw_out = layer.in_resolution**2, layer.out_resolution**2
    a_in, a_out = c_in * hw_in, c_out * hw_out
    kept = a_in if layer.residual else 0
    if layer.kind in ("conv", "linear"):
        return a_in + a_out + layer.kept
    if layer.kind == "concat":
        return a_out + layer.kept
    if layer.kind == "sepconv":  # depthwise on the input, then the 1×1 project
        depthwise = a_in + c_in * hw_out
        return max(depthwise + kept, c_in * hw_out + a_out)
    if layer.kind == "ibn":
        mid = layer.mid_channels
        expand = a_in + mid * hw_in
        depthwise = mid * hw_in + mid * hw_out
        project = mid * hw_out + a_out
        return max(expand, depthwise + kept, project)
    if layer.kind == "gap":
        return 0
    raise ValueError(f"unknown layer kind {layer.kind!r}")


def layer_flash(layer: LayerArgs) -> int:
    """Int8 weight bytes plus int32 bias bytes of the layer (BN folded)."""
    c_in, c_out, k = layer.in_channels, layer.out_channels, layer.kernel
    bias = INT32_BIAS
    if layer.kind in ("conv", "linear"):
        kh, kw = layer.kernel_size
        size = kh * kw if layer.kind == "conv" else 1
        return size * c_in * c_out + bias * c_out
    if layer.kind == "sepconv":
        return k * k * c_in + bias * c_in + c_in * c_out + bias * c_out
    if layer.kind == "ibn":
        mid, se = layer.mid_channels, layer.se_channels
        total = c_in * mid + bias * mid + k * k * mid + bias * mid + mid * c_out + bias * c_out
        if se:
            total += mid * se + bias * se + se * mid + bias * mid
        return total
    if layer.kind in ("gap", "concat"):
        return 0
    raise ValueError(f"unknown layer kind {layer.kind!r}")


def network_cost(network: Network, bytes_per_element: int = 4) -> NetworkCost:
    layers = tuple(layer_cost(layer) for layer in network.layers)
    sram = tuple(layer_sram(layer) for layer in network.layers)
    return NetworkCost(
        params=sum(c.params for c in layers),
        macs=sum(c.macs for c in layers),
        peak_memory_bytes=max(c.peak_elements for c in layers) * bytes_per_element,
        layers=layers,
        sram_bytes=max(sram),
        flash_bytes=sum(layer_flash(layer) for layer in network.layers),
        layer_sram_bytes=sram,
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
