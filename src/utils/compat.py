"""Compatibility shims for MMRec model files on current libraries, installed by ``import utils``.

``scipy.sparse.dok_matrix._update(dict)``: most MMRec models fill their user-item adjacency with
``A._update({(row, col): value, ...})``. scipy 1.13 removed that private method; without it they
stop at AttributeError. The shim restores it with the old behaviour (add or replace the given
entries, no checking), and only where scipy lacks it.
"""
from __future__ import annotations

from typing import Any, Mapping

import scipy.sparse as sp


def _dok_update(self: Any, data: Mapping[tuple[int, int], Any]) -> None:
    """Add or replace the entries of ``data`` ((row, col) -> value), unchecked, as scipy < 1.13."""
    self._dict.update(data)  # scipy >= 1.13 keeps a dok matrix's entries in self._dict


def install_dok_update() -> bool:
    """Give ``scipy.sparse.dok_matrix`` an ``_update`` method when it has none; True if added."""
    if hasattr(sp.dok_matrix, "_update"):
        return False
    sp.dok_matrix._update = _dok_update
    return True
