"""Interruption anywhere loses nothing: SIGKILL at seeded random moments, rerun on the same
`out=`, and the outputs equal an uninterrupted run's. Two commands on one `out=`: the second
refuses. (profile-latency's SIGKILL case, whose timings differ run to run, is in
test_latency.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from nascli.errors import NascliError
from nascli.files import RunLock
from tests.conftest import TINY

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

#: name -> (command line, the files whose content must match, columns that measure time)
COMMANDS = {
    "tunas": (
        ["search", *TINY, "train.epochs=6", "strategy.checkpoint_every=3"],
        ["search_log.csv", "arch.json"],
        ["seconds"],
    ),
    "zen": (
        ["search", "strategy=zen", *TINY, "strategy.iterations=60", "strategy.population_size=8",
         "strategy.batch_size=4", "strategy.checkpoint_every=7"],
        ["search_log.csv", "population.csv", "arch.json"],
        ["seconds"],
    ),
    "random": (
        ["random-baseline", *TINY, "strategy.num_samples=3", "train.checkpoint_every=2"],
        ["candidates.csv", "arch.json"],
        ["train_seconds", "seconds"],
    ),
    "retrain": (
        ["retrain", "arch=proxylessnas_mobile", "data=digits", "data.resolution=16",
         "space.width_multiplier=0.25", "train.batch_size=64", "train.epochs=4",
         "train.checkpoint_every=2"],
        ["metrics.csv", "arch.json"],
        ["train_seconds"],
    ),
}  # fmt: skip


def run(args: list[str], out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nascli", *args, f"out={out}"],
        env=ENV, capture_output=True, text=True, check=False,
    )  # fmt: skip


def checkpoints(out: Path) -> set[tuple[str, int]]:
    found = set()
    for path in out.glob("**/last.pt"):
        with contextlib.suppress(FileNotFoundError):  # replaced between listing and stat
            found.add((str(path), path.stat().st_mtime_ns))
    return found


def killed_at_random(args: list[str], out: Path, rng: random.Random, kills: int) -> list[str]:
    """Start the command `kills` times and SIGKILL it: the first time at a random moment of its
    start-up, later ones a random short delay after its 1st–3rd new checkpoint write."""
    moments = []
    for attempt in range(kills):
        seen = checkpoints(out)
        process = subprocess.Popen(
            [sys.executable, "-m", "nascli", *args, f"out={out}"],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        writes = rng.randint(1, 3) if attempt else 0
        deadline, new = time.monotonic() + 300, set()
        while len(new) < writes:  # the writes seen so far (each replaces last.pt: a new mtime)
            assert process.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline
            new |= checkpoints(out) - seen
            time.sleep(0.005)
        delay = rng.uniform(0.0, 0.3 if attempt else 1.5)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL, "the run ended before it was killed"
        assert not (out / "summary.json").exists()
        moments.append(f"after {writes} checkpoint(s) + {delay:.2f} s")
    assert checkpoints(out), "no kill came after a checkpoint"
    return moments


def content(out: Path, name: str, timing: list[str]) -> object:
    if name.endswith(".csv"):
        frame = pd.read_csv(out / name)
        return frame.drop(columns=[c for c in timing if c in frame.columns])
    record = json.loads((out / name).read_text())
    record.get("search", {}).pop("seconds", None)
    return record


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_sigkill_at_random_moments_then_rerun_equals_an_uninterrupted_run(name, tmp_path):
    args, files, timing = COMMANDS[name]
    straight = tmp_path / "straight"
    done = run(args, straight)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed"
    delays = killed_at_random(args, out, random.Random(f"chaos-{name}"), kills=3)
    resumed = run(args, out)
    assert resumed.returncode == 0, (delays, resumed.stderr)
    for file in files:
        a, b = content(straight, file, timing), content(out, file, timing)
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b, check_exact=True, obj=f"{file} {delays}")
        else:
            assert a == b, (file, delays)
    first = json.loads((straight / "summary.json").read_text())
    second = json.loads((out / "summary.json").read_text())
    same = ("indices", "cost", "test_top1", "test_loss", "best_valid_top1", "replica_checksums")
    for key in same:
        assert first.get(key) == second.get(key), (key, delays)


def test_a_second_lock_on_a_run_directory_is_refused_until_the_first_is_released(tmp_path):
    first, second = RunLock(tmp_path / "run"), RunLock(tmp_path / "run")
    first.acquire()
    with pytest.raises(NascliError, match=rf"in use by another nascli command \(pid {os.getpid()}"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from nascli.files import RunLock; lock = RunLock(Path(sys.argv[1])); lock.acquire(); "
         "print('held', flush=True); time.sleep(600)", str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(NascliError):
        RunLock(tmp_path / "run").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = RunLock(tmp_path / "run")
    lock.acquire()  # the OS dropped the killed process's lock
    lock.release()


def test_a_command_on_a_run_directory_in_use_refuses_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    lock = RunLock(out)
    lock.acquire()
    try:
        result = run(["retrain", "arch=proxylessnas_mobile", *TINY], out)
    finally:
        lock.release()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {out} is in use by another nascli command (pid {os.getpid()}); wait for it to "
        "finish or choose another out="
    ]
    assert sorted(p.name for p in out.iterdir()) == [".nascli.lock"]  # Hydra wrote nothing
