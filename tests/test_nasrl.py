"""NAS-RL's multi-trial search (Zoph & Le 2017 §3.2, §4.1): m children per controller step,
reward (max valid top-1 of the last epochs)^3, EMA baseline updated before the advantage."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from nascli.cost.models import AnalyticCost
from nascli.search.lstm import LSTMController
from nascli.search.nasrl import NasrlSearch, NasrlSettings
from nascli.search.policy import ControllerSettings
from nascli.space.network import NetworkSettings
from nascli.space.spaces import SPACES
from tests.conftest import TINY, assert_common_summary

SPACE = SPACES["proxylessnas"]


class FixedEvaluator:
    """Stands in for the trainer: accuracy from the first decision, child 1 fails."""

    space = SPACE
    net_settings = NetworkSettings(resolution=32, num_classes=10, in_channels=1)

    def __init__(self):
        self.seen: list[tuple[list[int], Path]] = []

    def space_of(self, indices):
        return self.space

    def try_evaluate(self, indices, run_dir):
        self.seen.append((list(indices), run_dir))
        if run_dir.name == "1":
            return {"status": "failed", "error": "out of memory (simulated)"}
        accuracy = 0.5 + 0.1 * indices[1]
        return {"status": "done", "best_valid_top1": accuracy, "valid_top1_last": accuracy}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def search(tmp_path, **settings):
    controller = LSTMController(SPACE, ControllerSettings(name="lstm"), seed=0)
    cost = AnalyticCost(SPACE, NetworkSettings(resolution=32, num_classes=10), "macs")
    values = {"children_per_step": 3, "steps": 2} | settings
    return NasrlSearch(
        NasrlSettings(**values), controller, 0.01, FixedEvaluator(), cost, tmp_path, seed=0
    )


def test_rewards_baseline_and_one_controller_update_per_m_children(tmp_path):
    s = search(tmp_path)
    before = [p.clone() for p in s.controller.tensors()]
    assert s.advance() is None and s.advance() is None  # no update before the m-th child
    assert all(torch.equal(a, b) for a, b in zip(before, s.controller.tensors(), strict=True))
    row = s.advance()
    assert row is not None and row["step"] == 0 and row["children"] == 3
    assert not all(torch.equal(a, b) for a, b in zip(before, s.controller.tensors(), strict=True))
    rewards = [c["reward"] for c in s.children]
    accuracies = [0.5 + 0.1 * int(c["indices"].split(":")[1]) for c in s.children]
    assert rewards[0] == pytest.approx(accuracies[0] ** 3)
    assert rewards[1] == 0.0 and s.children[1]["status"] == "failed"  # a failed child
    assert rewards[2] == pytest.approx(accuracies[2] ** 3)
    # Baseline updated first with the batch's mean: at the first step it equals that mean.
    assert row["baseline"] == pytest.approx(sum(rewards) / 3)
    assert [p.name for _, p in s.evaluator.seen] == ["0", "1", "2"]


def test_a_child_over_a_budget_is_not_trained_gets_the_lowest_reward_and_never_wins(tmp_path):
    from nascli.cost.analytic import network_cost
    from nascli.space.network import decode

    def flash(child):
        indices = tuple(int(v) for v in child["indices"].split(":"))
        return network_cost(decode(SPACE, indices, FixedEvaluator.net_settings)).flash_bytes

    probe = search(tmp_path, steps=4)
    for _ in range(12):
        probe.advance()
    limit = sorted(flash(c) for c in probe.children)[6]  # about half the children are over it
    s = search(tmp_path / "b", steps=4, max_flash=limit, over_budget_reward=-1.0)
    for _ in range(12):
        s.advance()
    over = [c for c in s.children if c["status"] == "over_flash"]
    assert over and all(c["reward"] == -1.0 for c in over)
    trained = {p.name for _, p in s.evaluator.seen}
    assert not trained & {str(c["child"]) for c in over}  # never handed to the trainer
    assert flash(s.best()) <= limit


def test_a_resumed_search_samples_the_same_batches(tmp_path):
    whole = search(tmp_path / "a")
    while whole.position < whole.total:
        whole.advance()
    part = search(tmp_path / "b")
    part.advance()
    part.advance()
    part.advance()
    part.advance()  # into the second step's batch
    resumed = search(tmp_path / "b")
    resumed.load_state(part.state())
    while resumed.position < resumed.total:
        resumed.advance()
    assert [c["indices"] for c in resumed.children] == [c["indices"] for c in whole.children]
    assert resumed.best()["indices"] == whole.best()["indices"]


def test_the_uniform_reference_trains_after_the_search_and_never_moves_the_controller(tmp_path):
    s = search(tmp_path, reference=4)
    assert s.total == 10
    for _ in range(6):
        s.advance()
    after_search = [p.clone() for p in s.controller.tensors()]
    for _ in range(4):
        assert s.advance() is None  # no controller step
    assert all(torch.equal(a, b) for a, b in zip(after_search, s.controller.tensors(), strict=True))
    assert len(s.children) == 6 and len(s.reference) == 4 and s.position == s.total
    dirs = [p.parent.name + "/" + p.name for _, p in s.evaluator.seen[6:]]
    assert dirs == ["reference/0", "reference/1", "reference/2", "reference/3"]
    rewards = [c["reward"] for c in s.reference]
    expected = [
        0.0 if c["status"] == "failed" else (0.5 + 0.1 * int(c["indices"].split(":")[1])) ** 3
        for c in s.reference
    ]
    assert s.reference[1]["status"] == "failed" and rewards == pytest.approx(expected)
    assert s.reference_reward() == pytest.approx(sum(rewards) / 4)
    # Uniform draws: over many, every option of the first searched decision appears about
    # equally often (the controller's samples after training would not).
    many = search(tmp_path / "m", steps=1, children_per_step=1, reference=300)
    while many.position < many.total:
        many.advance()
    counts = pd.Series([int(c["indices"].split(":")[1]) for c in many.reference]).value_counts()
    assert len(counts) == SPACE.decisions[1].num_choices and counts.min() > 300 / len(counts) / 2
    resumed = search(tmp_path / "r", reference=4)
    part = search(tmp_path / "r", reference=4)
    for _ in range(8):
        part.advance()
    resumed.load_state(part.state())
    while resumed.position < resumed.total:
        resumed.advance()
    assert [c["indices"] for c in resumed.reference] == [c["indices"] for c in s.reference]
    assert resumed.best()["indices"] == s.best()["indices"]  # the result is a searched child


def test_entropy_bonus_is_added_to_the_reward_without_a_gradient(tmp_path):
    plain, bonus = search(tmp_path / "p"), search(tmp_path / "b", entropy_weight=0.01)
    rows = {}
    for name, s in (("plain", plain), ("bonus", bonus)):
        for _ in range(3):
            rows[name] = s.advance()
    assert [c["indices"] for c in bonus.children] == [c["indices"] for c in plain.children]
    assert rows["bonus"]["reward"] == pytest.approx(
        rows["plain"]["reward"] + 0.01 * rows["plain"]["entropy"]
    )
    assert rows["plain"]["entropy"] > 1.0


def test_nasrl_search_end_to_end(run_cli, tmp_path):
    out = tmp_path / "n"
    args = [*TINY, "strategy=nasrl", "strategy.children_per_step=2", "strategy.steps=2"]
    result = run_cli("search", *args, f"out={out}")
    assert result.exit_code == 0, result.output
    children = pd.read_csv(out / "children.csv")
    log = pd.read_csv(out / "search_log.csv")
    assert len(children) == 4 and list(children["step"]) == [0, 0, 1, 1]
    assert len(log) == 2 and list(log["children"]) == [2, 4]
    assert (children["reward"] - children["valid_top1_last"] ** 3).abs().max() < 1e-12
    summary = json.loads((out / "summary.json").read_text())
    assert_common_summary(summary, "search", "nasrl")
    assert summary["controller"] == "lstm" and summary["children"] == 4
    assert summary["valid_top1"] == children["best_valid_top1"].max()
    assert (out / "plots" / "rewards.png").stat().st_size > 0
    assert json.loads((out / "arch.json").read_text())["indices"] == summary["indices"]
    assert summary["reference_children"] == 0 and summary["reference_reward"] is None
    assert not (out / "reference.csv").exists()
    # A finished search is given its uniform reference later: the same run, extended.
    more = run_cli("search", *args, "strategy.reference=2", f"out={out}")
    assert more.exit_code == 0, more.output
    assert "resuming from child 4 of 6" in more.output
    reference = pd.read_csv(out / "reference.csv")
    assert len(reference) == 2 and set(reference["status"]) == {"done"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference_reward"] == pytest.approx(reference["reward"].mean())
    assert summary["reward_last_half"] == pytest.approx(children["reward"].iloc[2:].mean())
    pd.testing.assert_frame_equal(pd.read_csv(out / "children.csv"), children)


def test_a_steps_children_train_in_parallel_workers(run_cli, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    args = [*TINY, "strategy=nasrl", "strategy.children_per_step=2", "strategy.steps=1"]
    assert run_cli("search", *args, f"out={serial}").exit_code == 0
    result = run_cli("search", *args, "strategy.workers=2", f"out={parallel}")
    assert result.exit_code == 0, result.output
    a = pd.read_csv(serial / "children.csv")
    b = pd.read_csv(parallel / "children.csv")
    assert list(a["indices"]) == list(b["indices"]) and list(b["status"]) == ["done"] * 2
    # Same data, seeds and recipe; only the thread count differs (float summation order).
    assert (a["best_valid_top1"] - b["best_valid_top1"]).abs().max() <= 0.05


@pytest.mark.slow
def test_a_cluster_sweep_per_step_and_collect_equal_one_plain_run(run_cli, tmp_path):
    """One Hydra job per child of the next step (what a cluster launcher runs), then a
    collecting run that updates the controller and stops at the next step: the same children
    and rewards as one plain run."""
    args = [*TINY, "strategy=nasrl", "strategy.children_per_step=2", "strategy.steps=2"]
    plain = tmp_path / "plain"
    assert run_cli("search", *args, f"out={plain}").exit_code == 0
    out = tmp_path / "cluster"
    sweep = [*args, "-m", "strategy.child=0,1", "hydra.sweep.subdir=.", f"out={out}"]
    for step in (0, 1):
        result = run_cli("search", *sweep)
        assert result.exit_code == 0, result.output
        trained = {p.name for p in (out / "children").iterdir()}
        assert (
            trained == {str(n) for n in range(2 * step + 2)} and not (out / "summary.json").exists()
        )
        collect = run_cli("search", *args, "strategy.collect=true", f"out={out}")
        assert collect.exit_code == 0, collect.output
        assert len(pd.read_csv(out / "search_log.csv")) == step + 1  # one controller update
        if step == 0:  # stopped, with a checkpoint, at the next step's first child
            assert "step 1's are not all trained yet" in " ".join(collect.output.split())
    ours, theirs = pd.read_csv(out / "children.csv"), pd.read_csv(plain / "children.csv")
    columns = ["child", "step", "indices", "reward", "best_valid_top1", "status"]
    pd.testing.assert_frame_equal(ours[columns], theirs[columns])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["indices"] == json.loads((plain / "summary.json").read_text())["indices"]
    done = run_cli("search", *args, "strategy.child=1", f"out={out}")
    assert done.exit_code == 2 and "every child of the search is trained" in done.output
    wrong = run_cli("search", *args, "strategy.child=5", f"out={tmp_path / 'w'}")
    assert wrong.exit_code == 2 and "a step has children 0 to 1" in wrong.output
