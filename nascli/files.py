"""Writing run outputs so that an interrupted command never leaves a half-written file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write to; it replaces `path` only on success."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One CSV row per dict, replacing `path` atomically."""
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
