"""Results belong to their data: the dataset's content fingerprint is part of a point's key (and
of a search study's fingerprint); records note threads and device; files are written atomically."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_config
from utils.configurator import Config
from utils.dataset import FINGERPRINT_CACHE, fingerprint
from utils.errors import ConfigError
from utils.quick_start import RunOptions, load_data, run_grid, train_point
from utils.results import DATA_KEY, ResultsStore, atomic_write, point_key, write_text_atomic


def tiny_inter(shift: int = 0) -> str:
    """12 users x 10 items; every user has train rows, one valid and one test row."""
    rows = ["userID\titemID\trating\ttimestamp\tx_label"]
    for u in range(12):
        items = [(u + k + shift) % 10 for k in range(5)]
        rows += [f"{u}\t{i}\t1\t0\t{label}" for i, label in zip(items, (0, 0, 0, 1, 2))]
    return "\n".join(rows) + "\n"


def make_dataset(root: Path, inter: str) -> Path:
    folder = root / "ml100k"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ml100k.inter").write_text(inter)
    return root


def bpr(root: Path, **extra) -> Config:
    cfg = Config("BPR", "ml100k", {"data_path": str(root), "epochs": 1, "reg_weight": [0.1],
                                    "save_model": False, "checkpoint_interval": 0, "topk": [5],
                                    "valid_metric": "Recall@5", **extra})
    cfg["device"] = torch.device("cpu")
    cfg["quiet"] = True
    return cfg


def test_fingerprint_follows_content_not_place(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", tiny_inter())
    b = make_dataset(tmp_path / "b", tiny_inter())
    c = make_dataset(tmp_path / "c", tiny_inter(shift=1))
    cfg = lambda root: bpr(root).point({"seed": 999, "reg_weight": 0.1})  # noqa: E731
    assert fingerprint(cfg(a)) == fingerprint(cfg(b)) != fingerprint(cfg(c))
    # Feature files count only where the model reads them (multimodal), and a missing one counts.
    mm = lambda root: make_config("LightGCN", data_path=str(root), is_multimodal_model=True)  # noqa: E731
    before = fingerprint(mm(a))
    np.save(a / "ml100k" / "image_feat.npy", np.ones((10, 2), dtype=np.float32))
    assert fingerprint(mm(a)) != before
    assert fingerprint(cfg(a)) == fingerprint(cfg(b))  # BPR reads no features


def test_fingerprint_cache_lives_in_the_output_folder(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", tiny_inter())
    out = tmp_path / "out"
    cfg = bpr(root)
    first = fingerprint(cfg, out)
    cache = json.loads((out / FINGERPRINT_CACHE).read_text())["files"]
    inter = (root / "ml100k" / "ml100k.inter").resolve()
    assert list(cache) == [str(inter)] and cache[str(inter)]["size"] == inter.stat().st_size
    assert sorted(p.name for p in (root / "ml100k").iterdir()) == ["ml100k.inter"]  # nothing written there
    # Same size, new content, the old mtime put back (as `cp -p` or `touch -r` would): hashed again.
    stat = inter.stat()
    time.sleep(0.05)  # past the file system's timestamp granularity, so that the ctime moves
    inter.write_text(tiny_inter(shift=1))
    os.utime(inter, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert inter.stat().st_size == stat.st_size and inter.stat().st_mtime_ns == stat.st_mtime_ns
    second = fingerprint(cfg, out)
    assert second != first
    assert len(json.loads((out / FINGERPRINT_CACHE).read_text())["files"]) == 1
    (out / FINGERPRINT_CACHE).write_text("{torn")  # a damaged cache is ignored
    assert fingerprint(cfg, out) == second


def test_a_changed_inter_file_trains_again_and_an_unchanged_one_is_reused(tmp_path: Path) -> None:
    root, out = make_dataset(tmp_path / "data", tiny_inter()), tmp_path / "out"
    options = RunOptions(output_dir=out)
    store = ResultsStore(out / "results.jsonl")
    first = run_grid(bpr(root), options)
    assert first["status"] == "ok" and len(store.records()) == 1
    assert first[DATA_KEY] == fingerprint(bpr(root))
    assert first["threads"] == torch.get_num_threads() and first["device"] == "cpu"
    run_grid(bpr(root), options)
    assert len(store.records()) == 1  # unchanged data: reused
    # A copy elsewhere with the same content is the same data (data_path is not in the key).
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    run_grid(bpr(copy), options)
    assert len(store.records()) == 1
    # Same dataset name, different content: the point trains again, under another key.
    (root / "ml100k" / "ml100k.inter").write_text(tiny_inter(shift=3))
    second = run_grid(bpr(root), options)
    recs = store.records()
    assert len(recs) == 2 and recs[0]["key"] != recs[1]["key"]
    assert recs[0][DATA_KEY] != recs[1][DATA_KEY] == second[DATA_KEY]
    assert (out / "runs" / "BPR-ml100k" / recs[1]["key"] / "per_user_test.npz").exists()
    assert not list(out.rglob("*.tmp*"))  # no temporary file left behind


def test_records_without_a_fingerprint_are_listed_but_never_match(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", tiny_inter())
    cfg = bpr(root).point({"seed": 999, "reg_weight": 0.1})
    old_key = point_key(cfg.final_config_dict)  # a config before load_data: no fingerprint
    store = ResultsStore(tmp_path / "out" / "results.jsonl")
    store.append({"key": old_key, "status": "ok", "model": "BPR", "dataset": "ml100k",
                  "valid": {"recall@5": 0.5}, "test": {"recall@5": 0.4}})
    assert store.select(model="BPR") and store.finished(old_key)["status"] == "ok"
    load_data(cfg)
    assert cfg[DATA_KEY] is not None and point_key(cfg.final_config_dict) != old_key
    assert store.finished(point_key(cfg.final_config_dict)) is None


def test_a_study_is_not_shared_across_different_data(tmp_path: Path) -> None:
    from utils.search import open_study

    a = make_dataset(tmp_path / "a", tiny_inter())
    b = make_dataset(tmp_path / "b", tiny_inter(shift=2))
    args = argparse.Namespace(storage=f"sqlite:///{tmp_path}/o.db", study="t", search="grid", prune="none")
    for root in (a, b):
        cfg = bpr(root)
        cfg[DATA_KEY] = fingerprint(cfg)
        if root == a:
            open_study(cfg, args, tmp_path)
        else:
            with pytest.raises(ConfigError, match="different config, data"):
                open_study(cfg, args, tmp_path)


def test_seconds_count_earlier_runs_of_a_resumed_point(tmp_path: Path, monkeypatch) -> None:
    from common.trainer import FitResult
    import utils.quick_start as qs

    class Resumed:  # a trainer whose point ran 100 s before this run
        def __init__(self, cfg, model) -> None:
            self.on_eval = None

        def fit(self, *args, **kwargs) -> FitResult:
            fit = FitResult(best_epoch=0, epochs_run=1, history=[{"train_seconds": 1.0}])
            fit.resumed_seconds = 100.0
            return fit

    root = make_dataset(tmp_path / "data", tiny_inter())
    cfg = bpr(root).point({"seed": 999, "reg_weight": 0.1})
    data = load_data(cfg)
    monkeypatch.setattr(qs, "Trainer", Resumed)
    record = train_point(cfg, data, tmp_path / "run")
    assert 100.0 <= record["seconds"] < 200.0
    assert record["threads"] == torch.get_num_threads() and record["device"] == "cpu"


def test_atomic_write_uses_a_temporary_of_this_process(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write(b"new")
            names = [p.name for p in tmp_path.iterdir() if p != target]
            assert len(names) == 1 and f".tmp{os.getpid()}" in names[0]
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with atomic_write(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


def test_tables_written_by_many_threads_are_never_torn(tmp_path: Path) -> None:
    """Derived tables (comparison.md, ablation tables, study summaries) go through
    write_text_atomic: with 6 writer threads and a reader racing them, every read is one whole
    version, and no temporary is left behind."""
    target = tmp_path / "table.md"
    versions = {f"| writer {w} |\n" + ("row " * 4000 + "\n") * 20 for w in range(6)}
    write_text_atomic(target, next(iter(versions)))
    stop, seen, errors = threading.Event(), set(), []

    def read() -> None:
        while not stop.is_set():
            text = target.read_text(encoding="utf-8")
            (seen.add if text in versions else errors.append)(text[:20])

    def write(text: str) -> None:
        for _ in range(15):
            write_text_atomic(target, text)
    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(v,)) for v in versions]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    assert not errors and seen and target.read_text(encoding="utf-8") in versions
    assert list(tmp_path.iterdir()) == [target]
