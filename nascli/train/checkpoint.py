"""Checkpoints: written atomically, read with `weights_only=True`, refused with one clear line.

A checkpoint carries a fingerprint of the run that wrote it (architecture, data, recipe, seed,
world size); resuming into a run directory that holds a different run is an error, never a
silent restart.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from nascli.errors import NascliError
from nascli.files import atomic_path

FORMAT = "nascli-checkpoint-v1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def same_fingerprint(stored: Any, current: Any) -> bool:
    """Whether a checkpoint's fingerprint matches this run's. A setting missing from the stored
    one (added to nascli after the run started) matches when this run's value is null or
    false, so a new setting whose null default, or a new switch that is off, keeps the old
    behaviour and does not orphan older runs."""
    if isinstance(stored, dict) and isinstance(current, dict):
        keys = {*stored, *current}
        return all(
            same_fingerprint(stored[k], current[k])
            if k in stored and k in current
            else (any(current.get(k) is off for off in (None, False)) and k not in stored)
            for k in keys
        )
    return stored == current


def load_checkpoint(path: Path, fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a checkpoint this version of nascli wrote; check it belongs to this run if asked."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise NascliError(f"{path} is not a readable nascli checkpoint ({reason[:120]})") from None
    except zipfile.BadZipFile:
        raise NascliError(f"{path} is not a readable nascli checkpoint (truncated)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise NascliError(f"{path} is not a nascli checkpoint (expected format {FORMAT})")
    if fingerprint is not None and not same_fingerprint(state.get("fingerprint"), fingerprint):
        theirs = state.get("fingerprint") or {}
        changed = sorted(
            k
            for k in {*theirs, *fingerprint}
            if not same_fingerprint(theirs.get(k), fingerprint.get(k))
        )
        raise NascliError(
            f"{path} belongs to a different run (differs in: {', '.join(changed)}); "
            "use a new out= or the original settings"
        )
    return state
