"""One output folder, many runs: each point trained once, each record written once, a torn line
never swallows the next record; the log tells the whole story (errors, SIGTERM, the outputs)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT
from utils import quick_start
from utils.claim import PointClaim
from utils.configurator import Config
from utils.results import ResultsStore, point_key

MAIN = str(ROOT / "src" / "main.py")


# --- claims -------------------------------------------------------------------------------
def test_a_claim_is_exclusive_and_released(tmp_path):
    first, second = PointClaim(tmp_path / "run"), PointClaim(tmp_path / "run")
    assert first.acquire()
    assert not second.acquire()                        # held: a second claimant is refused
    assert second.holder().startswith(f"pid {os.getpid()} on ")
    first.release()
    assert not (tmp_path / "run" / "claim").exists()   # released: the note is gone
    assert second.acquire()
    second.release()


def test_a_claim_left_by_a_dead_process_is_free(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "claim").write_text('{"pid": 999999, "host": "gone", "since": 0}')  # no lock behind it
    claim = PointClaim(folder)
    assert claim.acquire()
    claim.release()


def test_a_killed_holder_frees_its_claim(tmp_path):
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from utils.claim import PointClaim; "
            "claim = PointClaim(sys.argv[2]); claim.acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT / "src"), str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert not PointClaim(tmp_path).acquire()
        proc.kill()
        proc.wait(timeout=30)
        claim = PointClaim(tmp_path)
        assert claim.acquire()                           # the kernel dropped the dead holder's lock
        claim.release()
    finally:
        proc.kill()


def test_a_claimed_point_is_passed_over_then_reused(tmp_path, monkeypatch, caplog):
    """The grid goes on past a point another run is training, waits for it at the end, and
    reuses the record that run wrote: the point is trained once."""
    cfg = Config("BPR", "ml100k", {"reg_weight": [0.1, 0.01, 0.001]})
    cfg["device"], cfg["quiet"] = "cpu", True
    data = quick_start.Data(None, None, None, None, "fake-data")
    points = quick_start.grid_points(cfg)
    trained = []

    def fake_train(point_cfg, data, folder, on_eval=None):
        trained.append(point_cfg["reg_weight"])
        return {"status": "ok", "error": None, "valid": {"recall@20": point_cfg["reg_weight"]}, "test": {}}

    monkeypatch.setattr(quick_start, "train_point", fake_train)
    first = cfg.point(points[0])
    first[quick_start.DATA_KEY] = "fake-data"
    key = point_key(first.final_config_dict)
    other = PointClaim(quick_start.run_dir(tmp_path, first, key))
    assert other.acquire()                                # "another run" trains point 1
    caplog.set_level(logging.INFO)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(best=quick_start.run_grid(
        cfg, quick_start.RunOptions(output_dir=tmp_path), data)))
    thread.start()
    deadline = time.time() + 60
    while "=========waiting for" not in caplog.text and time.time() < deadline:
        time.sleep(0.05)
    assert trained == [0.01, 0.001]                      # the others went first
    ResultsStore(tmp_path / "results.jsonl").append(
        {"key": key, "status": "ok", "valid": {"recall@20": 0.5}, "test": {}, "parameters": points[0],
         "finished_at": time.time()})
    other.release()                                       # the other run is done
    thread.join(timeout=60)
    assert trained == [0.01, 0.001]                      # point 1 was not trained again
    assert result["best"]["key"] == key                   # ... its record was reused
    assert "claimed by pid" in caplog.text and "finished by another run meanwhile" in caplog.text
    keys = [r["key"] for r in ResultsStore(tmp_path / "results.jsonl").records()]
    assert len(keys) == len(set(keys)) == 3


@pytest.mark.slow
def test_two_identical_commands_on_one_output_train_each_point_once(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, MAIN, "-m", "BPR", "-d", "ml100k", "--device", "cpu", "--quiet", "--output", str(out),
           "--epochs", "2", "--reg_weight", "[0.1, 0.01, 0.001]", "--save_model", "False"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    records = ResultsStore(out / "results.jsonl").records()
    keys = [r["key"] for r in records]
    assert len(keys) == 3 and len(set(keys)) == 3         # every point once, every record once
    trained = sum(o.count("Trainable parameters") for o, _ in outs)
    assert trained == 3                                    # and trained once, by one of the two
    assert not list(out.glob("runs/*/*/claim"))            # every claim released


# --- the results file ---------------------------------------------------------------------
def test_a_torn_last_line_is_reported_and_never_swallows_the_next_record(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"key": "a", "status": "ok"}) + "\n" + '{"key": "b", "stat')  # a crash mid-write
    store = ResultsStore(path)
    caplog.set_level(logging.WARNING)
    assert [r["key"] for r in store.records()] == ["a"]
    assert "line 2 is not a complete JSON record" in caplog.text
    store.append({"key": "c", "status": "ok"})
    assert [r["key"] for r in store.records()] == ["a", "c"]   # the new record is whole
    assert path.read_text().splitlines()[2] == json.dumps({"key": "c", "status": "ok"})
    store.records()
    assert caplog.text.count("line 2 is not a complete JSON record") == 1  # one warning, not one per read


# --- the log ------------------------------------------------------------------------------
def _log_text(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((out / "logs").glob("*.log")))


def test_an_error_line_goes_to_the_log_too(tmp_path, capsys):
    import main

    (tmp_path / "ml100k").mkdir()
    (tmp_path / "ml100k" / "ml100k.inter").write_text("userID\titemID\tx_label\n0\t0\t7\n")
    out = tmp_path / "out"
    code = main.main(["-m", "BPR", "-d", "ml100k", "--data_path", str(tmp_path), "--output", str(out),
                      "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.strip() in _log_text(out)


@pytest.mark.slow
def test_the_end_of_a_run_names_its_outputs_and_time(tmp_path, capsys):
    import main

    out = tmp_path / "out"
    assert main.main(["-m", "BPR", "-d", "ml100k", "--device", "cpu", "--quiet", "--output", str(out),
                      "--epochs", "1", "--reg_weight", "0.1"]) == 0
    log = _log_text(out)
    assert "run finished in " in log and f"results: {out / 'results.jsonl'}" in log
    record = ResultsStore(out / "results.jsonl").records()[0]
    assert f"best point's model: {record['checkpoint']}" in log and Path(record["checkpoint"]).exists()
    assert f"log: {next((out / 'logs').glob('*.log'))}" in log


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, MAIN, "-m", "BPR", "-d", "ml100k", "--device", "cpu", "--quiet", "--output", str(out),
           "--epochs", "500", "--stopping_step", "1000", "--checkpoint_interval", "1", "--reg_weight", "0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list(out.glob("runs/*/*/resume.pt")):
            time.sleep(0.2)
        assert list(out.glob("runs/*/*/resume.pt")), "training never reached its first checkpoint"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert err.count("\n") == 1 and err.startswith("terminated (SIGTERM): rerun the same command to resume")
    assert err.strip() in _log_text(out)                  # the log says how the run ended
    assert list(out.glob("runs/*/*/resume.pt"))           # kept for the rerun
    assert not list(out.glob("runs/*/*/claim"))           # the claim was released


def test_loss_terms_are_named_once_and_epoch_lines_keep_mmrec_format(ml100k_data, tmp_path, caplog):
    import torch
    from common.abstract_recommender import GeneralRecommender
    from common.trainer import Trainer
    from conftest import make_config

    class TwoTerms(GeneralRecommender):
        loss_names = ("BPR", "a zero term")

        def __init__(self, config, dataloader):
            super().__init__(config, dataloader)
            self.emb = torch.nn.Embedding(self.n_users + self.n_items, 8)

        def calculate_loss(self, interaction):
            u, p, n = self.emb(interaction[0]), self.emb(interaction[1] + self.n_users), \
                self.emb(interaction[2] + self.n_users)
            bpr = -torch.nn.functional.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
            return bpr, 0.0 * bpr

        def full_sort_predict(self, interaction):
            return self.emb(interaction[0]) @ self.emb.weight[self.n_users:].t()

    cfg = make_config("BPR", epochs=2)
    caplog.set_level(logging.INFO)
    Trainer(cfg, TwoTerms(cfg, ml100k_data.train)).fit(ml100k_data.train, ml100k_data.valid, ml100k_data.test)
    assert caplog.text.count("loss terms: train_loss1 = BPR, train_loss2 = a zero term") == 1
    assert "epoch 1 training [time: " in caplog.text and "train_loss1: " in caplog.text
