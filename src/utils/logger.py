"""Logging to the console and a log file (MMRec's line format), and tqdm progress bars that
appear only on a terminal."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATEFMT = "%a %d %b %Y %H:%M:%S"


def bars_enabled() -> bool:
    return sys.stderr.isatty()


def progress(iterable: Iterable, disable: bool = False, **kwargs) -> Iterable:
    """A tqdm bar on a terminal; the bare iterable otherwise (or when ``disable``)."""
    if disable or not bars_enabled():
        return iterable
    return tqdm(iterable, dynamic_ncols=True, **kwargs)


class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm so that log lines do not tear the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


_LOG_FILE: Path | None = None  # the current run's log file, if any


def init_logger(log_file: Path | None = None, quiet: bool = False) -> logging.Logger:
    """Configure the root logger (MMRec models log through it) once per run."""
    global _LOG_FILE
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO)
    console = _TqdmHandler() if bars_enabled() and not quiet else logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    root.addHandler(console)
    _LOG_FILE = None
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(logging.Formatter(FORMAT, DATEFMT))
        root.addHandler(fh)
        _LOG_FILE = Path(log_file)
    return root


def current_log_file() -> Path | None:
    """The log file ``init_logger`` opened for this run (None before, or without one)."""
    return _LOG_FILE


def to_log_file(message: str, level: int = logging.ERROR) -> None:
    """Write one line to the run's log file only (the console got it on stderr already)."""
    root = logging.getLogger()
    record = root.makeRecord(root.name, level, __file__, 0, message, None, None)
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
