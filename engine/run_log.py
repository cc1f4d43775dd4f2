"""Console + log-file logging for training and search runs.

Only the main process writes: the console gets ``message`` lines (routed through ``tqdm.write`` so progress bars
stay intact) and the run folder gets a timestamped log file that is appended to on resume. Other ranks log warnings
and errors only, prefixed with their rank. A script may log to the console first (``setup_logging(None)``) and open
the file with :func:`open_log_file` once its checks have passed, so that a failed start creates no run folder; the
file then begins with the lines logged before it was opened.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from tqdm import tqdm

LOGGER_NAME = "facenas"


class _Backlog(logging.Handler):
    """Keeps the records logged before the log file is opened (at most ``capacity``)."""

    def __init__(self, capacity: int = 10_000) -> None:
        super().__init__()
        self.capacity, self.records = capacity, []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.capacity:
            self.records.append(record)


class _TqdmHandler(logging.StreamHandler):
    """Write records with ``tqdm.write`` so they appear above an active progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never crash the run
            self.handleError(record)


def setup_logging(log_file: str | Path | None = None, is_main: bool = True, rank: int = 0,
                  name: str = LOGGER_NAME, level: int = logging.INFO) -> logging.Logger:
    """Configure and return the run's logger (idempotent: earlier handlers of this logger are replaced).

    Args:
        log_file: file to append to (main process only); its folder is created.
        is_main: whether this process is rank 0.
        rank: process rank, shown by non-main processes.
        name: logger name.
        level: level on the main process.

    Returns:
        The logger.
    """
    close_logging(name)
    logger = logging.getLogger(name)
    logger.propagate = False
    console = _TqdmHandler(sys.stderr if not is_main else sys.stdout)
    if is_main:
        logger.setLevel(level)
        console.setFormatter(logging.Formatter("%(message)s"))
    else:
        logger.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s: %(message)s"))
    logger.addHandler(console)
    if is_main and log_file is not None:
        open_log_file(logger, log_file)
    elif is_main:
        logger.addHandler(_Backlog())
    return logger


def open_log_file(logger: logging.Logger, log_file: str | Path) -> None:
    """Start appending the logger's records to ``log_file`` (its folder is created), beginning with the records
    logged since ``setup_logging(None)``."""
    path = Path(log_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for handler in [h for h in logger.handlers if isinstance(h, _Backlog)]:
        logger.removeHandler(handler)
        for record in handler.records:
            file_handler.handle(record)
    logger.addHandler(file_handler)


def close_logging(name: str = LOGGER_NAME) -> None:
    """Close the handlers of the run's logger (releases the log file; tests and repeated in-process runs)."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
