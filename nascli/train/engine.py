"""The training loop every nascli job uses: standalone retraining, proxy training of candidates.

Everything random is keyed by (seed, epoch, step) or saved in the checkpoint, so a run stopped at
any step (SIGTERM/SIGINT: checkpoint at once; SIGKILL: the last periodic checkpoint) finishes
with the same weights as one that never stopped. Device work is synchronised only every
`log_every` steps, where losses are checked for NaN/inf, progress is drawn and ranks agree on
whether to stop.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nascli.data.source import DataSource
from nascli.errors import NascliError
from nascli.files import write_csv
from nascli.report.metrics import NoScalars, Scalars, scalars
from nascli.train.checkpoint import load_checkpoint, save_checkpoint
from nascli.train.distributed import Context, convert_sync_batchnorm
from nascli.train.optim import build_optimizer, learning_rate

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(NascliError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class Interrupted(Exception):
    """SIGTERM/SIGINT: a checkpoint was written at `step`; rerunning resumes from it."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step
        self.signum = signum


@dataclass
class Evaluation:
    loss: float
    top1: float
    images: int


@dataclass
class Outcome:
    steps: int
    history: list[dict[str, Any]]
    best_valid_top1: float | None
    best_epoch: int | None
    train_seconds: float
    images_per_second: float
    resumed_from: int
    replica_checksums: list[float]


