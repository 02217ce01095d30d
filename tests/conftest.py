import os

import pytest
import torch
from typer.testing import CliRunner

from nascli.cli import app
from nascli.space.arch import sample_indices
from nascli.space.spaces import SPACES

SPACE_NAMES = list(SPACES)

# One torch thread for the suite and for the processes it starts: on a busy machine the two
# OpenMP threads of a 2-core run spin-wait on each other and a test can take 10× longer, while
# on a quiet one a single thread costs about the same (measured on the slowest test: 67 s with
# two threads, 68 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# Overrides for whole search / baseline runs in seconds on 2 cores: 16×16 synthetic images, a
# quarter of the widths, one short epoch.
TINY = [
    "data=synthetic",
    "data.num_samples=256",
    "data.resolution=16",
    "data.in_channels=1",
    "data.num_classes=4",
    "data.valid_fraction=0.3",
    "space.width_multiplier=0.25",
    "train.batch_size=16",
    "train.epochs=1",
]


@pytest.fixture
def run_cli(tmp_path):
    """Invoke `nascli ...` in-process; runs write under tmp_path unless `out=` is given."""
    runner = CliRunner()

    def invoke(*args: str):
        args = list(args)
        if (
            args
            and args[0] in ("build", "retrain", "profile-latency", "search")
            and not any(a.startswith("out=") for a in args)
        ):
            args.append(f"out={tmp_path / 'run'}")
        return runner.invoke(app, args)

    return invoke


def random_archs(space_name: str, num: int, seed: int = 0) -> list[tuple[int, ...]]:
    generator = torch.Generator().manual_seed(seed)
    return [tuple(row) for row in sample_indices(SPACES[space_name], num, generator).tolist()]


def assert_common_summary(summary: dict, command: str, strategy: str | None) -> None:
    """A summary.json in the one results schema, with the fields every run has filled."""
    from nascli.report.summary import COMMON, FORMAT

    assert summary["format"] == FORMAT and set(COMMON) <= set(summary)
    assert (summary["command"], summary["strategy"]) == (command, strategy)
    filled = ("space", "indices", "seed", "world_size", "params", "macs", "images", "seconds")
    for key in (*filled, "wall_seconds"):
        assert summary[key] is not None, key


def tensorboard_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the TensorBoard events in `directory`: tag -> [(step, value)] in step
    order, after the purges a resumed run asked for."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }
