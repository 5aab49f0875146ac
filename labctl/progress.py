"""A progress bar with rate and ETA for long scans (replay, audit verify), on a terminal only."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO


class ProgressBar:
    """Call with the count done so far; draws on ``stream`` when it is a terminal, else stays silent."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, *, interval: float = 0.2) -> None:
        self.label = label
        self.total = max(total, 0)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.interval = interval
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._drew = False
        self._done = 0
        self._tables = ""
        self._lock = threading.Lock()  # a rebuild's two connections report from two threads

    def __call__(self, done: int) -> None:
        self._done = done
        self._draw(force=done >= self.total)

    def tables(self, done: int, total: int) -> None:
        """A rebuild's second part: the read-model tables the server has filled (after the scan of the
        log, the bar would otherwise sit full for minutes at 10M events)."""
        self._tables = f" tables {done}/{total} "
        self._draw(force=done >= total)

    def _draw(self, *, force: bool) -> None:
        if not self.enabled:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._drawn_at < self.interval and not force:
                return
            self._drawn_at = now
            self.stream.write("\r" + self.line(self._done, now - self.started) + self._tables)
            self.stream.flush()
            self._drew = True

    def line(self, done: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.total:
            share = min(done / self.total, 1.0)
            filled = int(share * 30)
            left = (self.total - done) / rate if rate > 0 else 0.0
            eta = time.strftime("%H:%M:%S", time.gmtime(max(left, 0)))
            return (
                f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {share:4.0%} "
                f"{done:,}/{self.total:,}  {rate:,.0f}/s  ETA {eta} "
            )
        return f"{self.label} {done:,}  {rate:,.0f}/s "

    def close(self) -> None:
        if self._drew:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
