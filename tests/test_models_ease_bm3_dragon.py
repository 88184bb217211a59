"""EASE, BM3 and DRAGON: closed form against a direct solve, memory refusal, the trainer's
req_training hook, gradients, deterministic scoring, BM3 without negative sampling end to end,
DRAGON's user graph (training rows only, ranked top-k, per-epoch padding) and the shared pieces."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import models.ease as ease_module
from common.trainer import Trainer
from conftest import make_config, make_data
from utils.errors import ConfigError, ModelInputError
from utils.graph import knn_graph, neighbour_matrix, ranked_neighbours, sym_normalize
from utils.quick_start import train_point
from utils.utils import get_model, init_seed

SETTINGS = {
    "EASE": {"reg_weight": 400},
    "BM3": {"n_layers": 1, "reg_weight": 0.1, "dropout": 0.5},
    "DRAGON": {"learning_rate": 0.001, "reg_weight": 0.001},
}


def build(name: str, data, seed: int = 999, **over):
    cfg = make_config(name, **{**SETTINGS[name], **over})
    init_seed(seed)
    return get_model(name)(cfg, data.train), cfg


def first_batch(data, size: int = 512) -> torch.Tensor:
    data.train.pretrain_setup(999)
    return next(iter(data.train))[:, :size]


@pytest.fixture(scope="module")
def text_only_data():
    return make_data(make_config("FREEDOM", vision_feature_file=""))


@pytest.fixture(scope="module")
def bm3_data():
    """ml100k loaded with BM3's config: use_neg_sampling False."""
    return make_data(make_config("BM3", **SETTINGS["BM3"]))


def train_matrix(data) -> sp.csr_matrix:
    m = sp.csr_matrix(data.train.inter_matrix(form="csr"), dtype=np.float64)
    m.data[:] = 1.0
    return m


# --- EASE ------------------------------------------------------------------------------------
def direct_ease(x: np.ndarray, lam: float) -> np.ndarray:
    """Column by column: B_{-j,j} = argmin ||x_j - X_{-j} b||² + λ||b||² (b_jj = 0 by construction)."""
    n = x.shape[1]
    b = np.zeros((n, n))
    for j in range(n):
        rest = np.delete(np.arange(n), j)
        xr = x[:, rest]
        b[rest, j] = np.linalg.solve(xr.T @ xr + lam * np.eye(n - 1), xr.T @ x[:, j])
    return b


def test_ease_closed_form_matches_a_direct_solve() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((30, 12)) < 0.3).astype(np.float64)
    lam = 2.0
    b = ease_module.ease_closed_form(torch.from_numpy(x.T @ x), lam).numpy()
    assert np.allclose(b, direct_ease(x, lam), atol=1e-10)
    assert np.all(np.diag(b) == 0)
    # X B reconstructs X better than B = 0 (and the constrained optimum beats B = 0 in the objective)
    assert np.linalg.norm(x - x @ b) < np.linalg.norm(x)
    assert np.linalg.norm(x - x @ b) ** 2 + lam * np.linalg.norm(b) ** 2 < np.linalg.norm(x) ** 2


def test_ease_model_solves_b_on_ml100k_and_scores_x_b(ml100k_data) -> None:
    model, _ = build("EASE", ml100k_data)
    n = ml100k_data.dataset.n_items
    x = train_matrix(ml100k_data)
    assert not model.fitted
    assert np.allclose(model.gram().numpy(), (x.T @ x).toarray())     # blockwise Gram = XᵀX
    model.fit()
    assert model.B.shape == (n, n) and model.B.dtype == torch.float32
    assert model.B.is_contiguous()     # row-major: sparse @ B must not copy B at every scoring call
    assert torch.all(model.B.diagonal() == 0)
    expect = ease_module.ease_closed_form(torch.from_numpy((x.T @ x).toarray()), 400.0).numpy()
    assert np.abs(model.B.numpy() - expect).max() < 1e-4 * np.abs(expect).max()     # fp32 vs fp64
    users = torch.arange(0, 60)
    model.eval()
    with torch.no_grad():
        first = model.full_sort_predict((users,))
        second = model.full_sort_predict((users,))
    assert first.shape == (60, n) and torch.equal(first, second)
    assert torch.allclose(first, torch.from_numpy(x[:60].toarray()).float() @ model.B, atol=1e-5)
    assert "B" not in model.state_dict()     # never saved: re-solved on load, deterministically
    again, _ = build("EASE", ml100k_data)
    again.load_state_dict(model.state_dict())
    again.eval()
    with torch.no_grad():
        assert torch.equal(again.full_sort_predict((users,)), first)


