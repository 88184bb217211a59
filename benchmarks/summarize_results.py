"""Markdown summary of a results file: per model and dataset, the point chosen on validation and
its test metrics, plus how many grid points finished (runs at the selection seed only). Failed
points and old records with empty metrics are never chosen; they show as marked rows.

    python benchmarks/summarize_results.py outputs/results.jsonl [--all]
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from utils.results import ResultsStore, best_record  # noqa: E402

COLUMNS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]
SELECT = "recall@20"  # the validation metric a point is chosen on
DASH = "-"


def usable(rec: dict) -> bool:
    """An ok record whose valid and test metrics hold every reported column (old records may
    carry empty ``valid``/``test`` dicts)."""
    if rec.get("status") != "ok":
        return False
    valid, test = rec.get("valid"), rec.get("test")
    return (isinstance(valid, dict) and _number(valid.get(SELECT))
            and isinstance(test, dict) and all(_number(test.get(c)) for c in COLUMNS))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _params(rec: dict) -> str:
    params = rec.get("parameters")
    if not isinstance(params, dict):
        return DASH
    return ", ".join(f"{k}={v}" for k, v in params.items() if k != "seed") or DASH


def row(model: str, dataset: str, points: int, rec: dict) -> str:
    """One table line: a usable record's metrics, or a marker (``failed``, ``no metrics``)."""
    if not usable(rec):
        status = rec.get("status") or "no status"
        marker = f"**{status}**" if status != "ok" else "**no metrics**"
        cells = " | ".join([marker] + [DASH] * (len(COLUMNS) + 2))
        return f"| {model} | {dataset} | {points} | {_params(rec)} | {cells} |"
    cells = " | ".join(f"{rec['test'][c]:.4f}" for c in COLUMNS)
    spe = rec.get("seconds_per_epoch")
    spe = f"{spe:.2f}" if _number(spe) else DASH
    return (f"| {model} | {dataset} | {points} | {_params(rec)} | {rec['valid'][SELECT]:.4f} | {cells} | "
            f"{spe} | {rec.get('epochs_run', DASH)} ({rec.get('best_epoch', DASH)}) |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--all", action="store_true",
                   help="one row per point (failed ones marked), not only the best")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--seed", type=int, default=999, help="the selection seed (default 999); other seeds' runs are left out")
    args = p.parse_args(argv)
    groups: dict[tuple, list] = defaultdict(list)
    for rec in ResultsStore(args.results).records():
        if (args.model is None or rec.get("model") == args.model) and rec.get("seed") == args.seed:
            groups[(rec.get("model", "?"), rec.get("dataset", "?"))].append(rec)
    print("| model | dataset | points | parameters | valid R@20 | test R@10 | test R@20 | test N@10 | test N@20 | s/epoch | epochs (best) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (model, dataset), recs in groups.items():
        if args.all:
            rows = recs
        else:
            # records without metrics are never chosen; a group with no usable one gets a marker row
            best = best_record([r for r in recs if usable(r)], SELECT)
            rows = [best] if best is not None else [{"status": "no finished point"}]
        for rec in rows:
            print(row(model, dataset, len(recs), rec))


if __name__ == "__main__":
    main()
