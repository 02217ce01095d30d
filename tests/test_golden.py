"""Golden runs: for a fixed seed, each strategy's log, tables, arch.json and result are the ones
recorded before the search driver was introduced (tests/golden/, made with torch 2.13.0 on a CPU
with AVX512). The TuNAS run was recorded again when `strategy=tunas_cpu` turned
`zero_init_width` on, a deliberate change of the default, by the code that had first reproduced
the earlier recording exactly, and once more (on AVX512, 2026-12-03) when `zero_init_width`
stopped zeroing channels that a ReLU follows (their readers start at zero instead). Every
`arch.json` was recorded again when it gained the int8 `sram_bytes` and `flash_bytes` (totals
and per layer), after checking that every other value was unchanged. Float arithmetic differs
between CPU instruction sets and torch versions: on an AVX2 CPU the Zen-NAS run (and the TuNAS
run until its last recording, which has not been run on AVX2 yet) reproduce the AVX512
recording exactly, while one random-baseline candidate trains to another valid accuracy, so
`random/AVX2/` holds that run's files as recorded on AVX2 (2026-12-02, the code of the first
AVX2 recording, before the search log was appended instead of rewritten). Elsewhere the
comparison is skipped with the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import TINY

GOLDEN = Path(__file__).parent / "golden"
RECORDED = json.loads((GOLDEN / "machine.json").read_text())
CAPABILITY = torch.backends.cpu.get_cpu_capability()
SAME = torch.__version__ == RECORDED["torch"] and CAPABILITY in RECORDED["cpu_capability"]
TIMING = ("seconds", "train_seconds")

COMMANDS = {
    "tunas": (["search", *TINY, "train.epochs=2"], ["search_log.csv", "arch.json"]),
    "zen": (
        ["search", "strategy=zen", *TINY, "strategy.iterations=30",
         "strategy.population_size=8", "strategy.batch_size=4"],
        ["search_log.csv", "population.csv", "arch.json"],
    ),
    "random": (
        ["random-baseline", *TINY, "strategy.num_samples=2"],
        ["candidates.csv", "arch.json"],
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(
    not SAME, reason=f"golden files were made with {RECORDED}, not {torch.__version__} {CAPABILITY}"
)
@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_fixed_seed_gives_the_recorded_run(name, tmp_path):
    args, files = COMMANDS[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / name
    done = subprocess.run(
        [sys.executable, "-m", "nascli", *args, f"out={out}"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    def golden(file: str) -> Path:  # this instruction set's own recording where it differs
        own = GOLDEN / name / CAPABILITY / file
        return own if own.exists() else GOLDEN / name / file

    for file in files:
        if file.endswith(".csv"):
            got = pd.read_csv(out / file)
            got = got.drop(columns=[c for c in TIMING if c in got.columns])
            want = pd.read_csv(golden(file))
            # Integer and text columns exactly; floats to 1e-4 relative: CPUs of the same
            # capability (Intel and AMD AVX512) round the last digits of a loss differently.
            pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-4, obj=file)
        else:
            assert _close(
                json.loads((out / file).read_text()), json.loads(golden(file).read_text())
            )
    summary = json.loads((out / "summary.json").read_text())
    recorded = json.loads(golden("result.json").read_text())
    assert _close({k: summary[k] for k in recorded}, recorded)


def _close(got, want) -> bool:
    """Equal, floats to 1e-4 relative (the last digits differ between CPUs of one capability)."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_close(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(_close(g, w) for g, w in zip(got, want, strict=True))
        )
    if isinstance(want, float) and isinstance(got, int | float):
        return got == pytest.approx(want, rel=1e-4)
    return got == want
