"""Duplicate removal, the iterative k-core filter and the 0-based id maps."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from utils.errors import DataError
from utils.preparation.readers import Interaction


def drop_duplicates(rows: list[Interaction]) -> tuple[list[Interaction], int]:
    """Keep the first row of every (user, item) pair; return (rows, number dropped)."""
    seen: set[tuple[str, str]] = set()
    kept: list[Interaction] = []
    for row in rows:
        key = (row.user, row.item)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)


def k_core(rows: list[Interaction], k: int) -> tuple[list[Interaction], int]:
    """Drop users and items with fewer than k interactions, repeating until nothing changes.

    Returns (kept rows in input order, number of rounds run).
    """
    if k < 1:
        raise DataError(f"--k must be at least 1, got {k}")
    rounds = 0
    while True:
        rounds += 1
        users = Counter(r.user for r in rows)
        items = Counter(r.item for r in rows)
        kept = [r for r in rows if users[r.user] >= k and items[r.item] >= k]
        if len(kept) == len(rows):
            return kept, rounds
        rows = kept


@dataclass
class IdMaps:
    """Raw id -> 0-based id, in sorted raw-id order."""

    users: dict[str, int]
    items: dict[str, int]


def build_id_maps(rows: list[Interaction]) -> IdMaps:
    """Number users by sorted raw user id and items by sorted raw item id (ASIN), from 0."""
    users = {u: i for i, u in enumerate(sorted({r.user for r in rows}))}
    items = {a: i for i, a in enumerate(sorted({r.item for r in rows}))}
    return IdMaps(users, items)


def remap(rows: list[Interaction], maps: IdMaps) -> list[tuple[int, int, float, int]]:
    """Rows as (userID, itemID, rating, timestamp)."""
    return [(maps.users[r.user], maps.items[r.item], r.rating, r.timestamp) for r in rows]


def _check_id(raw: str, what: str) -> None:
    # A tab or newline inside an id would corrupt the tab-separated map files.
    if "\t" in raw or "\n" in raw or "\r" in raw:
        raise DataError(f"{what} id {raw!r} contains a tab or newline; cannot write a TSV map")


def write_id_maps(maps: IdMaps, folder: Path) -> list[Path]:
    """Write u_id_mapping.csv (user_id, userID) and i_id_mapping.csv (asin, itemID), tab-separated."""
    out = []
    for name, header, mapping, what in (
        ("u_id_mapping.csv", "user_id\tuserID", maps.users, "user"),
        ("i_id_mapping.csv", "asin\titemID", maps.items, "item"),
    ):
        lines = [header]
        for raw, idx in mapping.items():
            _check_id(raw, what)
            lines.append(f"{raw}\t{idx}")
        path = folder / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
        out.append(path)
    return out
