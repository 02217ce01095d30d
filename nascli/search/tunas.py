"""One TuNAS search step and its state (TuNAS code: `mobile_architecture_search.py`): sample K
architectures, update the shared weights on the train batch, score each child on a held-out valid
batch, update the policy.

K = `archs_per_rank` × ranks architectures per step (TuNAS: one per replica, 32 per 4096
images). The global train batch is split evenly over them; each architecture's valid batch is
`rl_batch_size_multiplier` times its train slice. Every rank draws the same K architectures
from a generator keyed by (seed, step) and trains its own; gradients are averaged over all K, so
shared weights and policy stay identical across ranks with one all-reduce of gradients and one
all-gather of rewards per step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nascli.cost.models import CostModel
from nascli.data.augment import keyed_generator
from nascli.data.source import DataSource
from nascli.errors import NascliError
from nascli.nn.supernet import Sample, Supernet, SupernetInit
from nascli.search.budgets import BatchBudgets, BudgetSettings, limits_of
from nascli.search.driver import Strategy
from nascli.search.policy import (
    CategoricalPolicy,
    Controller,
    ControllerSettings,
    PolicyAdam,
    apply_warmup,
    make_controller,
)
from nascli.search.rewards import (
    REWARDS,
    EmaBaseline,
    policy_learning_rate,
    reward,
    warmup_probability,
)
from nascli.settings import check_fields, option
from nascli.space.arch import largest_indices
from nascli.space.schema import Zero
from nascli.space.spaces import SearchSpace
from nascli.train.distributed import Context
from nascli.train.engine import TrainingDiverged
from nascli.train.optim import build_optimizer, learning_rate

#: TuNAS's latency targets on its simulated Pixel-1 (`tunas/mobile_architecture_search.py`):
#: MnasNet/ProxylessNAS-Mobile and MobileNetV3-Large.
PIXEL1_TARGETS_MS = {"proxylessnas": 84.0, "proxylessnas_enlarged": 84.0, "mnv3": 57.0}


#: how the result is read from the final policy (TunasSettings.final_selection)
FINAL_SELECTIONS = ("argmax", "likeliest_in_window")


@dataclass(frozen=True)
class TunasSettings(BudgetSettings):
    """The `strategy=tunas` config group (see conf/strategy/tunas.yaml for each field)."""

    name: str = option("tunas", choices=("tunas",))
    reward: str = option("abs", choices=REWARDS)
    cost_exponent: float = option(-0.1, ge=-100, le=0)  # β: a cost above target lowers reward
    baseline_momentum: float = option(0.95, ge=0, lt=1)
    policy_lr_per_256: float = option(0.0003, gt=0, le=1000)
    policy_lr: float | None = option(None, gt=0, le=1000)
    policy_adam_beta1: float = option(0.0, ge=0, lt=1)
    policy_adam_beta2: float = option(0.999, ge=0, lt=1)
    policy_adam_epsilon: float = option(1e-8, gt=0, le=1)
    policy_second_moment: str = option("per_arch", choices=("per_arch", "mean"))
    rl_delay_fraction: float = option(0.25, ge=0, lt=1)
    op_warmup_fraction: float = option(0.25, ge=0, lt=1)
    filter_warmup_fraction: float = option(0.25, ge=0, lt=1)
    rl_batch_size_multiplier: float = option(4.0, gt=0, le=1000)
    entropy_coefficient: float = option(0.0, ge=0, le=1000)
    archs_per_rank: int = option(1, ge=1, le=1024)
    log_every: int = option(1, ge=1, le=1_000_000)
    checkpoint_every: int = option(50, ge=0)
    # How the shared weights start (nascli's addition, see nn/supernet.py; TuNAS: all false).
    zero_init_residual: bool = option(False)
    tied_kernels: bool = option(False)
    zero_init_se: bool = option(False)
    zero_init_width: bool = option(False)  # channels beyond a width's smallest start silent
    # nascli's addition (BigNAS's sandwich rule, its largest child only; TuNAS: off): each
    # step also trains the space's largest child on the first architecture's train slice.
    sandwich: bool = option(False)
    # The result: argmax of every decision (TuNAS's `analyze_mobile_search`) |
    # likeliest_in_window: the likeliest architecture under the final policy whose cost is
    # within target·(1 ± final_window).
    final_selection: str = option("argmax", choices=FINAL_SELECTIONS)
    final_window: float = option(0.03, gt=0, lt=1)
    # Hard budgets (BudgetSettings): a sampled architecture over one gets `over_budget_reward`
    # instead of its reward (below any TuNAS reward whose cost term is under 10× its target),
    # and the result is the likeliest architecture within them when the argmax is not.
    over_budget_reward: float = option(-1.0, ge=-1000, le=1000)

    @classmethod
    def from_config(cls, cfg: Any) -> TunasSettings:
        settings = cls(**check_fields(cls, dict(cfg), "strategy"))
        if max(settings.op_warmup_fraction, settings.filter_warmup_fraction) > (
            settings.rl_delay_fraction
        ):
            # The warmups' log-prob bookkeeping is exact only if they end before RL starts.
            raise NascliError(
                "strategy.op_warmup_fraction and filter_warmup_fraction must not exceed "
                f"strategy.rl_delay_fraction ({settings.rl_delay_fraction})"
            )
        return settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def supernet_init(self) -> SupernetInit:
        return SupernetInit(
            self.zero_init_residual, self.tied_kernels, self.zero_init_se, self.zero_init_width
        )


@dataclass
class StepRecord:
    """What one step measured, for the log."""

    step: int
    lr: float
    policy_lr: float
    p_op: float
    p_filter: float
    train_loss: float
    quality: list[float]
    cost: list[float]
    rewards: list[float]
    baseline: float
    advantages: list[float]
    entropy: float
    indices: list[list[int]]
    over_budget: int = 0  # samples of the step over a hard budget


class Batches:
    """An endless, resumable stream of one split's batches: epoch e, step i at stream step t."""

    def __init__(self, data: DataSource, split: str, batch: int, ctx: Context, seed: int, augment):
        self.data, self.split, self.batch, self.ctx = data, split, batch, ctx
        self.seed, self.augment = seed, augment
        self.per_epoch = data.steps_per_epoch(batch, split)
        self._iterator = None
        self._next = -1

    def get(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        if t != self._next:
            epoch, start = divmod(t, self.per_epoch)
            self._iterator = self.data.batches(
                self.split, self.seed, epoch, start, self.batch, self.ctx.rank, self.ctx.world,
                augment=self.augment,
            )  # fmt: skip
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._next = -1
            return self.get(t)
        self._next = t + 1
        return batch


#: `train.*` keys the weight-shared step does not implement, with the value that means "off".
#: A search refuses any other value instead of ignoring it. (`bn_momentum` has no role: BN
#: uses batch statistics throughout a search, as TuNAS's; `log_every`, `checkpoint_every`
#: and `eval_batch_size` are the strategy's own `strategy.log_every` / `checkpoint_every` and
#: the reward batches.)
SEARCH_UNSUPPORTED_TRAIN = {
    "amp": "none",
    "ema_decay": None,
    "compile": False,
    "sync_bn": False,
    "decay_classifier": False,
}


def check_search_recipe(train_cfg: Any) -> None:
    """One line naming the first `train.*` key a TuNAS search would otherwise ignore."""

    def text(value: Any) -> str:
        return "null" if value is None else str(value).lower()

    for key, off in SEARCH_UNSUPPORTED_TRAIN.items():
        if train_cfg.get(key, off) != off:
            raise NascliError(
                f"train.{key}={text(train_cfg.get(key))}: not implemented by the TuNAS search "
                f"step (fp32, eager, batch-statistics BN, no EMA); use train.{key}={text(off)}"
            )
    if train_cfg.get("channels_last") is True:
        raise NascliError(
            "train.channels_last=true: not implemented by the TuNAS search step; use auto"
        )


class SupernetSearch(Strategy):
    """What the strategies training a weight-shared supernet step by step share: the position,
    the learning-rate schedule and the divergence check. A subclass sets `step`, `total_steps`,
    `peak_lr`, `warmup_steps` and `train_cfg`, and implements `train_step`."""

    unit = "step"
    step: int
    total_steps: int

    @property
    def position(self) -> int:
        return self.step

    @property
    def total(self) -> int:
        return self.total_steps

    def advance(self) -> Any:
        record = self.train_step()
        if not math.isfinite(record.train_loss):
            raise TrainingDiverged(
                f"the supernet's loss became NaN/inf at step {record.step}; lower "
                "train.lr_per_256 (the last good checkpoint is last.pt in the run directory)"
            )
        return record

    def learning_rate(self, t: int) -> float:
        return learning_rate(
            t, self.total_steps, self.peak_lr, self.warmup_steps, self.train_cfg.schedule
        )

    def train_step(self) -> Any:
        raise NotImplementedError

    @property
    def images(self) -> int:
        """Training images the shared weights have seen so far (the compute a scorecard
        counts)."""
        return self.step * self.train_cfg.batch_size

    def _average_gradients(self) -> None:
        """Sum gradients over ranks. A parameter no rank used keeps no gradient, so the
        optimiser leaves it (and its momentum) untouched, as TuNAS's unexecuted branches."""
        if self.ctx.world == 1:
            return
        params = list(self.net.parameters())
        used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
        used = self.ctx.all_reduce(used.to(self.ctx.device)).cpu() > 0
        chosen = [p for p, u in zip(params, used.tolist(), strict=True) if u]
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in chosen]
        )
        self.ctx.all_reduce(flat)
        offset = 0
        for p in chosen:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n


