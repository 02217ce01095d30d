"""Declared rules for every setting, and the one check that applies them.

Each field of a settings dataclass (the config groups' schemas in `nascli.config`, each
strategy's settings) is declared with `option(default, ...)`: its type comes from the
annotation, its range or choices from the rule. `check_fields` applies them to a mapping of
raw config values, naming the key, the value and what is allowed in a one-line `NascliError`.
The rules are data, so a test can walk every leaf of every composed config and try values
outside them.
"""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from nascli.errors import NascliError


@dataclass(frozen=True)
class Rule:
    """What a setting allows beyond its type: a closed/open numeric range or a set of choices."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    #: for str settings without choices: what free text means (a path, an architecture, ...)
    text: str | None = None
    #: for str settings: a regular expression the whole text must match (`text` says it)
    pattern: str | None = None

    def allowed(self) -> str:
        def number(value: float) -> str:
            whole = float(value).is_integer() and abs(value) < 1e15
            return f"{int(value):,}" if whole else f"{value:g}"

        if self.choices is not None:
            return "one of " + ", ".join(
                str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices
            )
        parts = []
        if self.ge is not None:
            parts.append(f"≥ {number(self.ge)}")
        if self.gt is not None:
            parts.append(f"> {number(self.gt)}")
        if self.le is not None:
            parts.append(f"≤ {number(self.le)}")
        if self.lt is not None:
            parts.append(f"< {number(self.lt)}")
        return " and ".join(parts) or (self.text or "any value")

    def admits(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )


def option(default: Any = MISSING, **rule: Any) -> Any:
    """A dataclass field with its rule (keywords of `Rule`)."""
    if "choices" in rule:
        rule["choices"] = tuple(rule["choices"])
    return field(default=default, metadata={"rule": Rule(**rule)})


def _kinds(annotation: Any) -> tuple[set[type], bool]:
    """The plain types an annotation admits, and whether it admits None."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
    else:
        members = (annotation,)
    optional = type(None) in members
    kinds = set()
    for member in members:
        base = typing.get_origin(member) or member
        if base is not type(None):
            kinds.add(base)
    return kinds, optional


def _describe(kinds: set[type], optional: bool) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "text"}
    text = " or ".join(names.get(k, k.__name__) for k in sorted(kinds, key=str))
    return text + (" or null" if optional else "")


def check_value(key: str, value: Any, annotation: Any, rule: Rule) -> Any:
    """`value` converted to the annotation's type (an integer where a number is asked), or a
    one-line error naming `key`, the value and what is allowed."""
    kinds, optional = _kinds(annotation)
    if value is None:
        if optional or Any in kinds:
            return None
        raise NascliError(f"{key}=null: expected {_describe(kinds, False)}")
    if Any in kinds:
        if rule.choices is not None and value not in rule.choices:
            raise NascliError(f"{key}={value!r}: expected {rule.allowed()}")
        return value
    if isinstance(value, bool):
        ok = bool in kinds
    elif isinstance(value, int):
        ok = int in kinds or float in kinds
        if ok and int not in kinds:
            value = float(value)
    elif isinstance(value, float):
        ok = float in kinds
        if not ok and int in kinds and value.is_integer() and abs(value) < 2**53:
            value, ok = int(value), True
    else:
        ok = any(isinstance(value, k) for k in kinds if k not in (bool, int, float))
    if not ok:
        allowed = rule.allowed() if rule.choices else _describe(kinds, optional)
        raise NascliError(f"{key}={value!r}: expected {allowed}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and (not math.isfinite(value) or not rule.admits(value)):
        raise NascliError(f"{key}={value!r}: expected {rule.allowed()}")
    if rule.choices is not None and value not in rule.choices:
        raise NascliError(f"{key}={value!r}: expected {rule.allowed()}")
    text = isinstance(value, str)
    if rule.pattern is not None and text and not re.fullmatch(rule.pattern, value):
        raise NascliError(f"{key}={value!r}: expected {rule.allowed()}")
    return value


def check_fields(
    cls: type, values: Mapping[str, Any], prefix: str, ignore: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """`values` checked against `cls`'s fields: no unknown keys, each value of its type and
    within its rule; returns the converted values (only those given)."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    dotted = f"{prefix}." if prefix else ""
    unknown = sorted(set(values) - set(known) - ignore)
    if unknown:
        raise NascliError(
            f"unknown option(s) {', '.join(dotted + k for k in unknown)}; "
            f"{prefix or 'the root'} takes {', '.join(sorted(known))}"
        )
    checked = {}
    for name, value in values.items():
        if name in known:
            rule = known[name].metadata.get("rule", Rule())
            checked[name] = check_value(dotted + name, value, hints[name], rule)
    return checked
