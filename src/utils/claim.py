"""A grid point's claim: an exclusive lock on ``<run folder>/claim`` held while one process trains
the point, so that several commands sharing one output folder train every point once.

The lock is ``flock``: the operating system drops it when its holder exits in any way (a crash,
``kill -9``), so a claim is never left stale and needs no heartbeat; a leftover ``claim`` file is
only a note (pid, host, start time) that the next claimant overwrites. On NFS, Linux maps
``flock`` to the server's byte-range locks, and a lost client's lock ends with its lease.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

CLAIM_FILE = "claim"


class PointClaim:
    """``acquire()`` takes the claim (False if another process holds it; ``wait=True`` blocks
    until it is free), ``release()`` (or leaving a ``with`` block) gives it back."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / CLAIM_FILE
        self._fh: IO[str] | None = None

    def acquire(self, wait: bool = False) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fh = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                return False
            except BaseException:
                fh.close()
                raise
            # the holder may have released (removed) the file between our open and our lock:
            # then we hold a lock on a removed file, and must lock the current one instead
            try:
                current = os.fstat(fh.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        fh.flush()
        self._fh = fh
        return True

    def holder(self) -> str:
        """Who holds the claim, from its note: 'pid 123 on host-a (since 10:42:07)'."""
        try:
            note = json.loads(self.path.read_text(encoding="utf-8"))
            since = time.strftime("%H:%M:%S", time.localtime(float(note["since"])))
            return f"pid {note['pid']} on {note['host']} (since {since})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    @property
    def held(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        if self._fh is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # removed while still locked: a waiter then locks a fresh file
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
        self._fh = None

    def __enter__(self) -> "PointClaim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
