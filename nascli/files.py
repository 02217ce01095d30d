"""Writing run outputs so that an interrupted command never leaves a half-written file."""

from __future__ import annotations

import fcntl
import io
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


class LogFile:
    """A CSV log kept in step with a checkpoint by appending: `append(rows)` writes the rows
    after those already written (the whole file again only when a row brings a new column), and
    `resume(count)` reads the first `count` rows back, cutting off any written after the
    checkpoint that counted them (the units they logged are done again). Values read back are
    Python scalars with None for an empty cell; floats read back exactly."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] = []
        self.written = 0

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        if rows:
            frame = pd.DataFrame(rows)
            with atomic_path(self.path) as tmp:
                frame.to_csv(tmp, index=False)
            self.columns = list(frame.columns)
        self.written = len(rows)

    def append(self, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        new = rows[self.written :]
        if not new:
            return
        if not self.written or any(key not in self.columns for row in new for key in row):
            self.rewrite(rows)
            return
        with self.path.open("a", newline="") as file:
            pd.DataFrame(new, columns=self.columns).to_csv(file, index=False, header=False)
        self.written = len(rows)

    def resume(self, count: int, cut: bool = True) -> list[dict[str, Any]]:
        """The first `count` rows; with `cut`, the file is truncated after them."""
        import pandas as pd

        if count == 0:
            if cut:
                self.path.unlink(missing_ok=True)
            return []
        data = self.path.read_bytes() if self.path.exists() else b""
        if data.count(b"\n") < count + 1:  # the header line, then `count` rows
            raise NascliError(
                f"{self.path} holds fewer than the {count} rows its checkpoint counts; "
                "restore it or start the run again in a new out="
            )
        end = -1
        for _ in range(count + 1):
            end = data.index(b"\n", end + 1)
        if cut and end + 1 < len(data):
            with self.path.open("r+b") as file:
                file.truncate(end + 1)
        frame = pd.read_csv(io.BytesIO(data[: end + 1]))
        self.columns, self.written = list(frame.columns), count
        return frame.astype(object).where(frame.notna(), None).to_dict("records")


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
