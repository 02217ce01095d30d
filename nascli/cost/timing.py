"""The one timing function every latency number in nascli comes from.

Protocol: a fixed, recorded thread count; eval mode and `inference_mode`; warm-up runs that are
never timed; then each run timed on its own (CUDA events on GPU, `perf_counter_ns` on CPU); the
median is the result, with p10/p90 to show the spread.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nascli.errors import NascliError
from nascli.report.machine import cpu_model

BACKENDS = ("torch", "torchscript", "onnxruntime")


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int


def physical_cores() -> int:
    """Physical cores (hyper-threads excluded where the OS says so), at least 1."""
    try:
        siblings = set()
        cpus = os.sched_getaffinity(0)
        for cpu in cpus:
            path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
            with open(path) as f:
                siblings.add(f.read().strip())
        return max(1, len(siblings))
    except (OSError, AttributeError):
        return max(1, (os.cpu_count() or 2) // 2)


@contextmanager
def thread_count(threads: int) -> Iterator[None]:
    """Run with exactly `threads` intra-op threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def summarise(samples: list[float]) -> Timing:
    """Median and p10/p90 of per-run milliseconds."""
    p10, p90 = np.percentile(samples, [10, 90]).tolist()
    return Timing(statistics.median(samples), p10, p90, len(samples))


def time_runs(
    run: Callable[[], Any],
    warmup: int,
    runs: int,
    clock: Callable[[], int] = time.perf_counter_ns,
    synchronize: Callable[[], None] = lambda: None,
) -> Timing:
    """Call `run` `warmup` times untimed, then `runs` times timed one by one."""
    if runs < 1:
        raise NascliError("cost.runs must be at least 1")
    for _ in range(warmup):
        run()
    synchronize()
    samples = []
    for _ in range(runs):
        start = clock()
        run()
        synchronize()
        samples.append((clock() - start) / 1e6)
    return summarise(samples)


def _cuda_timing(run: Callable[[], Any], warmup: int, runs: int) -> Timing:
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    samples = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return summarise(samples)


@dataclass(frozen=True)
class Protocol:
    """How to time: recorded with every number measured under it."""

    backend: str = "torch"
    device: str = "cpu"
    threads: int = 1
    batch_size: int = 1
    warmup: int = 10
    runs: int = 50
    channels_last: bool = False

    def describe(self) -> dict[str, Any]:
        info = asdict(self)
        info.update(
            cpu=cpu_model(),
            machine=platform.machine(),
            torch=torch.__version__,
            gpu=torch.cuda.get_device_name() if self.device.startswith("cuda") else None,
        )
        if self.backend == "onnxruntime":
            import onnxruntime

            info["onnxruntime"] = onnxruntime.__version__
        return info


def protocol_from_config(cfg: Any, device: str) -> Protocol:
    if cfg.backend not in BACKENDS:
        raise NascliError(f"cost.backend={cfg.backend!r}: choose {', '.join(BACKENDS)}")
    return Protocol(
        backend=cfg.backend,
        device=device,
        threads=cfg.threads or physical_cores(),
        batch_size=cfg.batch_size,
        warmup=cfg.warmup,
        runs=cfg.runs,
        channels_last=cfg.channels_last,
    )


def _onnx_session(module: nn.Module, example: torch.Tensor, protocol: Protocol) -> Any:
    import tempfile

    import onnxruntime

    from nascli.nn.export import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/m.onnx"
        export_onnx(module, example, path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = protocol.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if protocol.device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        return onnxruntime.InferenceSession(path, options, providers=providers)


def measure(module: nn.Module, input_shape: tuple[int, ...], protocol: Protocol) -> Timing:
    """Median latency of `module` on a fixed random input of `input_shape` (batch first)."""
    device = torch.device(protocol.device)
    memory_format = torch.channels_last if protocol.channels_last else torch.preserve_format
    module = module.eval().to(device)
    example = torch.randn(input_shape, device=device)
    if protocol.channels_last and example.dim() == 4:
        module = module.to(memory_format=memory_format)
        example = example.contiguous(memory_format=memory_format)
    with thread_count(protocol.threads):
        if protocol.backend == "onnxruntime":
            session = _onnx_session(module, example, protocol)
            feed = {session.get_inputs()[0].name: example.cpu().numpy()}
            return time_runs(lambda: session.run(None, feed), protocol.warmup, protocol.runs)
        if protocol.backend == "torchscript":
            with torch.no_grad():
                module = torch.jit.freeze(torch.jit.trace(module, example))
        with torch.inference_mode():
            if device.type == "cuda":
                return _cuda_timing(lambda: module(example), protocol.warmup, protocol.runs)
            return time_runs(lambda: module(example), protocol.warmup, protocol.runs)
