"""Properties of utils/graph.py and common/contrastive.py that can fail."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from common.contrastive import info_nce
from utils import graph
from utils.graph import (cached_knn, csr_columns, csr_rows, degree_sensitive_prune, edge_adjacency,
                         knn_graph, lightgcn, lightgcn_at, normalized_adjacency, spmm, sym_normalize,
                         to_torch_csr, transpose_csr)


def dense_topk(feat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    x = feat / np.linalg.norm(feat, axis=1, keepdims=True)
    sim = x @ x.T
    idx = np.argsort(-sim, axis=1)[:, :k]
    return idx, np.take_along_axis(sim, idx, axis=1)


@pytest.mark.parametrize("block_size", [7, 64, 4096])
def test_knn_graph_equals_dense_topk(block_size: int) -> None:
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(53, 12)).astype(np.float32)
    k = 5
    mat = knn_graph(feat, k, "cosine", block_size=block_size)
    assert mat.shape == (53, 53)
    assert (np.diff(mat.indptr) == k).all()            # k entries per row
    idx, val = dense_topk(feat, k)
    for row in range(53):
        cols = mat.indices[mat.indptr[row]:mat.indptr[row + 1]]
        assert set(cols) == set(idx[row])
        assert row in cols                              # self is included
        got = dict(zip(cols, mat.data[mat.indptr[row]:mat.indptr[row + 1]]))
        np.testing.assert_allclose([got[c] for c in idx[row]], val[row], rtol=1e-5, atol=1e-6)
    binary = knn_graph(feat, k, "binary", block_size=block_size)
    assert (binary.data == 1.0).all()
    assert (binary.indices == mat.indices).all()


def test_an_all_zero_feature_row_keeps_its_self_edge() -> None:
    feat = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    feat[2] = 0.0
    for weighting in ("binary", "cosine"):
        mat = knn_graph(feat, 3, weighting).tocsr()
        assert mat[2, 2] == 1.0, weighting
        assert all(mat[i, i] > 0 for i in range(6)), weighting


def test_knn_graph_k_larger_than_n_and_bad_weighting() -> None:
    feat = np.eye(4, dtype=np.float32)
    assert knn_graph(feat, 10, "binary").nnz == 16
    with pytest.raises(ValueError):
        knn_graph(feat, 2, "gaussian")


def test_sym_normalize_zero_degree_has_no_nan() -> None:
    inter = sp.csr_matrix(np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=np.float32))
    adj = normalized_adjacency(inter).to_dense().numpy()
    assert np.isfinite(adj).all()
    assert (adj[1] == 0).all() and (adj[:, 1] == 0).all()   # user 1 has no interaction
    np.testing.assert_allclose(adj, adj.T)
    # entry (user 0, item 0): 1 / sqrt(deg_u0 * deg_i0) = 1 / sqrt(2 * 2)
    assert adj[0, 3] == pytest.approx(0.5)
    knn_like = sym_normalize(sp.csr_matrix(np.array([[1, 1], [0, 0]], dtype=np.float32)))
    assert np.isfinite(knn_like.toarray()).all()


def test_cache_roundtrip_and_key(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    feat = rng.normal(size=(30, 6)).astype(np.float32)
    cache = tmp_path / "out" / "cache" / "toy"
    first = cached_knn(feat, 4, "binary", cache)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"      # atomic: no tmp file left behind

    def boom(*args, **kwargs):
        raise AssertionError("the cache was not used")
    monkeypatch.setattr(graph, "knn_graph", boom)
    again = cached_knn(feat, 4, "binary", cache)
    assert (again != first).nnz == 0
    feat2 = feat.copy()
    feat2[0, 0] += 1.0                                         # other feature bytes: other key
    with pytest.raises(AssertionError, match="cache was not used"):
        cached_knn(feat2, 4, "binary", cache)
    with pytest.raises(AssertionError, match="cache was not used"):
        cached_knn(feat, 5, "binary", cache)   # other k: other key


def test_cache_folder_is_the_output_never_the_data(tmp_path, monkeypatch) -> None:
    """The graph cache lives where the user chose to write: the run's output folder (or an
    explicit graph_cache_dir), else ~/.cache; the data folder is never written."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = {"data_path": str(tmp_path / "data"), "dataset": "toy"}
    assert graph.graph_cache_dir({**data, "output_dir": str(tmp_path / "out")}) == tmp_path / "out" / "cache" / "toy"
    assert graph.graph_cache_dir(data) == tmp_path / "home" / ".cache" / "mmrec-harness" / "toy"
    assert graph.graph_cache_dir({**data, "output_dir": "x", "graph_cache_dir": str(tmp_path / "g")}) == tmp_path / "g"
    from conftest import make_config
    cfg = make_config("FREEDOM")
    cfg["output_dir"] = str(tmp_path / "out")
    assert graph.graph_cache_dir(cfg) == tmp_path / "out" / "cache" / "ml100k"


