"""benchmarks/summarize_results.py on results files holding failed points and old records whose
metric dicts are empty: they are never chosen and show as marked rows instead of crashing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, load_benchmark

SCRIPT = ROOT / "benchmarks" / "summarize_results.py"
METRICS = {"recall@10": 0.01, "recall@20": 0.02, "ndcg@10": 0.03, "ndcg@20": 0.04}


def record(status: str = "ok", metrics: dict | None = None, **params) -> dict:
    """A record shaped like quick_start's (only the fields the summary reads, plus a few)."""
    metrics = METRICS if metrics is None else metrics
    return {"status": status, "error": None if status == "ok" else "loss is nan", "seconds": 1.0,
            "best_epoch": 3, "epochs_run": 8, "valid": dict(metrics), "test": dict(metrics),
            "seconds_per_epoch": 0.25, "model": "BPR", "dataset": "ml100k", "key": f"k{len(params)}",
            "parameters": {"seed": 999, **params}, "seed": 999, "valid_metric": "recall@20"}


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def summarize():
    return load_benchmark("summarize_results").main


def table(summarize, capsys, path: Path, *args: str) -> list[str]:
    summarize([str(path), *args])
    return capsys.readouterr().out.splitlines()[2:]  # the rows, without the header lines


def test_cli_with_a_failed_point_with_empty_metrics(tmp_path: Path) -> None:
    path = write(tmp_path / "results.jsonl",
                 [record(reg_weight=2.0), record("failed", {}, reg_weight=1e-5)])
    for extra, n_rows in (([], 1), (["--all"], 2)):
        done = subprocess.run([sys.executable, str(SCRIPT), str(path), *extra],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        rows = done.stdout.splitlines()[2:]
        assert len(rows) == n_rows
        assert rows[0] == ("| BPR | ml100k | 2 | reg_weight=2.0 | 0.0200 | 0.0100 | 0.0200 | 0.0300 | 0.0400"
                           " | 0.25 | 8 (3) |")
    assert "reg_weight=1e-05 | **failed** |" in rows[1]


def test_ok_record_with_empty_metrics_is_never_chosen(summarize, capsys, tmp_path: Path) -> None:
    # an old ok record without metrics, listed first, used to crash both modes
    path = write(tmp_path / "results.jsonl", [record(metrics={}, reg_weight=0.5), record(reg_weight=2.0)])
    assert table(summarize, capsys, path) == [
        "| BPR | ml100k | 2 | reg_weight=2.0 | 0.0200 | 0.0100 | 0.0200 | 0.0300 | 0.0400 | 0.25 | 8 (3) |"]
    rows = table(summarize, capsys, path, "--all")
    assert rows[0].startswith("| BPR | ml100k | 2 | reg_weight=0.5 | **no metrics** | - |")
    assert rows[1].endswith("| 0.25 | 8 (3) |")


def test_group_without_a_usable_point_gets_a_marker_row(summarize, capsys, tmp_path: Path) -> None:
    failed = {k: v for k, v in record("failed", reg_weight=1.0).items()
              if k not in ("valid", "test", "best_epoch", "epochs_run")}  # as quick_start writes a failure
    path = write(tmp_path / "results.jsonl", [failed, record(metrics={}, reg_weight=0.5)])
    (only,) = table(summarize, capsys, path)
    assert only.startswith("| BPR | ml100k | 2 | - | **no finished point** |")
    assert all("**" in r for r in table(summarize, capsys, path, "--all"))
