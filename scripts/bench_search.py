"""Benchmark: the cost of a TuNAS search step against training the same child alone.

For N sampled architectures (after the warmups: plain policy samples), one search step (sample,
shared-weight train step, reward pass on the 4× valid batch, cost model, policy update) is timed,
then the same child, extracted as a standalone model with the supernet's weights, does a train
step on the same train batch and a forward pass on the same valid batch with the same optimiser.
Target: median search step ≤ 1.15× the median standalone step + eval pass.

Memory: peak resident memory above the after-start-up baseline of a process running search steps
vs one training the largest child of the space alone (all widths, expansions and kernels at
their maximum, no skips), each in a fresh subprocess. Target: ≤ 1.5×.

Gradient strategies (`--gradient`): the same batches through `strategy=proxyless`'s weight step
(one binarized child) and architecture step (every option under one-hot gates), and
`strategy=fbnet`'s (Gumbel-softmax: every option in both steps), each against the weight step's
child trained alone on the same batch, and their peak memory against the largest child's.
Targets (ProxylessNAS): binarized weight step ≤ 1.3× the child's train step, memory ≤ 1.5× the
largest child's; FBNet/DARTS keep every path resident and are reported as measured.

Second-order DARTS (`--darts`): on the same batches, after each weight step of
`relaxation=softmax`, α's gradient three ways on the same state: first order, second order with
DARTS's central-difference Hessian-vector product, and second order with the exact product by
double backward; their times, and each one's relative distance to the exact second-order one.

    python scripts/bench_search.py [--space proxylessnas] [--archs 20] [--threads 2]
                                   [--gradient | --darts]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from nascli.config import CostConfig, DataConfig, TrainConfig
from nascli.cost.models import make_cost_model
from nascli.data import load_data
from nascli.nn.supernet import Supernet
from nascli.report.machine import machine_line
from nascli.search.gradient import GradientSearch, GradientSettings
from nascli.search.tunas import TunasSearch, TunasSettings
from nascli.space.arch import get_space, largest_indices
from nascli.space.network import NetworkSettings
from nascli.train.distributed import Context
from nascli.train.optim import build_optimizer

DATA = {"name": "mnist", "resolution": 32, "num_classes": 10, "in_channels": 1}
DATA |= {"valid_fraction": 0.2, "test_fraction": 0.2, "crop_padding": 2, "flip": False}


def make_search(space_name: str, batch: int, epochs: int = 20) -> TunasSearch:
    data_cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), DATA)
    train_cfg = OmegaConf.merge(
        OmegaConf.structured(TrainConfig),
        {"name": "bench", "batch_size": batch, "epochs": epochs, "lr_per_256": 0.1},
        {"weight_decay": 5e-5, "label_smoothing": 0.1},
    )
    space = get_space(space_name)
    settings = NetworkSettings(resolution=32, num_classes=10, in_channels=1)
    cost_cfg = OmegaConf.merge(OmegaConf.structured(CostConfig), {"name": "tunas_pixel1"})
    torch.manual_seed(0)
    # No warmups and no delay: every measured step is a plain sample of the policy.
    strategy = TunasSettings(
        rl_delay_fraction=0.0, op_warmup_fraction=0.0, filter_warmup_fraction=0.0
    )
    return TunasSearch(
        Supernet(space, settings),
        train_cfg,
        strategy,
        load_data(data_cfg),
        make_cost_model(cost_cfg, space, settings),
        84.0,
        Context(0, 1, torch.device("cpu")),
        seed=0,
    )


def make_gradient(
    space_name: str, batch: int, relaxation: str, binary_mode: str = "full"
) -> GradientSearch:
    """The gradient strategy on the same data, recipe and cost as `make_search`, with an
    architecture step after every weight step and no warm-up."""
    tunas = make_search(space_name, batch)
    loss = "mul_log" if relaxation == "binary" else "fbnet_log"
    name = "proxyless" if relaxation == "binary" else "fbnet"
    settings = GradientSettings(
        name=name,
        relaxation=relaxation,
        loss=loss,
        warmup_fraction=0.0,
        arch_update_every=1,
        binary_mode=binary_mode,
    )
    torch.manual_seed(0)
    return GradientSearch(
        Supernet(tunas.space, tunas.net.settings), tunas.train_cfg, settings, tunas.data,
        tunas.cost_model, 84.0, tunas.ctx, seed=0,
    )  # fmt: skip


def child_train_step(search, indices: list[int], t: int) -> float:
    """One train step of the extracted child on step t's train batch (no valid pass)."""
    model = search.net.extract(indices).train()
    optimizer = build_optimizer(model, search.train_cfg, search.peak_lr)
    images, labels = search.train_batches.get(t)
    start = time.perf_counter()
    loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


