"""Logging that reads well in a file: plain lines, periodic progress with counts, rate and ETA."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

LOG = logging.getLogger("cxrtransfer")


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log plain lines (no carriage returns) to stderr and, if given, to ``log_file``."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)


class Progress:
    """Periodic progress lines for log files: count, rate and ETA, no carriage returns."""

    def __init__(self, total: int, what: str, every_seconds: float = 10.0, logger=LOG):
        self.total = int(total)
        self.what = what
        self.every = every_seconds
        self.logger = logger
        self.start = time.monotonic()
        self.last = self.start
        self.done = 0

    def update(self, n: int = 1, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if force or now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.logger.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        el = max(now - self.start, 1e-9)
        rate = self.done / el
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.what}: {self.done}/{self.total} ({pct:.0f}%), {rate:.1f}/s, "
            f"elapsed {_fmt_s(el)}, ETA {_fmt_s(left)}"
        )


def _fmt_s(s: float) -> str:
    if s != s:  # NaN
        return "?"
    s = int(round(s))
    h, r = divmod(s, 3600)
    m, sec = divmod(r, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"
