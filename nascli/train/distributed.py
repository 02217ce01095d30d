"""Running under `torchrun`: process group, device per rank, reductions.

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op for one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta

import torch
import torch.distributed as dist
from torch import nn

from nascli.errors import NascliError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_process_group() -> None:
    """Join torchrun's process group once (gloo for CPU tensors, nccl for CUDA tensors)."""
    if world_size() > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)


def close_process_group() -> None:
    """Leave the process group together: a rank that tears gloo down while another still talks
    to it can abort the other ("terminate called without an active exception"). The barrier is
    bounded, so a rank whose peer already died does not hang."""
    if not dist.is_initialized():
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        else:
            dist.barrier()
    except RuntimeError:
        pass  # a peer is gone: nothing left to synchronise with
    dist.destroy_process_group()


def shared_timestamp() -> str:
    """Rank 0's clock as `YYYY-MM-DD/HH-MM-SS`, so every rank names the same run directory."""
    init_process_group()
    stamp = [datetime.now().strftime("%Y-%m-%d/%H-%M-%S")]
    dist.broadcast_object_list(stamp, src=0)
    return stamp[0]


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Reduce in place across ranks (identity with one process)."""
        if self.world > 1:
            ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
            dist.all_reduce(tensor, op=ops[op])
        return tensor

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if self.world == 1:
            return [tensor]
        gathered = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(gathered, tensor)
        return gathered

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NascliError(f"device={name} but no CUDA device is available; use device=cpu")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name != "cpu":
        raise NascliError(f"device={name!r}: choose auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def context(device: str) -> Context:
    """This process's rank, the world size and its device (joins the group under torchrun)."""
    init_process_group()
    rank = dist.get_rank() if dist.is_initialized() else 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    return Context(rank=rank, world=world_size(), device=resolved)


class _GlobalBatchNorm(torch.autograd.Function):
    """Batch norm over the global batch, with the analytic backward (as SyncBatchNorm does).

    Forward: per-channel sum, sum of squares and count are summed over ranks. Backward: the two
    per-channel reductions of the gradient are summed over ranks, so each rank's input gradient
    is the one a single process would compute on the whole batch.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # type: ignore[override]
        channels = x.shape[1]
        stats = torch.cat(
            [
                x.sum((0, 2, 3), dtype=torch.float64),
                (x.double() ** 2).sum((0, 2, 3)),
                x.new_tensor([x.numel() / channels], dtype=torch.float64),
            ]
        )
        dist.all_reduce(stats)
        count = stats[-1]
        mean = stats[:channels] / count
        var = (stats[channels:-1] / count - mean * mean).clamp_min(0)
        mean, invstd = mean.to(x.dtype), torch.rsqrt(var + eps).to(x.dtype)
        x_hat = (x - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)
        ctx.save_for_backward(x_hat, weight, invstd, count.to(x.dtype))
        return x_hat * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), mean, var.to(x.dtype)

    @staticmethod
    def backward(ctx, grad, _mean, _var):  # type: ignore[override]
        x_hat, weight, invstd, count = ctx.saved_tensors
        local = torch.cat([grad.sum((0, 2, 3)), (grad * x_hat).sum((0, 2, 3))])
        grad_bias, grad_weight = local.chunk(2)
        totals = local.clone()
        dist.all_reduce(totals)
        sum_dy, sum_dy_xhat = (totals / count).chunk(2)
        grad_x = (grad - sum_dy.view(1, -1, 1, 1) - x_hat * sum_dy_xhat.view(1, -1, 1, 1)) * (
            weight * invstd
        ).view(1, -1, 1, 1)
        # weight/bias: this rank's share; DDP averages them like every other gradient.
        return grad_x, grad_weight, grad_bias, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics span the global batch of all ranks.

    PyTorch's `SyncBatchNorm` runs on GPUs only; this one works with gloo on CPU, so N CPU
    processes compute what one process computes on the same global batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        out, mean, var = _GlobalBatchNorm.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            count = x.numel() / x.shape[1] * dist.get_world_size()
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean, alpha=m)
            self.running_var.mul_(1 - m).add_(var * count / (count - 1), alpha=m)
        return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Share BN statistics across ranks: PyTorch's SyncBatchNorm on CUDA, ours on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine
            )
            replacement.load_state_dict(child.state_dict())
            setattr(model, name, replacement)
        else:
            convert_sync_batchnorm(child, device)
    return model
