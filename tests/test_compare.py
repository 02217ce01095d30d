"""`nascli compare`: one table over search, random-baseline and retrain runs."""

import json

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
    result = run_cli("compare", str(tunas2))
    assert "91.00% (chance 10%)" in result.output
    assert rows[1]["valid_top1"] == 0.81 and rows[2]["test_top1"] == 0.955


def test_compare_refuses_a_directory_without_summary(run_cli, tmp_path):
    result = run_cli("compare", str(tmp_path))
    assert result.exit_code == 2
    assert "has no summary.json" in result.output and "Traceback" not in result.output
