"""Early stopping, NaN handling, determinism, checkpoint reload and resume after interruption."""
import json
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch

from common.abstract_recommender import GeneralRecommender
from common.trainer import early_stopping
from conftest import ROOT, make_config
from utils.configurator import SRC_DIR, Config
from utils.quick_start import RunOptions, run_grid, train_point


def test_early_stopping_arithmetic():
    best, step = -np.inf, 0
    stops = []
    for value in [0.1, 0.2, 0.2, 0.15, 0.19, 0.21, 0.1, 0.1, 0.1]:
        best, step, stop, improved = early_stopping(value, best, step, max_step=2)
        stops.append((best, step, stop, improved))
    assert [s[1] for s in stops] == [0, 0, 1, 2, 3, 0, 1, 2, 3]   # equal is not an improvement
    assert [s[2] for s in stops] == [False] * 4 + [True, False, False, False, True]  # stop once step > 2
    assert stops[-1][0] == 0.21


def test_stops_after_patience_and_reports_best_epoch(ml100k_data, tmp_path):
    cfg = make_config("BPR", epochs=200, stopping_step=2, learning_rate=0.05, reg_weight=0.1)
    rec = train_point(cfg, ml100k_data, tmp_path)
    assert rec["status"] == "ok"
    assert rec["epochs_run"] == rec["best_epoch"] + 4  # 3 non-improving epochs end training
    scores = [h["valid_score"] for h in rec["history"]]
    assert max(scores) == pytest.approx(rec["valid"]["recall@20"])
    assert scores.index(max(scores)) == rec["best_epoch"]


class NanModel(GeneralRecommender):
    """Its loss is NaN from the second batch on."""

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        self.w = torch.nn.Parameter(torch.ones(1))
        self.calls = 0

    def calculate_loss(self, interaction):
        self.calls += 1
        return self.w.sum() * (float("nan") if self.calls > 1 else 1.0)

    def full_sort_predict(self, interaction):
        return self.w.expand(len(interaction[0]), self.n_items)


def test_nan_loss_fails_the_point_and_the_grid_goes_on(ml100k_data, tmp_path, monkeypatch):
    module = types.ModuleType("models.nanmodel")
    module.NanModel = NanModel
    monkeypatch.setitem(sys.modules, "models.nanmodel", module)
    root = tmp_path / "configs"
    shutil.copytree(SRC_DIR / "configs", root)
    (root / "model" / "NanModel.yaml").write_text("reg: [1, 2]\nhyper_parameters: ['reg']\n")
    cfg = Config("NanModel", "ml100k", {"epochs": 2}, config_dir=root)
    cfg["device"], cfg["quiet"] = torch.device("cpu"), True
    best = run_grid(cfg, RunOptions(output_dir=tmp_path / "out"), data=ml100k_data)
    assert best is None
    lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in lines] == ["failed", "failed"]   # both points ran
    assert "training loss became nan" in lines[0]["error"]


def test_same_seed_same_metrics(ml100k_data, tmp_path):
    cfg = make_config("LightGCN", epochs=2, n_layers=2)
    a = train_point(cfg, ml100k_data, tmp_path / "a")
    b = train_point(cfg, ml100k_data, tmp_path / "b")
    assert a["valid"] == b["valid"] and a["test"] == b["test"]
    c = train_point(cfg.point({"seed": 1}), ml100k_data, tmp_path / "c")
    assert c["valid"] != a["valid"]


def test_checkpoint_reloads_to_the_same_scores(ml100k_data, tmp_path):
    from utils.checkpoint import evaluate_checkpoint

    cfg = make_config("LightGCN", epochs=3, n_layers=1)
    rec = train_point(cfg, ml100k_data, tmp_path)
    scores = evaluate_checkpoint(tmp_path / "model.pth", "cpu")
    assert scores["test"] == pytest.approx(rec["test"])
    assert scores["valid"] == pytest.approx(rec["valid"])


@pytest.mark.slow
def test_lightgcn_beats_most_popular(ml100k_data, tmp_path):
    from utils.metrics import hit_matrix, per_user_metrics

    train = ml100k_data.train.inter_matrix("csr")
    users = ml100k_data.test.eval_users
    scores = np.tile(np.asarray(train.sum(0), dtype=np.float64).ravel(), (users.size, 1))
    mask = train[users].tocoo()
    scores[mask.row, mask.col] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    n_truth = np.diff(ml100k_data.test.truth.indptr)[users]
    pop = per_user_metrics(hit_matrix(top, users, ml100k_data.test.truth), n_truth, ["Recall"], [20])
    pop_recall = pop["recall@20"].mean()
    cfg = make_config("LightGCN", epochs=6, n_layers=1, learning_rate=0.01)
    rec = train_point(cfg, ml100k_data, tmp_path)
    assert 0.1 < pop_recall < 0.25
    assert rec["test"]["recall@20"] > pop_recall + 0.08


