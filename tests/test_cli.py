"""The command line: help, Hydra grammar, `spaces`, `build` and its error paths."""

import json
import subprocess
import sys

import onnxruntime
import pytest
import torch

from nascli.cli import COMMANDS
from nascli.space.arch import format_indices
from nascli.space.references import references_in
from nascli.space.spaces import SPACES

MOBILE = format_indices(references_in(SPACES["proxylessnas"])["proxylessnas_mobile"])


def test_help_lists_every_command_with_a_description(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0
    for command in ("search", "random-baseline", "profile-latency", "build", "retrain", "spaces"):
        assert command in result.output
        assert COMMANDS[command][0].split()[0] in result.output


def test_python_dash_m_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "nascli", "spaces"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "proxylessnas_enlarged" in result.stdout


def test_spaces_table_shows_sizes_and_references(run_cli):
    result = run_cli("spaces")
    assert result.exit_code == 0
    for expected in ("73", "86", "58", "67", "21.33", "28.14", "42.93", "mnasnet_b1"):
        assert expected in result.output
    # Not a terminal here (80 columns): names a user copies stay whole on one line.
    assert "proxylessnas_mobile" in result.output and "mobilenet_v2" in result.output
    assert "decisions" in result.output


def test_cfg_job_prints_the_composed_config_with_an_override_of_every_group(run_cli):
    result = run_cli(
        "build",
        "--cfg",
        "job",
        "space=mnv3",
        "strategy=zen",
        "data=cifar100",
        "train=tunas_mobile",
        "cost=tunas_pixel1",
        "space.width_multiplier=0.5",
    )
    assert result.exit_code == 0, result.output
    for line in (
        "name: mnv3",
        "width_multiplier: 0.5",
        "name: zen",
        "num_classes: 100",
        "name: tunas_mobile",
        "name: tunas_pixel1",
    ):
        assert line in result.output


def test_options_may_follow_overrides(run_cli):
    result = run_cli("spaces", "space=mnv3", "--cfg", "job")
    assert result.exit_code == 0 and "name: mnv3" in result.output


def test_unknown_group_option_lists_the_available_ones(run_cli):
    result = run_cli("build", "space=foo", f"arch={MOBILE}")
    assert result.exit_code != 0
    assert "Available options in 'space'" in result.output
    assert "proxylessnas_enlarged" in result.output
    assert "Traceback" not in result.output


def test_wrong_value_type_is_refused(run_cli):
    result = run_cli("build", "data.resolution=big", f"arch={MOBILE}")
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_build_writes_arch_json_and_exports(run_cli, tmp_path):
    out = tmp_path / "mobile"
    result = run_cli("build", "arch=proxylessnas_mobile", f"out={out}")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "arch.json").read_text())
    assert record["space"] == "proxylessnas" and record["indices"] == MOBILE
    assert record["resolution"] == 32 and record["num_classes"] == 10  # the data default
    assert record["totals"]["params"] == sum(row["params"] for row in record["layers"])
    images = torch.randn(2, 1, 32, 32)
    scripted = torch.jit.load(str(out / "model.pt"))
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (logits,) = session.run(None, {"images": images.numpy()})
    # A freshly initialised net (BN running stats 0/1) gives logits in the hundreds, so the
    # float32 reassociation of two runtimes is compared relatively here (test_export.py checks
    # absolute 1e-4 on normalised activations).
    torch.testing.assert_close(torch.from_numpy(logits), scripted(images), atol=1e-4, rtol=1e-4)
    assert not list(out.glob(".*.tmp"))
    assert (out / ".hydra" / "config.yaml").is_file()
    assert "total" in result.output and "MACs" in result.output

    again = run_cli("build", f"arch={out}", f"out={tmp_path / 'again'}")  # a run directory
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "arch.json").read_text())["indices"] == MOBILE


def test_hydra_run_dir_is_honoured(run_cli, tmp_path):
    result = run_cli("build", "arch=proxylessnas_mobile", f"hydra.run.dir={tmp_path / 'h'}")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "h" / "arch.json").is_file()


@pytest.mark.slow
def test_multirun_sweeps_spaces(run_cli, tmp_path):
    result = run_cli(
        "build",
        "-m",
        "space=proxylessnas,proxylessnas_enlarged",
        "arch=proxylessnas_mobile",
        f"out={tmp_path / 'sweep'}",
    )
    assert result.exit_code == 0, result.output
    spaces = [json.loads((tmp_path / "sweep" / str(i) / "arch.json").read_text()) for i in (0, 1)]
    assert [s["space"] for s in spaces] == ["proxylessnas", "proxylessnas_enlarged"]