#: the rows of `--gradient`: (name, relaxation, binary mode)
GRADIENT_KINDS = {
    "proxyless": ("binary", "full"),
    "proxyless_two": ("binary", "two"),
    "fbnet": ("gumbel", "full"),
}


def time_gradient(space: str, archs: int, batch: int, kind: str) -> dict[str, float]:
    """Median seconds of the weight step, the architecture step and the child's train step."""
    search = make_gradient(space, batch, *GRADIENT_KINDS[kind])
    weight, arch, alone = [], [], []
    for t in range(archs + 2):
        start = time.perf_counter()
        _, indices = search.update_weights(t)
        middle = time.perf_counter()
        search.arch_step(t)
        end = time.perf_counter()
        child = child_train_step(search, indices.tolist(), t)
        if t >= 2:  # the first two warm the allocator and kernels
            weight.append(middle - start)
            arch.append(end - middle)
            alone.append(child)
    return {k: statistics.median(v) for k, v in
            (("weight", weight), ("arch", arch), ("alone", alone))}  # fmt: skip


def standalone_step(
    search: TunasSearch, indices: list[int], t: int, model: torch.nn.Module | None = None
) -> float:
    """Train step + valid forward of the extracted child on step t's batches."""
    model = search.net.extract(indices).train() if model is None else model
    optimizer = build_optimizer(model, search.train_cfg, search.peak_lr)
    images, labels = search.train_batches.get(t)
    valid_images, _ = search.valid_batches.get(t)
    start = time.perf_counter()
    loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model(valid_images).argmax(1)
    return time.perf_counter() - start


def time_steps(space: str, archs: int, batch: int) -> list[tuple[float, float]]:
    search = make_search(space, batch)
    for _ in range(3):  # warm-up of the allocator and kernels
        search.train_step()
    pairs = []
    for _ in range(archs):
        t = search.step
        start = time.perf_counter()
        record = search.train_step()
        seconds = time.perf_counter() - start
        pairs.append((seconds, standalone_step(search, record.indices[0], t)))
    return pairs


