"""SMORE and MSCA: shapes, gradients, deterministic scoring, their graphs (kNN, max-union fusion,
thresholded co-interaction from the training split), the spectral filters, the loss pieces that
follow MMRec, and the one-modality refusal."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import ROOT, build_model, first_batch
from common.contrastive import info_nce_indexed
from utils.errors import ModelInputError
from utils.graph import (cached_co_interaction, co_interaction_graph, knn_graph, propagate_mean,
                         sym_normalize, union_max)

# one grid point each (the yaml grids have 128 and 500)
POINTS = {
    "SMORE": {"n_ui_layers": 3, "image_knn_k": 15, "text_knn_k": 10, "reg_weight": 1e-4, "dropout_rate": 0.1},
    "MSCA": {"n_layers": 2, "fusion_coeff": 0.4, "cl_weight": 0.005, "reg_weight": 5e-8},
}
MODELS = list(POINTS)


def build(name: str, data, seed: int = 999, **over):
    return build_model(name, data, {**POINTS[name], **over}, seed)


def train_matrix(dataset) -> sp.csr_matrix:
    """The binary training matrix rebuilt from the .inter rows with x_label 0."""
    keep = dataset.labels == 0
    r = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (dataset.users[keep], dataset.items[keep])),
                      shape=(dataset.n_users, dataset.n_items))
    r.data[:] = 1.0
    return r


def dense(adj: torch.Tensor) -> np.ndarray:
    return adj.to_dense().numpy()


# --- model contract ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_loss_and_gradients_reach_every_parameter(name, ml100k_data) -> None:
    model, _ = build(name, ml100k_data)
    model.train()
    loss = model.calculate_loss(first_batch(ml100k_data))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}.{pname} gets no gradient"
        assert param.grad.abs().sum() > 0, f"{name}.{pname} gets a zero gradient"
    # the raw feature tables are trainable parameters
    names = {n for n, _ in model.named_parameters()}
    assert {"feat_emb.v.weight", "feat_emb.t.weight"} <= names


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes(name, ml100k_data) -> None:
    model, _ = build(name, ml100k_data)
    ds = ml100k_data.dataset
    out = model.forward()
    assert out[0].shape == (ds.n_users, 64) and out[1].shape == (ds.n_items, 64)
    for view in out[2:]:
        assert view.shape == (ds.n_users + ds.n_items, 64)


@pytest.mark.parametrize("name", MODELS)
def test_scores_deterministic_and_twice_identical(name, ml100k_data) -> None:
    model, _ = build(name, ml100k_data)
    users = torch.arange(0, 50)
    model.eval()
    with torch.no_grad():
        first = model.full_sort_predict((users,))
        model.train()                       # drop the scoring cache, move the RNG, score again
        torch.rand(1000)
        model.eval()
        second = model.full_sort_predict((users,))
    assert first.shape == (50, ml100k_data.dataset.n_items)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_scores_and_loss(name, ml100k_data) -> None:
    batch = first_batch(ml100k_data)
    scores, losses = [], []
    for seed in (7, 7, 8):
        model, _ = build(name, ml100k_data, seed=seed)
        model.eval()
        with torch.no_grad():
            scores.append(model.full_sort_predict((torch.arange(30),)))
        model.train()
        if name == "SMORE":
            model.dropout.p = 0.0       # the dropout masks are drawn from the global RNG
        losses.append(model.calculate_loss(batch).item())
    assert torch.equal(scores[0], scores[1]) and losses[0] == losses[1]
    assert not torch.equal(scores[0], scores[2])


@pytest.mark.parametrize("name", MODELS)
def test_one_modality_is_refused_clearly(name, text_only_data) -> None:
    with pytest.raises(ModelInputError, match=f"{name} needs both image and text features.*only one modality"):
        build(name, text_only_data)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_one_modality_refusal_is_one_line_on_the_command_line(name, tmp_path) -> None:
    fixed = [f"--{k}={v}" for k, v in POINTS[name].items()]
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "-m", name, "-d", "ml100k",
                           "--vision_feature_file", "none.npy", "--epochs", "1", "--output", str(tmp_path),
                           "--device", "cpu", *fixed], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs both image and text features" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_one_epoch_through_main(name, tmp_path) -> None:
    from main import run

    fixed = [f"--{k}={v}" for k, v in POINTS[name].items()]
    run(["-m", name, "-d", "ml100k", "--epochs", "1", "--output", str(tmp_path), "--device", "cpu",
         "--quiet", *fixed])
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["status"] == "ok" and records[0]["epochs_run"] == 1
    assert records[0]["valid"]["recall@20"] > 0.02       # random ranking gives about 0.015


# --- SMORE ---------------------------------------------------------------------------------------
def test_smore_graphs_knn_per_modality_and_max_union(ml100k_data) -> None:
    model, cfg = build("SMORE", ml100k_data)
    ds = ml100k_data.dataset
    for m, feat, k in (("v", ds.v_feat, cfg["image_knn_k"]), ("t", ds.t_feat, cfg["text_knn_k"])):
        crow = model.item_adj[m].crow_indices()
        assert torch.all(crow[1:] - crow[:-1] == k), f"{m}: not {k} entries per row"
        expect = sym_normalize(knn_graph(feat, k, "cosine")).toarray()
        assert np.abs(dense(model.item_adj[m]) - expect).max() < 1e-6
    v, t, f = (dense(model.item_adj[m]) for m in ("v", "t", "f"))
    in_v, in_t = v != 0, t != 0
    assert np.array_equal(f != 0, in_v | in_t)                         # the union of the edge sets
    both = in_v & in_t
    assert np.array_equal(f[both], np.maximum(v[both], t[both]))       # max where both have an edge
    assert np.array_equal(f[in_v & ~in_t], v[in_v & ~in_t])            # else the one value, as is
    assert np.array_equal(f[in_t & ~in_v], t[in_t & ~in_v])


def test_union_max_keeps_a_negative_entry_of_one_graph() -> None:
    a = sp.csr_matrix(np.array([[0.5, -0.2, 0.0], [0.0, 0.3, 0.0]], np.float32))
    b = sp.csr_matrix(np.array([[0.1, 0.0, -0.4], [0.0, 0.7, 0.0]], np.float32))
    got = union_max(a, b)
    assert np.array_equal(got.toarray(), np.array([[0.5, -0.2, -0.4], [0.0, 0.7, 0.0]], np.float32))
    assert got.nnz == 4
    assert union_max(sp.csr_matrix((2, 3)), sp.csr_matrix((2, 3))).nnz == 0
    with pytest.raises(ValueError, match="equal shapes"):
        union_max(a, sp.csr_matrix((3, 3)))


def test_smore_spectral_filters(ml100k_data) -> None:
    """With unit filters the uni-modal paths are the identity and the fusion path is the circular
    convolution of P_v and P_t divided by sqrt(d) (orthonormal FFT scaling)."""
    model, _ = build("SMORE", ml100k_data)
    with torch.no_grad():
        for m in ("v", "t", "f"):
            model.filters[m].copy_(torch.tensor([1.0, 0.0]).expand_as(model.filters[m]))
        conv = model.spectral()
        p_v = model.feat_trs["v"](model.feat_emb["v"].weight)
        p_t = model.feat_trs["t"](model.feat_emb["t"].weight)
    d = p_v.shape[1]
    assert torch.allclose(conv["v"], p_v, atol=1e-5) and torch.allclose(conv["t"], p_t, atol=1e-5)
    shift = (torch.arange(d).unsqueeze(1) - torch.arange(d).unsqueeze(0)) % d   # [k, j] -> (k - j) mod d
    rows = torch.arange(20)
    circ = (p_v[rows].unsqueeze(1) * p_t[rows][:, shift]).sum(-1) / d ** 0.5
    assert torch.allclose(conv["f"][rows], circ, atol=1e-4)
    assert model.filters["f"].shape == (d // 2 + 1, 2)


def test_smore_gate_dropout_in_training_only(ml100k_data) -> None:
    model, _ = build("SMORE", ml100k_data, dropout_rate=0.5)
    with torch.no_grad():
        model.train()
        a, b = model.forward()[2], model.forward()[2]
        model.eval()
        c, e = model.forward()[2], model.forward()[2]
    assert not torch.equal(a, b) and torch.equal(c, e)


def test_smore_reg_divides_by_the_configured_batch_size(ml100k_data) -> None:
    model, cfg = build("SMORE", ml100k_data)
    u, p, n = torch.ones(3, 4), 2 * torch.ones(3, 4), torch.zeros(3, 4)
    assert model._l_reg(u, p, n).item() == pytest.approx(0.5 * (12 + 48) / cfg["train_batch_size"])


# --- MSCA ----------------------------------------------------------------------------------------
def test_co_interaction_threshold_topk_and_ties() -> None:
    """Against a dense reference on random data: diagonal gone, every kept pair has >= min_count
    shared users, per row the top-min(k, #left) by count (ties: smaller id), any block size."""
    rng = np.random.default_rng(0)
    r = sp.csr_matrix((rng.random((200, 60)) < 0.12).astype(np.float32))
    c = (r.T @ r).toarray()
    np.fill_diagonal(c, 0)
    for min_count, k in ((2, 5), (3, 4), (1, 100)):
        got = co_interaction_graph(r, k, min_count, weighting="count", block_size=7)
        assert (got != co_interaction_graph(r, k, min_count, weighting="count")).nnz == 0
        dense_got = got.toarray()
        for i in range(c.shape[0]):
            left = np.flatnonzero(c[i] >= min_count)
            order = left[np.lexsort((left, -c[i, left]))][:k]
            assert np.array_equal(np.flatnonzero(dense_got[i]), np.sort(order)), f"row {i}"
            assert np.array_equal(dense_got[i, order], c[i, order])
        assert (dense_got[dense_got != 0] >= min_count).all()
        assert not np.diag(dense_got).any()


def test_co_interaction_binary_with_self_loop() -> None:
    r = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0]], np.float32))
    got = co_interaction_graph(r, 10, min_count=2, self_loop=True, weighting="binary").toarray()
    # items 0 and 1 share users 0 and 1; every other pair shares at most one; item 3 has no user
    expect = np.eye(4, dtype=np.float32)
    expect[0, 1] = expect[1, 0] = 1.0
    assert np.array_equal(got, expect)
    with pytest.raises(ValueError, match="min_count"):
        co_interaction_graph(r, 10, min_count=0)


