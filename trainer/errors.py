"""Errors the user can fix. The CLIs print their one-line message and exit 2."""

import errno


class UserError(Exception):
    """Bad input: a config, a file, a flag. The message is one line that names the problem."""


class DataError(UserError):
    """Missing, truncated or mismatched data files."""


# A full disk, a read-only folder, a file where a folder must go: the machine's state, not a bug.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EIO}


def disk_error(e: BaseException) -> str | None:
    """One line naming the file and the cause, for an OS error the user can fix on their side; else None."""
    if not isinstance(e, OSError) or e.errno not in _DISK_ERRNOS:
        return None
    return f"{e.filename}: {e.strerror}" if e.filename else str(e.strerror)


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure (a RuntimeError that says so)."""
    return type(e).__name__ == "OutOfMemoryError" or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))