class TunasSearch(SupernetSearch):
    """The search state (supernet, optimisers, policy, baseline) and one step of it."""

    name = "tunas"

    def __init__(
        self,
        supernet: Supernet,
        train_cfg: Any,
        settings: TunasSettings,
        data: DataSource,
        cost_model: CostModel,
        target: float | None,
        ctx: Context,
        seed: int,
        controller: ControllerSettings | None = None,
    ):
        self.settings, self.ctx, self.seed = settings, ctx, seed
        self.train_cfg = train_cfg
        self.net = supernet.to(ctx.device)
        self.space = supernet.space
        self.cost_model, self.target = cost_model, target
        self.archs = settings.archs_per_rank * ctx.world
        if train_cfg.batch_size % self.archs:
            raise NascliError(
                f"train.batch_size={train_cfg.batch_size} must split evenly over the "
                f"{self.archs} architectures of a step (archs_per_rank × ranks)"
            )
        self.per_arch = train_cfg.batch_size // self.archs
        # The sandwich rule's largest child, trained by the first rank only so that the
        # all-reduce counts it once.
        self.largest = Sample.of(largest_indices(self.space)) if settings.sandwich else None
        self.valid_per_arch = max(1, round(self.per_arch * settings.rl_batch_size_multiplier))
        self.data = data.to(ctx.device)
        self.train_batches = Batches(data, "train", train_cfg.batch_size, ctx, seed, True)
        valid_batch = self.valid_per_arch * self.archs
        if data.sizes.get("valid", 0) < valid_batch:
            raise NascliError(
                f"the reward batch needs {valid_batch} valid images (train.batch_size × "
                f"strategy.rl_batch_size_multiplier) but {data.name} holds "
                f"{data.sizes.get('valid', 0)}; lower one of them or raise data.valid_fraction"
            )
        self.valid_batches = Batches(data, "valid", valid_batch, ctx, seed, False)
        self.steps_per_epoch = self.train_batches.per_epoch
        self.total_steps = self.steps_per_epoch * train_cfg.epochs
        self.peak_lr = train_cfg.lr_per_256 * train_cfg.batch_size / 256
        self.warmup_steps = round(train_cfg.warmup_fraction * self.total_steps)
        # Weight decay is applied by hand to the active slices only, as TuNAS does: none in the
        # optimiser.
        self.weight_decay = train_cfg.weight_decay
        self.optimizer = build_optimizer(self.net, train_cfg, self.peak_lr, weight_decay=0.0)
        # The controller: any `Controller`. TuNAS's is independent categoricals with its Adam,
        # its rate growing ×10 after the RL delay; NAS-RL's LSTM keeps its own constant rate.
        self.controller = controller or ControllerSettings(name="categorical")
        self.policy: Controller = make_controller(self.space, self.controller, ctx.device, seed)
        if isinstance(self.policy, CategoricalPolicy):
            self.policy.adam = PolicyAdam(
                self.policy.logits.shape,
                settings.policy_adam_beta1,
                settings.policy_adam_beta2,
                settings.policy_adam_epsilon,
                settings.policy_second_moment,
                ctx.device,
            )
            base = settings.policy_lr
            if base is None:
                base = settings.policy_lr_per_256 * train_cfg.batch_size / 256
            self.policy_lr_growth = 10.0
        else:
            base = self.controller.lr
            self.policy_lr_growth = 1.0
        self.policy_base_lr = base
        self.baseline = EmaBaseline(settings.baseline_momentum)
        limits = limits_of(settings)
        self.budgets = BatchBudgets(self.space, supernet.settings, limits) if limits else None
        self.step = 0
        self.log_every = max(1, settings.log_every)
        self.checkpoint_every = settings.checkpoint_every

    # ------------------------------------------------------------------ the driver's view
    def log_row(self, record: StepRecord, seconds: float) -> dict[str, Any] | None:
        """One `search_log.csv` row: step means over the step's architectures, and the policy."""
        if record.step % self.log_every and self.step != self.total_steps:
            return None

        def mean(values: list[float]) -> float:
            return sum(values) / len(values)

        argmax = torch.tensor([self.final_indices()])
        return {
            "step": record.step,
            "seconds": seconds,
            "lr": record.lr,
            "policy_lr": record.policy_lr,
            "p_op_warmup": record.p_op,
            "p_filter_warmup": record.p_filter,
            "train_loss": record.train_loss,
            "quality": mean(record.quality),
            "cost": mean(record.cost),
            "reward": mean(record.rewards),
            "baseline": record.baseline,
            "advantage": mean(record.advantages),
            "entropy": record.entropy,
            "argmax_cost": float(self.cost_model(argmax)[0]),
            "indices": ";".join(":".join(map(str, row)) for row in record.indices),
            **({"over_budget": record.over_budget} if self.budgets is not None else {}),
            **probability_columns(self.space, self.policy.marginals()),
        }

    def status(self, row: dict[str, Any]) -> str:
        return (
            f"loss {row['train_loss']:.3f} · valid {row['quality']:.1%} · cost {row['cost']:.4g}"
            f" · argmax {row['argmax_cost']:.4g} · entropy {row['entropy']:.1f}"
        )

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "supernet": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "policy": self.policy.state_dict(),
            "baseline": self.baseline.state_dict(),
            "rng": torch.get_rng_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        policy = dict(state["policy"])
        if "policy_adam" in state:  # checkpoints written before the controller held its Adam
            policy["adam"] = state["policy_adam"]
        self.policy.load_state_dict(policy)
        self.baseline.load_state_dict(state["baseline"])
        torch.set_rng_state(state["rng"])
        self.step = int(state["step"])

    # ------------------------------------------------------------------ one step
    def sample(self, step: int, p_op: float, p_filter: float):
        """The step's K architectures, identical on every rank (keyed by seed and step)."""
        generator = keyed_generator(self.seed, step, 7)
        indices = self.policy.sample(self.archs, generator)
        return apply_warmup(self.policy, indices, p_op, p_filter, generator)

    def warmups(self, t: int) -> tuple[float, float]:
        """(p_op, p_filter) at step t (TuNAS's op and filter warmups)."""
        s, S = self.settings, self.total_steps
        return warmup_probability(t, S, s.op_warmup_fraction), warmup_probability(
            t, S, s.filter_warmup_fraction
        )

    def local_samples(self, indices: torch.Tensor, mixed: torch.Tensor) -> dict[int, Sample]:
        per = self.settings.archs_per_rank
        mine = range(self.ctx.rank * per, (self.ctx.rank + 1) * per)
        return {k: Sample(indices[k].tolist(), mixed[k].tolist()) for k in mine}

    def update_weights(self, t: int, samples: dict[int, Sample]) -> torch.Tensor:
        """One shared-weight step on stream step t's train batch: each local architecture on
        its slice; the gradient is the mean over all K architectures of
        CE + (wd/2)·Σ(active kernels)². Returns this rank's summed loss."""
        lr = self.learning_rate(t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images, labels = self.train_batches.get(t)
        self.net.train()
        loss_sum = torch.zeros((), device=self.ctx.device)
        for j, k in enumerate(samples):
            part = slice(j * self.per_arch, (j + 1) * self.per_arch)
            loss_sum += self._backward_child(images[part], labels[part], samples[k])
        if self.largest is not None and self.ctx.is_main:
            part = slice(0, self.per_arch)
            self._backward_child(images[part], labels[part], self.largest)
        self._average_gradients()
        if self.train_cfg.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.train_cfg.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum

    def _backward_child(self, images, labels, sample: Sample) -> torch.Tensor:
        """Accumulate one child's share of the step's gradient: its CE over the K
        architectures plus weight decay on the kernel slices it used. Returns its loss."""
        logits = self.net(images, sample)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.train_cfg.label_smoothing)
        (loss / self.archs).backward()
        if self.weight_decay:
            with torch.no_grad():
                for weight, index in self.net.active_decay():
                    weight.grad[index].add_(weight[index], alpha=self.weight_decay / self.archs)
        return loss.detach()

    @property
    def images(self) -> int:
        """The children's train batches plus the sandwich child's slices."""
        sandwich = self.per_arch if self.largest is not None else 0
        return super().images + self.step * sandwich

    def train_step(self) -> StepRecord:
        s, t, S = self.settings, self.step, self.total_steps
        lr = self.learning_rate(t)
        policy_lr = policy_learning_rate(
            t, S, self.policy_base_lr, s.rl_delay_fraction, self.policy_lr_growth
        )
        p_op, p_filter = self.warmups(t)
        indices, mixed, replaced = self.sample(t, p_op, p_filter)
        samples = self.local_samples(indices, mixed)
        mine = list(samples)

        # 1. Shared weights.
        loss_sum = self.update_weights(t, samples)

        # 2. Rewards on the held-out valid batch, batch statistics in BN, as in TuNAS.
        valid_images, valid_labels = self.valid_batches.get(t)
        correct = torch.zeros(len(mine), device=self.ctx.device)
        with torch.no_grad():
            for j, k in enumerate(mine):
                part = slice(j * self.valid_per_arch, (j + 1) * self.valid_per_arch)
                predicted = self.net(valid_images[part], samples[k]).argmax(1)
                correct[j] = (predicted == valid_labels[part]).float().mean()
        quality = torch.cat(self.ctx.all_gather(correct)).double().cpu()
        train_loss = float(self.ctx.all_reduce(loss_sum.reshape(1)).item()) / self.archs
        # 3. Baseline, advantages, policy step.
        cost, rewards, baseline, advantages, entropy, over = self.policy_step(
            policy_lr, indices, replaced, quality
        )
        self.step += 1
        return StepRecord(
            step=t,
            lr=lr,
            policy_lr=policy_lr,
            p_op=p_op,
            p_filter=p_filter,
            train_loss=train_loss,
            quality=quality.tolist(),
            cost=cost.tolist(),
            rewards=rewards.tolist(),
            baseline=baseline,
            advantages=advantages.tolist(),
            entropy=entropy,
            indices=indices.tolist(),
            over_budget=over,
        )

    def policy_step(
        self, policy_lr: float, indices: torch.Tensor, replaced: torch.Tensor, quality
    ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor, float, int]:  # fmt: skip
        """Rewards from the step's qualities and costs (`over_budget_reward` for a sample over a
        hard budget), the baseline (updated first, as TuNAS does), advantages and one policy
        step (Adam moments update even while the RL delay keeps lr at 0). Returns (cost,
        rewards, baseline, advantages, mean entropy, samples over a budget)."""
        s = self.settings
        cost = self.cost_model(indices.cpu()).double()
        rewards = reward(quality, cost, self.target, s.reward, s.cost_exponent)
        over = torch.zeros(len(rewards), dtype=torch.bool)
        if self.budgets is not None:
            over = self.budgets.exceeded(indices.cpu()) > 0
            rewards = torch.where(over, torch.tensor(s.over_budget_reward).double(), rewards)
        baseline = self.baseline.update(float(rewards.mean()))
        advantages = rewards - baseline
        counted = self.policy.active(indices) & ~replaced
        self.policy.update(
            indices, advantages.to(self.ctx.device), counted, policy_lr, s.entropy_coefficient
        )
        entropy = float(self.policy.entropy(indices).mean())
        return cost, rewards, baseline, advantages, entropy, int(over.sum())

    def details(self) -> dict[str, Any]:
        """What `summary.json` records of this strategy beyond the common fields."""
        return {
            "controller": self.controller.name,
            "reward_images": self.step * self.valid_per_arch * self.archs,
        }

    def final_indices(self) -> list[int]:
        """The argmax of every decision's logits, as TuNAS's `analyze_mobile_search` reads them."""
        return self.policy.argmax().tolist()

    def result_indices(self) -> tuple[list[int], str]:
        """The search's answer and how it was chosen: `argmax`, `likeliest_in_window`, or
        `argmax (none in window)` when no candidate of the policy lies within the window. With
        hard budgets the answer is always within them: `likeliest_within_budgets` when the
        argmax is not (or the likeliest in the window within them)."""
        s = self.settings
        window = s.final_selection != "argmax" and self.target is not None
        window = window and s.reward != "quality"
        if window:
            found = likeliest_within(
                self.policy, self.cost_model, self.target, s.final_window, self.seed, self.budgets
            )
            if found is not None:
                how = "argmax" if found.tolist() == self.final_indices() else "likeliest_in_window"
                return found.tolist(), how
        argmax = self.final_indices()
        fits = self.budgets is None or not bool(self.budgets.exceeded(torch.tensor([argmax]))[0])
        if not fits:
            found = likeliest_within(
                self.policy, self.cost_model, None, s.final_window, self.seed, self.budgets
            )
            if found is None:
                raise NascliError(
                    "no architecture of the final policy fits the budgets "
                    f"({', '.join(f'{k} ≤ {v:g}' for k, v in self.budgets.limits.items())}): "
                    "raise them, or search longer so the policy moves within them"
                )
            return found.tolist(), "likeliest_within_budgets"
        return argmax, "argmax (none in window)" if window else "argmax"