def test_msca_structural_graph_from_training_rows_only(ml100k_data, tmp_path) -> None:
    model, cfg = build("MSCA", ml100k_data)
    ds = ml100k_data.dataset
    k, min_count = cfg["knn_k"], cfg["co_min_count"]
    assert min_count == 2
    train = train_matrix(ds)
    assert (train != ml100k_data.train.inter_matrix(form="csr")).nnz == 0
    c_train = (train.T @ train).toarray()
    s = dense(model.item_adj["s"])
    edges = s != 0
    assert np.diag(edges).all()                                  # a self-loop on every item
    off = edges & ~np.eye(ds.n_items, dtype=bool)
    assert (c_train[off] >= min_count).all()                    # no pair under the threshold survives
    eligible = ((c_train >= min_count) & ~np.eye(ds.n_items, dtype=bool)).sum(1)
    assert np.array_equal(off.sum(1), np.minimum(eligible, k))  # min(k, #left) partners per item
    # binary weights, W_ij / sqrt(d_i d_j) with d the row counts
    deg = edges.sum(1).astype(np.float64)
    rows, cols = np.nonzero(edges)
    assert np.allclose(s[rows, cols], 1.0 / np.sqrt(deg[rows] * deg[cols]), rtol=1e-6)
    # valid and test rows would change the graph: it is built without them
    everything = sp.csr_matrix((np.ones(ds.users.size, np.float32), (ds.users, ds.items)),
                               shape=(ds.n_users, ds.n_items))
    with_all = co_interaction_graph(everything, k, min_count, self_loop=True, weighting="binary")
    from_train = co_interaction_graph(train, k, min_count, self_loop=True, weighting="binary")
    assert (with_all != from_train).nnz > 0
    assert np.abs(sym_normalize(from_train).toarray() - s).max() < 1e-7
    # the disk cache returns the same graph and names a new threshold with a new file
    kw = dict(self_loop=True, weighting="binary", cache=tmp_path / "toy" / "cache")
    first = cached_co_interaction(train, k, min_count, **kw)
    again = cached_co_interaction(train, k, min_count, **kw)
    assert (first != from_train).nnz == 0 and (again != from_train).nnz == 0
    cached_co_interaction(train, k, 3, **kw)
    assert len(list((tmp_path / "toy" / "cache").glob("co*.npz"))) == 2


