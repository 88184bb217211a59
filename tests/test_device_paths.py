"""Work on the model's device (issue 15): the torch sampler and shuffler used on CUDA, FREEDOM's
pruned graph built with torch ops, strict deterministic mode, opt-in bf16 autocast; and the pins
that keep the CPU path bit for bit what it was (checksums taken before these changes)."""
from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import make_config, make_data
from utils import dataloader as dl
from utils.dataloader import DeviceNegativeSampler, TrainDataLoader
from utils.graph import (degree_sensitive_prune, edge_adjacency, inverse_sqrt_table, normalized_adjacency,
                         sym_normalize)
from utils.profiling import count_host_syncs
from utils.results import point_key
from utils.utils import get_model, init_seed

# sha256 of the CPU batches and graphs, computed with the numpy/scipy code before issue 15
EPOCH1 = "be58546a09389fa6367009cb59c1189a4ad04c0a65c49e02ffce6f999044bec1"
EPOCH2 = "86edbc21bc4fc2fb5725698614b73eb8c5d91ab9899be6c536c98ef69d68c9ab"
FIRST3 = "da99be542825b157b6e1775e5c5d5a7e31e2eff2940d61e5d10123e910a5c571"
FULL_SAMPLING = "c94bf0e0685810777c35c05241b22ac37b9afd906ae2e3db705e1248cf386ed9"
NO_NEGATIVES = "a2d1e33b74c090efbecbb7b270e76836730ca689d297c8dfa9ba34b521f0b6d4"
PRUNED = {"keep": "0379fb657dd38dfc4ed1e7d905ca4c4926eead18d09a5fba76cdb345402d32e5",
          "crow": "6c43e12bc7b2d7ddd6b245c8b9d36723cd79d91cbcc6bfea3d9291f50bfe72c4",
          "col": "941db368e8990aa4a8488fd66ca250b7a84ae7df9dfdeabde15f932bcce9d6fa"}
# FREEDOM's pruned graphs in its first two epochs: crow and col indices only (integers, the same on
# every CPU; re-taken from the unchanged code when the float pins proved machine-dependent)
FREEDOM_EPOCHS = ["aadb945c99e3c448525fc764277f7a03eb7a34079a83135509f829aa6c772d60",
                  "abf40e50c656a51ccf42438aea5c54c5fb4bae66945843e1951c11c8a04b608b"]
FREEDOM_FIRST_LOSS = 0.6930472254753113


