"""The ``labctl`` executable: answers ``--version`` and ``log-metric`` without loading the CLI framework."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from labctl import __version__

        print(f"labctl {__version__}")
        return
    if sys.argv[1:2] == ["log-metric"]:
        from labctl.metrics_file import log_metric_main

        sys.exit(log_metric_main(sys.argv[2:]))
    from labctl.cli import main as cli_main

    cli_main()
