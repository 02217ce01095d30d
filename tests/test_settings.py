"""Every configuration value is checked before any work: the rules, and a fuzz over every leaf
of every composed config, generated from the configs themselves so that new keys are covered."""

from __future__ import annotations

import subprocess
import sys
import typing
from dataclasses import dataclass, fields

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nascli.cli import ROOT_CONFIGS
from nascli.config import (
    GROUP_SCHEMAS,
    BoardConfig,
    BudgetConfig,
    Config,
    DesignConfig,
    ProxiesConfig,
    apply_budgets,
    precheck,
    strategy_settings,
)
from nascli.errors import NascliError
from nascli.search.gradient import GradientSettings
from nascli.search.grid import GridSettings
from nascli.search.nasrl import NasrlSettings
from nascli.search.policy import ControllerSettings
from nascli.search.proxies import ProxySettings
from nascli.search.random import RandomSettings
from nascli.search.tunas import TunasSettings
from nascli.search.zen import ZenSettings
from nascli.settings import Rule, check_fields, check_value, option

# ---------------------------------------------------------------- the rules


def test_integers_are_not_fractions_and_numbers_are_not_flags():
    rule = Rule(ge=1)
    assert check_value("k", 3, int, rule) == 3
    assert check_value("k", 3.0, int, rule) == 3  # YAML's 3.0 is still the integer 3
    assert check_value("k", 3, float, Rule()) == 3.0
    assert isinstance(check_value("k", 3, float, Rule()), float)
    for bad, annotation in ((2.5, int), (True, int), (True, float), ("3", int), (1, bool)):
        with pytest.raises(NascliError, match=r"^k="):
            check_value("k", bad, annotation, Rule())


def test_ranges_choices_null_and_non_finite_numbers():
    with pytest.raises(NascliError, match=r"k=0: expected ≥ 1 and ≤ 1,000,000"):
        check_value("k", 0, int, Rule(ge=1, le=1_000_000))
    with pytest.raises(NascliError, match=r"expected > 0 and < 1"):
        check_value("k", 1.0, float, Rule(gt=0, lt=1))
    for value in (float("inf"), float("nan")):
        with pytest.raises(NascliError):
            check_value("k", value, float, Rule())
    with pytest.raises(NascliError, match=r"k='x': expected one of a, b"):
        check_value("k", "x", str, Rule(choices=("a", "b")))
    assert check_value("k", None, float | None, Rule(gt=0)) is None
    with pytest.raises(NascliError, match=r"k=null"):
        check_value("k", None, float, Rule(gt=0))


def test_unknown_keys_are_named_with_what_the_group_takes():
    @dataclass
    class Small:
        a: int = option(1, ge=0)

    assert check_fields(Small, {"a": 2}, "g") == {"a": 2}
    with pytest.raises(NascliError, match=r"unknown option\(s\) g\.b; g takes a"):
        check_fields(Small, {"a": 2, "b": 1}, "g")


@pytest.mark.parametrize("name", ["tunas", "random", "zen", "nasrl", "grid"])
def test_a_strategys_yaml_and_its_settings_class_have_the_same_defaults(name):
    """One source of truth: the YAML a user reads says what the class does without it."""
    with initialize_config_module(config_module="nascli.conf", version_base=None):
        values = OmegaConf.to_container(compose("search", [f"strategy={name}"]).strategy)
    for schema in STRATEGY_SCHEMAS[name]:
        for f in fields(schema):
            if f.name in values:
                assert values[f.name] == f.default, (name, f.name, values[f.name], f.default)


def test_the_lstm_controllers_yaml_and_its_settings_class_have_the_same_defaults():
    with initialize_config_module(config_module="nascli.conf", version_base=None):
        values = OmegaConf.to_container(compose("search", ["controller=lstm"]).controller)
    assert values["name"] == "lstm"
    for f in fields(ControllerSettings):
        if f.name != "name":
            assert values[f.name] == f.default, (f.name, values[f.name], f.default)


# ---------------------------------------------------------------- the fuzz

STRATEGY_SCHEMAS = {
    "tunas": (TunasSettings,),
    "random": (RandomSettings,),
    "zen": (ZenSettings, ProxySettings),
    "nasrl": (NasrlSettings,),
    "grid": (GridSettings,),
    "proxyless": (GradientSettings,),
    "fbnet": (GradientSettings,),
}

#: Sections only some commands compose, with their schemas.
OTHER_SCHEMAS = {
    "proxies": ProxiesConfig,
    "controller": ControllerSettings,
    "board": BoardConfig,
    "design": DesignConfig,
    "budget": BudgetConfig,
}

#: (command's root config, overrides) covering every config group's schema once
COMPOSITIONS = [
    ("config", []),  # build, retrain, profile-latency, spaces
    ("search", []),  # strategy=tunas_cpu
    ("search", ["strategy=tunas"]),
    ("search", ["strategy=random"]),
    ("search", ["strategy=zen"]),
    ("search", ["strategy=nasrl", "controller=lstm"]),
    ("search", ["strategy=grid"]),
    ("search", ["strategy=proxyless"]),
    ("random_baseline", []),
    ("proxies", []),
    ("design_space", []),
]
assert set(ROOT_CONFIGS.values()) <= {name for name, _ in COMPOSITIONS}