def test_cache_falls_back_when_its_folder_is_read_only(tmp_path, monkeypatch) -> None:
    ro = tmp_path / "ro" / "cache"
    ro.mkdir(parents=True)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    os.chmod(ro, 0o555)                  # like /work/shared: even root must not write there
    try:
        feat = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
        cached_knn(feat, 3, "cosine", ro)
        assert not list(ro.iterdir())
        assert len(list((home / ".cache" / "mmrec-harness" / "default").glob("*.npz"))) == 1
    finally:
        os.chmod(ro, 0o755)


def test_a_graph_without_edges_is_an_error_naming_it() -> None:
    from utils.errors import ModelInputError
    from utils.graph import cached_co_interaction, require_edges

    with pytest.raises(ModelInputError, match=r"the kNN item graph \(5 x 5\) has no edges: every feature row is zero"):
        cached_knn(np.zeros((5, 3), np.float32), 2, "cosine")
    alone = sp.csr_matrix(np.eye(4, dtype=np.float32))       # every user has one item of their own
    with pytest.raises(ModelInputError, match="item-item co-interaction graph .*no two items share a training user"):
        cached_co_interaction(alone, 3)
    with pytest.raises(ModelInputError, match="user-user co-interaction graph .*no two users share 2 or more training items"):
        cached_co_interaction(alone.T, 3, min_count=2, self_loop=True, what="user-user co-interaction graph",
                              nodes=("users", "item"))
    with pytest.raises(ModelInputError, match="user-item graph .*no interaction"):
        normalized_adjacency(sp.csr_matrix((3, 4), dtype=np.float32))
    assert require_edges(alone, "x", "y") is alone


