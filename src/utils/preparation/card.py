"""The dataset card (README.md in the dataset folder): statistics, command, seed, checksums.
It holds no timestamps, so an identical rebuild gives an identical card."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def render_card(name: str, stats: dict[str, object], command: str, seed: int, files: list[Path]) -> str:
    """Markdown card; `stats` is an ordered mapping of label -> value; files are hashed."""
    lines = [
        f"# Dataset `{name}`",
        "",
        "Built by `src/prepare.py` in the MMRec format (`<name>.inter`, id maps, feature files).",
        "",
        "## Statistics",
        "",
        "| statistic | value |",
        "|---|---|",
    ]
    lines += [f"| {label} | {value} |" for label, value in stats.items()]
    lines += [
        "",
        "## How it was built",
        "",
        "```",
        command,
        "```",
        "",
        f"Split seed: {seed}. Rebuilding with the same inputs, options and seed gives byte-identical files.",
        "",
        "## Files (sha256)",
        "",
        "| file | sha256 |",
        "|---|---|",
    ]
    lines += [f"| {p.name} | `{sha256_of(p)}` |" for p in files]
    return "\n".join(lines) + "\n"
