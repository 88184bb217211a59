"""Properties of SIGREC (spec section 10): graph builders, perturbation, losses, gradients,
deterministic scoring, the graph cache, and an end-to-end comparison with LightGCN."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from conftest import make_config, make_data
from models.sigrec import (SIGREC, anchor_info_nce, co_interaction_graph, graph_cache_key, info_nce,
                           knn_graph, perturb)


# --- graph builders -------------------------------------------------------------------------
def dense_knn(feat: np.ndarray, k: int) -> dict[int, dict[int, float]]:
    """Reference: dense cosine matrix, the item itself forced in, top-k per row."""
    x = feat / np.linalg.norm(feat, axis=1, keepdims=True)
    sim = x @ x.T
    out = {}
    for i in range(sim.shape[0]):
        row = sim[i].copy()
        row[i] = 2.0
        top = np.argsort(-row)[:k]
        out[i] = {int(j): (1.0 if j == i else float(max(sim[i, j], 0.0))) for j in top}
    return out


@pytest.mark.parametrize("block", [3, 7, 100])
def test_blocked_knn_equals_dense_topk(block: int) -> None:
    rng = np.random.default_rng(0)
    feat = rng.standard_normal((23, 6)).astype(np.float32) + 0.5
    k = 4
    got = knn_graph(feat, k, "cosine", block_size=block)
    ref = dense_knn(feat, k)
    for i in range(feat.shape[0]):
        row = got[i]
        cols = dict(zip(row.indices.tolist(), row.data.tolist()))
        nonzero_ref = {j: v for j, v in ref[i].items() if v > 0}
        assert set(cols) == set(nonzero_ref), f"row {i}"
        for j, v in nonzero_ref.items():
            assert cols[j] == pytest.approx(v, abs=1e-5)
    binary = knn_graph(feat, k, "binary", block_size=block)
    assert np.all(binary.data == 1.0)
    for i in range(feat.shape[0]):
        assert set(binary[i].indices.tolist()) == set(ref[i])


def test_rows_have_at_most_k_entries() -> None:
    rng = np.random.default_rng(1)
    feat = rng.standard_normal((40, 5)).astype(np.float32)
    g = knn_graph(feat, 6, "cosine", block_size=9)
    assert np.diff(g.indptr).max() <= 6
    assert all(i in g[i].indices for i in range(40))  # the item itself is always a neighbour
    inter = sp.random(30, 40, density=0.3, random_state=2, format="csr")
    c = co_interaction_graph(inter, 5, weighting="count", block_size=7)
    assert np.diff(c.indptr).max() <= 5
    assert c.diagonal().sum() == 0


def test_cooccurrence_equals_dense_counts() -> None:
    inter = sp.random(25, 12, density=0.35, random_state=3, format="csr")
    inter.data[:] = 1.0
    dense = (inter.T @ inter).toarray()
    np.fill_diagonal(dense, 0)
    k = 3
    got = co_interaction_graph(inter, k, weighting="count", block_size=5).toarray()
    for i in range(dense.shape[0]):
        # ties broken by the smaller column, as the builder does
        order = sorted(np.flatnonzero(dense[i]), key=lambda j: (-dense[i, j], j))[:k]
        expect = np.zeros(dense.shape[1])
        expect[order] = dense[i, order]
        np.testing.assert_array_equal(got[i], expect)
    assert np.all(co_interaction_graph(inter, k, weighting="binary", block_size=4).data == 1.0)


def write_tiny(tmp_path, rows: list[tuple[int, int, int]], n_items: int) -> dict:
    """A tiny MMRec-format dataset under tmp_path/ml100k; returns config overrides for it."""
    folder = tmp_path / "ml100k"
    folder.mkdir()
    lines = ["userID\titemID\trating\ttimestamp\tx_label"] + [f"{u}\t{i}\t1\t0\t{lab}" for u, i, lab in rows]
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    np.save(folder / "image_feat.npy", rng.standard_normal((n_items, 8)).astype(np.float32))
    np.save(folder / "text_feat.npy", rng.standard_normal((n_items, 5)).astype(np.float32))
    return {"data_path": str(tmp_path), "inter_file_name": "tiny.inter",
            "graph_cache_dir": str(tmp_path / "cache"), "knn_k": 3, "topk": [2], "valid_metric": "Recall@2"}


def test_cooccurrence_graph_ignores_valid_and_test_rows(tmp_path) -> None:
    # training: user 0 -> items 0,1; user 1 -> 1,2; user 2 -> 2,3; user 3 -> 0,3
    # user 0's valid item 3 and test item 2 would add edges 1-3 and 0-2 if they leaked into C
    rows = [(0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 2, 0), (2, 2, 0), (2, 3, 0), (3, 0, 0), (3, 3, 0),
            (0, 3, 1), (0, 2, 2)]
    cfg = make_config("SIGREC", **write_tiny(tmp_path, rows, 4))
    data = make_data(cfg)
    model = SIGREC(cfg, data.train)
    co = model.co_graph.toarray()
    assert co[1, 3] == 0 and co[3, 1] == 0 and co[0, 2] == 0 and co[2, 0] == 0
    assert co[0, 1] > 0 and co[2, 3] > 0
    full = data.dataset.inter_matrix("csr")  # all splits: here the leak would show
    leaked = co_interaction_graph(full, 10).toarray()
    assert leaked[1, 3] > 0 and leaked[0, 2] > 0


# --- perturbation and losses ----------------------------------------------------------------
def test_perturbation_size_and_sign() -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 16) * torch.logspace(-2, 1, 50)[:, None]  # norms over three decades
    for eps in (0.1, 0.2):
        delta = perturb(x, eps, "modulus")
        np.testing.assert_allclose(delta.norm(dim=1).numpy(), (eps * x.norm(dim=1)).numpy(), rtol=1e-5)
        assert torch.equal(torch.sign(delta), torch.sign(x))
        const = perturb(x, eps, "constant")
        np.testing.assert_allclose(const.norm(dim=1).numpy(), np.full(50, eps), rtol=1e-5)
        assert torch.equal(torch.sign(const), torch.sign(x))
    xg = x.clone().requires_grad_(True)
    assert not perturb(xg, 0.1, "modulus").requires_grad  # the noise carries no gradient
    with pytest.raises(ValueError):
        perturb(x, 0.1, "other")


def test_anchor_infonce_hand_computed() -> None:
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    sv = torch.tensor([[2.0, 0.1], [0.3, 1.0], [1.0, 0.5]])
    st = torch.tensor([[1.0, -0.2], [-0.1, 1.0], [0.7, 1.0]])
    tau = 0.5

    def cos(p: list[float], q: list[float]) -> float:
        return sum(a * c for a, c in zip(p, q)) / math.sqrt(sum(a * a for a in p) * sum(c * c for c in q))

    views = [sv.tolist(), st.tolist()]
    total = 0.0
    for k in range(3):
        denom = sum(math.exp(cos(b[k].tolist(), views[m2][j]) / tau) for j in range(3) for m2 in range(2))
        for m in range(2):
            total += -math.log(math.exp(cos(b[k].tolist(), views[m][k]) / tau) / denom)
    expected = total / (3 * 2)
    assert anchor_info_nce(b, [sv, st], tau).item() == pytest.approx(expected, rel=1e-5)

    # plain InfoNCE by hand as well
    plain = 0.0
    for k in range(3):
        logits = [cos(sv[k].tolist(), st[j].tolist()) / tau for j in range(3)]
        plain += -(logits[k] - math.log(sum(math.exp(v) for v in logits)))
    assert info_nce(sv, st, tau).item() == pytest.approx(plain / 3, rel=1e-5)


def test_anchor_infonce_lower_when_matched() -> None:
    torch.manual_seed(1)
    anchors = torch.randn(32, 8)
    sv, st = anchors + 0.1 * torch.randn(32, 8), anchors + 0.1 * torch.randn(32, 8)
    perm = torch.randperm(32)
    matched = anchor_info_nce(anchors, [sv, st], 0.2)
    shuffled = anchor_info_nce(anchors, [sv[perm], st[perm]], 0.2)
    assert matched < shuffled - 1.0


def _reference_contrast(anchor: torch.Tensor, views: list[torch.Tensor], tau: float) -> torch.Tensor:
    """Plain autograd: -1/(n|M|) Σ_k Σ_m log softmax over [all rows of every view]."""
    a = torch.nn.functional.normalize(anchor, dim=-1)
    s = torch.nn.functional.normalize(torch.cat(views), dim=-1)
    logp = torch.log_softmax(a @ s.t() / tau, dim=1)
    n = a.shape[0]
    return -torch.stack([logp[torch.arange(n), torch.arange(n) + m * n] for m in range(len(views))]).mean()


@pytest.mark.parametrize("n_views", [1, 2])
def test_fused_contrast_equals_autograd(n_views: int) -> None:
    """The fused softmax kernel against plain autograd: loss and both gradients; a detached side
    gets no gradient (and costs no product)."""
    torch.manual_seed(3)
    n, tau = 300, 0.2
    base = torch.randn(n, 16)
    anchor = (base + 0.5 * torch.randn(n, 16)).requires_grad_()
    views = [(base + 0.5 * torch.randn(n, 16)).requires_grad_() for _ in range(n_views)]
    fused = anchor_info_nce(anchor, views, tau) if n_views > 1 else info_nce(anchor, views[0], tau)
    grads = torch.autograd.grad(fused, [anchor, *views])
    ref = _reference_contrast(anchor, views, tau)
    ref_grads = torch.autograd.grad(ref, [anchor, *views])
    assert fused.item() == pytest.approx(ref.item(), rel=1e-6)
    for g, r in zip(grads, ref_grads):
        assert (g - r).norm() <= 1e-5 * r.norm()
    detached = info_nce(anchor.detach(), views[0], tau)
    (grad_view,) = torch.autograd.grad(detached, [views[0]])
    ref_view = torch.autograd.grad(_reference_contrast(anchor.detach(), views[:1], tau), [views[0]])[0]
    assert (grad_view - ref_view).norm() <= 1e-5 * ref_view.norm()


# --- the model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    cache = tmp_path_factory.mktemp("sigrec_cache")
    cfg = make_config("SIGREC", graph_cache_dir=str(cache), cl_weight=0.1, anchor_weight=0.1, align_weight=0.1)
    return cfg, make_data(cfg)


def test_gradients_reach_every_parameter_group(ml100k) -> None:
    cfg, data = ml100k
    torch.manual_seed(0)
    model = SIGREC(cfg, data.train)
    batch = next(iter(data.train))
    sum(model.calculate_loss(batch)).backward()
    groups = {"user_embedding": "user_embedding.", "item_embedding": "item_embedding.",
              "projections": "proj.", "item gates": "item_gate.", "fusion gates": "fusion_gate."}
    for label, prefix in groups.items():
        params = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix)]
        assert params, label
        for name, p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert {n.split(".")[1] for n, _ in model.named_parameters() if n.startswith("proj.")} == {"v", "t"}


def test_each_auxiliary_loss_moves_the_semantic_side(ml100k) -> None:
    """Each auxiliary loss, switched on alone, is positive and sends a gradient to the projections."""
    cfg, data = ml100k
    batch = next(iter(data.train))
    for key in ("cl_weight", "anchor_weight", "align_weight"):
        point = cfg.point({"cl_weight": 0.0, "anchor_weight": 0.0, "align_weight": 0.0, key: 0.1})
        torch.manual_seed(0)
        model = SIGREC(point, data.train)
        losses = model.calculate_loss(batch)
        aux = {"cl_weight": 1, "anchor_weight": 2, "align_weight": 3}[key]
        assert losses[aux].item() > 0
        losses[aux].backward()
        assert model.proj["v"].weight.grad.abs().sum() > 0, key


def test_noise_offsets_equal_the_noisy_branch(ml100k) -> None:
    """The view = clean + offset shortcut equals injecting noise after every step."""
    cfg, data = ml100k
    torch.manual_seed(0)
    model = SIGREC(cfg.point({"n_mm_layers": 2}), data.train)
    with torch.no_grad():
        _, sem, states = model.forward()
        x = model.item_inputs()["v"]
        torch.manual_seed(5)
        offsets = model.noise_offsets("v", sem["v"], states["v"], views=1)
        torch.manual_seed(5)
        s = x
        for _ in range(2):
            s = model.sem_graphs["v"] @ s
            s = s + perturb(s, model.eps, model.perturb_mode)
        u = model.user_item @ s
        u = u + perturb(u, model.eps, model.perturb_mode)
    np.testing.assert_allclose((sem["v"] + offsets[0]).numpy(), torch.cat([u, s]).numpy(), atol=1e-5)
    # some users only (as in training): noise drawn for those rows only; the items' draws and
    # offsets are the full ones, and all users as "some users" give exactly the full result
    users = torch.tensor([0, 5, 17, model.n_users - 1])
    with torch.no_grad():
        torch.manual_seed(6)
        full = model.noise_offsets("v", sem["v"], states["v"])
        torch.manual_seed(6)
        part = model.noise_offsets("v", torch.cat([sem["v"][users], sem["v"][model.n_users:]]), states["v"], users=users)
        torch.manual_seed(6)
        every = model.noise_offsets("v", sem["v"], states["v"], users=torch.arange(model.n_users))
        n, d = model.n_items, full.shape[2]
        flat = part[:, users.numel():].permute(1, 0, 2).reshape(n, -1)
        prop = model.user_item.rows(users, flat).reshape(users.numel(), 2, d).permute(1, 0, 2)
    assert part.shape == (2, users.numel() + n, d)
    assert torch.equal(part[:, users.numel():], full[:, model.n_users:])
    torch.testing.assert_close(every, full)
    # the users' noise has the modulus size: |e_u - R e| = eps * |s_u + R e| in every row and view
    delta = (part[:, :users.numel()] - prop).norm(dim=-1)
    torch.testing.assert_close(delta, model.eps * (sem["v"][users] + prop).norm(dim=-1), rtol=1e-4, atol=1e-6)


def test_scoring_is_deterministic_and_cached(ml100k) -> None:
    cfg, data = ml100k
    torch.manual_seed(0)
    model = SIGREC(cfg, data.train)
    model.eval()
    users = torch.arange(20)
    first = model.full_sort_predict((users,))
    assert model._cache is not None
    model.train()
    assert model._cache is None  # training drops the cached representations
    model.eval()
    second = model.full_sort_predict((users,))
    assert torch.equal(first, second)
    torch.manual_seed(0)
    other = SIGREC(cfg, data.train).eval()
    assert torch.equal(other.full_sort_predict((users,)), first)  # same seed, same scores


def test_single_modality_and_missing_features(ml100k) -> None:
    cfg, data = ml100k
    image = SIGREC(cfg.point({"modalities": "image"}), data.train)
    assert image.modal_names == ["v"] and set(image.proj) == {"v"}
    text = SIGREC(cfg.point({"modalities": "text"}), data.train)
    assert text.modal_names == ["t"]
    sum(text.calculate_loss(next(iter(data.train)))).backward()
    saved = (data.train.dataset.v_feat, data.train.dataset.t_feat)
    try:
        data.train.dataset.t_feat = None
        only_image = SIGREC(cfg, data.train)  # 'both' with one file present
        assert only_image.modal_names == ["v"]
        with pytest.raises(ValueError, match="text"):
            SIGREC(cfg.point({"modalities": "text"}), data.train)
        data.train.dataset.v_feat = None
        with pytest.raises(ValueError, match="feature"):
            SIGREC(cfg, data.train)
    finally:
        data.train.dataset.v_feat, data.train.dataset.t_feat = saved


def test_cache_key_changes_with_inputs_and_is_reused(ml100k) -> None:
    rng = np.random.default_rng(0)
    feat = rng.standard_normal((10, 4)).astype(np.float32)
    key = graph_cache_key("knn", [feat], {"knn_k": 10, "knn_weight": "cosine"})
    changed = feat.copy()
    changed[3, 2] += 1e-3
    assert graph_cache_key("knn", [changed], {"knn_k": 10, "knn_weight": "cosine"}) != key
    assert graph_cache_key("knn", [feat], {"knn_k": 5, "knn_weight": "cosine"}) != key
    assert graph_cache_key("knn", [feat], {"knn_k": 10, "knn_weight": "cosine"}) == key
    cfg, data = ml100k
    model = SIGREC(cfg, data.train)
    assert model.cache_files and all(p.exists() for p in model.cache_files)
    mtimes = [p.stat().st_mtime_ns for p in model.cache_files]
    again = SIGREC(cfg, data.train)
    assert again.cache_files == model.cache_files
    assert [p.stat().st_mtime_ns for p in again.cache_files] == mtimes  # loaded, not rewritten
    knn10 = SIGREC(cfg.point({"knn_k": 5}), data.train)
    assert [p for p in knn10.cache_files if p.name.startswith("knn_")] != \
        [p for p in model.cache_files if p.name.startswith("knn_")]


@pytest.mark.parametrize("cache", ["sigrec", "harness"])
def test_graph_cache_built_by_many_threads_at_once_is_whole(tmp_path, cache: str) -> None:
    """Search workers in one process may build the same graph together: each thread writes its
    own temporary (pid and thread), so every one returns the graph and one whole file is left.
    Both caches: SIGREC's own (it imports only common.*) and utils.graph's."""
    import threading
    import time

    from models.sigrec import cached_graph
    from utils.graph import cached_sparse
    mat = sp.random(40, 40, density=0.2, format="csr", random_state=0, dtype=np.float32)
    results, errors, start = [], [], threading.Barrier(6)

    def build() -> sp.csr_matrix:
        time.sleep(0.05)  # every thread is inside the build before any has written
        return mat

    def worker() -> None:
        start.wait()
        try:
            results.append(cached_graph(tmp_path, "g", build) if cache == "sigrec"
                           else cached_sparse("g", ("key",), build, tmp_path))
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            errors.append(repr(exc))
    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 6
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("g") and files[0].suffix == ".npz"
    assert all((r != mat).nnz == 0 for r in results)


def test_bad_switch_values_are_refused(ml100k) -> None:
    cfg, data = ml100k
    for key, value in (("fusion", "max"), ("item_input", "x"), ("infusion", "mul"), ("modalities", "audio")):
        with pytest.raises(ValueError, match=key):
            SIGREC(cfg.point({key: value}), data.train)


def test_direct_anchor_loss_on_one_modality_is_refused(ml100k) -> None:
    """InfoNCE(s^v, s^t) needs two views: on one modality it would train silently without any
    anchor loss, so it is one clear refusal (main.py prints it and exits 3; ablations mark it)."""
    from utils.errors import ModelInputError
    cfg, data = ml100k
    one = cfg.point({"modalities": "text", "anchor_mode": "direct"})
    with pytest.raises(ModelInputError, match="two modalities.*anchor_mode anchor"):
        SIGREC(one, data.train)
    assert SIGREC(one.point({"anchor_weight": 0.0}), data.train).modal_names == ["t"]


# --- end to end -----------------------------------------------------------------------------
@pytest.mark.slow
def test_sigrec_beats_lightgcn_on_ml100k(tmp_path) -> None:
    from utils.quick_start import train_point

    epochs = 6
    common = dict(epochs=epochs, save_model=False, checkpoint_interval=0, topk=[20], metrics=["Recall"])
    sig = make_config("SIGREC", graph_cache_dir=str(tmp_path / "cache"), **common)
    data = make_data(sig)
    lgn = make_config("LightGCN", **common).point({"n_layers": 2, "reg_weight": 1e-4, "seed": 999})
    r_sig = train_point(sig, data, tmp_path / "sig")
    r_lgn = train_point(lgn, data, tmp_path / "lgn")
    assert r_sig["status"] == r_lgn["status"] == "ok"
    assert r_sig["test"]["recall@20"] > r_lgn["test"]["recall@20"], (r_sig["test"], r_lgn["test"])
    terms = [h["loss_terms"] for h in r_sig["history"]]  # each weighted term, per epoch
    assert all(len(t) == len(SIGREC.loss_names) for t in terms)
    assert all(h["loss"] == pytest.approx(sum(h["loss_terms"])) for h in r_sig["history"])
    assert "loss_terms" not in r_lgn["history"][0]  # one-term models keep the plain record


@pytest.mark.parametrize("switch", [
    {"knn_weight": "binary"}, {"cf_weight_mode": "binary"}, {"infusion": "additive"}, {"cf_weight": 0.0},
    {"item_input": "projection"}, {"fusion": "mean"}, {"perturb_mode": "constant"}, {"anchor_mode": "direct"},
    {"anchor_detach": False}, {"align_detach": False}, {"n_mm_layers": 2}, {"n_ui_layers": 1},
    {"cl_max_nodes": 64}, {"perturb_at": "output"}, {"user_semantics": "mean"}, {"cf_min_count": 2},
    {"anchor_detach": False, "anchor_grad_scale": 0.3}, {"perturb_target": "behavior"},
    {"perturb_target": "both"}])
def test_every_switch_alternative_trains_one_batch(ml100k, switch: dict) -> None:
    cfg, data = ml100k
    torch.manual_seed(0)
    model = SIGREC(cfg.point(switch), data.train)
    batch = next(iter(data.train))
    losses = model.calculate_loss(batch)
    assert all(torch.isfinite(x) for x in losses) and all(x.item() > 0 for x in losses)
    sum(losses).backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0
    if switch == {"cf_weight": 0.0}:
        assert model.co_graph is None  # no infusion: C is not even built


def test_cl_max_nodes_subsamples_the_contrastive_sets(ml100k) -> None:
    cfg, data = ml100k
    ids = torch.arange(0, 300, 3)
    assert torch.equal(SIGREC(cfg, data.train)._contrast_set(ids), ids)  # default: all (spec)
    model = SIGREC(cfg.point({"cl_max_nodes": 16}), data.train)
    torch.manual_seed(0)
    picked = model._contrast_set(ids)
    assert picked.numel() == 16 and torch.isin(picked, ids).all() and (picked.diff() > 0).all()
    assert torch.equal(model._contrast_set(ids[:10]), ids[:10])  # fewer than N: all of them
    batch = next(iter(data.train))
    full = SIGREC(cfg, data.train)
    full.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    sub_losses = model.calculate_loss(batch)
    torch.manual_seed(1)
    full_losses = full.calculate_loss(batch)
    assert sub_losses[0].item() == full_losses[0].item()  # BPR untouched
    assert sub_losses[2].item() < full_losses[2].item()  # fewer negatives: a smaller InfoNCE


def test_rows_only_training_equals_the_full_forward(ml100k, monkeypatch) -> None:
    """Training reads only the batch's rows of B and of the user semantics; sliced or full
    products must give the same losses and gradients, bit for bit, for every loss term."""
    import models.sigrec as sigrec_module

    cfg, data = ml100k
    batch = next(iter(data.train))
    results = []
    for share in (0.0, 1.0):  # 0: always the full product, 1: always the sliced one
        monkeypatch.setattr(sigrec_module, "ROWS_MAX_SHARE", share)
        torch.manual_seed(0)
        model = SIGREC(cfg.point({"n_mm_layers": 2}), data.train)
        torch.manual_seed(1)
        losses = model.calculate_loss(batch)
        sum(losses).backward()
        results.append(([x.item() for x in losses], {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_full, grad_full), (loss_rows, grad_rows) = results
    assert loss_full == loss_rows
    assert all(torch.equal(grad_full[n], grad_rows[n]) for n in grad_full)


def test_align_detach_stops_every_path_into_b(ml100k, monkeypatch) -> None:
    """With align_detach, L_align's gradient equals that of the same term with B detached
    everywhere (the fusion gate included): the user embeddings get exactly zero, and the item
    embeddings only the semantic branch's share. Without it, B does get a gradient."""
    cfg, data = ml100k
    batch = next(iter(data.train))
    point = cfg.point({"cl_weight": 0.0, "anchor_weight": 0.0, "align_weight": 0.1})

    def align_grads(detach: bool, b_detached_everywhere: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = SIGREC(point.point({"align_detach": detach}), data.train)
        if b_detached_everywhere:
            rows = model.behavior_rows
            monkeypatch.setattr(model, "behavior_rows", lambda nodes: rows(nodes).detach())
        model.calculate_loss(batch)[3].backward()
        return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                for n, p in model.named_parameters()}

    got, ref = align_grads(True, False), align_grads(True, True)
    assert got.keys() == ref.keys()
    for name in got:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-8, msg=name)
    assert torch.count_nonzero(got["user_embedding.weight"]) == 0
    assert got["item_embedding.weight"].abs().sum() > 0        # the semantic branch (gated input)
    assert got["fusion_gate.v.weight"].abs().sum() > 0           # W_g still learns from L_align
    leaky = align_grads(False, False)
    assert leaky["user_embedding.weight"].abs().sum() > 0