def likeliest_within(
    policy: Controller,
    cost_model: CostModel,
    target: float | None,
    window: float,
    seed: int,
    budgets: BatchBudgets | None = None,
    draws: int = 4000,
) -> torch.Tensor | None:
    """The likeliest architecture under `policy` whose cost lies within target·(1 ± window)
    (any cost when `target` is None) and within `budgets`, among its argmax and `draws` samples
    at each of the temperatures 1, ½ and ¼ (sharper draws lie nearer the mode); None if none
    does. Likelihood is the product over every
    decision, with the decisions inside skipped layers set to their argmax first (they change
    neither the network nor its cost)."""
    generator = torch.Generator().manual_seed(seed)
    argmax = policy.argmax()
    drawn = [policy.sample(draws, generator, temperature=t) for t in (1.0, 0.5, 0.25)]
    indices = torch.cat([argmax[None], *drawn])
    indices = torch.where(policy.active(indices), indices, argmax)
    inside = torch.ones(len(indices), dtype=torch.bool)
    if target is not None:
        cost = cost_model(indices.cpu()).double()
        inside = (cost / target - 1).abs() <= window
    if budgets is not None:
        inside &= budgets.exceeded(indices.cpu()) == 0
    inside = inside.to(indices.device)
    if not bool(inside.any()):
        return None
    likelihood = policy.log_prob(indices, torch.ones_like(indices, dtype=torch.bool))
    return indices[likelihood.masked_fill(~inside, -math.inf).argmax()]


def default_target(cost_name: str, space_name: str, target: float | None) -> float | None:
    """`cost.target`, or TuNAS's Pixel-1 target of the space for `cost=tunas_pixel1`."""
    if target is not None:
        return float(target)
    if cost_name == "tunas_pixel1":
        return PIXEL1_TARGETS_MS[space_name]
    return None


def option_label(value: Any) -> str:
    """A short name for a decision's option: its value, or `layer` / `zero`."""
    if isinstance(value, (bool, int, float)):
        return str(value)
    return "zero" if isinstance(value, Zero) else "layer"


def probability_columns(space: SearchSpace, probs: torch.Tensor | None) -> dict[str, float]:
    """`p/<decision path>/<option>` for every searched decision (none for a controller without
    per-decision probabilities)."""
    if probs is None:
        return {}
    return {
        f"p/{d.path}/{option_label(value)}": float(probs[d.position, option])
        for d in space.decisions
        if d.num_choices > 1
        for option, value in enumerate(d.choices)
    }