def sha(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def loader_for(data, **config) -> TrainDataLoader:
    """A fresh training loader over ``data``'s training split (its own streams)."""
    cfg = {"use_neg_sampling": True, "use_full_sampling": False, "device": "cpu", "seed": 999, **config}
    return TrainDataLoader(cfg, data.train.dataset, batch_size=2048)


# --- the CPU path is what it was ----------------------------------------------------------------
def test_cpu_batches_are_bit_identical_to_before(ml100k_data) -> None:
    loader = loader_for(ml100k_data)
    loader.pretrain_setup(999)
    assert loader.device is None                              # numpy streams on the CPU
    assert sha(*loader) == EPOCH1
    assert sha(*loader) == EPOCH2
    loader.pretrain_setup(999)
    assert sha(*[b for _, b in zip(range(3), loader)]) == FIRST3
    full = loader_for(ml100k_data, use_full_sampling=True)
    full.pretrain_setup(5)
    assert sha(*full) == FULL_SAMPLING
    plain = loader_for(ml100k_data, use_neg_sampling=False)
    plain.pretrain_setup(5)
    assert sha(*plain) == NO_NEGATIVES


def test_pruned_graph_on_cpu_is_bit_identical_to_before(ml100k_data) -> None:
    inter = ml100k_data.train.inter_matrix("coo")
    users = torch.as_tensor(inter.row, dtype=torch.long)
    items = torch.as_tensor(inter.col, dtype=torch.long)
    nu, ni = ml100k_data.train.dataset.n_users, ml100k_data.train.dataset.n_items
    torch.manual_seed(999)
    keep = degree_sensitive_prune(users, items, nu, ni, 0.8)
    adj = edge_adjacency(users[keep], items[keep], nu, ni)
    assert sha(keep) == PRUNED["keep"]
    assert (sha(adj.crow_indices()), sha(adj.col_indices())) == (PRUNED["crow"], PRUNED["col"])
    assert adj.crow_indices().dtype == adj.col_indices().dtype == torch.int32
    # the values: bit for bit the scipy path's on this machine (numpy's float32 power differs in the
    # last bit between CPUs' SIMD paths, so their own checksum is pinned only where it was taken)
    assert torch.equal(adj.values(), scipy_values(users[keep], items[keep], nu, ni))


def test_freedom_epochs_on_cpu_are_bit_identical_to_before() -> None:
    cfg = make_config("FREEDOM", vision_feature_file="", dropout=0.8)
    data = make_data(cfg)
    init_seed(999, True)
    data.train.pretrain_setup(999)
    model = get_model("FREEDOM")(cfg, data.train)
    seen = []
    for _ in range(2):
        model.pre_epoch_processing()
        adj = model.masked_adj
        seen.append(sha(adj.crow_indices(), adj.col_indices()))
        rows = torch.repeat_interleave(torch.arange(adj.shape[0]), adj.crow_indices().diff().long())
        users = rows < model.n_users  # the user rows hold every kept edge once
        assert torch.equal(adj.values(), scipy_values(rows[users], adj.col_indices().long()[users] - model.n_users,
                                                      model.n_users, model.n_items))
    assert seen == FREEDOM_EPOCHS
    assert model.calculate_loss(next(iter(data.train))).item() == pytest.approx(FREEDOM_FIRST_LOSS, rel=1e-6)


def scipy_values(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """The values of ``normalized_adjacency`` (numpy/scipy, the code before issue 15) of these edges."""
    inter = sp.coo_matrix((np.ones(users.numel(), dtype=np.float32), (users.numpy(), items.numpy())),
                          shape=(n_users, n_items))
    return normalized_adjacency(inter).values()


# --- FREEDOM's pruned graph with torch ops --------------------------------------------------------
def scipy_reference(users: torch.Tensor, items: torch.Tensor, nu: int, ni: int) -> torch.Tensor:
    """The pre-issue-15 path: edges to the host, scipy, back to torch."""
    inter = sp.csr_matrix((np.ones(users.numel(), np.float32), (users.numpy(), items.numpy())), shape=(nu, ni))
    inter.sum_duplicates()
    inter.data[:] = 1.0
    return normalized_adjacency(inter)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edge_adjacency_equals_the_scipy_graph_bitwise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nu, ni = 50, 70
    n = 400
    users = torch.from_numpy(rng.integers(0, nu - 5, n))     # the last users and items: no edge
    items = torch.from_numpy(rng.integers(0, ni - 5, n))     # repeats: a repeated edge counts once
    ours, ref = edge_adjacency(users, items, nu, ni), scipy_reference(users, items, nu, ni)
    for a, b in ((ours.crow_indices(), ref.crow_indices()), (ours.col_indices(), ref.col_indices()),
                 (ours.values(), ref.values())):
        assert a.dtype == b.dtype and torch.equal(a, b)
    dense = ours.to_dense()
    assert torch.equal(dense, dense.t()) and (dense[nu - 1] == 0).all()


def test_inverse_sqrt_table_is_sym_normalizes_formula() -> None:
    deg = np.array([0, 1, 2, 3, 7, 1000, 99991], dtype=np.float32)
    inv = np.zeros_like(deg)
    np.power(deg, -0.5, out=inv, where=deg > 0)
    assert np.array_equal(inverse_sqrt_table(100000)[deg.astype(np.int64)].numpy(), inv)
    mat = sym_normalize(sp.csr_matrix(np.array([[1, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=np.float32)))
    assert mat[0, 1] == inverse_sqrt_table(4)[3] * inverse_sqrt_table(4)[1]


def test_edge_adjacency_never_copies_edges_to_the_host(ml100k_data) -> None:
    inter = ml100k_data.train.inter_matrix("coo")
    users = torch.as_tensor(inter.row, dtype=torch.long)
    items = torch.as_tensor(inter.col, dtype=torch.long)
    nu, ni = ml100k_data.train.dataset.n_users, ml100k_data.train.dataset.n_items
    inverse_sqrt_table(max(nu, ni) + 1, "cpu")                # the one-time table, built before
    keep = degree_sensitive_prune(users, items, nu, ni, 0.8, torch.Generator().manual_seed(1))
    with count_host_syncs() as syncs:
        edge_adjacency(users[keep], items[keep], nu, ni)
    assert syncs["numpy"] == 0 and syncs.total == 1          # only the number of distinct edges


# --- the device sampler and shuffler (forced onto the CPU here: same code as on CUDA) --------------
@pytest.fixture
def on_device(monkeypatch):
    monkeypatch.setattr(dl, "samples_on_device", lambda device: device is not None)


def test_device_path_batches_follow_the_rules(ml100k_data, on_device) -> None:
    loader = loader_for(ml100k_data)
    loader.pretrain_setup(7)
    assert loader.device == torch.device("cpu") and loader.generator is not None
    seen = set(zip(loader.users.tolist(), loader.items.tolist()))
    batches = list(loader)
    assert all(b.dtype == torch.long and b.shape[0] == 3 for b in batches)
    assert [b.shape[1] for b in batches[:-1]] == [2048] * (len(batches) - 1) and len(batches) == len(loader)
    data = torch.cat(batches, dim=1)
    assert not any((u, n) in seen for u, n in zip(data[0].tolist(), data[2].tolist()))
    assert set(map(tuple, data[:2].T.tolist())) == seen      # every training row once per epoch


def test_device_path_is_seeded_reset_and_resumable(ml100k_data, on_device) -> None:
    loader = loader_for(ml100k_data)
    loader.pretrain_setup(3)
    first = torch.cat(list(loader), 1)
    state = loader.state_dict()
    second = torch.cat(list(loader), 1)
    assert not torch.equal(first, second)                    # reshuffled and resampled every epoch
    loader.load_state_dict(state)
    assert torch.equal(torch.cat(list(loader), 1), second)  # resume: the same next epoch
    loader.pretrain_setup(3)
    assert torch.equal(torch.cat(list(loader), 1), first)
    loader.pretrain_setup(4)
    assert not torch.equal(torch.cat(list(loader), 1), first)
    assert set(state) == {"rng", "sampler", "device_rng", "device_sampler"}


def test_device_path_full_and_plain_sampling(ml100k_data, on_device) -> None:
    full = loader_for(ml100k_data, use_full_sampling=True)
    full.pretrain_setup(1)
    users = torch.cat(list(full))
    assert sorted(users.tolist()) == sorted(set(full.users.tolist()))
    plain = loader_for(ml100k_data, use_neg_sampling=False)
    plain.pretrain_setup(1)
    assert all(b.shape[0] == 2 for b in plain)


def test_device_sampler_forced_choice_and_uniformity() -> None:
    sampler = DeviceNegativeSampler(np.array([0, 0, 1]), np.array([0, 1, 2]), n_items=3, device="cpu", seed=0)
    assert set(sampler.sample(torch.zeros(1000, dtype=torch.long)).tolist()) == {2}
    negs = sampler.sample(torch.ones(4000, dtype=torch.long))
    assert set(negs.tolist()) == {0, 1}
    assert abs((negs == 0).float().mean().item() - 0.5) < 0.05
    pool_only = DeviceNegativeSampler(np.array([0, 1]), np.array([0, 1]), n_items=10, device="cpu", seed=1)
    assert set(pool_only.sample(torch.zeros(500, dtype=torch.long)).tolist()) == {1}


def test_the_cpu_never_takes_the_device_path() -> None:
    assert not dl.samples_on_device("cpu") and not dl.samples_on_device(None)
    assert dl.samples_on_device("cuda:0") and dl.samples_on_device(torch.device("cuda"))


# --- strict determinism -----------------------------------------------------------------------------
@pytest.fixture
def restore_determinism(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_deterministic_true_is_strict(restore_determinism) -> None:
    init_seed(1, True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    with pytest.raises(RuntimeError, match="deterministic"):  # an error, no longer a warning
        torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))


def test_deterministic_false_is_the_fast_path(restore_determinism) -> None:
    init_seed(1, False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))


def test_an_existing_cublas_config_is_kept(restore_determinism, monkeypatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    init_seed(1, True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


# --- mixed precision ----------------------------------------------------------------------------
def test_amp_false_leaves_every_results_key_unchanged() -> None:
    cfg = make_config("LightGCN")
    assert cfg["amp"] is False
    body = dict(cfg.final_config_dict)
    without = {k: v for k, v in body.items() if k != "amp"}
    assert point_key(body) == point_key(without)
    assert point_key({**body, "amp": True}) != point_key(without)


def test_autocast_is_bf16_for_dense_products_and_float32_for_sparse() -> None:
    from utils.evaluator import autocast

    x = torch.randn(4, 3)
    adj = sp.random(4, 4, density=0.5, format="csr", dtype=np.float32, random_state=0)
    a = torch.sparse_csr_tensor(torch.from_numpy(adj.indptr.astype(np.int64)), torch.from_numpy(adj.indices.astype(np.int64)),
                                torch.from_numpy(adj.data), size=(4, 4), check_invariants=True)
    with autocast("cpu", True):
        dense, propagated = x @ x.t(), torch.sparse.mm(a, x.to(torch.bfloat16))
    assert dense.dtype == torch.bfloat16
    assert propagated.dtype == torch.float32 and torch.allclose(propagated, torch.sparse.mm(a, x), atol=1e-2)
    with autocast("cpu", False):
        assert (x @ x.t()).dtype == torch.float32


@pytest.mark.parametrize("model_name", ["LightGCN", "SIGREC"])
def test_amp_trains_and_scores(model_name: str, ml100k_data) -> None:
    from common.trainer import Trainer
    from utils.evaluator import evaluate

    overrides = {"amp": True, "epochs": 1}
    if model_name == "SIGREC":
        overrides.update(perturb_eps=0.2, cl_weight=0.01, anchor_weight=0.01, align_weight=0.01)
    cfg = make_config(model_name, **overrides)
    init_seed(999, True)
    ml100k_data.train.pretrain_setup(999)
    model = get_model(model_name)(cfg, ml100k_data.train)
    trainer = Trainer(cfg, model)
    assert trainer.amp
    loss, _ = trainer.run_epoch(ml100k_data.train, 0)
    total = sum(loss) if isinstance(loss, tuple) else loss
    assert math.isfinite(total) and total > 0
    result = evaluate(model, ml100k_data.valid, cfg)
    assert 0.0 < result.mean["recall@20"] <= 1.0
