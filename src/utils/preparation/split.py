"""MMRec's per-user train/valid/test split (random with a seed, or temporal)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from utils.errors import DataError

TRAIN, VALID, TEST = 0, 1, 2
SPLITS = ("random", "temporal")

Row = tuple[int, int, float, int]  # userID, itemID, rating, timestamp


def split_counts(n: int) -> tuple[int, int, int]:
    """(train, valid, test) sizes for a user with n interactions, by MMRec's rule.

    n < 10: n-2 / 1 / 1. Otherwise valid+test = floor(0.2 n), valid = floor(half of it),
    test = the rest. Users with fewer than 3 interactions (only when --k < 3) keep all in train.
    """
    if n < 3:
        return n, 0, 0
    if n < 10:
        return n - 2, 1, 1
    held = n // 5
    valid = held // 2
    return n - held, valid, held - valid


def split_interactions(rows: list[Row], method: str = "random", seed: int = 2023) -> list[tuple[Row, int]]:
    """Label every row 0/1/2; output is ordered by userID, then by position in the user's order.

    random: each user's rows (first sorted by itemID) are permuted by one seeded generator that
    walks the users in userID order; the last rows of the permutation go to valid, then test.
    temporal: each user's rows sorted by (timestamp, itemID); the latest go to test.
    """
    if method not in SPLITS:
        raise DataError(f"unknown split {method!r}; use one of {', '.join(SPLITS)}")
    per_user: dict[int, list[Row]] = defaultdict(list)
    for row in rows:
        per_user[row[0]].append(row)
    rng = np.random.default_rng(seed)
    out: list[tuple[Row, int]] = []
    for user in sorted(per_user):
        if method == "random":
            ordered = sorted(per_user[user], key=lambda r: r[1])
            ordered = [ordered[i] for i in rng.permutation(len(ordered))]
        else:
            ordered = sorted(per_user[user], key=lambda r: (r[3], r[1]))
        n_train, n_valid, _ = split_counts(len(ordered))
        for pos, row in enumerate(ordered):
            label = TRAIN if pos < n_train else VALID if pos < n_train + n_valid else TEST
            out.append((row, label))
    return out


def _fmt_rating(value: float) -> str:
    return repr(float(value))


def write_inter(labelled: list[tuple[Row, int]], path: Path) -> None:
    """Write the tab-separated .inter file with header userID itemID rating timestamp x_label."""
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    lines += [f"{u}\t{i}\t{_fmt_rating(r)}\t{t}\t{label}" for (u, i, r, t), label in labelled]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
