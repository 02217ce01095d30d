"""The one exception type users see as a single line."""


class NascliError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits with code 2."""

    exit_code = 2
