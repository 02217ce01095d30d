import itertools
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from nascli.config import DataConfig, TrainConfig
from nascli.data import load_data
from nascli.errors import NascliError
from nascli.train.checkpoint import load_checkpoint, save_checkpoint
from nascli.train.distributed import Context
from nascli.train.engine import Trainer, TrainingDiverged
from nascli.train.optim import RMSpropTF, learning_rate, parameter_groups

CPU = Context(rank=0, world=1, device=torch.device("cpu"))


def train_config(**overrides) -> TrainConfig:
    base = {"name": "test", "epochs": 2, "batch_size": 64, "lr_per_256": 0.2, "log_every": 2}
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), base, overrides)


@pytest.fixture(scope="module")
def digits():
    cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig),
        OmegaConf.load("conf/data/digits.yaml"),
        {"resolution": 8},
    )
    return load_data(cfg)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AvgPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.classifier(self.features(x))


def tiny_trainer(data, run_dir, cfg=None, model=None, fingerprint=None) -> Trainer:
    torch.manual_seed(0)
    return Trainer(
        model or TinyNet(),
        cfg or train_config(),
        data,
        CPU,
        seed=0,
        run_dir=run_dir,
        fingerprint=fingerprint or {"test": 1},
    )


# ---------------------------------------------------------------- optimisers and schedule
def test_rmsprop_tf_matches_a_hand_computed_step():
    w = nn.Parameter(torch.tensor([2.0]))
    opt = RMSpropTF([w], lr=0.1, decay=0.9, momentum=0.9, eps=1.0)
    expected, ms, mom = 2.0, 1.0, 0.0  # TF1: the mean square starts at 1, not 0
    for _ in range(2):
        w.grad = torch.tensor([3.0])
        opt.step()
        ms = 0.9 * ms + 0.1 * 9.0
        mom = 0.9 * mom + 0.1 * 3.0 / math.sqrt(ms + 1.0)  # ε inside the root, lr inside mom
        expected -= mom
        assert w.item() == pytest.approx(expected, rel=1e-6)
    assert w.item() == pytest.approx(2.0 - 0.17928429 - 0.32125, rel=1e-4)  # by hand


def test_rmsprop_tf_is_not_pytorchs_rmsprop():
    a, b = nn.Parameter(torch.tensor([2.0])), nn.Parameter(torch.tensor([2.0]))
    tf = RMSpropTF([a], lr=0.1, decay=0.9, momentum=0.9, eps=1.0)
    pt = torch.optim.RMSprop([b], lr=0.1, alpha=0.9, momentum=0.9, eps=1.0)
    for opt, p in ((tf, a), (pt, b)):
        p.grad = torch.tensor([0.1])
        opt.step()
    tf_step, torch_step = 2.0 - a.item(), 2.0 - b.item()
    assert tf_step == pytest.approx(0.1 * 0.1 / math.sqrt(0.9 + 0.1 * 0.01 + 1.0), rel=1e-5)
    assert torch_step > 1.3 * tf_step  # PyTorch: mean square from 0, ε outside the root


def test_rmsprop_tf_weight_decay_is_the_l2_gradient():
    w = nn.Parameter(torch.tensor([2.0]))
    v = nn.Parameter(torch.tensor([2.0]))
    opt_w = RMSpropTF([w], lr=0.1, weight_decay=0.5)
    opt_v = RMSpropTF([v], lr=0.1)
    w.grad = torch.tensor([3.0])
    v.grad = torch.tensor([3.0 + 0.5 * 2.0])  # d/dw of (wd/2)·w²
    opt_w.step()
    opt_v.step()
    assert w.item() == pytest.approx(v.item())


def test_weight_decay_skips_bn_biases_and_the_classifier():
    model = TinyNet()
    decay, no_decay = parameter_groups(model, 4e-5)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [model.features[0].weight.shape]
    with_classifier = parameter_groups(model, 4e-5, decay_classifier=True)[0]["params"]
    assert any(p is model.classifier.weight for p in with_classifier)
    assert not any(p is model.classifier.bias for p in with_classifier)


