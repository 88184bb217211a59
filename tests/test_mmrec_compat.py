"""The names MMRec model files import from the harness, checked against their formulas on small
hand-made matrices: utils.utils' graph helpers, common.encoders.LightGCN_Encoder, the losses and
initialisers, the models.common aliases and the scipy dok_matrix._update shim."""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from common.encoders import LightGCN_Encoder
from common.init import xavier_normal_initialization, xavier_uniform_initialization
from common.loss import BPRLoss, EmbLoss, L2Loss
from utils import compat
from utils.compat import install_dok_update
from utils.graph import bipartite_adjacency
from utils.utils import (build_knn_neighbourhood, build_knn_normalized_graph, build_sim,
                         compute_normalized_laplacian, get_dense_laplacian, get_sparse_laplacian)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Every name the 23 model files of MMRec's src/models/ import from utils.* and common.*.
IMPORTED = {
    "common.abstract_recommender": ["GeneralRecommender"],
    "common.encoders": ["LightGCN_Encoder"],
    "common.init": ["xavier_normal_initialization", "xavier_uniform_initialization"],
    "common.loss": ["BPRLoss", "EmbLoss", "L2Loss"],
    "utils.utils": ["build_sim", "compute_normalized_laplacian", "build_knn_neighbourhood",
                    "build_knn_normalized_graph", "get_sparse_laplacian", "get_dense_laplacian"],
}


@pytest.mark.parametrize("module,name", [(m, n) for m, names in IMPORTED.items() for n in names])
def test_mmrec_import_surface(module: str, name: str) -> None:
    assert callable(getattr(importlib.import_module(module), name))


@pytest.mark.parametrize("module", ["abstract_recommender", "encoders", "init", "loss"])
def test_models_common_aliases_are_the_common_modules(module: str) -> None:
    # SELFCFED_LGN and LayerGCN import from models.common.<x>
    importlib.import_module("models")
    assert importlib.import_module(f"models.common.{module}") is importlib.import_module(f"common.{module}")


# --- utils.utils graph helpers ----------------------------------------------------------------
R2 = 1 / math.sqrt(2)


@pytest.mark.parametrize("device", DEVICES)
def test_build_sim_is_the_cosine_matrix(device: str) -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]], device=device)
    expected = torch.tensor([[1, R2, 0], [R2, 1, R2], [0, R2, 1]], device=device)
    torch.testing.assert_close(build_sim(x), expected)


def test_build_knn_neighbourhood_keeps_topk_per_row() -> None:
    adj = torch.tensor([[5.0, 1.0, 3.0], [2.0, 4.0, 0.5], [0.0, 6.0, 1.0]])
    expected = torch.tensor([[5.0, 0.0, 3.0], [2.0, 4.0, 0.0], [0.0, 6.0, 1.0]])
    torch.testing.assert_close(build_knn_neighbourhood(adj, topk=2), expected)


