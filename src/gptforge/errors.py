"""The one exception type for mistakes a user can fix.

The CLI prints a UserError as a single line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input or a bad request: the message says what, where (file or key), and what to do."""


def raise_first(failures: list[BaseException]) -> None:
    """After parallel work: raise the first failure, a bug as it is (with its traceback), a UserError as one line
    that counts the others. Nothing when the list is empty."""
    if not failures:
        return
    first = failures[0]
    if not isinstance(first, UserError):
        raise first
    more = f" (and {len(failures) - 1} more file(s) failed)" if len(failures) > 1 else ""
    raise UserError(f"{first}{more}")