#: a zero, a negative, a fraction, a non-number (and unknown choice), a huge number
HOSTILE = ["0", "-1", "0.5", "abc", "1e30"]


def _schema_field(schemas: tuple[type, ...], name: str):
    for schema in schemas:
        for f in fields(schema):
            if f.name == name:
                return schema, f
    raise AssertionError(f"no schema declares {name}")


def leaves() -> list[tuple[str, str, list[str], type, object]]:
    """(config, key, overrides, schema, field) for every leaf of every composition."""
    found = {}
    for config, overrides in COMPOSITIONS:
        with initialize_config_module(config_module="nascli.conf", version_base=None):
            cfg = compose(config_name=config, overrides=overrides)
        tree = OmegaConf.to_container(cfg, resolve=False)
        for group, values in tree.items():
            if group in GROUP_SCHEMAS or group in OTHER_SCHEMAS or group == "strategy":
                if not isinstance(values, dict):
                    continue
                if group == "strategy":
                    schemas = STRATEGY_SCHEMAS[values["name"]]
                else:
                    schemas = (GROUP_SCHEMAS.get(group) or OTHER_SCHEMAS[group],)
                for key in values:
                    schema, f = _schema_field(schemas, key)
                    found.setdefault((config, f"{group}.{key}", tuple(overrides)), (schema, f))
            elif group != "out":
                schema, f = _schema_field((Config,), group)
                found.setdefault((config, group, tuple(overrides)), (schema, f))
    unique = {}  # each declared field once: the first composition that has it
    for (c, k, o), (s, f) in sorted(found.items(), key=lambda item: len(item[0][2])):
        unique.setdefault((s, f.name), (c, k, list(o), s, f))
    return sorted(unique.values(), key=lambda leaf: (leaf[0], leaf[1]))


LEAVES = leaves()


def rule_signature(schema: type, f) -> tuple:
    """What decides how a leaf's values are checked: its types and its declared rule."""
    rule = f.metadata.get("rule", Rule())
    hint = typing.get_type_hints(schema)[f.name]
    kinds = tuple(sorted(str(k) for k in (set(typing.get_args(hint)) or {hint})))
    return (kinds, rule.ge, rule.gt, rule.le, rule.lt, rule.choices, bool(rule.text))


#: The first leaf of each rule signature gets every hostile value; the others (the same check
#: again) get the values beyond their bounds and a word, which keeps the fuzz's time in bounds.
FIRST_OF_SIGNATURE: dict[tuple, str] = {}
for _c, _k, _o, _s, _f in LEAVES:
    FIRST_OF_SIGNATURE.setdefault(rule_signature(_s, _f), f"{_c}:{_k}")


def test_every_leaf_declares_what_it_allows():
    """A new key without a rule fails here: numbers need a range, text needs choices or a
    statement of what free text means."""
    assert len(LEAVES) > 90
    for _config, key, _overrides, schema, f in LEAVES:
        if f.name in ("strategy", "proxies", "proxy_settings"):
            continue
        rule = f.metadata.get("rule")
        assert rule is not None, f"{key} ({schema.__name__}) has no rule: declare it with option()"
        kinds = {k for k in typing.get_args(typing.get_type_hints(schema)[f.name])} or {
            typing.get_type_hints(schema)[f.name]
        }
        if kinds & {int, float}:
            bounded = rule.ge is not None or rule.gt is not None or rule.choices is not None
            assert bounded, f"{key}: a number needs a lower bound"
        if str in kinds or typing.Any in kinds:
            assert rule.choices is not None or rule.text, f"{key}: say what text it takes"


@pytest.mark.parametrize(("config", "key", "overrides", "schema", "field"), LEAVES,
                         ids=[f"{c}:{k}:{' '.join(o)}" for c, k, o, _, _ in LEAVES])  # fmt: skip
