"""Writing run outputs so that an interrupted command never leaves a half-written file."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nascli.errors import NascliError


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


class InUse(NascliError):
    """A run (or one unit of it) that another process holds: never recorded as a failure of
    what was being trained, always the command's own one-line error."""


class RunLock:
    """An exclusive lock on a run directory (`.nascli.lock`, an OS file lock): a second command
    on the same `out=` refuses instead of interleaving writes. The OS drops the lock when the
    process ends, however it ends (SIGKILL included), so a killed run never leaves it stale."""

    NAME = ".nascli.lock"

    def __init__(self, directory: Path):
        self.directory = directory
        self._file: Any = None

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handle = open(self.directory / self.NAME, "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise InUse(
                f"{self.directory} is in use by another nascli command ({holder}); wait for it "
                "to finish or choose another out="
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._file = handle

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock; the file stays (harmless, reused)
            self._file = None
