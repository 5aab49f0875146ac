"""The ``labctl`` executable: answers ``--version`` without loading the CLI framework."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from labctl import __version__

        print(f"labctl {__version__}")
        return
    from labctl.cli import main as cli_main

    cli_main()