def test_ease_refuses_when_the_matrix_does_not_fit(ml100k_data, monkeypatch) -> None:
    n = ml100k_data.dataset.n_items
    monkeypatch.setattr(ease_module, "available_memory", lambda device: 2 * n * n * 4 - 1)
    with pytest.raises(ValueError, match=r"needs about 0\.01 GiB .* but only 0\.01 GiB of memory is available"):
        build("EASE", ml100k_data)
    monkeypatch.setattr(ease_module, "available_memory", lambda device: 2 * n * n * 4)
    build("EASE", ml100k_data)   # exactly enough: accepted


def test_available_memory_is_positive() -> None:
    assert ease_module.available_memory("cpu") > 0


def test_ease_text_variant_is_zscored_sum(ml100k_data) -> None:
    model, cfg = build("EASE", ml100k_data, text_weight=0.5)
    plain, _ = build("EASE", ml100k_data)
    users = torch.arange(10)
    model.eval(), plain.eval()
    with torch.no_grad():
        got = model.full_sort_predict((users,))
        base = plain.full_sort_predict((users,))
    k_t = knn_graph(ml100k_data.dataset.t_feat, cfg["text_knn_k"], "cosine")
    text = torch.from_numpy((train_matrix(ml100k_data)[:10] @ k_t).toarray()).float()
    z = lambda s: (s - s.mean(1, keepdim=True)) / s.std(1, unbiased=False, keepdim=True)  # noqa: E731
    assert torch.allclose(got, z(base) + 0.5 * z(text), atol=1e-4)
    assert not torch.equal(got.argsort(1)[:, -20:], z(base).argsort(1)[:, -20:])


def test_ease_text_variant_needs_text(ml100k_data) -> None:
    image_only = make_data(make_config("FREEDOM", text_feature_file=""))
    with pytest.raises(ValueError, match="needs text features"):
        build("EASE", image_only, text_weight=0.5)
    build("EASE", image_only)   # plain EASE needs no features


