"""Every bad-input case gives one clear line, from the library and from the command line."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, make_config
from utils.dataset import RecDataset
from utils.errors import DataError

GOOD = "userID\titemID\trating\ttimestamp\tx_label\n0\t0\t1\t0\t0\n0\t1\t1\t0\t1\n1\t1\t1\t0\t0\n1\t2\t1\t0\t2\n"


def _dataset(tmp_path, inter=GOOD, image=None, text=None):
    folder = tmp_path / "ml100k"
    folder.mkdir(parents=True, exist_ok=True)
    if inter is not None:
        (folder / "ml100k.inter").write_text(inter)
    for name, arr in (("image_feat.npy", image), ("text_feat.npy", text)):
        if arr is not None:
            np.save(folder / name, arr)
    return RecDataset(make_config("LightGCN", data_path=str(tmp_path), is_multimodal_model=True))


def test_good_file_loads(tmp_path):
    ds = _dataset(tmp_path, image=np.ones((3, 4), dtype=np.float32))
    assert (ds.n_users, ds.n_items, ds.inter_num) == (2, 3, 4)
    assert ds.v_feat.shape == (3, 4) and ds.t_feat is None  # a missing file leaves the modality None
    train, valid, test = ds.split()
    assert train.inter_matrix("csr").nnz == 2 and valid.inter_num == 1 and test.inter_num == 1
    assert "train: 2 interactions" in ds.statistics()


@pytest.mark.parametrize("inter, message", [
    (None, "interaction file .* is missing: put MMRec's preprocessed files"),
    ("user\titemID\tx_label\n0\t0\t0\n", "lacks required column.*userID"),
    ("userID\titemID\tx_label\n0\t0.5\t0\n", "itemID must hold integers, but data row 1"),
    ("userID\titemID\tx_label\n0\tabc\t0\n", "non-numeric"),
    ("userID\titemID\tx_label\n0\t0\t0\n-1\t0\t0\n", "userID must be non-negative.*row 2"),
    ("userID\titemID\tx_label\n0\t0\t0\n0\t1\t3\n", r"x_label must be 0 \(train\), 1 \(valid\) or 2 \(test\)"),
    ("userID\titemID\tx_label\n0\t0\t1\n0\t1\t2\n", "no training rows"),
])
def test_bad_interaction_files(tmp_path, inter, message):
    with pytest.raises(DataError, match=message):
        _dataset(tmp_path, inter=inter)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="dataset folder .*ml100k does not exist.*prepare.py"):
        RecDataset(make_config("LightGCN", data_path=str(tmp_path)))


def test_feature_row_count_and_nan(tmp_path):
    with pytest.raises(DataError, match="has 2 rows but the dataset has 3 items"):
        _dataset(tmp_path, image=np.ones((2, 4), dtype=np.float32))
    bad = np.ones((3, 4), dtype=np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="NaN or inf in 1 row.*item 1"):
        _dataset(tmp_path / "nan", text=bad)
    bad[1, 2] = np.inf
    with pytest.raises(DataError, match="NaN or inf"):
        _dataset(tmp_path / "inf", text=bad)


def test_cold_start_rows_are_dropped(tmp_path):
    ds = _dataset(tmp_path, inter=GOOD + "2\t0\t1\t0\t2\n")
    assert ds.n_users == 3 and ds.inter_num == 4  # user 2 has no train row: its test row is dropped


def test_command_line_prints_one_line(tmp_path):
    (tmp_path / "ml100k").mkdir()
    (tmp_path / "ml100k" / "ml100k.inter").write_text("userID\titemID\tx_label\n0\t0\t7\n")
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "-m", "BPR", "-d", "ml100k",
                           "--data_path", str(tmp_path), "--output", str(tmp_path / "out"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr and "x_label" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "-m", "BPR", "-d", "ml100k",
                           "--reg_wieght", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "did you mean reg_weight" in proc.stderr
