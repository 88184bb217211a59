"""Counting host-device synchronisations of a piece of code, on any device.

On CUDA, a training step that reads a value back to Python (``.item()``, ``float(t)``, ``if t:``)
or runs an op whose output size depends on the data (``torch.unique``, ``nonzero``) waits for the
GPU to drain its queue. ``count_host_syncs`` counts the calls that force such a wait: on CUDA with
``torch.cuda.set_sync_debug_mode`` (torch's own detector), and on every device by wrapping the
Python entry points that sync, so a CPU-only test can pin a step's count.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from collections import Counter
from typing import Iterator

import torch

# Tensor methods that hand a value to Python (a device-to-host copy and a wait on CUDA).
_READBACK_METHODS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")
# Ops whose output size is data-dependent: the host must learn the size before going on.
_SIZE_SYNC_FUNCTIONS = ("unique", "nonzero", "masked_select", "unique_consecutive", "argwhere")


class SyncCounter(Counter):
    """Calls per entry point; ``total`` is their sum, ``cuda_reported`` torch's own count on CUDA,
    ``where`` the calls per (entry point, first caller outside torch as file:line)."""

    cuda_reported: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.where: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.values())


def _caller() -> str:
    """file:line of the innermost frame that is not torch's own code or this module."""
    frame = sys._getframe(2)
    while frame is not None and ("/torch/" in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return "?" if frame is None else f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}"


@contextlib.contextmanager
def count_host_syncs() -> Iterator[SyncCounter]:
    """Count, inside the block, every call that makes the host wait for the device's results.

    Nested calls count once (``float(t)`` inside ``t.item()``): only the outermost entry point."""
    counts = SyncCounter()
    depth = [0]
    saved: list[tuple[object, str, object]] = []

    def wrap(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return

        def counted(*args, **kwargs):
            if depth[0] == 0:
                counts[label] += 1
                counts.where[(label, _caller())] += 1
            depth[0] += 1
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1

        saved.append((owner, name, original))
        setattr(owner, name, counted)

    for name in _READBACK_METHODS:
        wrap(torch.Tensor, name, name)
    for name in _SIZE_SYNC_FUNCTIONS:
        wrap(torch, name, name)
        wrap(torch.Tensor, name, name)
    cuda = torch.cuda.is_available()
    mode = torch.cuda.get_sync_debug_mode() if cuda else 0
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            yield counts
        counts.cuda_reported = sum("synchroniz" in str(w.message) for w in caught)
        for w in caught:  # everything else is passed on
            if "synchroniz" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(mode)
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)
