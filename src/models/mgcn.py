"""MGCN (Yu et al., ACM MM 2023): multi-view graph convolution with a purifier, a
behavior-aware fuser and self-supervised alignment.

- Item kNN graph per modality: cosine top-knn_k, similarity weights kept, D^-1/2 A D^-1/2,
  built once (disk-cached, blockwise).
- Purifier: item_m = I * sigmoid(Linear(Linear_m(X_m))); X_m is trainable, as in MMRec.
- Behavior view: content = LightGCN(Â, [U; I], n_ui_layers).
- Item view: item_m propagated n_layers times on its kNN graph, users_m = R~ item_m with R~ the
  user-item block of Â.
- Fuser: attention (Linear-tanh-Linear -> 1, softmax over modalities) gives common;
  specific_m = (modality_m - common) * sigmoid(Linear_m(content)); side = (sum specific + common)/3;
  final = content + side.
- Loss = BPR + reg_weight * 1/2 sum of squares of the batch (u, p, n) / batch
  + cl_loss * [InfoNCE(side_i, content_i) + InfoNCE(side_u, content_u)] (tau 0.2).
The common/specific split needs two modalities: a dataset with one is refused.
"""
from __future__ import annotations

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from common.abstract_recommender import GeneralRecommender
from common.contrastive import info_nce_indexed
from utils.errors import ModelInputError
from utils.graph import (bipartite_adjacency, cached_knn, graph_cache_dir, lightgcn, spmm, sym_normalize,
                         to_torch_csr, transpose_csr)


class MGCN(GeneralRecommender):
    """Multi-view graph convolutional network for multimedia recommendation."""

    cached_scoring = True  # full_sort_predict reuses embeddings computed once per evaluation
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    ranges = {"knn_k": (int, ">= 1"), "n_ui_layers": (int, ">= 0"), "n_layers": (int, ">= 0"),
              "reg_weight": (float, ">= 0"), "cl_temperature": (float, "> 0"), "cl_loss": (float, ">= 0")}

    def __init__(self, config, dataloader) -> None:
        super().__init__(config, dataloader)
        if self.v_feat is None or self.t_feat is None:
            raise ModelInputError("MGCN needs both image and text features (its fuser splits common and "
                              "modality-specific parts); this dataset has only one modality")
        self.embedding_dim = int(config["embedding_size"])
        self.knn_k = int(config["knn_k"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"] or 0.0)
        self.cl_loss = float(config["cl_loss"] or 0.0)
        self.tau = float(config["cl_temperature"] or 0.2)
        d = self.embedding_dim

        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_id_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        self.modalities = ("v", "t")
        self.feat_emb = nn.ModuleDict()
        self.feat_trs = nn.ModuleDict()
        self.purifier = nn.ModuleDict()     # sigmoid(Linear(.)) gate on the item IDs
        self.prefer = nn.ModuleDict()       # sigmoid(Linear(content)) gate on specific parts
        self.item_adj, self.item_adj_t = {}, {}
        for name, feat in zip(self.modalities, (self.v_feat, self.t_feat)):
            self.feat_emb[name] = nn.Embedding.from_pretrained(feat.clone(), freeze=False)
            self.feat_trs[name] = nn.Linear(feat.shape[1], d)
            self.purifier[name] = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
            self.prefer[name] = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
            knn = cached_knn(feat, self.knn_k, "cosine", graph_cache_dir(config))
            self.item_adj[name] = to_torch_csr(sym_normalize(knn), self.device)
            self.item_adj_t[name] = transpose_csr(self.item_adj[name])
        self.query_common = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))

        inter = dataloader.inter_matrix(form="csr")
        norm = sym_normalize(bipartite_adjacency(inter))
        self.norm_adj = to_torch_csr(norm, self.device)
        r_block = sp.csr_matrix(norm[:self.n_users, self.n_users:])   # R~ = D_u^-1/2 R D_i^-1/2
        self.r_adj = to_torch_csr(r_block, self.device)
        self.r_adj_t = to_torch_csr(r_block.T, self.device)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(final users, final items, side [U+I], content [U+I])."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        content = lightgcn(self.norm_adj, ego, self.n_ui_layers, symmetric=True)
        views = []
        for name in self.modalities:
            feats = self.feat_trs[name](self.feat_emb[name].weight)
            item_m = self.item_id_embedding.weight * self.purifier[name](feats)
            for _ in range(self.n_layers):
                item_m = spmm(self.item_adj[name], item_m, self.item_adj_t[name])
            user_m = spmm(self.r_adj, item_m, self.r_adj_t)
            views.append(torch.cat([user_m, item_m]))
        stacked = torch.stack(views, dim=1)                             # [N, M, d]
        att = torch.softmax(self.query_common(stacked).squeeze(-1), dim=1)
        common = (att.unsqueeze(-1) * stacked).sum(1)
        side = common
        for name, view in zip(self.modalities, views):
            side = side + self.prefer[name](content) * (view - common)
        side = side / 3.0 if len(views) == 2 else side / (len(views) + 1)
        final = content + side
        users, items = torch.split(final, [self.n_users, self.n_items])
        return users, items, side, content

    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all, side, content = self.forward()
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        bpr = F.softplus((u * n).sum(-1) - (u * p).sum(-1)).mean()
        reg = 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / users.shape[0]
        side_u, side_i = torch.split(side, [self.n_users, self.n_items])
        cont_u, cont_i = torch.split(content, [self.n_users, self.n_items])
        # = info_nce(side_i[pos], cont_i[pos]) + info_nce(side_u[users], cont_u[users]) (in-batch
        # negatives), computed once per distinct item/user of the batch
        cl = (info_nce_indexed(side_i, cont_i, pos, self.tau, negatives="batch")
              + info_nce_indexed(side_u, cont_u, users, self.tau, negatives="batch"))
        return bpr + self.reg_weight * reg + self.cl_loss * cl

    def full_sort_predict(self, interaction) -> torch.Tensor:
        if self._cache is None:
            self._cache = self.forward()[:2]
        u_all, i_all = self._cache
        return u_all[interaction[0]] @ i_all.t()