def toy_edges(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """A skewed bipartite graph: a few heavy users and items, many light ones."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 60, 80
    pu = 1.0 / np.arange(1, n_users + 1)
    pi = 1.0 / np.arange(1, n_items + 1)
    codes = set()
    while len(codes) < 600:
        codes.add(int(rng.choice(n_users, p=pu / pu.sum())) * n_items + int(rng.choice(n_items, p=pi / pi.sum())))
    codes = np.array(sorted(codes))
    return torch.from_numpy(codes // n_items), torch.from_numpy(codes % n_items), n_users, n_items


@pytest.mark.parametrize("dropout", [0.8, 0.9, 0.33])
def test_pruning_keeps_exact_count(dropout: float) -> None:
    users, items, nu, ni = toy_edges()
    keep = degree_sensitive_prune(users, items, nu, ni, dropout, torch.Generator().manual_seed(3))
    assert keep.numel() == math.floor(users.numel() * (1 - dropout))
    assert keep.unique().numel() == keep.numel()               # without replacement


def test_pruning_prefers_low_degree_edges() -> None:
    users, items, nu, ni = toy_edges()
    du = torch.bincount(users, minlength=nu).float()
    di = torch.bincount(items, minlength=ni).float()
    weight = 1.0 / torch.sqrt(du[users] * di[items])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(users.numel())
    draws = 400
    for _ in range(draws):
        counts[degree_sensitive_prune(users, items, nu, ni, 0.8, gen)] += 1
    rate = counts / draws
    order = torch.argsort(weight)
    q = users.numel() // 4
    low_w, high_w = rate[order[:q]].mean(), rate[order[-q:]].mean()
    assert high_w > 2 * low_w                                  # low-degree edges are kept far more
    corr = np.corrcoef(weight.numpy(), rate.numpy())[0, 1]
    assert corr > 0.8
    # the first draw matches sequential weighted sampling: its top edge is kept nearly always
    assert rate[order[-1]] > 0.5


def test_pruning_is_seeded() -> None:
    users, items, nu, ni = toy_edges()
    a = degree_sensitive_prune(users, items, nu, ni, 0.8, torch.Generator().manual_seed(5))
    b = degree_sensitive_prune(users, items, nu, ni, 0.8, torch.Generator().manual_seed(5))
    c = degree_sensitive_prune(users, items, nu, ni, 0.8, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_edge_adjacency_uses_kept_degrees_and_is_symmetric() -> None:
    users = torch.tensor([0, 0, 1, 2])
    items = torch.tensor([0, 1, 1, 1])
    adj = edge_adjacency(users, items, 4, 2).to_dense()
    assert torch.allclose(adj, adj.t())
    # user 0 has degree 2, item 1 has degree 3 in this subgraph
    assert adj[0, 4 + 1].item() == pytest.approx(1 / math.sqrt(2 * 3))
    assert (adj[3] == 0).all() and torch.isfinite(adj).all()


def test_spmm_matches_torch_sparse_mm_with_gradients() -> None:
    rng = np.random.default_rng(2)
    mat = sp.random(20, 20, density=0.2, random_state=3, dtype=np.float32).tocsr()
    adj = to_torch_csr(mat)
    x1 = torch.randn(20, 4, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    w = torch.from_numpy(rng.normal(size=(20, 4)).astype(np.float32))
    (spmm(adj, x1, transpose_csr(adj)) * w).sum().backward()
    (torch.sparse.mm(adj, x2) * w).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    sym = to_torch_csr(mat + mat.T)
    e1 = torch.randn(20, 3, requires_grad=True)
    e2 = e1.detach().clone().requires_grad_(True)
    out1, out2 = lightgcn(sym, e1, 2, symmetric=True), lightgcn(sym, e2, 2)
    assert torch.allclose(out1, out2, atol=1e-6)
    (out1 * out1).sum().backward()
    (out2 * out2).sum().backward()
    assert torch.allclose(e1.grad, e2.grad, atol=1e-5)


def test_csr_row_and_column_slices_match_dense() -> None:
    inter = sp.random(9, 7, density=0.35, random_state=5, dtype=np.float32).tocsr()
    adj = normalized_adjacency(inter)  # symmetric, 16 x 16, with empty rows
    dense = adj.to_dense()
    rows = torch.tensor([0, 3, 4, 10, 15])
    assert torch.equal(csr_rows(adj, rows).to_dense(), dense[rows])
    assert torch.equal(csr_rows(adj, torch.tensor([15, 0])).to_dense(), dense[[15, 0]])  # any order
    assert torch.equal(csr_columns(adj, rows).to_dense(), dense[:, rows])
    assert csr_rows(adj, torch.tensor([], dtype=torch.long)).shape == (0, 16)


@pytest.mark.parametrize("n_layers", [0, 1, 2, 3])
@pytest.mark.parametrize("max_share", [0.0, 1.0])  # the full-product path, then always sliced
def test_lightgcn_at_equals_full_propagation_with_gradients(n_layers: int, max_share: float, monkeypatch) -> None:
    monkeypatch.setattr(graph, "ROWS_SPMM_MAX_SHARE", max_share)
    sliced = []
    monkeypatch.setattr(graph, "csr_rows", lambda a, r: sliced.append(r) or csr_rows(a, r))
    inter = sp.random(30, 20, density=0.15, random_state=7, dtype=np.float32).tocsr()
    adj = normalized_adjacency(inter)
    rows = torch.tensor([8, 1, 2, 8, 29, 30, 41, 49, 30])  # any order, with repeats
    e1 = torch.randn(50, 4, requires_grad=True)
    e2 = e1.detach().clone().requires_grad_(True)
    out1, ego1 = lightgcn_at(adj, e1, n_layers, rows)
    out2 = lightgcn(adj, e2, n_layers, symmetric=True)[rows]
    assert torch.equal(out1, out2)  # bit for bit: same rows, same column order
    assert torch.equal(ego1, e2[rows])
    w = torch.randn(rows.numel(), 4)
    ((out1 * w).sum() + ego1.pow(2).sum()).backward()
    ((out2 * w).sum() + e2[rows].pow(2).sum()).backward()
    assert torch.allclose(e1.grad, e2.grad, atol=1e-6)
    assert e1.grad[~torch.isin(torch.arange(50), rows)].abs().sum() > 0 or n_layers == 0
    assert bool(sliced) == (max_share == 1.0 and n_layers > 0)


def test_info_nce_hand_computed() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    t = 0.5
    # normalised: a = [1,0],[0,1]; b = [1,0],[s,s] with s = 1/sqrt(2)
    s = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(s / t)))
    row1 = -math.log(math.exp(s / t) / (math.exp(0 / t) + math.exp(s / t)))
    assert info_nce(a, b, t).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert info_nce(a, b, t, reduction="sum").item() == pytest.approx(row0 + row1, rel=1e-6)
    # pos_index: row 0 of a against row 1 of b, negatives are all rows of b
    one = info_nce(a[:1], b, t, pos_index=torch.tensor([1]))
    assert one.item() == pytest.approx(-math.log(math.exp(s / t) / (math.exp(1 / t) + math.exp(s / t))), rel=1e-6)


@pytest.mark.parametrize("negatives", ["batch", "all"])
def test_info_nce_indexed_equals_info_nce_with_duplicates(negatives: str) -> None:
    from common.contrastive import info_nce_indexed
    gen = torch.Generator().manual_seed(0)
    a_all = torch.randn(30, 8, generator=gen, requires_grad=True)
    b_all = torch.randn(30, 8, generator=gen, requires_grad=True)
    index = torch.randint(0, 30, (64,), generator=gen)          # many repeated rows
    assert index.unique().numel() < index.numel()
    for reduction in ("mean", "sum"):
        if negatives == "batch":
            ref = info_nce(a_all[index], b_all[index], 0.2, reduction=reduction)
        else:
            ref = info_nce(a_all[index], b_all, 0.2, pos_index=index, reduction=reduction)
        got = info_nce_indexed(a_all, b_all, index, 0.2, negatives=negatives, reduction=reduction)
        assert got.item() == pytest.approx(ref.item(), rel=1e-5)
        g_ref = torch.autograd.grad(ref, (a_all, b_all))
        g_got = torch.autograd.grad(got, (a_all, b_all))
        for x, y in zip(g_ref, g_got):
            assert torch.allclose(x, y, atol=1e-5)


# --- models/sigrec.py's twins of these kernels --------------------------------------------------
def _twin_features(seed: int) -> np.ndarray:
    """Random features with what breaks a careless kNN: duplicate rows (ties at the top), an
    all-zero row, and rows whose k-th neighbour has a negative cosine."""
    rng = np.random.default_rng(seed)
    feat = rng.standard_normal((37, 6)).astype(np.float32)
    feat[5] = feat[4] = feat[3]
    feat[9] = 0.0
    return feat


def _twin_inter(seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    inter = sp.random(29, 23, density=0.25, random_state=rng, format="csr", dtype=np.float32)
    inter.data[:] = 1.0
    return inter


def _same_csr(a: sp.spmatrix, b: sp.spmatrix) -> None:
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)


def _same_torch_csr(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    for part in ("crow_indices", "col_indices", "values"):
        x, y = getattr(a, part)(), getattr(b, part)()
        assert x.dtype == y.dtype and torch.equal(x, y), part


def _check_knn(ours, theirs, seed: int) -> None:
    feat = _twin_features(seed)
    for k in (1, 4, 30):
        for weighting in ("binary", "cosine"):
            for block_size in (5, 2048):
                _same_csr(ours(feat, k, weighting, block_size=block_size),
                          theirs(feat, k, weighting, block_size=block_size))
                _same_csr(ours(torch.from_numpy(feat), k, weighting), theirs(torch.from_numpy(feat), k, weighting))


def _check_co_interaction(ours, theirs, seed: int) -> None:
    inter = _twin_inter(seed)
    rng = np.random.default_rng(seed)
    repeated = sp.csr_matrix((rng.integers(1, 4, 80).astype(np.float32),  # counts, not 0/1, and
                              (rng.integers(0, 29, 80), rng.integers(0, 23, 80))), shape=(29, 23))  # duplicates
    _same_csr(ours(repeated, 3, 1, False, "count", block_size=5), theirs(repeated, 3, 1, False, "count", block_size=5))
    for k in (1, 3, 50):
        for min_count in (1, 2):
            for self_loop in (False, True):
                for weighting in ("count", "binary"):
                    _same_csr(ours(inter, k, min_count, self_loop, weighting, block_size=4),
                              theirs(inter, k, min_count, self_loop, weighting, block_size=4))


def _check_top_k_per_row(ours, theirs, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, 8, 60), rng.integers(0, 8, 60)
    vals = rng.integers(0, 4, 60).astype(np.float32)  # many ties
    for k in (1, 2, 10):
        np.testing.assert_array_equal(ours(rows, cols, vals, k), theirs(rows, cols, vals, k))


def _check_matrix_fn(ours, theirs, seed: int) -> None:
    """sym_normalize on a square weighted matrix, bipartite_adjacency on a rectangular one; both
    with a zero row."""
    rng = np.random.default_rng(seed)
    inter = _twin_inter(seed)
    weights = rng.random(inter.shape[0]).astype(np.float32)
    weights[3] = 0.0  # a zero row
    mat = sp.diags(weights) @ inter
    if ours.__name__ == "sym_normalize":
        mat = sp.csr_matrix(mat @ mat.T)
    _same_csr(ours(mat), theirs(mat))


def _check_to_torch_csr(ours, theirs, seed: int) -> None:
    _same_torch_csr(ours(_twin_inter(seed)), theirs(_twin_inter(seed)))


def _check_spmm(ours, theirs, seed: int) -> None:
    mat = _twin_inter(seed)
    adj, adj_t = to_torch_csr(mat), to_torch_csr(mat.T.tocsr())
    torch.manual_seed(seed)
    x, w = torch.randn(23, 5), torch.randn(29, 5)
    results = []
    for fn in (ours, theirs):
        leaf = x.clone().requires_grad_(True)
        out = fn(adj, leaf, adj_t)
        (out * w).sum().backward()
        results.append((out.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert torch.equal(ours(adj, x, adj_t), theirs(adj, x, adj_t))  # the no-grad path


def _check_csr_slice(ours, theirs, seed: int) -> None:
    adj = to_torch_csr(_twin_inter(seed))
    picks = torch.tensor([0, 3, 4, 11, 22])
    _same_torch_csr(ours(adj, picks), theirs(adj, picks))
    _same_torch_csr(ours(adj, picks[:0]), theirs(adj, picks[:0]))


def _check_info_nce(ours, theirs, seed: int) -> None:
    """The fused kernel against the autograd one: the same value and gradients (float tolerance)."""
    torch.manual_seed(seed)
    a0, b0 = torch.randn(17, 8), torch.randn(17, 8)
    for tau in (0.1, 0.5):
        got, ref = [], []
        for fn, out in ((ours, got), (theirs, ref)):
            a, b = a0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
            loss = fn(a, b, tau)
            loss.backward()
            out.extend([loss.detach(), a.grad, b.grad])
        for x, y in zip(got, ref):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


TWIN_CHECKS = {"knn_graph": _check_knn, "co_interaction_graph": _check_co_interaction,
               "_top_k_per_row": _check_top_k_per_row, "sym_normalize": _check_matrix_fn,
               "bipartite_adjacency": _check_matrix_fn, "to_torch_csr": _check_to_torch_csr,
               "spmm": _check_spmm, "_SpMM": None, "csr_rows": _check_csr_slice,
               "csr_columns": _check_csr_slice, "info_nce": _check_info_nce}


def _shared_names() -> set[str]:
    """Functions and classes that models/sigrec.py defines under a name that utils/graph.py or
    common/contrastive.py also defines: each one is a twin and must be checked below."""
    import inspect

    import common.contrastive as contrastive
    import models.sigrec as sigrec

    def own(module) -> set[str]:
        return {n for n, v in vars(module).items()
                if (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == module.__name__}
    return own(sigrec) & (own(graph) | own(contrastive))


def test_every_sigrec_twin_is_checked() -> None:
    """A new kernel in sigrec.py that shares a name with the harness's must join TWIN_CHECKS."""
    assert _shared_names() == set(TWIN_CHECKS)


@pytest.mark.parametrize("name", sorted(n for n, check in TWIN_CHECKS.items() if check is not None))
@pytest.mark.parametrize("seed", [0, 1])
def test_sigrec_twin_kernels(name: str, seed: int) -> None:
    """sigrec.py keeps its own copy of each kernel (it imports only common.*, to run inside MMRec):
    same name, same signature, same results as the harness's, on random input."""
    import inspect

    import common.contrastive as contrastive
    import models.sigrec as sigrec

    ours = getattr(sigrec, name)
    theirs = getattr(graph, name, None) or getattr(contrastive, name)
    if name == "info_nce":  # the fused twin takes the shared leading arguments (no pos_index/reduction)
        shared = list(inspect.signature(ours).parameters)
        assert shared == list(inspect.signature(theirs).parameters)[:len(shared)]
    else:
        assert inspect.signature(ours) == inspect.signature(theirs)
    TWIN_CHECKS[name](ours, theirs, seed)