def test_hostile_values_are_refused_in_one_line_or_accepted(
    config, key, overrides, schema, field, capsys
):
    """Each value is refused before any work (exit 2, one line) or accepted by the same check the
    command runs first. Values just beyond each declared bound, an unknown choice, text where a
    number belongs and a fraction where an integer belongs are refused."""
    rule = field.metadata.get("rule", Rule())
    hint = typing.get_type_hints(schema)[field.name]
    kinds = set(typing.get_args(hint)) or {hint}
    integer = int in kinds and float not in kinds
    step = 1 if integer else 1e-3
    outside = [rule.gt, rule.lt]  # just beyond each bound the rule declares
    outside += [None if rule.ge is None else rule.ge - step]
    outside += [None if rule.le is None else rule.le + step]
    hostile = HOSTILE
    if FIRST_OF_SIGNATURE[rule_signature(schema, field)] != f"{config}:{key}":
        hostile = ["abc", "0.5"] if integer or bool in kinds else ["abc"]
    values = hostile + [str(int(v) if integer else float(v)) for v in outside if v is not None]
    outcomes = {}
    for value in values:
        try:
            precheck(config, [*overrides, f"{key}={value}"])
            outcomes[value] = "accepted"
        except SystemExit as stop:
            err = capsys.readouterr().err
            assert stop.code == 2, (key, value, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (key, value, err)
            assert "Traceback" not in err
            outcomes[value] = "refused"
    for value in values[len(hostile) :]:
        assert outcomes[value] == "refused", (key, value)
    if kinds & {int, float} and not kinds & {str, typing.Any}:
        assert outcomes["abc"] == "refused", key
        if integer:
            assert outcomes["0.5"] == "refused", key
    if rule.choices is not None:
        assert outcomes["abc"] == "refused", key
    if bool in kinds:
        assert outcomes["abc"] == "refused" and outcomes["0.5"] == "refused", key


# ---------------------------------------------------------------- budgets

BUDGETED = ["tunas_cpu", "random", "zen", "nasrl", "grid", "proxyless_cpu", "fbnet_cpu"]


def _budgeted(strategy: str, *overrides: str):
    with initialize_config_module(config_module="nascli.conf", version_base=None):
        cfg = compose(config_name="search", overrides=[f"strategy={strategy}", *overrides])
    apply_budgets(cfg)
    return strategy_settings(cfg.strategy)


@pytest.mark.parametrize("strategy", BUDGETED)
def test_budget_keys_become_every_strategys_max_settings(strategy):
    given = ("budget.params=1e6", "budget.macs=2e7", "budget.peak_memory=3e5",
             "budget.sram=2e5", "budget.flash=9e5")  # fmt: skip
    settings = _budgeted(strategy, *given)
    got = [settings.max_params, settings.max_macs, settings.max_peak_memory,
           settings.max_sram, settings.max_flash]  # fmt: skip
    assert got == [1e6, 2e7, 3e5, 2e5, 9e5]
    unset = _budgeted(strategy)
    assert (unset.max_sram, unset.max_flash, unset.max_params) == (None, None, None)


def test_a_board_sets_the_memory_budgets_of_a_search_and_a_budget_key_overrides_it():
    board = _budgeted("tunas_cpu", "board=stm32f746")
    assert (board.max_sram, board.max_flash) == (320_000, 1_000_000)
    tighter = _budgeted("random", "board=stm32f412", "budget.sram=128e3")
    assert (tighter.max_sram, tighter.max_flash) == (128_000, 1_000_000)
    agreed = _budgeted("zen", "budget.flash=5e5", "strategy.max_flash=5e5")
    assert agreed.max_flash == 5e5
    disagree = r"budget\.flash=500000 and strategy\.max_flash=400000 disagree"
    with pytest.raises(NascliError, match=disagree):
        _budgeted("zen", "budget.flash=5e5", "strategy.max_flash=4e5")


# ---------------------------------------------------------------- through the real command

BAD = [
    ("search", "train.batch_size=0", "train.batch_size=0: expected ≥ 1"),
    ("retrain", "train.epochs=-1", "train.epochs=-1: expected ≥ 1"),
    ("search", "strategy.archs_per_rank=2.5", "strategy.archs_per_rank=2.5: expected an integer"),
    ("profile-latency", "cost.runs=0", "cost.runs=0: expected ≥ 1"),
    ("search", "cost.target=-5", "cost.target=-5.0: expected > 0"),
    ("search", "space=foo", "Could not find 'space/foo'; Available options in 'space': mnv3"),
    ("random-baseline", "train.batch_size=abc", "Error merging override train.batch_size=abc"),
    ("search", "budget.sram=-1", "budget.sram=-1.0: expected > 0"),
    ("random-baseline", "board=stm32f7", "Could not find 'board/stm32f7'"),
]


@pytest.mark.parametrize(("command", "override", "message"), BAD)
def test_the_commands_refuse_bad_values_before_writing_anything(command, override, message,
                                                                 tmp_path):  # fmt: skip
    out = tmp_path / "run"
    args = [command, override, f"out={out}"]
    if command == "retrain":
        args.insert(1, "arch=proxylessnas_mobile")
    result = subprocess.run(
        [sys.executable, "-m", "nascli", *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()  # no run directory, no log file: nothing was started


def test_a_pattern_rule_refuses_text_that_does_not_match_it_whole():
    rule = Rule(text="auto, cpu or cuda:N", pattern=r"auto|cpu|cuda(:\d+)?")
    assert check_value("device", "cuda:1", str, rule) == "cuda:1"
    for bad in ("gpu", "cuda:", "cpu "):
        with pytest.raises(NascliError, match=rf"device='{bad}': expected auto, cpu or cuda:N"):
            check_value("device", bad, str, rule)