@pytest.mark.slow
def test_grid_resumes_after_interruption(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "src" / "main.py"), "-m", "BPR", "-d", "ml100k", "--device", "cpu",
           "--output", str(out), "--reg_weight", "[0.001, 0.0001]", "--epochs", "25", "--stopping_step", "100",
           "--checkpoint_interval", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (results.exists() and list(out.glob("runs/*/*/resume.pt"))):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(results.read_text().splitlines()) == 1, "the first point should have finished"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "already finished (ok), reusing its result" in done.stdout
    assert "resumed from" in done.stdout
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert [r["parameters"]["reg_weight"] for r in lines] == [0.001, 0.0001]
    assert lines[1]["epochs_run"] == 25
    again = subprocess.run(cmd + ["--rerun"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already finished" not in again.stdout
    assert len(results.read_text().splitlines()) == 4


def test_early_stopping_on_rounded_metrics_as_mmrec(ml100k_data, tmp_path, monkeypatch):
    """MMRec rounds metrics to 4 decimals before comparing: a gain under 5e-5 neither resets the
    patience nor moves the best epoch. This scripted history is split by the two rules."""
    from common.trainer import Trainer
    from utils.evaluator import EvalResult

    script = [0.30000, 0.30004, 0.30003, 0.30004, 0.30002, 0.30001, 0.30002, 0.30001]
    # raw rule: best epoch 1 (a gain of 4e-5), stops at epoch 4; rounded: all 0.3000, best 0, stop 3
    best, step, raw = -np.inf, 0, []
    for value in script:
        best, step, stop, improved = early_stopping(value, best, step, max_step=2)
        raw.append((improved, stop))
    assert [i for i, (imp, _) in enumerate(raw) if imp] == [0, 1] and raw[4][1]

    valid_calls = iter(script)

    def scripted(self, loader):  # validation follows the script; test always scores 0.5
        value = next(valid_calls) if loader is ml100k_data.valid else 0.5
        return EvalResult(np.array([0]), {"recall@20": np.array([value])}, 4)

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    cfg = make_config("BPR", epochs=len(script), stopping_step=2)
    rec = train_point(cfg, ml100k_data, tmp_path)
    assert rec["best_epoch"] == 0
    assert rec["epochs_run"] == 4                        # stopped at epoch 3 (0-based)
    assert [h["valid_score"] for h in rec["history"]] == [0.3] * 4   # logged rounded, as MMRec
    assert rec["valid"]["recall@20"] == 0.3


@pytest.mark.parametrize("script, warned", [([0.3, 0.2, 0.2, 0.2], True), ([0.2, 0.3, 0.2, 0.2, 0.2], False)])
def test_warns_when_early_stopping_keeps_the_first_evaluation(ml100k_data, tmp_path, monkeypatch, caplog,
                                                              script, warned):
    """A run whose best validation is its first evaluation (a model still on its starting plateau,
    as SMORE on ml100k) says so and names stopping_step; a run that improved once says nothing."""
    from common.trainer import Trainer
    from utils.evaluator import EvalResult

    valid_calls = iter(script)

    def scripted(self, loader):
        value = next(valid_calls) if loader is ml100k_data.valid else 0.5
        return EvalResult(np.array([0]), {"recall@20": np.array([value])}, 4)

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    with caplog.at_level("WARNING"):
        rec = train_point(make_config("BPR", epochs=len(script), stopping_step=2), ml100k_data, tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert rec["best_epoch"] == (0 if warned else 1)
    assert any("first evaluated" in w and "stopping_step (now 2)" in w for w in warnings) == warned


def test_interrupted_point_resumes_to_the_same_metrics(ml100k_data, tmp_path):
    """Stopped mid-training (after a checkpoint) and run again, a point ends with exactly the
    metrics, history and best epoch of an uninterrupted run; its seconds count both runs."""
    cfg = make_config("LightGCN", epochs=6, n_layers=1, checkpoint_interval=1)
    whole = train_point(cfg, ml100k_data, tmp_path / "whole")

    class Stop(Exception):
        pass

    def interrupt(epoch, score):
        if epoch == 3:
            raise Stop

    folder = tmp_path / "cut"
    with pytest.raises(Stop):
        train_point(cfg, ml100k_data, folder, on_eval=interrupt)
    assert (folder / "resume.pt").exists()
    state = torch.load(folder / "resume.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 3 and state["seconds"] > 0
    resumed = train_point(cfg, ml100k_data, folder)
    for key in ("valid", "test", "best_epoch", "epochs_run"):
        assert resumed[key] == whole[key], key
    strip = lambda h: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(whole["history"])
    assert resumed["seconds"] >= state["seconds"]


class _CudaPlaced:
    """Stands for a tensor that ``torch.load(map_location='cuda')`` put on the GPU: torch refuses
    it as an RNG state until it is moved back with ``.cpu()``."""

    def __init__(self, tensor):
        self.tensor = tensor
        self.device = torch.device("cuda", 0)

    def cpu(self):
        return self.tensor


def test_rng_state_restores_from_a_non_cpu_placement():
    from common.trainer import rng_state, set_rng_state

    state = rng_state()
    expected = torch.rand(3)
    with pytest.raises(TypeError):
        torch.set_rng_state(_CudaPlaced(state["torch_rng"]))   # what broke resume on CUDA
    set_rng_state({**state, "torch_rng": _CudaPlaced(state["torch_rng"])})
    assert torch.equal(torch.rand(3), expected)


def test_restore_reads_the_checkpoint_onto_the_cpu(ml100k_data, tmp_path, monkeypatch):
    """Whatever map_location would have done, the trainer loads resume.pt onto the CPU."""
    cfg = make_config("LightGCN", epochs=2, n_layers=1, checkpoint_interval=1)
    folder = tmp_path / "p"

    def stop(epoch, score):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_point(cfg, ml100k_data, folder, on_eval=stop)
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    rec = train_point(cfg, ml100k_data, folder)
    assert rec["status"] == "ok" and seen == ["cpu"]


def test_unusable_resume_file_starts_afresh(ml100k_data, tmp_path, caplog):
    cfg = make_config("LightGCN", epochs=2, n_layers=1)
    clean = train_point(cfg, ml100k_data, tmp_path / "clean")
    folder = tmp_path / "torn"
    folder.mkdir()
    (folder / "resume.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level("WARNING"):
        rec = train_point(cfg, ml100k_data, folder)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("cannot be resumed" in w and "afresh" in w for w in warnings)
    assert rec["valid"] == clean["valid"] and rec["test"] == clean["test"]
