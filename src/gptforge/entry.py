"""The `gptforge` command's entry point. A Ctrl-C that comes while the modules are still loading (torch alone takes
a second or more) ends as one later does: one `interrupted` line and exit 130, not a KeyboardInterrupt traceback
from inside an import."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from gptforge.cli import main as run_command

        return run_command()
    except KeyboardInterrupt:  # cli.main handles its own; this one came before it could
        command = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else ""
        print(f"gptforge {command}".strip() + ": interrupted", file=sys.stderr)
        return 130
