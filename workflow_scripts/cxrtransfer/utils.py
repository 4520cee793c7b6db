"""Small helpers shared by every stage: atomic outputs, progress logging, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from . import WorkflowError, runconfig

LOG = logging.getLogger("cxrtransfer")

# What to do about a damaged, truncated or stale product (README: "When a run was killed or a
# file is damaged"): deleting only that file would not make Snakemake rebuild it while files
# made from it exist.
FIX_DAMAGED = (
    "Run `python -m cxrtransfer.verify --remove` (make verify REMOVE=1) and rerun the workflow."
)


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success.

    A crash or kill leaves at most a ``.tmp-*`` file, never a file under the final name that
    looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_csv(path: str | os.PathLike, df) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def params_hash(obj) -> str:
    """Stable short hash of a JSON-serialisable object (settings that define a product)."""
    s = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.sha256(s.encode()).hexdigest()[:16]


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


def run_main(func, snakemake) -> None:
    """Run a rule's main function with everything it prints in the rule's log file.

    Output of the process itself (TensorFlow's start-up notices are written by C++ to file
    descriptor 2) goes to the log too, so the console shows Snakemake's progress only. A
    WorkflowError becomes a clear message (in the log and on the console) and exit code 1,
    without a traceback."""
    log = snakemake.log[0] if len(snakemake.log) else None
    # TensorFlow's op pool uses as many threads as the job was given (read when TensorFlow
    # creates its context, so before any op runs), not every core of the machine.
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(max(1, int(snakemake.threads)))
    console = sys.stderr
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        console = os.fdopen(os.dup(2), "w")
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    setup_logging(None)
    try:
        # the config this job got must be the one its run planned (runconfig), on any executor
        record = runconfig.check_job(dict(snakemake.config))
        LOG.info(
            "rule %s: config sha256 %s (as planned)", snakemake.rule, record[runconfig.RAN_WITH]
        )
        func(snakemake)
    except WorkflowError as e:
        LOG.error("%s", e)
        print(f"ERROR: {e}", file=console, flush=True)
        sys.exit(1)
