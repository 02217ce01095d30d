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


class Stopped(NascliError):
    """SIGTERM or SIGINT, after a checkpoint was written: the CLI prints how to resume (on
    standard output, like the run's other lines) and exits with 128 + the signal's number."""

    def __init__(self, signum: int, where: str, out: object):
        import signal

        super().__init__(
            f"{signal.Signals(signum).name}: stopped {where} with a checkpoint in {out}; rerun "
            f"the same command with out={out} to resume",
            exit_code=128 + signum,
        )


class Waiting(Stopped):
    """A run that stopped at a checkpoint to wait for work that runs elsewhere (the jobs of a
    sweep): the CLI prints what to run next and exits 0."""

    def __init__(self, message: str):
        NascliError.__init__(self, message, exit_code=0)
