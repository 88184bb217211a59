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
from typing import Iterator

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optuna.trial import TrialState  # noqa: E402

from main import run  # noqa: E402
from pg_server import PostgresMissing, postgres_server  # noqa: E402
from utils import quick_start  # noqa: E402
from utils.configurator import Config  # noqa: E402
from utils.errors import ConfigError  # noqa: E402
from utils.results import DATA_KEY  # noqa: E402
from utils.search import Worker, decode, encode, open_study, space, summarize  # noqa: E402

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


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell by hand, no optimize()
def test_the_sampler_is_seeded_by_the_selection_seed(tmp_path: Path) -> None:
    """Two TPE studies of one config propose the same points; another worker index, others."""
    import optuna

    def proposals(name: str, index: int) -> list:
        args = argparse.Namespace(storage=f"sqlite:///{tmp_path}/{name}.db", study=name, search="tpe",
                                  prune="none", worker_index=index)
        study = open_study(Config("BPR", "ml100k", {"epochs": 2}), args, tmp_path)
        return [study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}).params["x"] for _ in range(3)]
    assert proposals("a", 0) == proposals("b", 0)
    assert proposals("c", 1) != proposals("d", 0)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell by hand, no optimize()
def test_median_pruning_waits_for_trials_and_epochs(tmp_path: Path) -> None:
    """A trial is not pruned at its first validations, nor before 5 trials have finished."""
    args = argparse.Namespace(storage=f"sqlite:///{tmp_path}/p.db", study="p", search="grid", prune="median")
    study = open_study(Config("BPR", "ml100k", {"epochs": 2}), args, tmp_path)
    for score in (0.5, 0.5, 0.5, 0.5, 0.5):
        trial = study.ask()
        for epoch in range(30):
            trial.report(score, epoch)
        study.tell(trial, score)
    late = study.ask()
    late.report(0.01, 0)                     # far below the median, but at epoch 0
    assert not late.should_prune()
    late.report(0.01, 25)                    # still below, past the warm-up: pruned
    assert late.should_prune()


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_prune_warmup_moves_the_first_epoch_that_may_be_pruned(tmp_path: Path) -> None:
    args = argparse.Namespace(storage=f"sqlite:///{tmp_path}/w.db", study="w", search="grid", prune="median",
                              prune_warmup=80)
    study = open_study(Config("BPR", "ml100k", {"epochs": 2}), args, tmp_path)
    for _ in range(5):
        trial = study.ask()
        for epoch in range(100):
            trial.report(0.5, epoch)
        study.tell(trial, 0.5)
    late = study.ask()
    late.report(0.01, 25)                    # past the default warm-up, not past 80: kept
    assert not late.should_prune()
    late.report(0.01, 85)
    assert late.should_prune()
    for argv in (["--prune_warmup", "80"], ["--prune", "median", "--prune_warmup", "-1"]):  # one line each
        with pytest.raises(ConfigError, match="prune_warmup"):
            run(["-m", "BPR", "-d", "ml100k", "--output", str(tmp_path / "o"), *argv])
    with pytest.raises(ConfigError, match="prune_warmup"):
        open_study(Config("BPR", "ml100k", {"epochs": 2}), argparse.Namespace(**{**vars(args), "prune_warmup": -1}), tmp_path)


# --- the claim, in one process with fake training --------------------------------------------
@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """One throwaway PostgreSQL server for this module's in-process tests (each uses its own study)."""
    try:
        server = postgres_server()
        url = server.__enter__()
    except PostgresMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI: {exc}")
        pytest.skip(f"PostgreSQL not installed here: {exc}")
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(params=["sqlite", "journal", "postgres"])
def storage_url(request, tmp_path: Path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path}/o.db" if request.param == "sqlite" else f"journal:{tmp_path}/o.log"


@pytest.fixture
def trained(monkeypatch) -> list:
    """Fake data and training: each trained point's reg_weight is appended to the list."""
    calls: list = []

    def train_point(cfg, data, folder, on_eval=None) -> dict:
        calls.append(cfg["reg_weight"])
        score = {"recall@20": float(cfg["reg_weight"])}
        return {"status": "ok", "error": None, "valid": score, "test": score, "seconds": 0.0}

    monkeypatch.setattr(quick_start, "train_point", train_point)
    monkeypatch.setattr(quick_start, "load_data",
                        lambda config, cache_dir=None: quick_start.Data(None, None, None, None, config[DATA_KEY]))
    return calls


def make_worker(output: Path, url: str, search: str = "grid") -> Worker:
    """A worker with its own storage connection, as in a separate process."""
    cfg = Config("BPR", "ml100k", {"reg_weight": REGS, "epochs": 1})
    cfg[DATA_KEY] = "fake-data"
    args = argparse.Namespace(storage=url, study=f"t-{output.name}", search=search, prune="none",
                              rerun=False, heartbeat=None)  # a study per test: the server is shared
    return Worker(cfg, args, output, open_study(cfg, args, output))