def test_graph_cache_defaults_to_the_output_folder_never_the_data(ml100k, tmp_path, monkeypatch) -> None:
    from models.sigrec import resolve_cache_dir

    cfg, data = ml100k
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run = cfg.point({"graph_cache_dir": None, "output_dir": str(tmp_path / "out")})
    assert resolve_cache_dir(run) == tmp_path / "out" / "cache" / "ml100k"
    model = SIGREC(run, data.train)
    assert model.cache_files and all(p.parent == tmp_path / "out" / "cache" / "ml100k" for p in model.cache_files)
    alone = cfg.point({"graph_cache_dir": None})  # no output folder (as inside MMRec): the user's cache
    assert resolve_cache_dir(alone) == tmp_path / "home" / ".cache" / "sigrec"


# --- switches beyond the spec (the study's variants) -----------------------------------------
def test_alignment_warmup_ramps_up_and_survives_a_resume(ml100k) -> None:
    cfg, data = ml100k
    batch = next(iter(data.train))
    assert "epochs_trained" not in SIGREC(cfg, data.train).state_dict()  # default checkpoints unchanged
    torch.manual_seed(0)
    model = SIGREC(cfg.point({"align_warmup_epochs": 4}), data.train)
    model.pre_epoch_processing()  # epoch 0: alignment off
    losses = model.calculate_loss(batch)
    assert losses[0].item() > 0 and losses[1].item() > 0
    assert losses[2].item() == 0 and losses[3].item() == 0
    model.pre_epoch_processing()
    model.pre_epoch_processing()  # epoch 2 of 4: half the weights
    assert model.align_scale == 0.5
    torch.manual_seed(3)
    half = model.calculate_loss(batch)
    resumed = SIGREC(cfg.point({"align_warmup_epochs": 4}), data.train)
    resumed.load_state_dict(model.state_dict())
    resumed.pre_epoch_processing()  # epoch 3 of 4
    assert resumed.align_scale == 0.75
    for _ in range(3):
        resumed.pre_epoch_processing()
    assert resumed.align_scale == 1.0  # and it stays there
    torch.manual_seed(3)
    full = resumed.calculate_loss(batch)
    # the same parameters, so the scaled terms differ by the scale alone
    assert half[2].item() == pytest.approx(0.5 * full[2].item(), rel=1e-6)
    assert half[3].item() == pytest.approx(0.5 * full[3].item(), rel=1e-6)