# A star 0-1, 0-2 plus an isolated node 3 (its row must stay zero, not NaN).
STAR = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
STAR_SYM = torch.tensor([[0, R2, R2, 0], [R2, 0, 0, 0], [R2, 0, 0, 0], [0, 0, 0, 0]])  # D^-1/2 A D^-1/2
STAR_RW = torch.tensor([[0, 0.5, 0.5, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])   # D^-1 A


def test_compute_normalized_laplacian_is_symmetric_normalisation() -> None:
    torch.testing.assert_close(compute_normalized_laplacian(STAR), STAR_SYM)


def test_get_dense_laplacian_sym_rw_none() -> None:
    torch.testing.assert_close(get_dense_laplacian(STAR, normalization="sym"), STAR_SYM)
    torch.testing.assert_close(get_dense_laplacian(STAR, normalization="rw"), STAR_RW)
    assert get_dense_laplacian(STAR) is STAR               # 'none' is MMRec's default
    with pytest.raises(ValueError, match="normalization"):
        get_dense_laplacian(STAR, normalization="row")


@pytest.mark.parametrize("device", DEVICES)
def test_get_sparse_laplacian_matches_the_dense_formulas(device: str) -> None:
    edge_index = STAR.nonzero().t().to(device)
    weight = torch.ones(edge_index.shape[1], device=device)
    for norm, dense in (("sym", STAR_SYM), ("rw", STAR_RW), ("none", STAR)):
        index, values = get_sparse_laplacian(edge_index, weight, num_nodes=4, normalization=norm)
        assert index is edge_index
        got = torch.sparse_coo_tensor(index, values, (4, 4), check_invariants=True).to_dense().cpu()
        torch.testing.assert_close(got, dense)


def test_get_sparse_laplacian_uses_weighted_row_degrees() -> None:
    edge_index = torch.tensor([[0, 0, 1], [0, 1, 1]])    # rows 0, 0, 1
    weight = torch.tensor([1.0, 3.0, 2.0])               # degrees: d0 = 4, d1 = 2
    _, rw = get_sparse_laplacian(edge_index, weight, num_nodes=2, normalization="rw")
    torch.testing.assert_close(rw, torch.tensor([0.25, 0.75, 1.0]))
    _, sym = get_sparse_laplacian(edge_index, weight, num_nodes=2, normalization="sym")
    torch.testing.assert_close(sym, torch.tensor([1 / 4, 3 / math.sqrt(8), 1.0]))


KNN_ADJ = torch.tensor([[5.0, 1.0, 3.0], [2.0, 4.0, 0.5], [0.0, 6.0, 1.0]])
KNN_KEPT = torch.tensor([[5.0, 0.0, 3.0], [2.0, 4.0, 0.0], [0.0, 6.0, 1.0]])   # top-2 per row
KNN_RW = torch.tensor([[5 / 8, 0, 3 / 8], [2 / 6, 4 / 6, 0], [0, 6 / 7, 1 / 7]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", ["sym", "rw", "none"])
def test_build_knn_normalized_graph_sparse_and_dense(device: str, norm: str) -> None:
    deg = KNN_KEPT.sum(1)
    expected = {"none": KNN_KEPT, "rw": KNN_RW,
                "sym": KNN_KEPT / deg.sqrt().unsqueeze(1) / deg.sqrt().unsqueeze(0)}[norm]
    adj = KNN_ADJ.to(device)
    dense = build_knn_normalized_graph(adj, topk=2, is_sparse=False, norm_type=norm)
    sparse = build_knn_normalized_graph(adj, topk=2, is_sparse=True, norm_type=norm)
    assert dense.layout == torch.strided and sparse.layout == torch.sparse_coo
    assert sparse.device.type == device and sparse.shape == (3, 3)
    torch.testing.assert_close(dense.cpu(), expected)
    torch.testing.assert_close(sparse.to_dense().cpu(), expected)
    rows = sparse._indices()[0].cpu()
    assert torch.equal(rows, torch.tensor([0, 0, 1, 1, 2, 2]))   # k entries per row, row-major


def test_knn_graph_of_a_similarity_keeps_self_and_is_differentiable() -> None:
    feat = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    graph = build_knn_normalized_graph(build_sim(feat), topk=3, is_sparse=True, norm_type="sym")
    index = graph._indices()
    assert ((index[0] == index[1]).sum() == 7)            # each row's best neighbour is itself
    torch.sparse.mm(graph, torch.ones(7, 1)).sum().backward()
    assert feat.grad is not None and torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0
    # LATTICE learns through the dense path
    feat.grad = None
    compute_normalized_laplacian(build_knn_neighbourhood(build_sim(feat), 3)).sum().backward()
    assert torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0


# --- common.encoders.LightGCN_Encoder --------------------------------------------------------
class _Cfg(dict):
    def __missing__(self, key):  # MMRec configs read None for a missing key
        return None


class _Dataset:
    def __init__(self, n_users: int, n_items: int) -> None:
        self.n_users, self.n_items = n_users, n_items

    def get_user_num(self) -> int:
        return self.n_users

    def get_item_num(self) -> int:
        return self.n_items


class _Loader:
    """The two things an MMRec model reads from its dataloader."""

    def __init__(self, inter: sp.coo_matrix) -> None:
        self.inter = inter
        self.dataset = _Dataset(*inter.shape)

    def inter_matrix(self, form: str = "coo") -> sp.spmatrix:
        return self.inter.asformat(form)


# 2 users, 3 items; (0, 1) is listed twice: the graph stays binary
INTER = sp.coo_matrix((np.ones(4, np.float32), ([0, 0, 0, 1], [0, 1, 1, 1])), shape=(2, 3))


def make_encoder(device: str = "cpu", n_layers: int | None = None) -> LightGCN_Encoder:
    cfg = _Cfg(USER_ID_FIELD="userID", ITEM_ID_FIELD="itemID", NEG_PREFIX="neg_", train_batch_size=8,
               device=torch.device(device), is_multimodal_model=False, embedding_size=4, n_layers=n_layers)
    torch.manual_seed(0)
    return LightGCN_Encoder(cfg, _Loader(INTER))


def dense_norm_adj() -> torch.Tensor:
    a = np.zeros((5, 5))
    for u, i in [(0, 0), (0, 1), (1, 1)]:
        a[u, 2 + i] = a[2 + i, u] = 1.0
    d = (a.sum(1) + 1e-7) ** -0.5
    return torch.tensor(d[:, None] * a * d[None, :], dtype=torch.float32)


def test_lightgcn_encoder_graph_is_sym_normalised_binary_adjacency() -> None:
    enc = make_encoder()
    adj = enc.sparse_norm_adj
    assert adj.layout == torch.sparse_coo and adj.is_coalesced() and adj._nnz() == 6
    torch.testing.assert_close(adj.to_dense(), dense_norm_adj())
    assert enc.n_layers == 3 and enc.layers == [4, 4, 4]          # MMRec's default depth
    assert set(enc.embedding_dict) == {"user_emb", "item_emb"}


@pytest.mark.parametrize("device", DEVICES)
def test_lightgcn_encoder_outputs_the_layer_mean(device: str) -> None:
    enc = make_encoder(device, n_layers=2)
    ego = torch.cat([enc.embedding_dict["user_emb"], enc.embedding_dict["item_emb"]]).detach().cpu()
    a = dense_norm_adj()
    mean = (ego + a @ ego + a @ a @ ego) / 3
    users, items = enc.get_embedding()
    assert users.shape == (2, 4) and items.shape == (3, 4) and not users.requires_grad
    torch.testing.assert_close(users.cpu(), mean[:2])
    torch.testing.assert_close(items.cpu(), mean[2:])
    # forward((users, items)) gives the rows asked for; with no dropout, the same values
    enc.drop_flag = False
    u, i = enc((torch.tensor([1, 0, 1], device=device), torch.tensor([2, 2], device=device)))
    assert u.shape == (3, 4) and i.shape == (2, 4)
    torch.testing.assert_close(u.detach().cpu(), mean[[1, 0, 1]])
    torch.testing.assert_close(i.detach().cpu(), mean[[4, 4]])
    (u.sum() + i.sum()).backward()
    assert enc.embedding_dict["user_emb"].grad.abs().sum() > 0


def test_lightgcn_encoder_sparse_dropout_keeps_and_rescales() -> None:
    enc = make_encoder()
    adj = enc.sparse_norm_adj
    torch.manual_seed(0)                                   # keeps 2 of the 6 entries
    out = enc.sparse_dropout(adj, 0.5, adj._nnz()).coalesce()
    kept = {tuple(ix): v for ix, v in zip(out.indices().t().tolist(), out.values().tolist())}
    full = {tuple(ix): v for ix, v in zip(adj.indices().t().tolist(), adj.values().tolist())}
    assert 0 < len(kept) < len(full)
    for ix, v in kept.items():
        assert v == pytest.approx(2 * full[ix])            # 1 / (1 - rate)
    assert enc.sparse_dropout(adj, 0.0, adj._nnz())._nnz() == adj._nnz()
    # forward draws the rate from numpy's generator: drop_ratio 0 keeps every edge
    enc.drop_ratio = 0.0
    u, _ = enc((torch.arange(2), torch.arange(3)))
    torch.testing.assert_close(u.detach(), enc.get_embedding()[0])


# --- common.loss and common.init ---------------------------------------------------------------
def test_losses_match_mmrec_formulas() -> None:
    a = torch.tensor([[3.0, 4.0]])                          # norm 5, 1 row
    b = torch.tensor([[1.0, 0.0], [0.0, 0.0]])              # norm 1, 2 rows
    assert float(EmbLoss()(a, b)) == pytest.approx((5 + 1) / 2)   # divided by the LAST one's rows
    assert float(EmbLoss()(b, a)) == pytest.approx((1 + 5) / 1)
    assert float(EmbLoss(norm=1)(a)) == pytest.approx(7.0)
    assert float(L2Loss()(a, b)) == pytest.approx(0.5 * (9 + 16 + 1))
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    expected = -(math.log(1e-10 + 1 / (1 + math.exp(-1))) + math.log(1e-10 + 1 / (1 + math.exp(1)))) / 2
    assert float(BPRLoss()(pos, neg)) == pytest.approx(expected)


@pytest.mark.parametrize("init", [xavier_normal_initialization, xavier_uniform_initialization])
def test_initialisers_touch_embeddings_and_linears_only(init) -> None:
    model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 8), nn.LayerNorm(8))
    for p in model.parameters():
        nn.init.constant_(p, 7.0)
    model.apply(init)
    assert model[0].weight.std() > 0 and model[1].weight.std() > 0
    assert (model[0].weight.abs() < 7).all()
    assert torch.equal(model[1].bias, torch.zeros(8))
    assert torch.equal(model[2].weight, torch.full((8,), 7.0))   # other modules untouched


# --- scipy dok_matrix._update shim -------------------------------------------------------------
def test_dok_update_adds_and_replaces_entries() -> None:
    a = sp.dok_matrix((3, 3), dtype=np.float32)
    a._update({(0, 1): 1, (2, 0): 1})
    a._update({(0, 1): 5, (1, 1): 2})
    assert a.nnz == 3
    np.testing.assert_array_equal(a.toarray(), [[0, 5, 0], [0, 2, 0], [1, 0, 0]])


def test_dok_update_builds_mmrec_adjacency() -> None:
    # the way MMRec models fill their user-item graph, as numpy-int keys from a coo matrix
    n_users, n_items = INTER.shape
    a = sp.dok_matrix((n_users + n_items,) * 2, dtype=np.float32)
    data = dict(zip(zip(INTER.row, INTER.col + n_users), [1] * INTER.nnz))
    data.update(dict(zip(zip(INTER.col + n_users, INTER.row), [1] * INTER.nnz)))
    a._update(data)
    np.testing.assert_array_equal(np.asarray((a > 0).sum(axis=1)).ravel(), [2, 1, 1, 2, 0])
    binary = sp.csr_matrix(INTER)
    binary.data[:] = 1
    np.testing.assert_array_equal(a.toarray(), bipartite_adjacency(binary).toarray())


def test_dok_shim_installs_only_when_missing(monkeypatch) -> None:
    assert install_dok_update() is False                     # present (scipy's own or ours)
    if sp.dok_matrix._update is not compat._dok_update:
        pytest.skip("this scipy (< 1.13) has its own dok_matrix._update; the shim stays out")
    monkeypatch.delattr(sp.dok_matrix, "_update")
    assert install_dok_update() is True
    a = sp.dok_matrix((2, 2))
    a._update({(1, 0): 3.0})
    assert a[1, 0] == 3.0
