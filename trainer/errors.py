"""Errors the user can fix. The CLIs print their one-line message and exit 2."""


class UserError(Exception):
    """Bad input: a config, a file, a flag. The message is one line that names the problem."""


class DataError(UserError):
    """Missing, truncated or mismatched data files."""