def test_msca_modality_graphs_and_views(ml100k_data) -> None:
    model, cfg = build("MSCA", ml100k_data)
    ds = ml100k_data.dataset
    for m, feat in (("v", ds.v_feat), ("t", ds.t_feat)):
        expect = sym_normalize(knn_graph(feat, cfg["knn_k"], "cosine")).toarray()
        assert np.abs(dense(model.item_adj[m]) - expect).max() < 1e-6
    with torch.no_grad():
        users, items, collab, struct, image, text = model.forward()
        # collaborative view: mean of layers 1..L, layer 0 left out
        ego = torch.cat([model.user_embedding.weight, model.item_id_embedding.weight])
        adj = model.norm_adj.to_dense()
        layers = [adj @ ego]
        layers.append(adj @ layers[0])
        assert torch.allclose(collab, (layers[0] + layers[1]) / 2, atol=1e-6)
        # structural view on the ID embeddings only; users through R~
        s_items = model.item_adj["s"].to_dense() @ model.item_id_embedding.weight
        assert torch.allclose(struct[ds.n_users:], s_items, atol=1e-6)
        assert torch.allclose(struct[:ds.n_users], model.r_adj.to_dense() @ s_items, atol=1e-6)
        # E* = Ē + c sum_X (1 - alpha_X) X with alpha a softmax over the 3 views: the weights sum to 2
        views = [image, text, struct]
        alpha = torch.softmax(torch.cat([model.query_common(x) for x in views], -1), -1)
        assert torch.allclose(alpha.sum(1), torch.ones(alpha.shape[0]))
        fused = sum((1 - alpha[:, j:j + 1]) * x for j, x in enumerate(views))
        assert torch.allclose(torch.cat([users, items]), collab + cfg["fusion_coeff"] * fused, atol=1e-6)
    with pytest.raises(ValueError, match="n_layers >= 1"):
        propagate_mean(model.norm_adj, ego, 0, skip_ego=True)


