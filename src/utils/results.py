"""The machine-readable results file: one JSON line per finished grid point.

Lines are appended with a single write, so a crash can at worst leave a torn last line; readers
skip it with one warning naming its line number, and the next append starts on a new line, so a
torn line never swallows the record after it. Concurrent workers may append to the same file.

A point's key hashes its config, ``data_fingerprint`` included: the hash of the dataset files'
content that ``quick_start.load_data`` puts in the config (``dataset.fingerprint``). Records made
before it was part of the key still parse and are listed; they just match no new key.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from utils.errors import ConfigError

DATA_KEY = "data_fingerprint"  # the config (and record) field holding the dataset's fingerprint

# Config keys that do not change a result: they are left out of a grid point's identity.
VOLATILE_KEYS = {"device", "quiet", "output_dir", "use_gpu", "gpu_id", "checkpoint_interval",
                 "save_model", "data_path", "hyper_parameters"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# Keys added after results were recorded, with the value that reproduces the old behaviour exactly:
# at that value they stay out of the key, so earlier records still match (and are not rerun).
# Keys added after records were made, at the value that reproduces the older code: left out of
# the key, so those records stay found. amp: no autocast. SIGREC: cl_max_nodes 0 = every batch
# node in the InfoNCE terms; the study's switches at their spec readings.
NEUTRAL_DEFAULTS = {"cl_max_nodes": 0, "amp": False, "cf_min_count": 1, "perturb_at": "every_step",
                    "user_semantics": "sym", "anchor_grad_scale": 1.0, "align_warmup_epochs": 0,
                    "perturb_target": "semantic"}


def point_key(config: dict) -> str:
    """A stable hash of everything in a point's config that can change its result."""
    body = {k: _jsonable(v) for k, v in config.items()
            if k not in VOLATILE_KEYS and not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file of this process beside it, renamed into place on
    success: readers never see a torn file, and concurrent writers never share a temporary."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when writing failed


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``atomic_write``: a table or summary that a reader
    (or a second writer) opens never shows half of one."""
    with atomic_write(Path(path)) as fh:
        fh.write(text.encode("utf-8"))
    return Path(path)


_TORN_REPORTED: set[tuple[str, int, int]] = set()  # (file, line number, hash): warned once per process


class ResultsStore:
    """Append-only JSON-lines file of grid-point results."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    self._report_torn(number, line)
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    def _report_torn(self, number: int, line: str) -> None:
        mark = (str(self.path), number, hash(line.rstrip("\r\n")))
        if mark not in _TORN_REPORTED:
            _TORN_REPORTED.add(mark)
            logging.getLogger().warning(
                f"{self.path}: line {number} is not a complete JSON record (a write cut short by a crash, "
                f"or a hand edit; {len(line.rstrip())} characters); it is skipped")

    def finished(self, key: str) -> dict | None:
        """The latest record for a point, if it finished (ok or failed)."""
        found = None
        for rec in self.records():
            if rec.get("key") == key and rec.get("status") in ("ok", "failed"):
                found = rec
        return found

    def select(self, **match: Any) -> list[dict]:
        return [r for r in self.records() if all(r.get(k) == v for k, v in match.items())]

    def append(self, record: dict) -> None:
        """Add one record as one line, with one write; after a torn last line (no final newline)
        it starts with a newline, so that the torn line stays alone and this record is kept."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(_jsonable(record)) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def prepare_output(output: Path) -> None:
    """Create ``output/logs`` and check that files can be written there; anything else is one
    ConfigError line (a file in the way, no permission, a read-only or impossible path)."""
    output = Path(output)
    blocker = output
    while not blocker.exists() and blocker.parent != blocker:
        blocker = blocker.parent
    if not blocker.is_dir():
        raise ConfigError(f"--output {output} cannot be created: {blocker} is a file, not a folder; "
                          f"give a folder path")
    try:
        (output / "logs").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output / "logs"):
            pass
    except OSError as exc:
        raise ConfigError(f"--output {output} cannot be written: {exc.strerror or exc}"
                          f"{f' ({exc.filename})' if exc.filename else ''}; give a folder you can write to") from None


def best_record(records: Iterable[dict], metric: str) -> dict | None:
    """The ok record with the highest validation ``metric`` (the first one on ties)."""
    best = None
    for rec in records:
        if rec.get("status") != "ok":
            continue
        if best is None or rec["valid"].get(metric, -1) > best["valid"].get(metric, -1):
            best = rec
    return best
