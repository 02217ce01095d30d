"""The one exception type users see as a single line."""


class NascliError(Exception):
    """Bad input or a failed job: the CLI prints the message on one line and exits with
    `exit_code` (2 unless given)."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def missing_extra(extra: str, *modules: str) -> str | None:
    """None when every module of an optional extra can be imported, else how to install it."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return f"{', '.join(missing)} not installed: pip install 'nascli[{extra}]'"
