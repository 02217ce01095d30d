"""Interruption anywhere loses nothing: SIGKILL at seeded random moments, rerun on the same
`out=`, and the outputs equal an uninterrupted run's. Two commands on one `out=`: the second
refuses."""

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
        ["search", *TINY, "train.epochs=4", "strategy.checkpoint_every=3"],
        ["search_log.csv", "arch.json"],
        ["seconds"],
    ),
    "proxyless": (  # gradient-based: α and its Adam resume too
        ["search", "strategy=proxyless_cpu", *TINY, "train.epochs=4",
         "strategy.checkpoint_every=3"],
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
    "nasrl": (
        ["search", "strategy=nasrl", *TINY, "strategy.children_per_step=2", "strategy.steps=2",
         "train.epochs=2", "train.checkpoint_every=3"],
        ["children.csv", "search_log.csv", "arch.json"],
        ["train_seconds", "seconds"],
    ),
    "nasrl_space": (  # NAS-RL's own space, its anchor controller and depth schedule
        ["search", "strategy=nasrl", "space=nasrl", "space.layers=3", "strategy.depth_start=1",
         "strategy.depth_every=2", *TINY, "strategy.children_per_step=2", "strategy.steps=4",
         "train.epochs=2", "train.checkpoint_every=3"],
        ["children.csv", "search_log.csv", "arch.json"],
        ["train_seconds", "seconds"],
    ),
    "retrain": (
        ["retrain", "arch=proxylessnas_mobile", "data=digits", "data.resolution=16",
         "space.width_multiplier=0.25", "train.batch_size=64", "train.epochs=2",
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
    start-up, later ones a random short delay after its 1st–3rd new checkpoint write.

    A run may reach its end before a kill lands (its last checkpoints come milliseconds apart,
    and a busy machine stretches the delay): a kill while it writes its outputs, or after it
    exited, is a moment like any other, and the kills stop there, since the rerun has nothing
    left to redo. At least one kill must land mid-run after a checkpoint: each command below
    works for over a second after its third checkpoint, against a delay of at most 0.3 s."""
    moments, mid_run = [], 0
    for attempt in range(kills):
        seen = checkpoints(out)
        process = subprocess.Popen(
            [sys.executable, "-m", "nascli", *args, f"out={out}"],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        writes = rng.randint(1, 3) if attempt else 0
        delay = rng.uniform(0.0, 0.3 if attempt else 1.5)
        deadline, new = time.monotonic() + 300, set()
        while len(new) < writes and process.poll() is None:  # each write replaces last.pt
            assert time.monotonic() < deadline
            new |= checkpoints(out) - seen
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        killed = process.wait() == -signal.SIGKILL
        moment = f"after {len(new)} checkpoint(s) + {delay:.2f} s"
        if not killed or (out / "summary.json").exists():
            assert process.returncode in (0, -signal.SIGKILL), process.returncode
            moments.append(f"{moment}, once the run had {'ended' if not killed else 'finished'}")
            break
        moments.append(moment)
        mid_run += bool(new)
    assert mid_run, f"no kill landed mid-run after a checkpoint: {moments}"
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
    same = ("indices", "cost", "test_top1", "test_loss", "valid_top1", "replica_checksums")
    for key in same:
        assert first.get(key) == second.get(key), (key, delays)


PROFILE = ["profile-latency", "cost.calibrate=5", "cost.validate=4", "cost.runs=3",
           "cost.warmup=1", "cost.threads=1", "cost.cache=false"]  # fmt: skip


def timing_rows(path: Path) -> dict[str, tuple[float, float, int]]:
    frame = pd.read_csv(
        path, names=["key", "raw_ms", "probe_ms", "probe"], float_precision="round_trip"
    )
    return {row.key: (row.raw_ms, row.probe_ms, row.probe) for row in frame.itertuples()}


@pytest.mark.slow
def test_profile_latency_killed_at_random_moments_keeps_every_layer_it_measured(tmp_path):
    """Timings differ from run to run, so the comparison with an uninterrupted run is exact on
    everything but the milliseconds: the same layers in the same order, the same calibration and
    validation architectures. What a killed run measured is kept bit for bit: each layer timed
    before a kill appears in the final table with the reading taken then."""
    straight = tmp_path / "straight"
    done = run(PROFILE, straight)
    assert done.returncode == 0, done.stderr
    layers = pd.read_csv(straight / "layer_timings.csv").key.tolist()
    rng = random.Random("chaos-profile-latency")
    # Two kills while layers are timed, one once every layer is in the partial table (while the
    # networks' last rounds run or the outputs are written, if the run has not ended by then).
    moments = [*sorted(rng.sample(range(2, len(layers) - 1), 2)), len(layers)]
    out, partial, kept = tmp_path / "killed", tmp_path / "killed" / "lut_partial.csv", {}
    for moment in moments:
        process = subprocess.Popen(
            [sys.executable, "-m", "nascli", *PROFILE, f"out={out}"],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not (partial.exists() and len(partial.read_text().splitlines()) >= moment):
            if process.poll() is not None:  # only the last moment can come after the end
                assert moment == len(layers) and process.returncode == 0, moment
                break
            assert time.monotonic() < deadline, moment
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        if not partial.exists():  # it had finished (or was writing its outputs): nothing to redo
            break
        now = timing_rows(partial)
        assert {k: now[k] for k in kept} == kept, f"a kill at {moment} layers lost a reading"
        kept = now
    else:
        resumed = run(PROFILE, out)
        assert resumed.returncode == 0, (moments, resumed.stderr)
        assert f"resuming: {len(kept)} layers already measured" in resumed.stdout
    final = pd.read_csv(out / "layer_timings.csv", float_precision="round_trip")
    assert final.key.tolist() == layers
    readings = {row.key: (row.raw_ms, row.probe_ms, row.probe) for row in final.itertuples()}
    assert {k: readings[k] for k in kept} == kept
    keys = [pd.read_csv(d / "lut.csv").key.tolist() for d in (straight, out)]
    assert keys[0] == keys[1]
    a, b = pd.read_csv(straight / "validation.csv"), pd.read_csv(out / "validation.csv")
    pd.testing.assert_frame_equal(a[["indices", "set"]], b[["indices", "set"]])
    assert (b.measured_ms > 0).all()
    assert not (out / "lut_partial.csv").exists() and not (out / "lut_partial.json").exists()


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