def current_rss_mib() -> float:
    """Resident memory now (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakRss:
    """Samples the resident memory every millisecond in a thread; `.peak` is the largest seen."""

    def __enter__(self) -> PeakRss:
        self.peak = current_rss_mib()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, current_rss_mib())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()


def memory_worker(kind: str, space: str, batch: int, steps: int) -> None:
    """Runs in a subprocess: prints the weights' size plus the peak resident memory (MiB) above
    the level before the first step: optimiser state, gradients and activations of the run."""
    search = make_search(space, batch)
    largest = largest_indices(search.space)
    model = search.net.extract(largest).train() if kind == "alone" else None
    gradient = None
    if kind in GRADIENT_KINDS:
        gradient = make_gradient(space, batch, *GRADIENT_KINDS[kind])
        del search.net  # only the gradient strategy's supernet is resident
        search.net = gradient.net
    net_mib = sum(p.numel() * p.element_size() for p in (model or search.net).parameters())
    net_mib /= 2**20  # allocated before the baseline: added back
    gc.collect()
    baseline = current_rss_mib()
    with PeakRss() as rss:
        for t in range(steps):
            if kind == "search":
                search.train_step()
            elif kind in GRADIENT_KINDS:
                gradient.train_step()
            else:
                standalone_step(search, [], t, model)
    print(json.dumps({"growth_mib": rss.peak - baseline + net_mib}))


def memory_growth(kind: str, space: str, batch: int, threads: int, steps: int = 8) -> float:
    command = [
        sys.executable, __file__, "--worker", kind, "--space", space, "--batch", str(batch),
        "--threads", str(threads), "--steps", str(steps),
    ]  # fmt: skip
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["growth_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="proxylessnas")
    parser.add_argument("--archs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--worker", choices=("search", "alone", *GRADIENT_KINDS))
    parser.add_argument("--gradient", action="store_true", help="the gradient strategies' rows")
    parser.add_argument("--darts", action="store_true", help="second-order DARTS's α gradient")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        memory_worker(args.worker, args.space, args.batch, args.steps)
        return

    console = Console()
    if args.gradient:
        gradient_table(args, console)
        return
    if args.darts:
        darts_table(args, console)
        return
    pairs = time_steps(args.space, args.archs, args.batch)
    search_ms = statistics.median(s for s, _ in pairs) * 1e3
    alone_ms = statistics.median(a for _, a in pairs) * 1e3
    ratios = [s / a for s, a in pairs]
    search_mem = memory_growth("search", args.space, args.batch, args.threads, args.steps)
    alone_mem = memory_growth("alone", args.space, args.batch, args.threads, args.steps)

    table = Table(
        title=f"TuNAS search step vs the child alone · {args.space} · batch {args.batch} "
        f"(+{4 * args.batch} valid) · 32×32 digits · {args.archs} archs · {args.threads} threads",
        title_justify="left",
    )
    for column in ("", "median ms / step", "peak memory growth"):
        table.add_column(column, justify="right")
    table.add_row("search step (sample, train, reward, policy)", f"{search_ms:.0f}",
                  f"{search_mem:.0f} MiB")  # fmt: skip
    table.add_row("child alone (train + valid forward)", f"{alone_ms:.0f}",
                  f"{alone_mem:.0f} MiB (largest child)")  # fmt: skip
    table.add_row("ratio", f"{search_ms / alone_ms:.3f}", f"{search_mem / alone_mem:.2f}")
    console.print(table)
    console.print(
        f"per-architecture ratios: median {statistics.median(ratios):.3f}, "
        f"min {min(ratios):.3f}, max {max(ratios):.3f} · targets ≤ 1.15 (time), ≤ 1.5 (memory)"
    )
    console.print(machine_line())


def gradient_table(args: argparse.Namespace, console: Console) -> None:
    alone_mem = memory_growth("alone", args.space, args.batch, args.threads, args.steps)
    table = Table(
        title=f"gradient strategies vs the child alone · {args.space} · batch {args.batch} · "
        f"32×32 digits · {args.archs} steps · {args.threads} threads",
        title_justify="left",
    )
    for column in ("", "weight step ms", "architecture step ms", "child alone ms",
                   "weight / alone", "peak memory growth", "memory / largest child"):  # fmt: skip
        table.add_column(column, justify="right")
    for kind, (relaxation, mode) in GRADIENT_KINDS.items():
        times = time_gradient(args.space, args.archs, args.batch, kind)
        memory = memory_growth(kind, args.space, args.batch, args.threads, args.steps)
        label = f"{kind} ({relaxation}{', two paths' if mode == 'two' else ''})"
        table.add_row(
            label, f"{times['weight'] * 1e3:.0f}", f"{times['arch'] * 1e3:.0f}",
            f"{times['alone'] * 1e3:.0f}", f"{times['weight'] / times['alone']:.2f}",
            f"{memory:.0f} MiB", f"{memory / alone_mem:.2f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"largest child trained alone: {alone_mem:.0f} MiB · targets (proxyless): weight step ≤ "
        "1.3× the child's train step, memory ≤ 1.5× the largest child's"
    )
    console.print(machine_line())


#: the rows of `--darts`: (order, Hessian-vector product)
DARTS_KINDS = {
    "first order": (1, "finite_difference"),
    "second order, central difference (DARTS)": (2, "finite_difference"),
    "second order, exact (double backward)": (2, "autograd"),
}


def darts_table(args: argparse.Namespace, console: Console) -> None:
    search = make_gradient(args.space, args.batch, "softmax")
    times = {kind: [] for kind in DARTS_KINDS}
    distance = {kind: [] for kind in DARTS_KINDS}
    base = search.settings
    for t in range(args.archs + 2):
        search.update_weights(t)  # the weights move (and gain momentum) between α gradients
        grads = {}
        for kind, (order, hessian) in DARTS_KINDS.items():
            search.settings = dataclasses.replace(base, order=order, hessian=hessian)
            start = time.perf_counter()
            search.arch_gradient(t)
            times[kind].append(time.perf_counter() - start)
            grads[kind] = search.policy.logits.grad.detach().clone()
        exact = grads["second order, exact (double backward)"]
        for kind, grad in grads.items():
            distance[kind].append(float((grad - exact).norm() / exact.norm()))
        search.policy.logits.grad = exact
        search.arch_optimizer.step()
    table = Table(
        title=f"DARTS's α gradient · {args.space} · batch {args.batch} · 32×32 digits · "
        f"{args.archs} steps · {args.threads} threads",
        title_justify="left",
    )
    for column in ("", "median ms", "× first order", "‖g − exact‖ / ‖exact‖ (median, max)"):
        table.add_column(column, justify="right")
    first = statistics.median(times["first order"][2:])
    for kind in DARTS_KINDS:
        ms = statistics.median(times[kind][2:])
        gap = distance[kind][2:]
        table.add_row(kind, f"{ms * 1e3:.0f}", f"{ms / first:.2f}",
                      f"{statistics.median(gap):.3f}, {max(gap):.3f}")  # fmt: skip
    console.print(table)
    console.print(machine_line())


if __name__ == "__main__":
    main()