class NoBatches:
    """A training loader that fails if a batch is read."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __iter__(self):
        raise AssertionError("a req_training=False model must not read batches")

    def __len__(self) -> int:
        return len(self.loader)


def test_trainer_calls_fit_once_per_epoch_instead_of_batches(ml100k_data) -> None:
    model, cfg = build("EASE", ml100k_data)
    calls = []
    solve = model.fit
    model.fit = lambda train_data=None: (calls.append(train_data), solve(train_data))
    trainer = Trainer(cfg, model)
    assert trainer.req_training is False
    fit = trainer.fit(NoBatches(ml100k_data.train), ml100k_data.valid, ml100k_data.test)
    assert len(calls) == 1 and model.fitted                    # epochs: 1 in EASE.yaml
    assert fit.epochs_run == 1 and fit.best_epoch == 0 and fit.history[0]["loss"] == 0.0
    assert fit.best_valid["recall@20"] > 0.2 and fit.best_test["recall@20"] > 0.2
    assert trainer.scheduler.last_epoch == 0                   # no scheduler step without training


def test_mmrec_req_training_key_is_honoured(ml100k_data) -> None:
    model, cfg = build("BM3", ml100k_data)
    assert Trainer(cfg, model).req_training is True
    cfg["req_training"] = False               # an MMRec yaml (ItemKNNCBF) sets the key instead
    assert Trainer(cfg, model).req_training is False


# --- BM3 -------------------------------------------------------------------------------------
def test_bm3_loader_yields_two_rows_and_leaves_the_sampler_alone(bm3_data) -> None:
    bm3_data.train.pretrain_setup(999)
    before = bm3_data.train.sampler.rng.bit_generator.state
    batches = list(bm3_data.train)
    assert all(batch.shape[0] == 2 for batch in batches)
    assert sum(batch.shape[1] for batch in batches) == bm3_data.train.users.size
    assert bm3_data.train.sampler.rng.bit_generator.state == before


def test_bm3_gradients_reach_every_parameter(bm3_data) -> None:
    model, _ = build("BM3", bm3_data)
    model.train()
    loss = model.calculate_loss(first_batch(bm3_data))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"BM3.{pname} gets no gradient"


def test_bm3_three_row_batch_gives_the_same_loss(ml100k_data, bm3_data) -> None:
    two = first_batch(bm3_data)
    three = torch.cat([two, two[1:2]])       # a [3, B] batch: row 2 is ignored
    losses = []
    for batch in (two, three, two):
        model, _ = build("BM3", ml100k_data, seed=5)
        torch.manual_seed(11)                # the same dropout masks
        losses.append(model.calculate_loss(batch).item())
    assert losses[0] == losses[1] == losses[2]


def test_bm3_loss_terms(bm3_data) -> None:
    """cl_weight and dropout act where they should: p = 0 makes the targets the clean rows."""
    model, _ = build("BM3", bm3_data, dropout=0.0, reg_weight=0.0, cl_weight=0.0)
    batch = first_batch(bm3_data, 64)
    u_all, i_all = model.forward()
    users, items = batch[0], batch[1]
    expect = (2 - F.cosine_similarity(model.predictor(u_all[users]), i_all[items]).mean()
              - F.cosine_similarity(model.predictor(i_all[items]), u_all[users]).mean())
    assert torch.allclose(model.calculate_loss(batch), expect, atol=1e-6)
    model.reg_weight = 1.0
    reg = (u_all.norm() + i_all.norm()) / model.n_items           # MMRec's EmbLoss: unsquared
    assert torch.allclose(model.calculate_loss(batch), expect + reg, atol=1e-5)


def test_bm3_scores_deterministic(bm3_data) -> None:
    model, _ = build("BM3", bm3_data)
    users = torch.arange(40)
    model.eval()
    with torch.no_grad():
        first = model.full_sort_predict((users,))
        model.train(), model.eval()
        torch.rand(100)
        second = model.full_sort_predict((users,))
        u_all, i_all = model.forward()
    assert first.shape == (40, bm3_data.dataset.n_items) and torch.equal(first, second)
    assert torch.allclose(first, model.predictor(u_all[users]) @ model.predictor(i_all).t(), atol=1e-5)


@pytest.mark.slow
def test_bm3_trains_end_to_end_without_negatives(bm3_data, tmp_path) -> None:
    cfg = make_config("BM3", **SETTINGS["BM3"], epochs=2)
    assert cfg["use_neg_sampling"] is False
    rec = train_point(cfg, bm3_data, tmp_path)
    assert rec["status"] == "ok" and rec["epochs_run"] == 2
    assert all(math.isfinite(h["loss"]) for h in rec["history"])
    assert rec["history"][1]["loss"] < rec["history"][0]["loss"]
    assert rec["valid"]["recall@20"] > 0.05          # random ranking is about 20 / 1349


# --- DRAGON ----------------------------------------------------------------------------------
def test_dragon_gradients_reach_every_parameter(ml100k_data) -> None:
    model, _ = build("DRAGON", ml100k_data)
    model.pre_epoch_processing()
    model.train()
    loss = model.calculate_loss(first_batch(ml100k_data))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    names = [n for n, _ in model.named_parameters()]
    assert {"weight_u", "preference.v", "preference.t"} <= set(names)
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"DRAGON.{pname} gets no gradient"


def test_dragon_user_graph_is_the_ranked_top_k_of_training_co_interactions(ml100k_data) -> None:
    model, _ = build("DRAGON", ml100k_data)
    k = model.user_knn_k
    x = train_matrix(ml100k_data)
    co = (x @ x.T).toarray()
    np.fill_diagonal(co, 0)
    m = co.shape[0]
    cols, counts, lengths = model.nb_cols.numpy(), model.nb_counts.numpy(), model.nb_len.numpy()
    assert cols.shape == (m, k)
    for u in range(0, m, 37):          # a sample of users, against a plain sort
        order = sorted(np.flatnonzero(co[u]), key=lambda v: (-co[u, v], v))[:k]
        assert lengths[u] == len(order)
        assert list(cols[u, :lengths[u]]) == order
        assert np.array_equal(counts[u, :lengths[u]], co[u, order])
    filled = np.arange(k)[None, :] < lengths[:, None]
    owner = np.repeat(np.arange(m)[:, None], k, axis=1)
    assert np.all(counts[filled] > 0) and not np.any(cols[filled] == owner[filled])   # never the user itself
    assert np.all(counts[~filled] == 0)
    # built from training rows only: all splits would give other counts
    full = sp.csr_matrix(ml100k_data.dataset.inter_matrix("csr"), dtype=np.float64)
    full_co = (full @ full.T).toarray()
    assert not np.array_equal(full_co[np.arange(m)[:, None], cols][:, :1], counts[:, :1])


def test_dragon_epoch_sampling_pads_with_copies_and_softmaxes_counts(ml100k_data) -> None:
    model, _ = build("DRAGON", ml100k_data, user_knn_k=900)     # ml100k: 391 users have fewer than 900
    lengths = model.nb_len
    padded = (lengths > 0) & (lengths < 900)
    full = lengths == 900
    assert padded.any() and full.any()
    first = model.epoch_cols.clone()
    for u in torch.nonzero(padded).flatten()[:20].tolist():
        own = set(model.nb_cols[u, :lengths[u]].tolist())
        assert set(model.epoch_cols[u].tolist()) <= own               # only copies of real neighbours
        assert model.epoch_cols[u, :lengths[u]].tolist() == model.nb_cols[u, :lengths[u]].tolist()
    w = model.epoch_weights
    assert torch.allclose(w[lengths > 0].sum(1), torch.ones(int((lengths > 0).sum())), atol=1e-5)
    assert torch.all(w[lengths == 0] == 0)
    model.pre_epoch_processing()
    assert torch.equal(model.epoch_cols[full], first[full])            # nothing to pad: same lists
    assert not torch.equal(model.epoch_cols[padded], first[padded])    # padding drawn afresh
    adj = model.user_adj()[0].to_dense()
    dense = torch.zeros(model.n_users, model.n_users).scatter_add_(1, model.epoch_cols, model.epoch_weights)
    assert torch.allclose(adj, dense, atol=1e-6)


def test_dragon_item_graph_is_freedoms_mix(ml100k_data) -> None:
    model, cfg = build("DRAGON", ml100k_data)
    ds = ml100k_data.dataset
    w = cfg["mm_image_weight"]
    expect = (w * sym_normalize(knn_graph(ds.v_feat, cfg["knn_k"], "binary"))
              + (1 - w) * sym_normalize(knn_graph(ds.t_feat, cfg["knn_k"], "binary")))
    assert abs(sp.csr_matrix(model.mm_adj.to_dense().numpy()) - expect).max() < 1e-6


def test_dragon_loss_is_log2_bpr_plus_reg(ml100k_data) -> None:
    model, _ = build("DRAGON", ml100k_data, reg_weight=0.0)
    batch = first_batch(ml100k_data, 128)
    u_all, i_all = model.forward()
    u = u_all[batch[0]]
    diff = (u * i_all[batch[1]]).sum(-1) - (u * i_all[batch[2]]).sum(-1)
    assert torch.allclose(model.calculate_loss(batch), -torch.log2(torch.sigmoid(diff)).mean(), atol=1e-6)
    model.reg_weight = 0.5
    reg = (model.preference["v"][batch[0]].pow(2).mean() + model.preference["t"][batch[0]].pow(2).mean()
           + model.weight_u.pow(2).mean())
    assert torch.allclose(model.calculate_loss(batch), -torch.log2(torch.sigmoid(diff)).mean() + 0.5 * reg,
                          atol=1e-6)


def test_dragon_scores_deterministic_and_survive_a_reload(ml100k_data) -> None:
    model, _ = build("DRAGON", ml100k_data)
    model.pre_epoch_processing()
    users = torch.arange(50)
    model.eval()
    with torch.no_grad():
        first = model.full_sort_predict((users,))
        model.train(), model.eval()
        torch.rand(100)
        second = model.full_sort_predict((users,))
    assert first.shape == (50, ml100k_data.dataset.n_items) and first.shape[0] == 50
    assert torch.isfinite(first).all() and torch.equal(first, second)
    other, _ = build("DRAGON", ml100k_data, seed=3)
    other.load_state_dict(model.state_dict())    # the epoch's user graph travels with the weights
    other.eval()
    with torch.no_grad():
        assert torch.equal(other.full_sort_predict((users,)), first)


# --- one modality, none ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["BM3", "DRAGON"])
def test_text_only_runs(name, text_only_data) -> None:
    model, _ = build(name, text_only_data)
    assert model.v_feat is None
    model.pre_epoch_processing()
    model.train()
    loss = model.calculate_loss(first_batch(text_only_data))
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        assert model.full_sort_predict((torch.arange(5),)).shape == (5, text_only_data.dataset.n_items)


@pytest.mark.parametrize("name", ["BM3", "DRAGON"])
def test_no_features_is_refused(name) -> None:
    data = make_data(make_config("FREEDOM", vision_feature_file="", text_feature_file=""))
    with pytest.raises(ModelInputError, match="needs at least one feature file"):
        build(name, data)


# --- shared graph pieces ---------------------------------------------------------------------
def test_neighbour_matrix_sums_repeats_and_drops_zeros() -> None:
    g = torch.Generator().manual_seed(0)
    cols = torch.randint(0, 6, (7, 9), generator=g)
    weights = torch.rand(7, 9, generator=g) - 0.3
    weights[3] = 0.0
    adj = neighbour_matrix(cols, weights, 8)
    expect = torch.zeros(7, 8).scatter_add_(1, cols, weights)
    assert torch.allclose(adj.to_dense(), expect, atol=1e-6)
    assert adj.crow_indices()[4] == adj.crow_indices()[3]                     # an all-zero row stores nothing
    assert adj.values().numel() == int((expect != 0).sum())


def test_ranked_neighbours_order_and_lengths() -> None:
    g = sp.csr_matrix(np.array([[0, 3, 1, 3, 0], [0, 0, 0, 0, 0], [2, 2, 0, 5, 1]], dtype=np.float32))
    cols, vals, lengths = ranked_neighbours(g, 3)
    assert cols.tolist()[0] == [1, 3, 2] and vals.tolist()[0] == [3, 3, 1]    # ties: smaller column first
    assert lengths.tolist() == [3, 0, 3] and cols.tolist()[2] == [3, 0, 1]
    assert vals.tolist()[1] == [0, 0, 0]