def test_anchor_grad_scale_scales_only_the_anchors_gradient(ml100k) -> None:
    """Without anchor_detach, the anchor loss reaches the user embeddings through B only (the
    anchors): their gradient scales with anchor_grad_scale, and the loss value does not move."""
    cfg, data = ml100k
    batch = next(iter(data.train))
    point = cfg.point({"cl_weight": 0.0, "align_weight": 0.0, "anchor_weight": 0.1, "anchor_detach": False})
    results = {}
    for scale in (1.0, 0.25, 0.0):
        torch.manual_seed(0)
        model = SIGREC(point.point({"anchor_grad_scale": scale}), data.train)
        loss = model.calculate_loss(batch)[2]
        loss.backward()
        results[scale] = (loss.item(), model.user_embedding.weight.grad.clone(), model.proj["v"].weight.grad.clone())
    assert results[1.0][0] == results[0.25][0] == results[0.0][0]
    torch.testing.assert_close(results[0.25][1], 0.25 * results[1.0][1], rtol=1e-5, atol=1e-9)
    assert torch.count_nonzero(results[0.0][1]) == 0  # scale 0 is a detached anchor
    torch.testing.assert_close(results[0.25][2], results[1.0][2])  # the semantic side is untouched


def test_noise_at_the_output_has_the_modulus_of_each_row(ml100k) -> None:
    """perturb_at output: one perturbation of S^m itself, so every row's offset has norm ε·‖row‖
    (the spec's per-step noise adds the propagated item noise to the users' offsets)."""
    cfg, data = ml100k
    users = torch.tensor([0, 5, 17])
    norms = {}
    for place in ("output", "every_step"):
        torch.manual_seed(0)
        model = SIGREC(cfg.point({"perturb_at": place, "perturb_eps": 0.2}), data.train)
        with torch.no_grad():
            sem, states = model.semantic("t", model.item_inputs()["t"], users)
            e = model.noise_offsets("t", sem, states, users=users)
        assert e.shape == (2, users.numel() + model.n_items, sem.shape[1])
        norms[place] = (e.norm(dim=-1), 0.2 * sem.norm(dim=-1))
        assert not torch.equal(e[0], e[1])  # two independent views
    got, expect = norms["output"]
    torch.testing.assert_close(got, expect.expand_as(got), rtol=1e-4, atol=1e-7)
    got, expect = norms["every_step"]
    assert not torch.allclose(got[:, :users.numel()], expect[:users.numel()].expand(2, -1), rtol=1e-3)


