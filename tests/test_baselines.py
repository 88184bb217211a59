"""FREEDOM, LGMRec, MGCN and VBPR: shapes, gradients, determinism, modality handling, and the
MMRec contract for a model written outside the harness."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import scipy.sparse as sp
import torch

from conftest import ROOT, build_model, first_batch
from utils.errors import ConfigError, ModelInputError
from utils.graph import knn_graph, sym_normalize
from utils.utils import init_seed

MODELS = {
    "FREEDOM": {"dropout": 0.8, "reg_weight": 1e-3},
    "LGMRec": {"cl_weight": 1e-3},
    "MGCN": {"cl_loss": 0.01},
    "VBPR": {"reg_weight": 1e-4},
}


def build(name: str, data, seed: int = 999, **over):
    return build_model(name, data, {**MODELS[name], **over}, seed)


@pytest.mark.parametrize("name", list(MODELS))
def test_loss_and_gradients_reach_every_parameter(name, ml100k_data) -> None:
    model, _ = build(name, ml100k_data)
    model.pre_epoch_processing()
    model.train()
    loss = model.calculate_loss(first_batch(ml100k_data))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}.{pname} gets no gradient"
        assert param.grad.abs().sum() > 0, f"{name}.{pname} gets a zero gradient"


@pytest.mark.parametrize("name", list(MODELS))
def test_scores_shape_and_twice_identical(name, ml100k_data) -> None:
    model, _ = build(name, ml100k_data)
    users = torch.arange(0, 50)
    model.eval()
    with torch.no_grad():
        first = model.full_sort_predict((users,))
        model.train()                       # drop the scoring cache, move the RNG, score again
        model.pre_epoch_processing()
        torch.rand(1000)
        model.eval()
        second = model.full_sort_predict((users,))
    assert first.shape == (50, ml100k_data.dataset.n_items)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", ["FREEDOM", "VBPR"])
def test_mode_switch_drops_the_scoring_cache(name, ml100k_data) -> None:
    # AbstractRecommender.train clears _cache; a stale one would score with old weights
    model, _ = build(name, ml100k_data)
    model.eval()
    with torch.no_grad():
        model.full_sort_predict((torch.arange(5),))
    assert model._cache is not None
    model.train()
    assert model._cache is None
    with torch.no_grad():
        model.full_sort_predict((torch.arange(5),))
    model.eval()                            # eval() is train(False): it drops the cache too
    assert model._cache is None


def test_mode_switch_without_a_cache_adds_none(ml100k_data) -> None:
    model, _ = build_model("BPR", ml100k_data, {})
    assert not hasattr(model, "_cache")
    assert model.train() is model and model.training
    assert model.eval() is model and not model.training
    assert not hasattr(model, "_cache")


@pytest.mark.parametrize("name", list(MODELS))
def test_same_seed_same_loss(name, ml100k_data) -> None:
    batch = first_batch(ml100k_data)
    losses = []
    for _ in range(2):
        model, _ = build(name, ml100k_data, seed=7)
        model.pre_epoch_processing()
        model.train()
        losses.append(model.calculate_loss(batch).item())
    assert losses[0] == losses[1]


def test_lgmrec_gumbel_noise_in_training_only(ml100k_data) -> None:
    model, _ = build("LGMRec", ml100k_data, keep_rate=1.0)
    model.train()
    with torch.no_grad():
        a, b = model.forward()[1], model.forward()[1]
        model.eval()
        c, d = model.forward()[1], model.forward()[1]
    assert not torch.equal(a, b)          # training draws fresh Gumbel noise
    assert torch.equal(c, d)              # scoring is the plain softmax: no noise


def test_lgmrec_memberships_are_distributions(ml100k_data) -> None:
    model, _ = build("LGMRec", ml100k_data)
    model.eval()
    logits = model.feats["v"] @ model.hyper["v"]
    member = model._membership(logits)
    assert member.shape == (ml100k_data.dataset.n_items, model.hyper_num)
    assert torch.allclose(member.sum(1), torch.ones(member.shape[0]), atol=1e-5)


def test_freedom_item_graph_and_pruning(ml100k_data) -> None:
    model, cfg = build("FREEDOM", ml100k_data)
    ds = ml100k_data.dataset
    w = cfg["mm_image_weight"]
    expect = (w * sym_normalize(knn_graph(ds.v_feat, cfg["knn_k"], "binary"))
              + (1 - w) * sym_normalize(knn_graph(ds.t_feat, cfg["knn_k"], "binary")))
    got = sp.csr_matrix(model.mm_adj.to_dense().numpy())
    assert abs(got - expect).max() < 1e-6
    n_edges = model.edge_users.numel()
    model.pre_epoch_processing()
    first = model.masked_adj
    assert first._nnz() == 2 * math.floor(n_edges * (1 - cfg["dropout"]))
    model.pre_epoch_processing()
    assert not torch.equal(first.col_indices(), model.masked_adj.col_indices())  # new graph each epoch
    assert model.norm_adj._nnz() == 2 * n_edges                                   # scoring graph is full


@pytest.mark.parametrize("name", ["FREEDOM", "VBPR"])
def test_text_only_runs(name, text_only_data) -> None:
    model, _ = build(name, text_only_data)
    assert model.v_feat is None and model.t_feat is not None
    model.pre_epoch_processing()
    model.train()
    loss = model.calculate_loss(first_batch(text_only_data))
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        assert model.full_sort_predict((torch.arange(5),)).shape == (5, text_only_data.dataset.n_items)


@pytest.mark.parametrize("name", ["LGMRec", "MGCN"])
def test_text_only_is_refused_clearly(name, text_only_data) -> None:
    with pytest.raises(ModelInputError, match="needs both image and text"):
        build(name, text_only_data)


def test_mgcn_fusion_weights_are_a_softmax(ml100k_data) -> None:
    model, _ = build("MGCN", ml100k_data)
    users, items, side, content = model.forward()
    assert users.shape == (ml100k_data.dataset.n_users, 64) and items.shape[0] == ml100k_data.dataset.n_items
    assert torch.allclose(torch.cat([users, items]), content + side)


def test_vbpr_item_vector_layout(ml100k_data) -> None:
    model, _ = build("VBPR", ml100k_data)
    items = torch.tensor([3, 5])
    vec = model.item_vectors(items)
    assert vec.shape == (2, 128) and model.u_embedding.weight.shape[1] == 128
    assert torch.equal(vec[:, :64], model.i_embedding.weight[items])
    feats = torch.cat([model.t_feat, model.v_feat], 1)[items]  # text first, as in MMRec
    assert torch.allclose(vec[:, 64:], model.item_linear(feats))


@pytest.mark.slow
def test_mmrec_style_outside_model_runs_through_main(tmp_path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    here = Path(__file__).resolve().parent / "mmrec_style"
    shutil.copy(here / "outside_model.py", src / "models" / "outsidemodel.py")
    shutil.copy(here / "OutsideModel.yaml", src / "configs" / "model" / "OutsideModel.yaml")
    out = tmp_path / "out"
    cmd = [sys.executable, str(src / "main.py"), "-m", "OutsideModel", "-d", "ml100k", "--epochs", "2",
           "--data_path", str(ROOT / "data") + "/", "--output", str(out), "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1
    rec = records[0]
    assert rec["model"] == "OutsideModel" and rec["status"] == "ok" and rec["epochs_run"] == 2
    assert rec["parameters"]["reg_weight"] == 0.001
    # far above random ranking (about 20 / 1682 for Recall@20)
    assert rec["test"]["recall@20"] > 0.05 and rec["valid"]["recall@20"] > 0.05


def test_vbpr_feature_order_and_init_follow_mmrec(ml100k_data) -> None:
    """MMRec's VBPR concatenates text then image, and draws Xavier-uniform user (n_users x 2d) and
    item (n_items x d) tables, then a Linear re-initialised Xavier-normal with a zero bias."""
    model, cfg = build("VBPR", ml100k_data, seed=7)
    assert cfg["feature_order"] == "text_image"
    assert torch.equal(model.item_raw_features, torch.cat([model.t_feat, model.v_feat], dim=1))
    # the same draws in the same order as MMRec's constructor
    init_seed(7)
    d = cfg["embedding_size"]
    users = torch.nn.init.xavier_uniform_(torch.empty(model.n_users, 2 * d))
    items = torch.nn.init.xavier_uniform_(torch.empty(model.n_items, d))
    linear = torch.nn.Linear(model.item_raw_features.shape[1], d)
    torch.nn.init.xavier_normal_(linear.weight)
    assert torch.equal(model.u_embedding.weight, users) and torch.equal(model.i_embedding.weight, items)
    assert torch.equal(model.item_linear.weight, linear.weight) and not model.item_linear.bias.any()

    other, _ = build("VBPR", ml100k_data, feature_order="image_text")
    assert torch.equal(other.item_raw_features, torch.cat([other.v_feat, other.t_feat], dim=1))
    with pytest.raises(ConfigError, match="feature_order = .audio_text.*must be one of text_image, image_text"):
        build("VBPR", ml100k_data, feature_order="audio_text")


def test_vbpr_checkpoint_of_the_old_feature_order_scores_the_same(ml100k_data) -> None:
    """A state dict written before the MMRec order (image first, no feature_layout) is reordered on load."""
    model, _ = build("VBPR", ml100k_data)
    state = model.state_dict()
    t_dim = model.t_feat.shape[1]
    legacy = {k: v.clone() for k, v in state.items() if k != "feature_layout"}
    w = state["item_linear.weight"]
    legacy["item_linear.weight"] = torch.cat([w[:, t_dim:], w[:, :t_dim]], dim=1)  # image block first
    fresh, _ = build("VBPR", ml100k_data, seed=1)
    fresh.load_state_dict(legacy)
    again, _ = build("VBPR", ml100k_data, seed=2)
    again.load_state_dict(state)  # a current checkpoint loads unchanged
    users = torch.arange(40)
    for m in (model, fresh, again):
        m.eval()
    with torch.no_grad():
        expect = model.full_sort_predict((users,))
        assert torch.equal(fresh.full_sort_predict((users,)), expect)
        assert torch.equal(again.full_sort_predict((users,)), expect)