def _bad_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"space": "mnv3", "indices": "0"}))
    return str(path)


def _garbage(tmp_path):
    path = tmp_path / "garbage.json"
    path.write_text("{not json")
    return str(path)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("0:0:0", "needs 73 indices, got 3"),
        (MOBILE.replace("0:0:0:1", "0:7:0:1", 1), "index 7 at position 1 (b1.0.kernel)"),
        ("mobilenet_v2", "it is in: proxylessnas_enlarged"),
        ("resnet50", "unknown reference 'resnet50'"),
        (_bad_json, "space mnv3 needs 86 indices, got 1"),  # the file's own space
        (_garbage, "cannot read architecture"),
        ("missing/arch.json", "not found"),
    ],
)
def test_bad_arch_is_one_line_and_exit_code_2(run_cli, tmp_path, arch, message):
    arch = arch(tmp_path) if callable(arch) else arch
    result = run_cli("build", f"arch={arch}")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert message in result.output and "Traceback" not in result.output


def test_build_without_arch_explains_what_to_pass(run_cli):
    result = run_cli("build")
    assert result.exit_code == 2 and "arch=" in result.output


def test_an_unknown_strategy_name_says_which_exist(run_cli, tmp_path):
    result = run_cli("search", "strategy=zen", "strategy.name=nope", f"out={tmp_path / 'z'}")
    assert result.exit_code == 2 and "strategy.name='nope': expected one of tunas" in result.output


def test_errors_from_a_real_process_have_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "nascli", "build", "arch=1:2", f"out={tmp_path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: space proxylessnas needs 73 indices, got 2"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no architecture given"),
        (("arch=mobilenet_v2",), "unknown reference 'mobilenet_v2'"),
        (("arch=proxylessnas_mobile", "data=cifar10", "data.root=null"), "needs data.root"),
        (("arch=proxylessnas_mobile", "train.optimizer=adam"), "expected one of sgd, rmsprop_tf"),
        (("arch=proxylessnas_mobile", "train.batch_size=100000"), "fewer than one batch"),
        (("arch=proxylessnas_mobile", "device=cuda:7"), "no CUDA device"),
    ],
)
def test_retrain_bad_input_is_one_line_and_exit_2(run_cli, args, message):
    result = run_cli("retrain", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def hide_modules(monkeypatch, *names: str) -> None:
    """Make `names` look uninstalled to the checks for optional extras."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a)
    )


def test_build_without_the_export_extra_writes_torchscript_and_says_how_to_get_onnx(
    run_cli, tmp_path, monkeypatch
):
    hide_modules(monkeypatch, "onnxscript")
    out = tmp_path / "b"
    result = run_cli("build", f"arch={MOBILE}", "data=digits", "data.resolution=32", f"out={out}")
    assert result.exit_code == 0, result.output
    assert "model.onnx not written: onnxscript not installed: pip install 'nascli[export]'" in (
        " ".join(result.output.split())
    )
    assert {p.name for p in out.iterdir()} >= {"model.pt", "arch.json"}
    assert not (out / "model.onnx").exists()


def test_timing_with_onnxruntime_missing_is_refused_in_one_line(run_cli, monkeypatch):
    hide_modules(monkeypatch, "onnxruntime")
    result = run_cli("profile-latency", "cost.backend=onnxruntime", f"arch={MOBILE}")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        "error: cost.backend=onnxruntime: onnxruntime not installed: pip install 'nascli[export]'"
    )


@pytest.mark.parametrize(
    ("command", "strategy"),
    [("search", "tunas_cpu"), ("random-baseline", "random"), ("build", "tunas")],
)
def test_command_help_lists_every_config_group_with_its_default_here(run_cli, command, strategy):
    from nascli.config import group_options

    result = run_cli(command, "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    groups = group_options(
        {"search": "search", "random-baseline": "random_baseline"}.get(command, "config")
    )
    assert set(groups) >= {"space", "data", "train", "cost", "strategy"}
    for group, (options, default) in groups.items():
        assert f"{group}: {options[0]}" in text
        assert f"{default}*" in text
    assert f"{strategy}*" in text


def test_the_run_log_file_holds_what_the_command_printed(run_cli, tmp_path):
    out = tmp_path / "b"
    result = run_cli("build", f"arch={MOBILE}", "data=digits", "data.resolution=32", f"out={out}")
    assert result.exit_code == 0, result.output
    log = (out / "build.log").read_text()
    assert "[nascli][INFO]" in log and "params" in log and f"wrote {out}/arch.json" in log
    assert log.count("indices ") == 1  # printed once to the log, not once per handler
    assert "[nascli]" not in result.output  # and on the terminal only by rich, not by logging
