"""The one exception type for mistakes a user can fix.

The CLI prints a UserError as a single line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input or a bad request: the message says what, where (file or key), and what to do."""
