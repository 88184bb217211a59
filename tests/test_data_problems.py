"""Data problems are refused with one line or reported with a warning line, never silent."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import main
from conftest import make_config
from utils.dataset import RecDataset
from utils.errors import DataError

HEADER = "userID\titemID\trating\ttimestamp\tx_label\n"


def _write(tmp_path, rows: list[tuple[int, int, int]], name: str = "toy") -> None:
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(HEADER + "".join(f"{u}\t{i}\t1\t0\t{lab}\n" for u, i, lab in rows))


def _dataset(tmp_path, rows, caplog, **overrides) -> RecDataset:
    _write(tmp_path, rows, "ml100k")
    caplog.set_level(logging.WARNING)
    return RecDataset(make_config("LightGCN", data_path=str(tmp_path), **overrides))


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


GOOD = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (1, 1, 0), (1, 2, 0), (1, 0, 2)]


def test_a_clean_file_gives_no_warning(tmp_path, caplog):
    _dataset(tmp_path, GOOD, caplog)
    assert _warnings(caplog) == ""


def test_duplicate_rows_are_counted_and_kept(tmp_path, caplog):
    ds = _dataset(tmp_path, GOOD + [(0, 0, 0), (0, 0, 0), (1, 0, 0)], caplog)
    text = _warnings(caplog)
    assert "3 duplicate user-item rows (2 pairs), kept" in text
    assert "1 pairs are in more than one split" in text          # (1, 0) is in train and in test
    assert ds.inter_num == len(GOOD) + 3                         # kept, as MMRec keeps them
    train = ds.split()[0]
    assert train.inter_matrix("csr")[0, 0] == 1.0                # matrices count a pair once


def test_items_never_in_training_and_id_gaps_are_counted(tmp_path, caplog):
    rows = GOOD + [(0, 5, 2)]  # item 5 only in test; items 3 and 4 nowhere (gaps)
    ds = _dataset(tmp_path, rows, caplog)
    assert ds.n_items == 6
    assert "3 of 6 item IDs never occur in training (2 nowhere in the file: gaps in the ID range; " \
           "1 only in valid/test)" in _warnings(caplog)


def test_users_only_in_valid_or_test_are_counted(tmp_path, caplog):
    rows = GOOD + [(2, 0, 1), (2, 1, 2), (4, 2, 2)]  # users 2 and 4 have no training row; 3 has none at all
    ds = _dataset(tmp_path, rows, caplog)
    text = _warnings(caplog)
    assert "2 users appear only in valid/test; their 3 rows are dropped (filter_out_cod_start_users)" in text
    assert "1 of 5 user IDs have no row at all" in text
    assert ds.inter_num == len(GOOD)
    caplog.clear()
    _dataset(tmp_path, rows, caplog, filter_out_cod_start_users=False)
    assert "2 users appear only in valid/test (3 rows), kept" in _warnings(caplog)


def test_a_missing_feature_file_is_a_warning(tmp_path, caplog):
    _write(tmp_path, GOOD, "ml100k")
    np.save(tmp_path / "ml100k" / "text_feat.npy", np.ones((3, 4), np.float32))
    caplog.set_level(logging.WARNING)
    ds = RecDataset(make_config("FREEDOM", data_path=str(tmp_path)))
    assert ds.v_feat is None and ds.t_feat is not None
    assert "image_feat.npy does not exist: the image modality is left out" in _warnings(caplog)


def test_sigrec_says_when_both_modalities_were_asked_but_one_is_missing(ml100k_data, caplog):
    from models.sigrec import SIGREC

    cfg = make_config("SIGREC")
    saved = ml100k_data.train.dataset.v_feat
    caplog.set_level(logging.WARNING)
    try:
        ml100k_data.train.dataset.v_feat = None
        model = SIGREC(cfg, ml100k_data.train)
    finally:
        ml100k_data.train.dataset.v_feat = saved
    assert model.modal_names == ["t"]
    assert "SIGREC: modalities 'both' asked for, but no image (vision_feature_file) feature was loaded; " \
           "training with text only" in _warnings(caplog)


def test_missing_dataset_names_data_path(tmp_path):
    with pytest.raises(DataError, match="does not exist: .*prepare.py.*--data_path"):
        RecDataset(make_config("LightGCN", data_path=str(tmp_path)))


def test_random_bytes_feature_file_has_no_pickle_hint(tmp_path):
    _write(tmp_path, GOOD, "ml100k")
    (tmp_path / "ml100k" / "image_feat.npy").write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(DataError) as info:
        RecDataset(make_config("FREEDOM", data_path=str(tmp_path)))
    assert "is not a .npy file (no NumPy header)" in str(info.value)
    assert "pickle" not in str(info.value).lower()


def test_fewer_items_than_topk_is_refused_before_training(tmp_path, capsys):
    _write(tmp_path, GOOD, "ml100k")
    out = tmp_path / "out"
    code = main.main(["-m", "BPR", "-d", "ml100k", "--data_path", str(tmp_path), "--output", str(out),
                      "--device", "cpu", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: topk = [5, 10, 20, 50] asks for the top 50 items, but dataset ml100k has only 3")
    assert not (out / "results.jsonl").exists() and not (out / "runs").exists()  # nothing trained
    log = next((out / "logs").glob("*.log")).read_text()
    assert "error: topk = [5, 10, 20, 50]" in log                                # the log has it too


def test_sigrec_refuses_an_empty_co_interaction_graph(tmp_path):
    from models.sigrec import SIGREC
    from utils.errors import ModelInputError
    from utils.quick_start import load_data

    # every user has one training item of their own: no two items share a user, so C = RᵀR is empty
    rows = [(u, u, 0) for u in range(6)] + [(u, (u + 1) % 6, 1) for u in range(6)] + \
        [(u, (u + 2) % 6, 2) for u in range(6)]
    _write(tmp_path, rows, "ml100k")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ml100k" / "image_feat.npy", rng.standard_normal((6, 4)).astype(np.float32))
    np.save(tmp_path / "ml100k" / "text_feat.npy", rng.standard_normal((6, 4)).astype(np.float32))
    cfg = make_config("SIGREC", data_path=str(tmp_path), graph_cache_dir=str(tmp_path / "cache"), knn_k=2,
                      topk=[1, 2], valid_metric="Recall@2")
    data = load_data(cfg)
    with pytest.raises(ModelInputError, match="co-interaction graph C = RᵀR has no edges: no two items share"):
        SIGREC(cfg, data.train)
    SIGREC(cfg.point({"cf_weight": 0.0}), data.train)  # without the infusion it trains


def test_a_model_refusing_the_data_exits_3_with_one_line(tmp_path, capsys):
    """Bad input is 2; a model that cannot use this (valid) data, e.g. MGCN without image
    features, is 3, so that scripts (benchmarks/ablations.py) can report it as a row and go on."""
    _write(tmp_path, GOOD * 10, "ml100k")
    np.save(tmp_path / "ml100k" / "text_feat.npy", np.random.default_rng(0).random((3, 4)).astype(np.float32))
    code = main.main(["-m", "MGCN", "-d", "ml100k", "--data_path", str(tmp_path), "--output", str(tmp_path / "out"),
                      "--device", "cpu", "--epochs", "1", "--topk", "[1]", "--valid_metric", "Recall@1"])
    err = capsys.readouterr().err
    assert code == 3 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: MGCN needs"), err
