"""The one timing function every latency number in nascli comes from.

Protocol: a fixed, recorded thread count; eval mode and `inference_mode`; warm-up runs that are
never timed; then each run timed on its own (CUDA events on GPU, `perf_counter_ns` on CPU); the
median is the result, with p10/p90 to show the spread.

`allocator="steady"` (the default) stops glibc's malloc from handing freed memory back to the
OS for the rest of the process. Otherwise a layer timed alone can spend most of its time
page-faulting the same few hundred kilobytes back in on every call (a 24→144-channel inverted
bottleneck at 32×32 measures 0.77 ms instead of 0.27 ms), which it mostly does not do inside a
network; networks run about 2% faster too. `allocator="default"` leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
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

from nascli.errors import NascliError, missing_extra
from nascli.report.machine import cpu_model

BACKENDS = ("torch", "torchscript", "onnxruntime")
ALLOCATORS = ("steady", "default")


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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS (trimming the
    heap, unmapping large blocks), for the rest of the process; False where that is not
    possible (not glibc)."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    # 32 MiB is the largest mmap threshold glibc accepts; blocks above it are rare at batch 1.
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def summarise(samples: list[float]) -> Timing:
    """Median and p10/p90 of per-run milliseconds."""
    p10, p90 = np.percentile(samples, [10, 90]).tolist()
    return Timing(statistics.median(samples), p10, p90, len(samples))


def sample_runs(
    run: Callable[[], Any],
    warmup: int,
    runs: int,
    clock: Callable[[], int] = time.perf_counter_ns,
    synchronize: Callable[[], None] = lambda: None,
) -> list[float]:
    """Call `run` `warmup` times untimed, then `runs` times timed one by one (milliseconds)."""
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
    return samples


def _cuda_samples(run: Callable[[], Any], warmup: int, runs: int) -> list[float]:
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
    return samples


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
    allocator: str = "steady"

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
    if cfg.allocator not in ALLOCATORS:
        raise NascliError(f"cost.allocator={cfg.allocator!r}: choose {', '.join(ALLOCATORS)}")
    if cfg.backend == "onnxruntime" and (missing := missing_extra("export", "onnxruntime", "onnx")):
        raise NascliError(f"cost.backend=onnxruntime: {missing}")
    # Where malloc cannot be told to keep freed memory, say so in what is recorded.
    allocator = "steady" if cfg.allocator == "steady" and _mallopt() is not None else "default"
    return Protocol(
        backend=cfg.backend,
        device=device,
        threads=cfg.threads or physical_cores(),
        batch_size=cfg.batch_size,
        warmup=cfg.warmup,
        runs=cfg.runs,
        channels_last=cfg.channels_last,
        allocator=allocator,
    )


def _onnx_session(module: nn.Module, example: torch.Tensor, protocol: Protocol) -> Any:
    import tempfile

    import onnxruntime

    from nascli.nn.export import export_onnx

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/m.onnx"
        export_onnx(module, example, path, quick=True)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = protocol.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]
        if protocol.device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        return onnxruntime.InferenceSession(path, options, providers=providers)


class Runner:
    """One module on a fixed random input, ready to time in the protocol's backend."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], protocol: Protocol):
        if protocol.allocator == "steady" and not keep_freed_memory():
            raise NascliError("cost.allocator=steady needs glibc's malloc; use =default")
        self.protocol = protocol
        device = torch.device(protocol.device)
        self.cuda = device.type == "cuda" and protocol.backend != "onnxruntime"
        module = module.eval().to(device)
        example = torch.randn(input_shape, device=device)
        if protocol.channels_last and example.dim() == 4:
            module = module.to(memory_format=torch.channels_last)
            example = example.contiguous(memory_format=torch.channels_last)
        with thread_count(protocol.threads):
            if protocol.backend == "onnxruntime":
                session = _onnx_session(module, example, protocol)
                feed = {session.get_inputs()[0].name: example.cpu().numpy()}
                self.run: Callable[[], Any] = lambda: session.run(None, feed)
                return
            if protocol.backend == "torchscript":
                with torch.no_grad():
                    module = torch.jit.freeze(torch.jit.trace(module, example))
        self.run = lambda: module(example)

    def samples(self, warmup: int, runs: int) -> list[float]:
        """Milliseconds of `runs` timed runs after `warmup` untimed ones."""
        with thread_count(self.protocol.threads), torch.inference_mode():
            if self.cuda:
                return _cuda_samples(self.run, warmup, runs)
            return sample_runs(self.run, warmup, runs)

    def part_samples(self, parts: list[nn.Module], warmup: int, runs: int) -> list[list[float]]:
        """Milliseconds each of `parts` (submodules of the module) takes inside each of `runs`
        timed runs of the whole, after `warmup` untimed ones: forward hooks read the clock (on
        GPU: record events) as each part starts and ends. Eager `torch` backend only; the hooks
        are removed afterwards."""
        if self.protocol.backend != "torch":
            raise NascliError("timing layers inside a network needs cost.backend=torch")
        starts: list[Any] = [None] * len(parts)
        ends: list[Any] = [None] * len(parts)

        def clock() -> Any:
            if not self.cuda:
                return time.perf_counter_ns()
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event

        def elapsed(start: Any, end: Any) -> float:
            return start.elapsed_time(end) if self.cuda else (end - start) / 1e6

        def mark(marks: list[Any], i: int) -> Callable[..., None]:
            return lambda *_: marks.__setitem__(i, clock())

        handles = []
        for i, part in enumerate(parts):
            handles.append(part.register_forward_pre_hook(mark(starts, i)))
            handles.append(part.register_forward_hook(mark(ends, i)))
        samples: list[list[float]] = [[] for _ in parts]
        try:
            with thread_count(self.protocol.threads), torch.inference_mode():
                for _ in range(warmup):
                    self.run()
                for _ in range(runs):
                    self.run()
                    if self.cuda:
                        torch.cuda.synchronize()
                    for i in range(len(parts)):
                        samples[i].append(elapsed(starts[i], ends[i]))
        finally:
            for handle in handles:
                handle.remove()
        return samples


