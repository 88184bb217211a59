"""Readers for the raw inputs: Amazon 2014 reviews / ratings / meta / binary image features, and
the generic interaction and item-text CSVs. Every problem becomes a one-line DataError."""

from __future__ import annotations

import ast
import contextlib
import csv
import gzip
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from utils.errors import DataError

IMAGE_FEATURE_DIM = 4096  # McAuley's CNN vectors
ASIN_BYTES = 10

# The meta keys the text sentence is built from.
META_KEYS = ("title", "brand", "categories", "description")

# Cheap look-up of a meta line's ASIN, so lines of unwanted items are never parsed.
_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]*)['"]""")

# Accepted header names (lower-cased) of the generic CSVs.
USER_NAMES = ("user", "user_id", "userid", "reviewerid")
ITEM_NAMES = ("item", "item_id", "itemid", "asin")
RATING_NAMES = ("rating", "overall", "score")
TIME_NAMES = ("timestamp", "time", "unixreviewtime", "ts")
TEXT_NAMES = ("text", "description", "sentence")


class Interaction(NamedTuple):
    """One raw user-item event; ids are still the raw strings."""

    user: str
    item: str
    rating: float
    timestamp: int


@dataclass
class InteractionTable:
    """Interactions read from one file, with what was dropped on the way."""

    rows: list[Interaction] = field(default_factory=list)
    has_rating: bool = True
    has_timestamp: bool = True
    bad_lines: int = 0  # malformed lines skipped (only with skip_bad_lines)
    missing_rows: int = 0  # rows with an empty field, dropped as MMRec did


def check_readable(path: Path) -> None:
    """Raise a DataError unless path is an existing, readable regular file."""
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    if not path.is_file():
        raise DataError(f"input path is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise DataError(f"input file is not readable: {path}")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open_text(path: Path) -> io.TextIOBase:
    """Open a plain or gzip text file (detected by its magic bytes) as UTF-8."""
    check_readable(path)
    try:
        if _is_gzip(path):
            return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
        return open(path, "r", encoding="utf-8", newline="")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line) and turn decode/gzip failures into DataErrors."""
    lineno = 0
    with _open_text(path) as fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                yield lineno, line
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read after line {lineno}: {exc}") from None


def _bad_line(path: Path, lineno: int, why: str, skip: bool) -> None:
    """Raise for a malformed line unless skipping is allowed (the caller then counts it)."""
    if not skip:
        raise DataError(
            f"{path}:{lineno}: {why} (use --skip-bad-lines to skip and count such lines)"
        )


def read_reviews(path: Path, skip_bad_lines: bool = False) -> InteractionTable:
    """Read a reviews_*.json(.gz) file: one strict JSON object per line."""
    table = InteractionTable()
    for lineno, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            _bad_line(path, lineno, f"malformed JSON ({exc.msg})", skip_bad_lines)
            table.bad_lines += 1
            continue
        if not isinstance(obj, dict):
            _bad_line(path, lineno, "a review line must be a JSON object", skip_bad_lines)
            table.bad_lines += 1
            continue
        missing = [k for k in ("reviewerID", "asin", "overall", "unixReviewTime") if k not in obj]
        if missing:
            _bad_line(path, lineno, f"review has no {missing[0]!r} key", skip_bad_lines)
            table.bad_lines += 1
            continue
        user, item = obj["reviewerID"], obj["asin"]
        if user in (None, "") or item in (None, "") or obj["overall"] is None or obj["unixReviewTime"] is None:
            table.missing_rows += 1
            continue
        try:
            rating, ts = float(obj["overall"]), int(obj["unixReviewTime"])
        except (TypeError, ValueError):
            _bad_line(path, lineno, "'overall' / 'unixReviewTime' are not numbers", skip_bad_lines)
            table.bad_lines += 1
            continue
        table.rows.append(Interaction(str(user), str(item), rating, ts))
    return table


def read_ratings_csv(path: Path, skip_bad_lines: bool = False) -> InteractionTable:
    """Read a ratings_*.csv file: no header, columns user,item,rating,timestamp."""
    table = InteractionTable()
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        try:
            for fields in reader:
                lineno = reader.line_num
                if not fields or all(not f.strip() for f in fields):
                    continue
                if len(fields) != 4:
                    _bad_line(path, lineno, f"expected 4 columns (user,item,rating,timestamp), got {len(fields)}", skip_bad_lines)
                    table.bad_lines += 1
                    continue
                user, item, rating, ts = (f.strip() for f in fields)
                if not (user and item and rating and ts):
                    table.missing_rows += 1
                    continue
                try:
                    row = Interaction(user, item, float(rating), int(float(ts)))
                except ValueError:
                    _bad_line(path, lineno, "rating and timestamp must be numbers", skip_bad_lines)
                    table.bad_lines += 1
                    continue
                table.rows.append(row)
        except (csv.Error, OSError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read after line {reader.line_num}: {exc}") from None
    return table


def _parse_meta_line(line: str) -> object:
    """Parse strict JSON, else a Python literal (the 2014 files); never eval."""
    try:
        return json.loads(line)
    except ValueError:
        pass
    try:
        return ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None


def read_meta(
    path: Path, wanted: set[str] | None = None, skip_bad_lines: bool = False
) -> tuple[dict[str, dict], int]:
    """Read meta_*.json(.gz) and return ({asin: {title, brand, categories, description}}, bad lines).

    Lines whose ASIN is visibly not in `wanted` are skipped without parsing (the files are large).
    """
    meta: dict[str, dict] = {}
    bad = 0
    for lineno, line in _numbered_lines(path):
        if not line.strip():
            continue
        if wanted is not None:
            match = _ASIN_RE.search(line)
            if match is not None and match.group(1) not in wanted:
                continue
        obj = _parse_meta_line(line)
        if not isinstance(obj, dict):
            _bad_line(path, lineno, "malformed meta line (neither JSON nor a Python dict literal)", skip_bad_lines)
            bad += 1
            continue
        asin = obj.get("asin")
        if not isinstance(asin, str) or not asin:
            _bad_line(path, lineno, "meta line has no 'asin'", skip_bad_lines)
            bad += 1
            continue
        if (wanted is None or asin in wanted) and asin not in meta:
            meta[asin] = {k: obj[k] for k in META_KEYS if k in obj}
    return meta, bad


def read_image_features(
    path: Path, item_index: dict[str, int], dim: int = IMAGE_FEATURE_DIM
) -> tuple[np.ndarray, np.ndarray, int]:
    """Stream McAuley's binary file (10 ASCII bytes of ASIN + dim little-endian float32 per record).

    Returns (features [n_items, dim] float32 with zero rows for items without a record,
    found mask [n_items] bool, number of records in the file). The first record of an ASIN wins.
    """
    check_readable(path)
    record = ASIN_BYTES + 4 * dim
    size = path.stat().st_size
    if size % record != 0:
        raise DataError(
            f"{path}: size {size} is not a multiple of the {record}-byte record "
            f"(10-byte ASIN + {dim} float32); not a McAuley image-feature file?"
        )
    feats = np.zeros((len(item_index), dim), dtype=np.float32)
    found = np.zeros(len(item_index), dtype=bool)
    n_records = 0
    try:
        with open(path, "rb", buffering=1 << 20) as fh:
            while True:
                head = fh.read(ASIN_BYTES)
                if not head:
                    break
                body = fh.read(4 * dim)
                if len(head) != ASIN_BYTES or len(body) != 4 * dim:
                    raise DataError(f"{path}: truncated record {n_records + 1}")
                n_records += 1
                try:
                    asin = head.decode("ascii").strip()
                except UnicodeDecodeError:
                    raise DataError(f"{path}: record {n_records} has a non-ASCII ASIN") from None
                idx = item_index.get(asin)
                if idx is not None and not found[idx]:
                    feats[idx] = np.frombuffer(body, dtype="<f4")
                    found[idx] = True
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    return feats, found, n_records


def _header_index(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def _sniff_delimiter(first_line: str) -> str:
    return "\t" if "\t" in first_line and "," not in first_line else ","


@contextlib.contextmanager
def _csv_table(path: Path) -> Iterator[tuple[list[str], Any]]:
    """Open a delimited text file with a header line: yields (header, csv reader); read errors
    and an empty file become one-line DataErrors."""
    with _open_text(path) as fh:
        first = fh.readline()
        fh.seek(0)
        reader = csv.reader(fh, delimiter=_sniff_delimiter(first))
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: file is empty")
            yield header, reader
        except (csv.Error, OSError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read after line {reader.line_num}: {exc}") from None


def read_interactions_csv(path: Path, skip_bad_lines: bool = False) -> InteractionTable:
    """Read a generic interactions CSV whose header names user, item and optionally rating, timestamp."""
    with _csv_table(path) as (header, reader):
        cols = {
            "user": _header_index(header, USER_NAMES),
            "item": _header_index(header, ITEM_NAMES),
            "rating": _header_index(header, RATING_NAMES),
            "timestamp": _header_index(header, TIME_NAMES),
        }
        if cols["user"] is None or cols["item"] is None:
            raise DataError(
                f"{path}: the first line must be a header naming the user and item columns "
                f"(e.g. user,item,rating,timestamp); got {','.join(header)!r}"
            )
        table = InteractionTable(
            has_rating=cols["rating"] is not None, has_timestamp=cols["timestamp"] is not None
        )
        width = max(c for c in cols.values() if c is not None) + 1
        for fields in reader:
            lineno = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) < width:
                _bad_line(path, lineno, f"expected at least {width} columns, got {len(fields)}", skip_bad_lines)
                table.bad_lines += 1
                continue
            user, item = fields[cols["user"]].strip(), fields[cols["item"]].strip()
            rating_s = fields[cols["rating"]].strip() if table.has_rating else "1"
            ts_s = fields[cols["timestamp"]].strip() if table.has_timestamp else "0"
            if not (user and item and rating_s and ts_s):
                table.missing_rows += 1
                continue
            try:
                table.rows.append(Interaction(user, item, float(rating_s), int(float(ts_s))))
            except ValueError:
                _bad_line(path, lineno, "rating and timestamp must be numbers", skip_bad_lines)
                table.bad_lines += 1
    return table


def read_item_text_csv(path: Path, skip_bad_lines: bool = False) -> tuple[dict[str, str], int]:
    """Read a generic item-text CSV with a header naming the item and text columns."""
    texts: dict[str, str] = {}
    bad = 0
    with _csv_table(path) as (header, reader):
        i_col, t_col = _header_index(header, ITEM_NAMES), _header_index(header, TEXT_NAMES)
        if i_col is None or t_col is None:
            raise DataError(
                f"{path}: the first line must be a header naming the item and text columns "
                f"(e.g. item,text); got {','.join(header)!r}"
            )
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) <= max(i_col, t_col):
                _bad_line(path, reader.line_num, f"expected at least {max(i_col, t_col) + 1} columns", skip_bad_lines)
                bad += 1
                continue
            item = fields[i_col].strip()
            if item and item not in texts:
                texts[item] = fields[t_col].strip()
    return texts, bad