def test_warmup_then_cosine_to_zero():
    lrs = [learning_rate(s, 100, 1.0, 10, "cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5)
    assert lrs[-1] < 1e-3 and all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert learning_rate(80, 100, 1.0, 10, "constant") == 1.0


# ---------------------------------------------------------------- the engine
def test_training_learns_and_writes_its_run_files(digits, tmp_path):
    trainer = tiny_trainer(digits, tmp_path, train_config(epochs=3))
    before = trainer.evaluate("valid").top1
    outcome = trainer.fit()
    assert outcome.steps == 3 * trainer.steps_per_epoch
    assert outcome.history[-1]["valid_top1"] > before + 0.2
    assert {"last.pt", "best.pt", "metrics.csv"} <= {p.name for p in tmp_path.iterdir()}
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("epoch,step,train_loss")
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["valid_top1"] == max(row["valid_top1"] for row in outcome.history)


def test_resume_after_a_crash_gives_the_same_weights(digits, tmp_path):
    cfg = train_config(epochs=2, checkpoint_every=3, ema_decay=0.9, weight_decay=1e-3)
    reference = tiny_trainer(digits, tmp_path / "straight", cfg)
    reference.fit()

    class Crash(Exception):
        pass

    crashing = tiny_trainer(digits, tmp_path / "crashed", cfg)
    real_step = crashing.train_step

    def step_then_crash(images, labels):
        real_step(images, labels)
        if crashing.step == 10:  # mid-epoch (16 steps per epoch), after the checkpoint at 9
            raise Crash

    crashing.train_step = step_then_crash
    with pytest.raises(Crash):
        crashing.fit()
    assert load_checkpoint(tmp_path / "crashed" / "last.pt")["step"] == 9
    torch.manual_seed(99)  # the resumed process starts from a different RNG state
    resumed = tiny_trainer(digits, tmp_path / "crashed", cfg)
    outcome = resumed.fit()
    assert outcome.resumed_from == 9
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in reference.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[key]), key
    timeless = [{k: v for k, v in row.items() if k != "train_seconds"} for row in outcome.history]
    assert timeless == [
        {k: v for k, v in row.items() if k != "train_seconds"} for row in reference.history
    ]


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    class BreaksAtStep5(TinyNet):
        calls = 0

        def forward(self, x):
            out = super().forward(x)
            if self.training:
                self.calls += 1
                if self.calls == 6:
                    out = out * float("nan")
            return out

    cfg = train_config(checkpoint_every=4, log_every=100)
    trainer = tiny_trainer(digits, tmp_path, cfg, model=BreaksAtStep5())
    with pytest.raises(TrainingDiverged, match="at step 5 "):
        trainer.fit()
    kept = load_checkpoint(tmp_path / "last.pt")
    assert kept["step"] == 4
    assert all(torch.isfinite(v).all() for v in kept["model"].values())


def test_corrupt_foreign_and_other_run_checkpoints_are_refused(tmp_path):
    good = tmp_path / "last.pt"
    save_checkpoint(good, {"fingerprint": {"seed": 0}, "step": 1})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(NascliError, match="not a readable nascli checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(NascliError, match="not a readable nascli checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(NascliError, match="not a nascli checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(NascliError, match=r"different run .*seed"):
        load_checkpoint(good, {"seed": 1})
    assert load_checkpoint(good, {"seed": 0})["step"] == 1


def test_checkpoints_load_with_weights_only(digits, tmp_path):
    tiny_trainer(digits, tmp_path, train_config(epochs=1, ema_decay=0.99)).fit()
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "ema", "rng", "step", "history"} <= set(state)


def test_ema_weights_are_the_ones_evaluated(digits, tmp_path):
    trainer = tiny_trainer(digits, tmp_path, train_config(epochs=1, ema_decay=0.5))
    trainer.fit()
    ema, raw = trainer.eval_model(), trainer.model
    assert ema is not raw
    assert not torch.equal(ema.classifier.weight, raw.classifier.weight)


def _train_rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a gloo job training TinyNet with global BN statistics; rank 0 saves."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    data_cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig), OmegaConf.load("conf/data/digits.yaml"), {"resolution": 8}
    )
    cfg = train_config(epochs=2, sync_bn=True, weight_decay=1e-3, label_smoothing=0.1)
    torch.manual_seed(0)
    ctx = Context(rank=rank, world=world, device=torch.device("cpu"))
    trainer = Trainer(
        TinyNet(), cfg, load_data(data_cfg), ctx, seed=0, run_dir=None, fingerprint={}
    )
    trainer.fit()
    torch.save({"model": trainer.model.state_dict(), "valid": trainer.evaluate("valid").top1},
               f"{out}.{rank}")  # fmt: skip
    if world > 1:
        from nascli.train.distributed import close_process_group

        close_process_group()  # together: a lone teardown can abort the other rank


@pytest.mark.slow
def test_two_gloo_ranks_train_exactly_like_one_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _train_rank(0, 1, port, str(tmp_path / "single"))
    mp.spawn(_train_rank, args=(2, port, str(tmp_path / "ddp")), nprocs=2)
    single = torch.load(tmp_path / "single.0")
    ranks = [torch.load(tmp_path / f"ddp.{r}") for r in (0, 1)]
    for key, value in single["model"].items():
        assert torch.equal(ranks[0]["model"][key], ranks[1]["model"][key]), key  # replicas
        torch.testing.assert_close(ranks[0]["model"][key], value, rtol=1e-5, atol=1e-6)
    assert ranks[0]["valid"] == ranks[1]["valid"] == pytest.approx(single["valid"])


def test_bf16_autocast_trains_with_float32_weights(digits, tmp_path):
    trainer = tiny_trainer(digits, tmp_path, train_config(epochs=2, amp="bf16"))
    outcome = trainer.fit()
    assert outcome.history[-1]["valid_top1"] > 0.3
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_unknown_amp_mode_is_refused(digits):
    with pytest.raises(NascliError, match=r"train\.amp"):
        tiny_trainer(digits, None, train_config(amp="fp8"))


def test_without_a_terminal_progress_prints_a_plain_line_every_tenth():
    import io

    from rich.console import Console
    from rich.progress import TextColumn

    from nascli.train.engine import LoggedProgress, progress_bar

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=60)
    # Only the tenths count here (every=1e9 s): nothing depends on how fast this runs.
    with LoggedProgress(TextColumn("{task.description}"), console=console, every=1e9) as p:
        task = p.add_task("search", total=230, status="")
        for step in range(1, 231):
            p.update(task, completed=step, status=f"loss {2.3 - step / 100:.2f}")
    lines = [line for line in out.getvalue().splitlines() if line.startswith("search ")]
    assert len(lines) == 10, lines
    assert lines[0].startswith("search 23/230 (10%) · elapsed ") and "· ETA " in lines[0]
    assert lines[-1].startswith("search 230/230 (100%)") and lines[-1].endswith("loss 0.00")
    assert all("\n" not in line and len(line) > 60 for line in lines)  # never wrapped
    # On a terminal the bar draws instead; a disabled bar (other ranks) prints nothing.
    assert not progress_bar(Console(file=io.StringIO(), force_terminal=True)).plain
    assert not progress_bar(console, enabled=False).plain


def test_a_setting_added_later_at_null_or_off_keeps_older_checkpoints_resumable(tmp_path):
    path = tmp_path / "last.pt"
    stored = {"space": {"name": "proxylessnas", "width_multiplier": 1.0}, "seed": 0}
    save_checkpoint(path, {"fingerprint": stored, "x": 1})
    newer = {"space": {"name": "proxylessnas", "width_multiplier": 1.0, "layers": None}, "seed": 0}
    assert load_checkpoint(path, newer)["x"] == 1
    assert load_checkpoint(path, {**stored, "new": None, "switch": False})["x"] == 1
    for value in (True, 0, 0.5):  # on, or a number: 0 is not off
        with pytest.raises(NascliError, match="differs in: switch"):
            load_checkpoint(path, {**stored, "switch": value})
    for changed in (
        {"space": {"name": "proxylessnas", "width_multiplier": 1.0, "layers": 6}, "seed": 0},
        {"space": {"name": "proxylessnas", "width_multiplier": 0.5}, "seed": 0},
        {"space": {"name": "proxylessnas"}, "seed": 0},  # a stored setting gone
    ):
        with pytest.raises(NascliError, match="differs in: space"):
            load_checkpoint(path, changed)