#: Untimed calls before each later round of an interleaved measurement, so that a network is
#: timed in its steady state, not just after the others have evicted it from the caches.
REWARM = 2


class Rounds:
    """Modules measured interleaved, one round at a time.

    The `protocol.runs` timed runs of each module are split over `rounds` rounds, and every
    round visits every module in turn (`protocol.warmup` untimed calls in the first round,
    `REWARM` in later ones; every other round in reverse order), so a slow spell of a shared
    machine falls on all of them alike instead of on whichever was being timed. The caller
    decides when each round happens: back to back (`measure_many`), or spread over other work
    so that the modules are measured over the same period as it. What a round records per
    module is the subclass's `_sample`.
    """

    def __init__(
        self, items: list[tuple[nn.Module, tuple[int, ...]]], protocol: Protocol, rounds: int
    ):
        if rounds < 1:
            raise NascliError("cost.rounds must be at least 1")
        self.protocol, self.rounds = protocol, rounds
        self.per_round = -(-protocol.runs // rounds)
        self.runners = [Runner(module, shape, protocol) for module, shape in items]
        #: Per module, per finished round: what `_sample` recorded.
        self.samples: list[list[Any]] = [[] for _ in items]

    @property
    def done(self) -> int:
        return len(self.samples[0]) if self.samples else self.rounds

    def next_round(self) -> None:
        if self.done >= self.rounds:
            raise NascliError("every round has been measured")
        warmup = self.protocol.warmup if self.done == 0 else min(REWARM, self.protocol.warmup)
        order = range(len(self.samples))
        for index in order if self.done % 2 == 0 else reversed(order):
            self.samples[index].append(self._sample(index, warmup, self.per_round))

    def _sample(self, index: int, warmup: int, runs: int) -> Any:
        raise NotImplementedError


class RoundRobin(Rounds):
    """`Rounds` of whole modules: each round records every module's timed runs (ms)."""

    def _sample(self, index: int, warmup: int, runs: int) -> list[float]:
        return self.runners[index].samples(warmup, runs)

    def timings(self) -> list[Timing]:
        """Each module's median over all its rounds."""
        return [summarise([ms for round_ in rounds for ms in round_]) for rounds in self.samples]

    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """Each module's median over the even-numbered rounds and over the odd-numbered ones:
        two measurements of the same modules, interleaved in time (needs two rounds)."""
        if self.done < 2:
            raise NascliError("two halves need at least two rounds")
        medians = [
            [
                statistics.median(ms for round_ in rounds[start::2] for ms in round_)
                for start in (0, 1)
            ]
            for rounds in self.samples
        ]
        even, odd = np.array(medians).T
        return even, odd


class PartRounds(Rounds):
    """`Rounds` that time given parts of each module inside it (`Runner.part_samples`):
    `parts[i]` are submodules of the i-th module; each round records one list per part."""

    def __init__(
        self,
        items: list[tuple[nn.Module, tuple[int, ...]]],
        protocol: Protocol,
        rounds: int,
        parts: list[list[nn.Module]],
    ):
        super().__init__(items, protocol, rounds)
        self.parts = parts

    def _sample(self, index: int, warmup: int, runs: int) -> list[list[float]]:
        return self.runners[index].part_samples(self.parts[index], warmup, runs)

    def part_medians(self) -> list[list[float]]:
        """Per module, each part's median milliseconds over all rounds."""
        return [
            [
                statistics.median(ms for round_ in rounds for ms in round_[part])
                for part in range(len(parts))
            ]
            for rounds, parts in zip(self.samples, self.parts, strict=True)
        ]


def measure_many(
    items: list[tuple[nn.Module, tuple[int, ...]]],
    protocol: Protocol,
    rounds: int = 1,
    on_round: Callable[[int], None] = lambda done: None,
) -> list[Timing]:
    """Median latency of each `(module, input_shape)`, measured in `rounds` interleaved rounds
    back to back (see `RoundRobin`); `rounds=1` is one module after another."""
    robin = RoundRobin(items, protocol, rounds)
    while robin.done < rounds:
        robin.next_round()
        on_round(robin.done)
    return robin.timings()


def measure(module: nn.Module, input_shape: tuple[int, ...], protocol: Protocol) -> Timing:
    """Median latency of `module` on a fixed random input of `input_shape` (batch first)."""
    return measure_many([(module, input_shape)], protocol)[0]
