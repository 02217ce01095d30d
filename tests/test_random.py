"""The latency-matched random baseline: rejection to a cost window, bounded attempts, resume,
failed candidates reported (TuNAS code: `tools/sample_random_architectures.py`)."""

import json

import pandas as pd
import pytest
import torch

from nascli.cost.analytic import network_cost
from nascli.cost.models import Pixel1Cost
from nascli.errors import NascliError
from nascli.search.budgets import BatchBudgets, first_exceeded
from nascli.search.random import RandomSettings, cost_window, sample_in_window
from nascli.space.network import NetworkSettings, decode
from nascli.space.spaces import SPACES
from tests.conftest import TINY as TINY_RUN
from tests.conftest import assert_common_summary

TINY = [*TINY_RUN, "strategy.num_samples=3"]


def pixel1(space="proxylessnas"):
    return Pixel1Cost(SPACES[space], NetworkSettings())


def test_kept_architectures_lie_in_the_window_and_are_reproducible():
    model = pixel1()
    sampled = sample_in_window(SPACES["proxylessnas"], model, 20, 83, 85, 0, 10**6)
    kept, costs, attempts = sampled.indices, sampled.costs, sampled.attempts
    assert len(kept) == 20 and attempts > 20
    assert sampled.rejected == {"cost": attempts - 20}  # every draw is kept or rejected once
    recomputed = model(torch.tensor(kept))
    assert torch.allclose(recomputed, torch.tensor(costs, dtype=torch.float64))
    assert all(83 <= c <= 85 for c in costs)
    again = sample_in_window(SPACES["proxylessnas"], model, 20, 83, 85, 0, 10**6)
    assert again == sampled


def test_budgets_reject_draws_in_the_window_and_every_kept_one_fits_them():
    space = SPACES["proxylessnas"]
    settings = NetworkSettings(resolution=32, num_classes=10, in_channels=1)
    limits = {"sram": 110e3, "flash": 2.2e6}
    budgets = BatchBudgets(space, settings, limits)
    sampled = sample_in_window(space, pixel1(), 12, 70, 100, 0, 10**6, budgets=budgets)
    assert sampled.rejected["sram"] > 0 and sampled.rejected["flash"] > 0
    assert sum(sampled.rejected.values()) + 12 == sampled.attempts
    for indices in sampled.indices:  # the compiled check agrees with the decoded network's
        cost = network_cost(decode(space, tuple(indices), settings))
        assert first_exceeded(cost, limits) is None
    free = sample_in_window(space, pixel1(), 12, 70, 100, 0, 10**6)
    assert free.attempts < sampled.attempts
    with pytest.raises(NascliError, match=r"rejected by a budget: .*over sram"):
        sample_in_window(space, pixel1(), 3, 70, 100, 0, 3000,
                         budgets=BatchBudgets(space, settings, {"sram": 1.0}))  # fmt: skip


def test_an_infeasible_window_stops_with_the_cost_range_seen():
    with pytest.raises(NascliError, match=r"after 5,000 draws; costs seen ranged \d+"):
        sample_in_window(SPACES["mnv3"], pixel1("mnv3"), 3, 1.0, 2.0, 0, 5000)


def test_default_windows_are_tunas_windows_for_the_pixel1_targets():
    settings = RandomSettings()
    assert cost_window(settings, "tunas_pixel1", "proxylessnas", 84.0) == (83.0, 85.0)
    assert cost_window(settings, "tunas_pixel1", "mnv3", 57.0) == (57.0, 59.0)
    assert cost_window(settings, "tunas_pixel1", "mnv3", 70.0) == pytest.approx((68.6, 71.4))
    assert cost_window(settings, "macs", "mnv3", 1e6) == pytest.approx((0.98e6, 1.02e6))
    explicit = RandomSettings(min_cost=1.0, max_cost=3.0)
    assert cost_window(explicit, "macs", "mnv3", None) == (1.0, 3.0)
    with pytest.raises(NascliError, match="cost window"):
        cost_window(settings, "macs", "mnv3", None)


def test_random_baseline_trains_resumes_and_reports_failures(run_cli, tmp_path, monkeypatch):
    from nascli.search.evaluator import Evaluator

    out = tmp_path / "rb"
    real = Evaluator.evaluate

    def flaky(self, indices, run_dir):
        if run_dir.name == "1":
            raise RuntimeError("out of memory (simulated)")
        return real(self, indices, run_dir)

    monkeypatch.setattr(Evaluator, "evaluate", flaky)
    result = run_cli("random-baseline", *TINY, f"out={out}")
    assert result.exit_code == 4, result.output
    assert "1 candidate(s) failed" in result.output
    frame = pd.read_csv(out / "candidates.csv")
    assert list(frame["status"]) == ["done", "failed", "done"]
    assert "simulated" in frame["error"][1]
    assert (out / "candidates" / "1" / "error.txt").exists()
    finished = (out / "candidates" / "0" / "result.json").stat().st_mtime_ns

    monkeypatch.setattr(Evaluator, "evaluate", real)
    again = run_cli("random-baseline", *TINY, f"out={out}")
    assert again.exit_code == 0, again.output
    frame = pd.read_csv(out / "candidates.csv")
    assert list(frame["status"]) == ["done"] * 3
    assert (out / "candidates" / "0" / "result.json").stat().st_mtime_ns == finished  # skipped
    summary = json.loads((out / "summary.json").read_text())
    assert_common_summary(summary, "search", "random")
    assert summary["strategy"] == "random" and summary["failed"] == 0
    assert summary["valid_top1"] == frame["valid_top1"].max()
    assert 83 <= summary["cost"] <= 85
    assert (out / "plots" / "accuracy_vs_cost.png").stat().st_size > 0
    arch = json.loads((out / "arch.json").read_text())
    assert arch["indices"] == summary["indices"]


