"""What the tests' child processes need from their parent, whatever shell started the test run."""

import signal


def sigint_default() -> None:
    """`preexec_fn` for children that must react to Ctrl-C.

    A shell starts `cmd &` with SIGINT ignored, and children inherit that; Python installs its
    KeyboardInterrupt handler only when SIGINT is at its default at start-up. Without this a test
    that sends SIGINT would pass or fail depending on how the test run was launched.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
