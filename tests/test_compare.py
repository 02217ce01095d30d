"""`nascli compare`: one table over search, random-baseline and retrain runs."""

import json

import pandas as pd
import pytest

from nascli.errors import NascliError
from nascli.jobs.compare import read_run


def write_run(path, summary):
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_compare_table_and_plot(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one table line per run
    common = {"space": "proxylessnas", "params": 1_000_000, "macs": 20_000_000}
    tunas = write_run(tmp_path / "tunas", {
        **common, "strategy": "tunas", "indices": "1:2", "cost": 82.5, "cost_units": "ms",
        "target": 84.0, "final_valid_quality": 0.3, "search_seconds": 250.0, "images": 17664,
    })  # fmt: skip
    random = write_run(tmp_path / "random", {
        **common, "strategy": "random", "indices": "3:4", "cost": 84.2, "cost_units": "ms",
        "target": 84.0, "valid_top1": 0.81, "search_seconds": 120.0, "images": 24000,
    })  # fmt: skip
    retrain = write_run(tmp_path / "retrain", {
        **common, "indices": "1:2", "test_top1": 0.955, "best_valid_top1": 0.97,
        "train_seconds": 300.0, "steps": 100,
    })  # fmt: skip
    plot = tmp_path / "cmp.png"
    result = run_cli("compare", str(tunas), str(random), str(retrain), "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert plot.stat().st_size > 0
    rows = [read_run(p) for p in (tunas, random, retrain)]
    assert [r["strategy"] for r in rows] == ["tunas", "random", "retrain"]
    assert rows[0]["valid_top1"] is None  # a supernet's reward accuracy is not comparable
    assert rows[0]["supernet_top1"] == 0.3 and rows[1]["supernet_top1"] is None
    assert "supernet reward top1" in result.output
    tunas2 = write_run(tmp_path / "tunas2", {
        **common, "strategy": "tunas", "indices": "1:2", "cost": 82.5, "cost_units": "ms",
        "reward_top1_final": 0.91, "chance_top1": 0.1, "final_valid_quality": 0.9,
    })  # fmt: skip
    assert read_run(tunas2)["supernet_top1"] == 0.91
    result = run_cli("compare", str(tunas2), "--plot", str(tmp_path / "two.png"))
    assert "91.00% (chance 10%)" in result.output
    assert rows[1]["valid_top1"] == 0.81 and rows[2]["test_top1"] == 0.955


def test_compare_refuses_a_directory_without_summary(run_cli, tmp_path):
    result = run_cli("compare", str(tmp_path))
    assert result.exit_code == 2
    assert "has no summary.json" in result.output and "Traceback" not in result.output


def test_the_summary_schema_round_trips_and_keeps_details_apart():
    from nascli.report.summary import COMMON, FORMAT, RunSummary, from_record

    summary = RunSummary("search", "tunas", "mnv3", seed=3, cost=55.0, target=57.0,
                         details={"steps": 7})  # fmt: skip
    record = summary.record()
    assert record["format"] == FORMAT and set(COMMON) <= set(record) and record["steps"] == 7
    assert record["relative_to_target"] == pytest.approx(55 / 57 - 1)
    assert from_record(record) == summary
    with pytest.raises(ValueError, match="common names"):
        RunSummary("search", "tunas", "mnv3", seed=0, details={"cost": 1.0}).record()
    with pytest.raises(NascliError, match="summary format 9"):
        from_record({**record, "format": 9})


def test_compare_reads_the_current_schema_and_writes_its_table_as_csv(run_cli, tmp_path):
    from nascli.report.summary import RunSummary

    for name, strategy, valid in (("a", "random", 0.8), ("b", "zen", None)):
        (tmp_path / name).mkdir()
        RunSummary("search", strategy, "proxylessnas", seed=0, indices="0:1", cost=83.0,
                   cost_units="ms", target=84.0, params=10, macs=20, valid_top1=valid, images=5,
                   seconds=1.0).write(tmp_path / name / "summary.json")  # fmt: skip
    plot = tmp_path / "cmp" / "compare.png"
    result = run_cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--plot", str(plot))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(plot.with_suffix(".csv"))
    assert table.strategy.tolist() == ["random", "zen"] and table.cost.tolist() == [83.0, 83.0]
    assert table.valid_top1.iloc[0] == 0.8 and pd.isna(table.valid_top1.iloc[1])


def test_without_a_terminal_the_table_keeps_run_names_whole(run_cli, tmp_path):
    from nascli.report.summary import RunSummary

    run = tmp_path / "proxylessnas_enlarged-84-seed4-zero-width"
    run.mkdir()
    RunSummary("search", "tunas", "proxylessnas_enlarged", seed=4, indices="0", cost=84.1,
               cost_units="ms", target=84.0, params=10, macs=20, supernet_top1=0.9,
               chance_top1=0.1, images=5, seconds=1.0).write(run / "summary.json")  # fmt: skip
    result = run_cli("compare", str(run), "--plot", "")
    assert result.exit_code == 0, result.output
    assert run.name in result.output and "proxylessnas_enlarged" in result.output
