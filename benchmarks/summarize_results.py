"""Markdown summary of a results file: per model and dataset, the point chosen on validation and
its test metrics, plus how many grid points finished (runs at the selection seed only).

    python benchmarks/summarize_results.py outputs/results.jsonl [--all]
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from utils.results import ResultsStore, best_record  # noqa: E402

COLUMNS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--all", action="store_true", help="one row per finished point, not only the best")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--seed", type=int, default=999, help="the selection seed (default 999); other seeds' runs are left out")
    args = p.parse_args()
    groups: dict[tuple, list] = defaultdict(list)
    for rec in ResultsStore(args.results).records():
        if (args.model is None or rec.get("model") == args.model) and rec.get("seed") == args.seed:
            groups[(rec["model"], rec["dataset"])].append(rec)
    print("| model | dataset | points | parameters | valid R@20 | test R@10 | test R@20 | test N@10 | test N@20 | s/epoch | epochs (best) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (model, dataset), recs in groups.items():
        rows = [r for r in recs if r["status"] == "ok"] if args.all else [best_record(recs, "recall@20")]
        for rec in rows:
            if rec is None:
                continue
            params = ", ".join(f"{k}={v}" for k, v in rec["parameters"].items() if k != "seed")
            cells = " | ".join(f"{rec['test'][c]:.4f}" for c in COLUMNS)
            print(f"| {model} | {dataset} | {len(recs)} | {params} | {rec['valid']['recall@20']:.4f} | {cells} | "
                  f"{rec.get('seconds_per_epoch') or 0:.2f} | {rec['epochs_run']} ({rec['best_epoch']}) |")


if __name__ == "__main__":
    main()
