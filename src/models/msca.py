"""MSCA (Li & Wang, WWW 2026): multi-view semantic contrastive alignment.

Written from docs/baselines-next.md §2, which describes MMRec's ``msca.py`` (PR #63) and the
paper. Where the two differ, MMRec's code is followed, as it produced the published numbers.

- Collaborative view: Ē = mean over l = 1..L of Â^l [U; I], L = ``n_layers`` (layer 0 left out;
  paper Eq. 3 and the code agree).
- Structural graph Ã_s, from the TRAINING interactions only, sparse and blockwise, disk-cached:
  C = RᵀR without its diagonal, pairs with fewer than ``co_min_count`` (2) shared users dropped,
  per item the top-min(knn_k, #left) partners by count (ties: smaller item id first) plus a
  self-loop, binary weights, W_ij / sqrt(d_i d_j) with d the row counts.
  Structural view: Ẽ_I = Ã_s I (one layer, ID embeddings only), Ẽ_U = R~ Ẽ_I.
- Modality views (m in {v, t}): S_m = cosine kNN_{knn_k}(X_m), self included, cosine weights,
  'sym' row-sum normalisation; f_m = I * sigmoid(Lin_2(Lin_1(X_m))) (d_m -> 64 -> 64);
  E^m_I = S_m f_m (one layer), E^m_U = R~ E^m_I.
- Fusion (MAF): per row, q(X) = w_4ᵀ tanh(W_3 X + b_3) scores each of V = {E^v, E^t, Ẽ};
  alpha = softmax over the 3 views; Ê = sum_X (1 - alpha_X) X; E* = Ē + fusion_coeff Ê;
  score E*_u . E*_i.
- Loss = BPR(E*) + cl_weight (L^C_u + L^C_i + L^M_u + L^M_i) + reg_weight sum_theta |theta|^2:
  six InfoNCE terms (tau), each anchored on Ē (not detached) against one view, own denominator,
  in-batch negatives with the batch rows as given (users u; items: the positives p). The L2 term
  runs over every parameter, the trainable raw feature tables included (they dominate it).
- Training and scoring use the same forward pass: no dropout, no noise; deterministic scoring.

MMRec vs paper (code followed): the softmax of the fusion runs across the 3 views (the paper's
Eqs. 12-13 put it over a single score, which is 1 and would make Ê = 0); the modality graphs keep
the cosine weights (paper Eq. 8: binary); the raw features are trainable (the paper's figure
draws frozen encoders; reg_weight was tuned with them inside).

Differences from MMRec's code: C is built sparse in row blocks (MMRec: a dense N x N array,
15.9 GB on Electronics) with ties broken by item id (MMRec: whatever torch.topk returns);
Ã_s's degrees have no + 1e-7 (every row has its self-loop, so d >= 1 and the values differ by
under 1e-7 relative); the graphs are cached under a content hash (MMRec: ``image_adj_{k}_True.pt``
by name only); the threshold is the key ``co_min_count`` (MMRec hard-codes C > 1, i.e. 2);
``is_sparse`` is kept for the yaml's sake and read by nothing (the graphs are always sparse).
MMRec's code needs both modalities (both modality views enter the fusion), so a one-modality
dataset is refused.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.abstract_recommender import GeneralRecommender
from common.contrastive import info_nce_indexed
from utils.errors import ConfigError, ModelInputError
from utils.graph import (behaviour_graphs, cached_co_interaction, cached_knn, graph_cache_dir,
                         propagate_mean, spmm, sym_normalize, to_torch_csr,
                         transpose_csr)

MODALITIES = ("v", "t")


class MSCA(GeneralRecommender):
    """Collaborative, structural (co-interaction) and modality views, fused and aligned by InfoNCE."""

    cached_scoring = True  # full_sort_predict reuses embeddings computed once per evaluation
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    ranges = {"n_layers": (int, ">= 1"), "knn_k": (int, ">= 1"), "co_min_count": (int, ">= 1"),
              "fusion_coeff": (float, ">= 0"), "tau": (float, "> 0"), "cl_weight": (float, ">= 0"),
              "reg_weight": (float, ">= 0")}

    def __init__(self, config: Any, dataloader: Any) -> None:
        super().__init__(config, dataloader)
        if self.v_feat is None or self.t_feat is None:
            raise ModelInputError("MSCA needs both image and text features (its fusion weighs the image, "
                              "text and structural views); this dataset has only one modality")
        self.embedding_dim = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        if self.n_layers < 1:
            raise ConfigError(f"MSCA needs n_layers >= 1 (its collaborative view leaves layer 0 out), "
                              f"not {self.n_layers}")
        self.knn_k = int(config["knn_k"])
        self.co_min_count = int(config["co_min_count"] or 2)
        self.fusion_coeff = float(config["fusion_coeff"])
        self.tau = float(config["tau"] or 0.2)
        self.cl_weight = float(config["cl_weight"] or 0.0)
        self.reg_weight = float(config["reg_weight"] or 0.0)
        d = self.embedding_dim
        feats = {"v": self.v_feat, "t": self.t_feat}

        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_id_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        # frozen graphs: Â, R~, the structural graph (training split) and one kNN graph per modality
        inter = dataloader.inter_matrix(form="csr")
        self.norm_adj, self.r_adj, self.r_adj_t = behaviour_graphs(inter, self.device)
        graphs = {"s": sym_normalize(cached_co_interaction(inter, self.knn_k, self.co_min_count,
                                                           self_loop=True, weighting="binary",
                                                           cache=graph_cache_dir(config),
                                                           what="structural co-interaction graph"))}
        for m in MODALITIES:
            graphs[m] = sym_normalize(cached_knn(feats[m], self.knn_k, "cosine", graph_cache_dir(config),
                                                 what=f"{'image' if m == 'v' else 'text'} kNN item graph"))
        self.item_adj = {g: to_torch_csr(graphs[g], self.device) for g in graphs}
        self.item_adj_t = {g: transpose_csr(self.item_adj[g]) for g in graphs}

        # trainable raw features; modules in MMRec's construction order
        self.feat_emb = nn.ModuleDict({m: nn.Embedding.from_pretrained(feats[m].clone(), freeze=False)
                                       for m in MODALITIES})
        self.feat_trs = nn.ModuleDict({m: nn.Linear(feats[m].shape[1], d) for m in MODALITIES})
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.gate = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in MODALITIES})
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- representations ---------------------------------------------------------------
    def item_view(self, g: str, items: torch.Tensor) -> torch.Tensor:
        """[R~ (A_g items); A_g items], one layer on item-item graph g, (M+N) x d."""
        h = spmm(self.item_adj[g], items, self.item_adj_t[g])
        return torch.cat([spmm(self.r_adj, h, self.r_adj_t), h])

    def forward(self) -> tuple[torch.Tensor, ...]:
        """(E*_U, E*_I, Ē, Ẽ, E^v, E^t); the last four are (M+N) x d."""
        item = self.item_id_embedding.weight
        ego = torch.cat([self.user_embedding.weight, item])
        collab = propagate_mean(self.norm_adj, ego, self.n_layers, skip_ego=True, symmetric=True)
        struct = self.item_view("s", item)
        modal = [self.item_view(m, item * self.gate[m](self.feat_trs[m](self.feat_emb[m].weight)))
                 for m in MODALITIES]
        views = modal + [struct]
        alpha = torch.softmax(torch.cat([self.query_common(x) for x in views], dim=-1), dim=-1)  # [M+N, 3]
        fused = sum((1.0 - alpha[:, k:k + 1]) * x for k, x in enumerate(views))
        users, items = torch.split(collab + self.fusion_coeff * fused, [self.n_users, self.n_items])
        return users, items, collab, struct, modal[0], modal[1]

    # --- loss ----------------------------------------------------------------------------
    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        """L = BPR + cl_weight (L^C + L^M) + reg_weight L_reg (baselines-next.md §2, "Loss")."""
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all, collab, struct, image, text = self.forward()
        loss = self._l_bpr(u_all[users], i_all[pos], i_all[neg])
        cl = sum(self._l_align(collab, view, users, pos) for view in (struct, image, text))
        return loss + self.cl_weight * cl + self.reg_weight * self._l_reg()

    @staticmethod
    def _l_bpr(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """-mean log sigmoid(E*_u.E*_p - E*_u.E*_n)."""
        return F.softplus((u * n).sum(-1) - (u * p).sum(-1)).mean()

    def _l_align(self, anchor: torch.Tensor, view: torch.Tensor, users: torch.Tensor,
                 pos: torch.Tensor) -> torch.Tensor:
        """InfoNCE(Ē_U[u], V_U[u]) + InfoNCE(Ē_I[p], V_I[p]): L^C for the structural view, one
        half of L^M for a modality view; the anchor Ē keeps its gradient."""
        a_u, a_i = torch.split(anchor, [self.n_users, self.n_items])
        v_u, v_i = torch.split(view, [self.n_users, self.n_items])
        return (info_nce_indexed(a_u, v_u, users, self.tau, negatives="batch")
                + info_nce_indexed(a_i, v_i, pos, self.tau, negatives="batch"))

    def _l_reg(self) -> torch.Tensor:
        """sum over every parameter of its squared Frobenius norm (raw feature tables included)."""
        return torch.stack([p.pow(2).sum() for p in self.parameters()]).sum()

    # --- scoring -------------------------------------------------------------------------
    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        if self._cache is None:
            self._cache = self.forward()[:2]
        u_all, i_all = self._cache
        return u_all[interaction[0]] @ i_all.t()
