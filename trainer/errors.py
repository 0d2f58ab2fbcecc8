"""Errors the user can fix. The CLIs print their one-line message and exit 2."""


class UserError(Exception):
    """Bad input: a config, a file, a flag. The message is one line that names the problem."""


class DataError(UserError):
    """Missing, truncated or mismatched data files."""


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a RuntimeError that says so)."""
    return type(e).__name__ == "OutOfMemoryError" or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))
