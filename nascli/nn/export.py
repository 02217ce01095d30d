"""Exports of a standalone model: TorchScript (`model.pt`) and ONNX (`model.onnx`)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

ONNX_OPSET = 18


def export_torchscript(model: nn.Module, path: Path) -> None:
    """Save a scripted copy of `model` (eval mode) that `torch.jit.load` reads without nascli."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model.eval()).save(str(path))


#: What ONNX export imports (the `export` extra); `onnxruntime` is only needed to time with it.
ONNX_MODULES = ("onnx", "onnxscript")


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, quick: bool = False) -> None:
    """Export `model` (eval mode) to ONNX with a dynamic batch dimension.

    The default is torch's current exporter (`torch.export`, then onnxscript's optimiser).
    `quick=True` uses the older TorchScript-tracing exporter, 25–70× faster for one layer (about
    0.02 s instead of 0.6–2.4 s here) and enough for timing, where thousands of layers are
    exported; where a torch no longer has it, the current exporter is used.
    """
    # The exporter and its optimiser log every pass they run; keep the terminal readable.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if quick and _export_traced(model, example, path):
                return
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                model.eval(),
                (example,),
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),  # by position: any forward argument name
                verbose=False,
            )
            program.save(str(path))
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_traced(model: nn.Module, example: torch.Tensor, path: Path) -> bool:
    """The TorchScript-tracing exporter; False where this torch no longer has it."""
    try:
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    except (TypeError, NotImplementedError, RuntimeError):
        return False
    return True