def test_search_strategy_random_is_the_same_job(run_cli, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = [*TINY, "strategy.num_samples=1"]
    assert run_cli("random-baseline", *args, f"out={a}").exit_code == 0
    assert (
        run_cli("search", "strategy=random", "train=candidate_cpu", *args, f"out={b}").exit_code
        == 0
    )
    first = json.loads((a / "summary.json").read_text())
    second = json.loads((b / "summary.json").read_text())
    assert first["indices"] == second["indices"] and first["valid_top1"] == second["valid_top1"]


def test_parallel_workers_train_the_same_candidates(run_cli, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert run_cli("random-baseline", *TINY, f"out={serial}").exit_code == 0
    result = run_cli("random-baseline", *TINY, "strategy.workers=2", f"out={parallel}")
    assert result.exit_code == 0, result.output
    assert "in 2 processes" in result.output
    a = pd.read_csv(serial / "candidates.csv")
    b = pd.read_csv(parallel / "candidates.csv")
    assert list(a["indices"]) == list(b["indices"]) and list(b["status"]) == ["done"] * 3
    # Same data, seeds and recipe; only the thread count differs (float summation order).
    assert (a["valid_top1"] - b["valid_top1"]).abs().max() <= 0.05


def test_a_sweep_over_candidates_shares_one_run_directory(run_cli, tmp_path):
    """`-m strategy.candidate=0,1,2 hydra.sweep.subdir=.`: one job per candidate writing into
    the same run directory (what a SLURM launcher runs), then one run collects them."""
    out = tmp_path / "sweep"
    args = [*TINY, f"out={out}", "hydra.sweep.subdir=."]
    result = run_cli("random-baseline", "-m", "strategy.candidate=0,1,2", *args)
    assert result.exit_code == 0, result.output
    assert all((out / "candidates" / str(n) / "result.json").exists() for n in range(3))
    assert not (out / "summary.json").exists()
    stamps = [(out / "candidates" / str(n) / "result.json").stat().st_mtime_ns for n in range(3)]
    collect = run_cli("random-baseline", *TINY, f"out={out}")
    assert collect.exit_code == 0, collect.output
    assert [
        (out / "candidates" / str(n) / "result.json").stat().st_mtime_ns for n in range(3)
    ] == stamps
    assert json.loads((out / "summary.json").read_text())["candidates"] == 3


def test_a_sweep_job_locks_its_own_candidate_not_the_run(run_cli, tmp_path):
    """Jobs of a sweep run at the same time on a cluster: each locks only the candidate it
    trains, so a held run directory does not stop it, a held candidate does, in one line,
    without recording that candidate as failed."""
    from nascli.files import RunLock

    out = tmp_path / "rb"
    with RunLock(out):  # a sibling job, or the collecting run
        first = run_cli("random-baseline", *TINY, "strategy.candidate=0", f"out={out}")
    assert first.exit_code == 0, first.output
    assert (out / "candidates" / "0" / "result.json").exists()
    with RunLock(out / "candidates" / "1"):  # another job is training candidate 1
        busy = run_cli("random-baseline", *TINY, "strategy.candidate=1", f"out={out}")
        collect = run_cli("random-baseline", *TINY, f"out={out}")
    assert busy.exit_code == 2 and "in use by another nascli command" in busy.output
    assert collect.exit_code == 2 and "candidates/1 is in use" in collect.output
    assert not (out / "candidates" / "1" / "error.txt").exists()
    plain = run_cli("random-baseline", *TINY, f"out={tmp_path / 'plain'}")
    with RunLock(tmp_path / "plain"):  # a plain run still takes the run's lock
        again = run_cli("random-baseline", *TINY, f"out={tmp_path / 'plain'}")
    assert plain.exit_code == 0 and again.exit_code == 2 and "in use" in again.output


@pytest.mark.slow
def test_sigterm_inside_a_candidate_checkpoints_both_levels_and_a_rerun_resumes(tmp_path):
    """The candidate's trainer checkpoints and raises; the driver then writes the run's own
    checkpoint and stops with 128 + SIGTERM; a rerun resumes that candidate, not from zero."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "nascli", "random-baseline", *TINY,
               "strategy.num_samples=2", "train.epochs=4", "train.checkpoint_every=1",
               f"out={out}"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 300
    while not (out / "candidates" / "0" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM: stopped in candidate 0" in output and f"out={out}" in output, output
    assert (out / "last.pt").exists() and not (out / "summary.json").exists()
    resumed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from candidate 0 of 2" in resumed.stdout
    assert "resuming from step" in resumed.stdout  # the candidate's own checkpoint
    assert list(pd.read_csv(out / "candidates.csv")["status"]) == ["done", "done"]
