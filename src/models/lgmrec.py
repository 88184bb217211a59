"""LGMRec (Guo et al., AAAI 2024): local and global graph learning for multimodal recommendation.

- Collaborative part E_c = LightGCN(Â, [U; I], n_ui_layers).
- Modality part per m: F_m = X_m W_m, user features = mean of their items' F_m,
  H_m = Â^{n_mm_layers} [users; F_m] (last layer). E_local = E_c + norm(H_v) + norm(H_t).
- Hypergraph per m: item memberships X_m V_m (N x K), user memberships R (X_m V_m) with R the
  binary training matrix; a soft Gumbel-softmax (tau) over K in training, plain softmax(./tau)
  at scoring (deterministic, unlike MMRec); dropout p = 1 - keep_rate on the memberships.
  Each of n_hyper_layer layers: L = Hi'^T X_i, X_i = Hi' L, X_u = Hu' L, from X_i = items of E_c.
  G = sum_m [X_u^m; X_i^m]; E = E_local + alpha * norm(G).
- Loss = BPR + cl_weight [InfoNCE(X_u^v[u], X_u^t; all users) + InfoNCE(X_i^v[p], X_i^t; all
  items)] (summed over the batch) + reg_weight (|E_u[u]| + |E_i[p]| + |E_i[n]|) / batch.
Raw features are frozen. The cross-modal contrast needs both modalities: one alone is refused.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from common.abstract_recommender import GeneralRecommender
from common.contrastive import info_nce_indexed
from utils.errors import ModelInputError
from utils.graph import lightgcn, normalized_adjacency, spmm, to_torch_csr


class LGMRec(GeneralRecommender):
    """Local and global graph learning with hypergraph embeddings."""

    cached_scoring = True  # full_sort_predict reuses embeddings computed once per evaluation
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    ranges = {"n_ui_layers": (int, ">= 0"), "n_mm_layers": (int, ">= 0"), "n_hyper_layer": (int, ">= 0"),
              "hyper_num": (int, ">= 1"), "keep_rate": (float, "> 0", "<= 1"), "alpha": (float, ">= 0"),
              "tau": (float, "> 0"), "reg_weight": (float, ">= 0"), "cl_weight": (float, ">= 0")}

    def __init__(self, config, dataloader) -> None:
        super().__init__(config, dataloader)
        if self.v_feat is None or self.t_feat is None:
            raise ModelInputError("LGMRec needs both image and text features (its hypergraph contrast "
                              "aligns the two modalities); this dataset has only one modality")
        self.embedding_dim = int(config["embedding_size"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.n_hyper_layer = int(config["n_hyper_layer"])
        self.hyper_num = int(config["hyper_num"])
        self.keep_rate = float(config["keep_rate"])
        self.alpha = float(config["alpha"])
        self.cl_weight = float(config["cl_weight"] or 0.0)
        self.reg_weight = float(config["reg_weight"] or 0.0)
        self.tau = float(config["tau"] or 0.2)
        d, k = self.embedding_dim, self.hyper_num

        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.modalities = ("v", "t")
        self.feats = {"v": self.v_feat, "t": self.t_feat}   # frozen raw features
        self.trs = nn.ParameterDict()     # W_m: features -> d
        self.hyper = nn.ParameterDict()   # V_m: features -> K hyperedges
        for name in self.modalities:
            dim = self.feats[name].shape[1]
            self.trs[name] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, d)))
            self.hyper[name] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, k)))
        self.drop = nn.Dropout(p=1.0 - self.keep_rate)

        inter = sp.csr_matrix(dataloader.inter_matrix(form="csr"), dtype=np.float32)
        self.norm_adj = normalized_adjacency(inter, self.device)
        self.r_bin = to_torch_csr(inter, self.device)
        self.r_bin_t = to_torch_csr(inter.T, self.device)
        deg = np.asarray(inter.sum(axis=1)).ravel()
        inv = np.zeros_like(deg)
        np.divide(1.0, deg, out=inv, where=deg > 0)
        r_mean = sp.diags(inv.astype(np.float32)) @ inter    # row-normalised: mean over items
        self.r_mean = to_torch_csr(r_mean, self.device)
        self.r_mean_t = to_torch_csr(r_mean.T, self.device)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def _membership(self, logits: torch.Tensor) -> torch.Tensor:
        """Soft Gumbel-softmax in training; its noise-free softmax(logits / tau) at scoring."""
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=1)
        return torch.softmax(logits / self.tau, dim=1)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(users E_u, items E_i, {modality: (X_u, X_i)} of the hypergraph part)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        e_c = lightgcn(self.norm_adj, ego, self.n_ui_layers, symmetric=True)
        local = e_c
        hi_logits = {}
        for name in self.modalities:
            # X_m [W_m | V_m] in one pass over the features (forward and backward)
            proj = self.feats[name] @ torch.cat([self.trs[name], self.hyper[name]], dim=1)
            f_item, hi_logits[name] = torch.split(proj, [self.embedding_dim, self.hyper_num], dim=1)
            f_user = spmm(self.r_mean, f_item, self.r_mean_t)
            h = torch.cat([f_user, f_item])
            for _ in range(self.n_mm_layers):
                h = spmm(self.norm_adj, h, self.norm_adj)
            local = local + F.normalize(h, dim=1)
        item_c = e_c[self.n_users:]
        hyper_out, glob = {}, 0.0
        for name in self.modalities:
            hu_logits = spmm(self.r_bin, hi_logits[name], self.r_bin_t)
            hi = self.drop(self._membership(hi_logits[name]))
            hu = self.drop(self._membership(hu_logits))
            x_i, x_u = item_c, None
            for _ in range(self.n_hyper_layer):
                lat = hi.t() @ x_i
                x_i, x_u = hi @ lat, hu @ lat
            hyper_out[name] = (x_u, x_i)
            glob = glob + torch.cat([x_u, x_i])
        final = local + self.alpha * F.normalize(glob, dim=1)
        users, items = torch.split(final, [self.n_users, self.n_items])
        return users, items, hyper_out

    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all, hyper = self.forward()
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        loss = F.softplus((u * n).sum(-1) - (u * p).sum(-1)).mean()
        if self.cl_weight:
            (uv, iv), (ut, it) = hyper["v"], hyper["t"]
            # = info_nce(uv[users], ut, pos_index=users, sum) + the same for items, computed
            # once per distinct user/item of the batch
            cl = (info_nce_indexed(uv, ut, users, self.tau, negatives="all", reduction="sum")
                  + info_nce_indexed(iv, it, pos, self.tau, negatives="all", reduction="sum"))
            loss = loss + self.cl_weight * cl
        reg = (u.norm(2) + p.norm(2) + n.norm(2)) / users.shape[0]
        return loss + self.reg_weight * reg

    def full_sort_predict(self, interaction) -> torch.Tensor:
        if self._cache is None:
            self._cache = self.forward()[:2]
        u_all, i_all = self._cache
        return u_all[interaction[0]] @ i_all.t()