class StopRequest:
    """Set by SIGTERM/SIGINT: the loop checkpoints and stops at its next sync point."""

    signum = 0


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """SIGTERM/SIGINT ask for a checkpoint and a clean stop; a second Ctrl-C kills."""
    requested = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def request_stop(signum: int, frame: Any) -> None:
        requested.signum = signum
        signal.signal(signal.SIGINT, previous[signal.SIGINT])

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, request_stop)
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class LoggedProgress(Progress):
    """rich's live bar on a terminal. Elsewhere (a log file, `nohup`, SLURM, CI, `tee`), where
    the bar never draws, one plain line per task every tenth of its total or `every` seconds,
    whichever comes first, and at its end: count, elapsed, ETA and the status field."""

    def __init__(self, *columns: Any, every: float = 30.0, **kwargs: Any):
        super().__init__(*columns, **kwargs)
        self.plain = not self.console.is_terminal and not kwargs.get("disable", False)
        self.every = every
        self._printed: dict[Any, tuple[float, int]] = {}

    def update(self, task_id: Any, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        if self.plain:
            self._maybe_print(task_id)

    def _maybe_print(self, task_id: Any) -> None:
        task = self._tasks[task_id]
        if not task.total:
            return
        now = time.monotonic()
        tenth = int(10 * task.completed / task.total)
        last_time, last_tenth = self._printed.get(task_id, (now, 0))
        if tenth == last_tenth and now - last_time < self.every and task.completed < task.total:
            return
        if task.completed >= task.total and last_tenth > 10:
            return  # the end is printed once
        self._printed[task_id] = (now, tenth if task.completed < task.total else 11)
        remaining = task.time_remaining
        eta = "?" if remaining is None else _clock(remaining)
        status = task.fields.get("status", "")
        self.console.print(
            f"{task.description} {int(task.completed)}/{int(task.total)} "
            f"({task.completed / task.total:.0%}) · elapsed {_clock(task.elapsed or 0.0)} · "
            f"ETA {eta}" + (f" · {status}" if status else ""),
            soft_wrap=True,
            markup=False,
            highlight=False,
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def progress_bar(console: Console, enabled: bool = True) -> Progress:
    """Bar, count, elapsed, ETA and a status line; redrawn only when asked, so no thread
    competes with the training step. Without a terminal: plain lines (`LoggedProgress`)."""
    return LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=not enabled,
        auto_refresh=False,
        # Without a terminal the plain lines say it all; the bar's last frame would be one
        # more line, squeezed when another bar (a search around a candidate's) is open.
        transient=not console.is_terminal,
    )


def check_replicas(ctx: Context, tensors: Any) -> list[float]:
    """A position-weighted checksum of `tensors` on every rank; ranks that differ are an error."""
    values = [t.detach().double().flatten() for t in tensors]
    flat = torch.cat([v for v in values if v.numel()])
    position = torch.arange(1, len(flat) + 1, device=flat.device, dtype=torch.float64)
    checksum = (flat * position.rsqrt()).sum().reshape(1)
    sums = [float(t) for t in ctx.all_gather(checksum)]
    if len(set(sums)) > 1:
        raise NascliError(f"the ranks' weights differ after training (checksums {sums})")
    return sums


class Trainer:
    """Trains `model` on `data` with the recipe `cfg` (the `train` config group)."""

    def __init__(
        self,
        model: nn.Module,
        cfg: Any,
        data: DataSource,
        ctx: Context,
        *,
        seed: int,
        run_dir: Path | None,
        fingerprint: dict[str, Any],
        console: Console | None = None,
        tensorboard: bool = False,
    ):
        if cfg.batch_size % ctx.world:
            raise NascliError(
                f"train.batch_size={cfg.batch_size} must be divisible by the {ctx.world} ranks"
            )
        if cfg.amp not in AMP_DTYPES:
            raise NascliError(f"train.amp={cfg.amp!r}: choose none, bf16 or fp16")
        self.cfg, self.ctx, self.seed = cfg, ctx, seed
        self.data = data.to(ctx.device)
        self.run_dir = run_dir
        self.fingerprint = fingerprint
        self.console = console or Console()
        self.tensorboard = tensorboard  # each epoch's row also as TensorBoard scalars
        self.sink: Scalars | NoScalars = NoScalars()
        self.steps_per_epoch = data.steps_per_epoch(cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.peak_lr = cfg.lr_per_256 * cfg.batch_size / 256
        self.warmup_steps = round(cfg.warmup_fraction * self.total_steps)
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        channels_last = cfg.channels_last
        if channels_last == "auto":
            channels_last = ctx.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format

        if cfg.bn_momentum is not None:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = cfg.bn_momentum
        if ctx.world > 1 and cfg.sync_bn:
            model = convert_sync_batchnorm(model, ctx.device)
        self.model = model.to(ctx.device, memory_format=self.memory_format)
        self.net: nn.Module = self.model
        if ctx.world > 1:
            ids = [ctx.device] if ctx.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.optimizer = build_optimizer(self.model, cfg, self.peak_lr)
        self.scaler = torch.amp.GradScaler(ctx.device.type) if cfg.amp == "fp16" else None
        self.ema = None
        if cfg.ema_decay:
            avg = get_ema_multi_avg_fn(cfg.ema_decay)
            self.ema = AveragedModel(self.model, multi_avg_fn=avg, use_buffers=True)

        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.train_seconds = 0.0
        self._reset_epoch_totals()

    # ------------------------------------------------------------------ state
    def _reset_epoch_totals(self, values: list[float] | None = None) -> None:
        # loss sum, correct, images (this rank, this epoch) and the first non-finite step.
        self.totals = torch.tensor(values or [0.0, 0.0, 0.0], device=self.ctx.device)
        self.first_bad_step = torch.tensor(-1, device=self.ctx.device)

    def eval_model(self) -> nn.Module:
        """The weights evaluated and exported: the EMA when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": {
                "cpu": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if self.ctx.device.type == "cuda" else None,
            },
            "history": self.history,
            "best": self.best,
            "epoch_totals": self.totals.tolist(),
            "train_seconds": self.train_seconds,
        }

    def resume(self) -> int:
        """Restore from `run_dir/last.pt` if present; returns the step resumed from (0: fresh)."""
        path = self.run_dir / "last.pt" if self.run_dir is not None else None
        if path is None or not path.exists():
            return 0
        state = load_checkpoint(path, self.fingerprint)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if state["rng"]["cuda"] is not None and self.ctx.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        self.step = state["step"]
        self.history = state["history"]
        self.best = state["best"]
        self.train_seconds = state["train_seconds"]
        self._reset_epoch_totals(state["epoch_totals"])
        return self.step

    def save_last(self) -> None:
        if self.ctx.is_main and self.run_dir is not None:
            save_checkpoint(self.run_dir / "last.pt", self.state())

    def check_replicas(self) -> list[float]:
        """A checksum of every rank's weights and buffers; ranks that drifted apart are an error."""
        return check_replicas(self.ctx, self.model.state_dict().values())

    # ------------------------------------------------------------------ steps
    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        lr = learning_rate(
            self.step, self.total_steps, self.peak_lr, self.warmup_steps, self.cfg.schedule
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = images.contiguous(memory_format=self.memory_format)
        with self.autocast():
            logits = self.net(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.cfg.grad_clip_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        loss = loss.detach().float()
        bad = ~torch.isfinite(loss)
        self.first_bad_step = torch.where(
            bad & (self.first_bad_step < 0), self.step, self.first_bad_step
        )
        correct = (logits.argmax(1) == labels).sum()
        self.totals += torch.stack(
            [loss * len(labels), correct.float(), loss.new_tensor(len(labels))]
        )
        self.step += 1

    def sync(self) -> tuple[float, float, int]:
        """Agree across ranks: epoch loss and accuracy so far, divergence, stop requests."""
        totals = self.ctx.all_reduce(self.totals.clone())
        flags = torch.stack(
            [
                self.first_bad_step.float(),
                torch.tensor(float(self.stop_signal), device=self.ctx.device),
            ]
        )
        bad_step, stop = self.ctx.all_reduce(flags, op="max").tolist()
        if bad_step >= 0:
            where = (
                f"; the last good checkpoint is {self.run_dir / 'last.pt'}" if self.run_dir else ""
            )
            epoch = int(bad_step) // self.steps_per_epoch + 1
            raise TrainingDiverged(
                f"loss became NaN/inf at step {int(bad_step)} (epoch {epoch}){where}; "
                "lower train.lr_per_256 or set train.grad_clip_norm"
            )
        loss_sum, correct, count = totals.tolist()
        return loss_sum / max(count, 1), correct / max(count, 1), int(stop)

    @torch.inference_mode()
    def evaluate(self, split: str, batch_size: int | None = None) -> Evaluation:
        """Top-1 and loss of the evaluated weights on every image of `split` (all ranks)."""
        model = self.eval_model()
        was_training = model.training
        model.eval()
        totals = torch.zeros(3, device=self.ctx.device, dtype=torch.float64)
        batches = self.data.eval_batches(
            split, batch_size or self.cfg.eval_batch_size, self.ctx.rank, self.ctx.world
        )
        for images, labels in batches:
            with self.autocast():
                logits = model(images.contiguous(memory_format=self.memory_format))
            loss = F.cross_entropy(logits.float(), labels, reduction="sum")
            correct = (logits.argmax(1) == labels).sum()
            totals += torch.stack([loss.double(), correct.double(), totals.new_tensor(len(labels))])
        model.train(was_training)
        loss_sum, correct, count = self.ctx.all_reduce(totals).tolist()
        return Evaluation(loss_sum / max(count, 1), correct / max(count, 1), int(count))

    # ------------------------------------------------------------------ loop
    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        with stop_requests() as requested:
            self._requested = requested
            yield

    @property
    def stop_signal(self) -> int:
        requested = getattr(self, "_requested", None)
        return requested.signum if requested is not None else 0

    def progress(self) -> Progress:
        return progress_bar(self.console, self.ctx.is_main)

    def fit(self) -> Outcome:
        """Train to the end of the recipe (resuming from `run_dir/last.pt` when it exists)."""
        resumed_from = self.resume()
        if resumed_from and self.ctx.is_main:
            self.console.print(
                f"resuming from step {resumed_from} of {self.total_steps}", soft_wrap=True
            )
        self.net.train()
        log_every = max(1, self.cfg.log_every)
        checkpoint_every = self.cfg.checkpoint_every
        self.sink = scalars(self.tensorboard and self.ctx.is_main, self.run_dir, resumed_from)
        with closing(self.sink), self.stop_on_signals(), self.progress() as progress:
            task = progress.add_task(
                "train", total=self.total_steps, completed=self.step, status=""
            )
            while self.step < self.total_steps:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                window_start, window_step = time.perf_counter(), self.step
                for images, labels in self.data.batches(
                    "train",
                    self.seed,
                    epoch,
                    start,
                    self.cfg.batch_size,
                    self.ctx.rank,
                    self.ctx.world,
                ):
                    self.train_step(images, labels)
                    if self.step % self.steps_per_epoch == 0:
                        break
                    checkpoint_due = checkpoint_every > 0 and self.step % checkpoint_every == 0
                    if self.step % log_every == 0 or checkpoint_due:
                        *_, stop = self._report(progress, task, epoch, window_start, window_step)
                        window_start, window_step = time.perf_counter(), self.step
                        if checkpoint_due or stop:
                            self.save_last()
                        if stop:
                            raise Interrupted(self.step, stop)
                loss, top1, stop = self._report(progress, task, epoch, window_start, window_step)
                self._end_epoch(epoch, loss, top1)
                if stop and self.step < self.total_steps:
                    raise Interrupted(self.step, stop)
        seconds = self.train_seconds
        images = self.total_steps * self.cfg.batch_size
        return Outcome(
            steps=self.step,
            history=self.history,
            best_valid_top1=None if self.best is None else self.best["valid_top1"],
            best_epoch=None if self.best is None else self.best["epoch"],
            train_seconds=seconds,
            images_per_second=images / seconds if seconds else 0.0,
            resumed_from=resumed_from,
            replica_checksums=self.check_replicas(),
        )

    def _report(
        self, progress: Progress, task: Any, epoch: int, window_start: float, window_step: int
    ) -> tuple[float, float, int]:
        """Sync, redraw the progress bar; returns the epoch's loss and top-1 so far and the
        stop signal the ranks agreed on."""
        loss, top1, stop = self.sync()
        now = time.perf_counter()
        self.train_seconds += now - window_start
        images_per_s = (
            (self.step - window_step) * self.cfg.batch_size / max(now - window_start, 1e-9)
        )
        lr = self.optimizer.param_groups[0]["lr"]
        status = (
            f"epoch {epoch + 1}/{self.cfg.epochs} · loss {loss:.3f} · top1 {top1:.1%} · "
            f"lr {lr:.3g} · {images_per_s:,.0f} img/s"
        )
        progress.update(task, completed=self.step, status=status, refresh=True)
        return loss, top1, stop

    def _end_epoch(self, epoch: int, loss: float, top1: float) -> None:
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "train_loss": loss,
            "train_top1": top1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_seconds": self.train_seconds,
        }
        if self.data.sizes.get("valid"):
            valid = self.evaluate("valid")
            row.update(valid_loss=valid.loss, valid_top1=valid.top1)
            if self.best is None or valid.top1 > self.best["valid_top1"]:
                self.best = {"epoch": epoch + 1, "valid_top1": valid.top1}
                if self.ctx.is_main and self.run_dir is not None:
                    save_checkpoint(
                        self.run_dir / "best.pt",
                        {
                            "fingerprint": self.fingerprint,
                            "step": self.step,
                            "model": self.eval_model().state_dict(),
                            **self.best,
                        },
                    )
        self.history.append(row)
        self.sink.write(row, self.step)
        self.sink.flush()
        self._reset_epoch_totals()
        self.save_last()
        if self.ctx.is_main and self.run_dir is not None:
            write_csv(self.run_dir / "metrics.csv", self.history)
