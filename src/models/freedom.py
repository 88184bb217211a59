"""FREEDOM (Zhou & Shen, ACM MM 2023): a frozen multimodal item graph plus degree-sensitive
edge pruning of the user-item graph.

- Item graph: per modality the cosine top-knn_k neighbours with binary weights, D^-1/2 A D^-1/2
  (row counts), mixed as S = w S_v + (1 - w) S_t; built once (disk-cached), never N x N.
- Every epoch (pre_epoch_processing) floor(|E| (1 - dropout)) training edges are kept, sampled
  without replacement with probability ~ 1/sqrt(deg_u deg_i), and renormalised, all with torch
  ops on the model's device (no host copy; on the CPU the graph of the earlier scipy build, bit for
  bit); training uses that graph, scoring always the full Â.
- user = U_g, item = I_g + S^L I with [U_g; I_g] = LightGCN(adj, [U; I], n_ui_layers).
- Loss = BPR(user, item) + reg_weight * sum_m BPR(U_g[u], P_m[p], P_m[n]) with P_m a Linear
  projection of the (trainable) modality features.
Either modality alone is supported (the graph and the feature loss then use that one).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from common.abstract_recommender import GeneralRecommender
from utils.errors import ModelInputError
from utils.graph import (cached_knn, graph_cache_dir, degree_sensitive_prune, edge_adjacency, lightgcn,
                         normalized_adjacency, spmm, sym_normalize, to_torch_csr,
                         transpose_csr)


def bpr(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(u.p - u.n), computed stably."""
    return F.softplus((u * n).sum(-1) - (u * p).sum(-1)).mean()


class FREEDOM(GeneralRecommender):
    """Freezing and denoising graph structures for multimodal recommendation."""

    cached_scoring = True  # full_sort_predict reuses embeddings computed once per evaluation
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    ranges = {"feat_embed_dim": (int, ">= 1"), "knn_k": (int, ">= 1"), "mm_image_weight": (float, ">= 0", "<= 1"),
              "n_mm_layers": (int, ">= 0"), "n_ui_layers": (int, ">= 0"), "dropout": (float, ">= 0", "< 1"),
              "reg_weight": (float, ">= 0")}

    def __init__(self, config, dataloader) -> None:
        super().__init__(config, dataloader)
        self.embedding_dim = int(config["embedding_size"])
        self.feat_embed_dim = int(config["feat_embed_dim"] or self.embedding_dim)
        self.knn_k = int(config["knn_k"])
        self.mm_image_weight = float(config["mm_image_weight"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.dropout = float(config["dropout"])
        self.reg_weight = float(config["reg_weight"] or 0.0)
        if self.v_feat is None and self.t_feat is None:
            raise ModelInputError("FREEDOM needs at least one feature file (image_feat.npy or text_feat.npy)")

        self.user_embedding = nn.Embedding(self.n_users, self.embedding_dim)
        self.item_id_embedding = nn.Embedding(self.n_items, self.embedding_dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        # trainable modality features and their projections
        self.feat_emb = nn.ModuleDict()
        self.feat_trs = nn.ModuleDict()
        graphs, weights = [], []
        for name, feat, w in (("v", self.v_feat, self.mm_image_weight), ("t", self.t_feat, 1.0 - self.mm_image_weight)):
            if feat is None:
                continue
            self.feat_emb[name] = nn.Embedding.from_pretrained(feat.clone(), freeze=False)
            self.feat_trs[name] = nn.Linear(feat.shape[1], self.feat_embed_dim)
            knn = cached_knn(feat, self.knn_k, "binary", graph_cache_dir(config))
            graphs.append(sym_normalize(knn))
            weights.append(w)
        if len(graphs) == 1:
            mm = graphs[0]
        else:
            mm = weights[0] * graphs[0] + weights[1] * graphs[1]
        self.mm_adj = to_torch_csr(sp.csr_matrix(mm, dtype=np.float32), self.device)
        self.mm_adj_t = transpose_csr(self.mm_adj)

        # user-item graph: full (scoring) and the edge list for pruning (training)
        inter = dataloader.inter_matrix(form="coo")
        self.norm_adj = normalized_adjacency(inter, self.device)
        self.edge_users = torch.as_tensor(inter.row, dtype=torch.long, device=self.device)
        self.edge_items = torch.as_tensor(inter.col, dtype=torch.long, device=self.device)
        self.masked_adj: torch.Tensor | None = None
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- graphs ------------------------------------------------------------------------
    def pre_epoch_processing(self) -> None:
        """Degree-sensitive edge pruning: a fresh training graph every epoch, built on the device
        (one host sync: the number of kept edges after deduplication)."""
        if self.dropout <= 0.0:
            self.masked_adj = self.norm_adj
            return
        keep = degree_sensitive_prune(self.edge_users, self.edge_items, self.n_users, self.n_items,
                                      self.dropout)
        self.masked_adj = edge_adjacency(self.edge_users[keep], self.edge_items[keep],
                                         self.n_users, self.n_items, self.device)

    def forward(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.item_id_embedding.weight
        for _ in range(self.n_mm_layers):
            h = spmm(self.mm_adj, h, self.mm_adj_t)
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        u_g, i_g = torch.split(lightgcn(adj, ego, self.n_ui_layers, symmetric=True), [self.n_users, self.n_items])
        return u_g, i_g + h

    # --- loss and scoring --------------------------------------------------------------
    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        if self.masked_adj is None:
            self.pre_epoch_processing()
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all = self.forward(self.masked_adj)
        u_g = u_all[users]
        loss = bpr(u_g, i_all[pos], i_all[neg])
        if self.reg_weight:
            # project each distinct batch item once
            items, inverse = torch.unique(interaction[1:3], return_inverse=True)
            for name in self.feat_emb:
                proj = self.feat_trs[name](self.feat_emb[name](items))
                loss = loss + self.reg_weight * bpr(u_g, proj[inverse[0]], proj[inverse[1]])
        return loss

    def full_sort_predict(self, interaction) -> torch.Tensor:
        if self._cache is None:
            self._cache = self.forward(self.norm_adj)
        u_all, i_all = self._cache
        return u_all[interaction[0]] @ i_all.t()