def test_behavior_noise_offsets_equal_the_noisy_lightgcn(ml100k) -> None:
    """perturb_target behavior: B + offset equals LightGCN with noise after every layer (SimGCL),
    read at the batch's nodes; the loss then moves the ID embeddings, not the semantic branch."""
    cfg, data = ml100k
    torch.manual_seed(0)
    model = SIGREC(cfg.point({"perturb_target": "behavior", "n_ui_layers": 2, "perturb_eps": 0.2}), data.train)
    nodes = torch.tensor([0, 3, 40, model.n_users + 2, model.n_users + 500])
    with torch.no_grad():
        torch.manual_seed(5)
        e = model.behavior_noise_offsets(nodes, views=1)
        torch.manual_seed(5)  # the same draws: layer 1 over all nodes, then layer 2 at the nodes only
        h0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
        h1 = model.adj @ h0
        h1 = h1 + perturb(h1, 0.2, "modulus")
        h2 = model.adj.rows(nodes, h1)
        h2 = h2 + perturb(h2, 0.2, "modulus")
        noisy = (h0[nodes] + h1[nodes] + h2) / 3
    assert e.shape == (1, nodes.numel(), model.dim)
    torch.testing.assert_close(model.behavior_rows(nodes).detach() + e[0], noisy, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        two = model.behavior_noise_offsets(nodes)
    assert two.shape == (2, nodes.numel(), model.dim) and not torch.allclose(two[0], two[1])  # independent views
    # both = the behaviour terms, then the spec's semantic terms, under the same stream of draws
    model = SIGREC(cfg.point({"perturb_target": "both"}), data.train)
    rows = model.encode(model.batch_rows(next(iter(data.train))))
    torch.manual_seed(1)
    both = model.perturbation_loss(rows).item()
    torch.manual_seed(1)
    parts = []
    for target in ("behavior", "semantic"):
        model.perturb_target = target
        parts.append(model.perturbation_loss(rows).item())
    assert both == pytest.approx(sum(parts), rel=1e-6) and min(parts) > 0
    point = cfg.point({"perturb_target": "behavior", "anchor_weight": 0.0, "align_weight": 0.0})
    model = SIGREC(point, data.train)
    model.calculate_loss(next(iter(data.train)))[1].backward()
    assert model.user_embedding.weight.grad.abs().sum() > 0
    assert model.proj["v"].weight.grad is None  # only B is perturbed: the semantic branch gets nothing
    with pytest.raises(ValueError, match="n_ui_layers"):
        SIGREC(cfg.point({"perturb_target": "both", "n_ui_layers": 0}), data.train)


def test_user_semantics_mean_averages_the_users_items(ml100k) -> None:
    cfg, data = ml100k
    torch.manual_seed(0)
    model = SIGREC(cfg.point({"user_semantics": "mean"}), data.train)
    inter = sp.csr_matrix(data.train.inter_matrix(form="coo"), dtype=np.float32)
    inter.data[:] = 1.0
    with torch.no_grad():
        sem, states = model.semantic("v", model.item_inputs()["v"])
    items = states[-1].numpy()
    counts = np.asarray(inter.sum(axis=1)).ravel()
    expect = (inter @ items) / np.maximum(counts, 1)[:, None]
    np.testing.assert_allclose(sem[:model.n_users].numpy(), expect, rtol=1e-4, atol=1e-6)


def test_cf_min_count_keeps_pairs_with_enough_shared_users(ml100k) -> None:
    cfg, data = ml100k
    inter = sp.csr_matrix(data.train.inter_matrix(form="coo"), dtype=np.float32)
    inter.data[:] = 1.0
    shared = (inter.T @ inter).toarray()
    graphs = {}
    for n in (1, 3):
        model = SIGREC(cfg.point({"cf_min_count": n}), data.train)
        graphs[n] = model.co_graph.tocoo()
        assert (shared[graphs[n].row, graphs[n].col] >= n).all()
    assert graphs[3].nnz < graphs[1].nnz
