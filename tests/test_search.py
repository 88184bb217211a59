"""The Optuna search: several workers on one study train each grid point exactly once, a killed
worker's point is recovered (and resumed), and the same holds on a real PostgreSQL server."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optuna.trial import TrialState  # noqa: E402

from pg_server import PostgresMissing, postgres_server  # noqa: E402
from utils.configurator import Config  # noqa: E402
from utils.errors import ConfigError  # noqa: E402
from utils.search import decode, encode, open_study, space  # noqa: E402

REGS = [0.1, 0.01, 0.001]
BASE = ["-m", "BPR", "-d", "ml100k", "--device", "cpu", "--quiet"]


def command(output: Path, storage: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "src" / "main.py"), *BASE, "--output", str(output),
            "--storage", storage, "--study", "t", *extra]


def env(heartbeat: int = 60) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SEARCH_HEARTBEAT_S": str(heartbeat)}


def trials(storage: str) -> list:
    return optuna.load_study(study_name="t", storage=storage).get_trials(deepcopy=False)


def results(output: Path) -> list[dict]:
    path = output / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def best_line(text: str) -> str:
    """The Parameters line under the BEST banner."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if "BEST" in line and "████" in line)
    return next(line.split("INFO", 1)[1] for line in lines[start:] if "Parameters:" in line)


def assert_each_point_once(storage: str, output: Path, n_points: int) -> None:
    settled = [t for t in trials(storage)
               if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    assert len(settled) == n_points
    assert len({json.dumps(t.params, sort_keys=True) for t in settled}) == n_points
    trained = [t for t in settled if not t.user_attrs["reused"]]
    assert len(trained) == n_points  # nothing was reused from results.jsonl in a fresh folder
    recs = results(output)
    assert len(recs) == n_points and len({r["key"] for r in recs}) == n_points
    assert all(r["status"] == "ok" for r in recs)


def best_lines(text: str) -> list[str]:
    """Every BEST banner's Parameters line (one per worker when their output is merged)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if "BEST" in line and "████" in line]
    return [best_line("\n".join(lines[i:])) for i in starts]


def two_workers(output: Path, storage: str) -> None:
    """Two concurrent worker commands on one study (like two machines), then the checks."""
    cmd = command(output, storage, "--epochs", "2", "--reg_weight", json.dumps(REGS))
    procs = [subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert_each_point_once(storage, output, len(REGS))
    assert best_line(outs[0]) == best_line(outs[1])  # every worker ends with the same summary
    # A rerun of the finished study trains nothing and prints the same best.
    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "trial" not in again.stdout.replace("trials", "")
    assert best_line(again.stdout) == best_line(outs[0])
    assert len(results(output)) == len(REGS)


def test_grid_values_round_trip_through_optuna() -> None:
    cfg = Config("BPR", "ml100k", {"reg_weight": [0.1, 0.01]})
    choices = space(cfg)
    assert choices["reg_weight"] == [0.1, 0.01] and choices["seed"] == [999]
    assert encode([1, 2]) == "[1, 2]" and encode(0.5) == 0.5
    assert decode(cfg, {"seed": 999, "reg_weight": 0.01}) == {"seed": 999, "reg_weight": 0.01}


def test_joining_a_study_with_another_config_is_refused(tmp_path: Path) -> None:
    args = argparse.Namespace(storage=f"sqlite:///{tmp_path}/o.db", study="t", search="grid", prune="none")
    open_study(Config("BPR", "ml100k", {"epochs": 2}), args, tmp_path)
    open_study(Config("BPR", "ml100k", {"epochs": 2, "device": "cuda:3"}), args, tmp_path)  # device is free
    with pytest.raises(ConfigError, match="different config"):
        open_study(Config("BPR", "ml100k", {"epochs": 3}), args, tmp_path)


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study(tmp_path: Path) -> None:
    two_workers(tmp_path / "out", f"sqlite:///{tmp_path}/optuna.db")


@pytest.mark.slow
def test_killed_worker_is_recovered_and_resumed(tmp_path: Path) -> None:
    out, storage = tmp_path / "out", f"sqlite:///{tmp_path}/optuna.db"
    cmd = command(out, storage, "--epochs", "4", "--checkpoint_interval", "1", "--reg_weight", "[0.1,0.01]")
    proc = subprocess.Popen(cmd, env=env(heartbeat=1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim, deadline = None, time.time() + 90
    while victim is None and time.time() < deadline:  # kill once a trial runs and has a checkpoint
        time.sleep(0.2)
        try:
            running = [t for t in trials(storage) if t.state == TrialState.RUNNING]
        except KeyError:  # the study is not created yet
            continue
        if running and list(out.glob("runs/*/*/resume.pt")):
            victim = running[0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert victim is not None, "no trial reached its first checkpoint in time"
    assert [t.state for t in trials(storage) if t.number == victim.number] == [TrialState.RUNNING]
    rerun = subprocess.run(cmd, env=env(heartbeat=1), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = trials(storage)
    assert next(t for t in after if t.number == victim.number).state == TrialState.FAIL
    same = [t for t in after if t.params == victim.params and t.state == TrialState.COMPLETE
            and "duplicate_of" not in t.user_attrs]
    assert len(same) == 1  # the killed point completed exactly once
    assert "resumed from" in rerun.stdout  # and it continued from its checkpoint
    recs = results(out)
    assert len(recs) == 2 and len({r["key"] for r in recs}) == 2
    assert all(r["epochs_run"] == 4 for r in recs)


@pytest.mark.slow
def test_two_workers_share_a_postgres_study(tmp_path: Path) -> None:
    try:
        server = postgres_server()
        url = server.__enter__()
    except PostgresMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI: {exc}")
        pytest.skip(f"PostgreSQL not installed here: {exc}")
    try:  # one command with --workers 2 (spawned processes) on the server
        out = tmp_path / "out"
        cmd = command(out, url, "--workers", "2", "--epochs", "2", "--reg_weight", json.dumps(REGS))
        done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert_each_point_once(url, out, len(REGS))
        lines = best_lines(done.stdout)
        assert len(lines) == 3 and len(set(lines)) == 1  # two workers and the parent agree
    finally:
        server.__exit__(None, None, None)