def test_a_point_queued_twice_is_trained_once(tmp_path: Path, storage_url: str, trained: list) -> None:
    w1, w2 = make_worker(tmp_path, storage_url), make_worker(tmp_path, storage_url)
    pid = next(iter(w1.points))
    w1.enqueue(pid)
    w2.enqueue(pid)  # two workers queue a claim for the same point at the same moment
    first, second = w1.study.get_trials()
    assert first.number < second.number and first.params == second.params == {}  # fixed, not yet set
    # Taking a trial is atomic: only one worker gets it.
    assert w2.study._storage.set_trial_state_values(second._trial_id, state=TrialState.RUNNING)
    assert not w1.study._storage.set_trial_state_values(second._trial_id, state=TrialState.RUNNING)
    w2.run_trial(second._trial_id)  # the later claim yields to the earlier one, still waiting
    assert trained == []
    assert w1.take() and trained == [REGS[0]]  # the earlier claim trains
    first, second = w1.study.get_trials()
    assert first.state == TrialState.COMPLETE and first.user_attrs["reused"] is False
    assert second.state == TrialState.FAIL and second.user_attrs["duplicate_of"] == first.number


def test_a_claim_whose_worker_died_is_taken_over(tmp_path: Path, storage_url: str, trained: list) -> None:
    w1, w2 = make_worker(tmp_path, storage_url), make_worker(tmp_path, storage_url)
    pid = list(w1.points)[1]
    w1.enqueue(pid)
    w2.enqueue(pid)
    dead, spare = w1.study.get_trials()
    assert w1.study._storage.set_trial_state_values(dead._trial_id, state=TrialState.RUNNING)
    w1.study._storage.set_trial_state_values(dead._trial_id, state=TrialState.FAIL)  # as fail_stale does
    assert w2.take() and trained == [REGS[1]]  # the earlier claim is dead: the later one trains
    # Both workers finish the grid: every other point trained once, the same summary on each.
    w1.run()
    w2.run()
    assert sorted(trained) == sorted(REGS)
    assert summarize(w1.config, w1.study)["parameters"] == summarize(w2.config, w2.study)["parameters"]
    w1.run()  # a finished study: nothing more
    assert len(trained) == len(REGS)


def test_tpe_trains_each_point_once(tmp_path: Path, storage_url: str, trained: list) -> None:
    w1, w2 = make_worker(tmp_path, storage_url, "tpe"), make_worker(tmp_path, storage_url, "tpe")
    w1.run(2)
    assert 1 <= len(trained) <= 2 and len(set(trained)) == len(trained)
    w2.run(50)  # more trials than points: it stops when every point is settled
    assert sorted(trained) == sorted(REGS)
    claims = [t for t in w1.study.get_trials() if t.user_attrs.get("role") == "claim"
              and t.state == TrialState.COMPLETE]
    assert len(claims) == len(REGS) and len({json.dumps(t.params, sort_keys=True) for t in claims}) == len(REGS)


RACER = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {src!r})
sys.path.insert(0, {tests!r})
import test_search as ts
from utils import quick_start

out, url, log = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

def train_point(cfg, data, folder, on_eval=None):
    with open(log, "a") as fh:
        fh.write(f"{{cfg['reg_weight']}}\\n")
    time.sleep(0.05)
    score = {{"recall@20": float(cfg["reg_weight"])}}
    return {{"status": "ok", "error": None, "valid": score, "test": score, "seconds": 0.05}}

quick_start.train_point = train_point
quick_start.load_data = lambda config, cache_dir=None: quick_start.Data(None, None, None, None, "fake-data")
worker = ts.make_worker(out, url)  # joined before the start, so that they all queue at once
(out / f"ready{{os.getpid()}}").touch()
while not (out / "go").exists():
    time.sleep(0.005)
worker.run()
"""


@pytest.mark.slow
def test_workers_started_together_train_each_point_once(tmp_path: Path, storage_url: str) -> None:
    """Four processes released at the same instant queue the same points: each trains once."""
    script = tmp_path / "racer.py"
    script.write_text(RACER.format(src=str(ROOT / "src"), tests=str(Path(__file__).resolve().parent)))
    log = tmp_path / "trained.txt"
    make_worker(tmp_path, storage_url)  # the study exists before the race, as run_search makes it
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), storage_url, str(log)], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready*"))) < len(procs) and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(o[-2000:] for o in outs)
    assert sorted(float(x) for x in log.read_text().split()) == sorted(REGS)
    states = [t.state for t in make_worker(tmp_path, storage_url).study.get_trials()]
    assert states.count(TrialState.COMPLETE) == len(REGS) and TrialState.WAITING not in states  # dups closed


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


def test_cpu_workers_split_the_cores(monkeypatch):
    """N CPU workers get max(1, cores // N) threads each; --threads and OMP_NUM_THREADS win."""
    import os

    from utils.utils import threads_per_worker

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [threads_per_worker(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert threads_per_worker(2, requested=3) == 3
    assert threads_per_worker(2, on_cpu=False) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_worker(2) == 1