def test_msca_reg_covers_every_parameter(ml100k_data) -> None:
    model, _ = build("MSCA", ml100k_data)
    expect = sum(float(p.detach().double().pow(2).sum()) for p in model.parameters())
    feats = float(model.feat_emb["v"].weight.detach().double().pow(2).sum()
                  + model.feat_emb["t"].weight.detach().double().pow(2).sum())
    got = model._l_reg().item()
    assert got == pytest.approx(expect, rel=1e-5)
    assert feats > 0.5 * got                                     # the raw feature tables dominate it


def test_infonce_equals_mmrec_form_with_repeated_rows() -> None:
    """MSCA's logsumexp_j((s_kj - s_kk)/tau) and SMORE's -log(exp(s_kk/tau) / sum_j exp(s_kj/tau)),
    over the batch rows as given (repeats included), equal the shared info_nce_indexed."""
    torch.manual_seed(0)
    a_all, b_all = torch.randn(30, 8), torch.randn(30, 8)
    idx = torch.tensor([3, 5, 3, 7, 7, 7, 0, 29])
    a = torch.nn.functional.normalize(a_all[idx], dim=1)
    b = torch.nn.functional.normalize(b_all[idx], dim=1)
    s = a @ b.t()
    msca = torch.logsumexp((s - s.diag().unsqueeze(1)) / 0.2, dim=1).mean()
    smore = (-torch.log(torch.exp(s.diag() / 0.2) / torch.exp(s / 0.2).sum(1))).mean()
    shared = info_nce_indexed(a_all, b_all, idx, 0.2, negatives="batch")
    assert torch.allclose(shared, msca, atol=1e-5) and torch.allclose(shared, smore, atol=1e-5)
