"""DRAGON (Zhou et al., ECAI 2023, "Enhancing Dyadic Relations with Homogeneous Graphs for
Multimodal Recommendation"), as MMRec's code trains it, with the user graph built here.

- Item graph (frozen, FREEDOM's): S = w kNN^b_k(X_v) + (1 - w) kNN^b_k(X_t), each binary top-knn_k
  (self included) and D^-1/2 A D^-1/2 normalised; w = mm_image_weight (0.1).
- User graph, from the TRAINING split only (no user_graph_dict.npy): C = R Rᵀ without its diagonal,
  C_uv = |I_u ∩ I_v|; per user the users with C_uv > 0 by count descending, ties by ascending user
  id (our choice: MMRec's script takes torch.topk's order), the first ``user_knn_k`` (40, hard-coded
  in MMRec) kept. Built in user blocks (``utils.graph.co_interaction_graph`` on Rᵀ), disk-cached
  under a hash of the training matrix. MMRec's file keeps 200 per user and uses the first 40: the
  same 40.
- Every epoch (``pre_epoch_processing``) a user with 1..39 neighbours is padded to 40 as MMRec does
  it: each new slot copies a uniformly random one of the slots filled so far (copies included),
  count and all, drawn afresh every epoch. Weights a_u = softmax of the 40 raw counts (duplicates
  count twice); a user without neighbours gets none. The sample is kept in buffers, so a checkpoint
  scores with the graph it was trained with.
- Per modality m: P_m (M x 64, Xavier-normal), f_m = Lin(LeakyReLU(Lin(X_m))) (d_m -> 256 -> 64) on
  the frozen raw features, x = row-L2-normalised [P_m; f_m], O_m = x + Âx + Â²x (a sum, no weights).
- Fusion "cat": items [v_i || t_i]; users [w_u1 v_u || w_u2 t_u], w (M x 2) free parameters, Xavier-
  normal then softmax-normalised once at initialisation. With one modality, O_m itself (64-d).
- ĥ_I = r_I + S^{n_mm_layers} r_I, ĥ_U = r_U + A_u r_U with A_u the epoch's weighted user graph.
- Loss = -mean log2 σ(s_up - s_un) + reg_weight [mean(P_v[u]²) + mean(P_t[u]²) + mean(w²)]
  (log base 2, as MMRec; computed as softplus / ln 2, stable where MMRec's log2(sigmoid) gives -inf).

Either modality alone works, as in MMRec's code (w then does not exist); no features is refused.
MMRec quirks fixed, not copied: its full_sort_predict reuses the representation of the last
training batch (one optimiser step stale); here scoring recomputes it, once per evaluation, with
the epoch's user graph. MMRec's unused parts are not built: the trainable copies of the raw features
and their Linear layers (never used in its forward), the modality-dropped edge sets, per-item
weights, an MLP on users, feat_embed_dim and n_layers. aggr_mode supports MMRec's 'add' only (its
grid's one value). The paper's equations were not checked against its PDF: this follows MMRec's code.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.abstract_recommender import GeneralRecommender
from utils.errors import ConfigError, ModelInputError
from utils.graph import (cached_co_interaction, graph_cache_dir, lightgcn, mixed_knn_graph, neighbour_matrix,
                         normalized_adjacency, ranked_neighbours, spmm, to_torch_csr,
                         transpose_csr)

LATENT = 64   # MMRec's dim_latent (hard-coded); the MLP's hidden width is 4 x this


class DRAGON(GeneralRecommender):
    """Dual representation learning with a frozen item graph and a co-interaction user graph."""

    cached_scoring = True  # full_sort_predict reuses representations computed once per evaluation
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    choices = {"aggr_mode": ("add",)}
    ranges = {"knn_k": (int, ">= 1"), "mm_image_weight": (float, ">= 0", "<= 1"), "n_mm_layers": (int, ">= 0"),
              "user_knn_k": (int, ">= 1"), "reg_weight": (float, ">= 0")}

    def __init__(self, config: Any, dataloader: Any) -> None:
        super().__init__(config, dataloader)
        if self.v_feat is None and self.t_feat is None:
            raise ModelInputError("DRAGON needs at least one feature file (image_feat.npy or text_feat.npy)")
        aggr = config["aggr_mode"]
        if aggr not in (None, "add"):
            raise ConfigError(f"DRAGON: aggr_mode must be 'add' (MMRec's grid), not {aggr!r}")
        self.knn_k = int(config["knn_k"])
        self.mm_image_weight = float(config["mm_image_weight"])
        self.n_mm_layers = int(config["n_mm_layers"])
        self.user_knn_k = int(config["user_knn_k"] or 40)
        self.reg_weight = float(config["reg_weight"] or 0.0)
        self.modalities = tuple(m for m, f in (("v", self.v_feat), ("t", self.t_feat)) if f is not None)
        self.feats = {"v": self.v_feat, "t": self.t_feat}   # frozen raw features

        # item graph S and user-item graph Â
        mm = mixed_knn_graph([(self.v_feat, self.mm_image_weight), (self.t_feat, 1.0 - self.mm_image_weight)],
                             self.knn_k, "binary", graph_cache_dir(config))
        self.mm_adj = to_torch_csr(mm, self.device)
        self.mm_adj_t = transpose_csr(self.mm_adj)
        inter = dataloader.inter_matrix(form="csr")
        self.norm_adj = normalized_adjacency(inter, self.device)

        # ranked co-interaction neighbours of every user (training split), padded per epoch
        user_graph = cached_co_interaction(inter.T, self.user_knn_k, cache=graph_cache_dir(config),
                                           what="user-user co-interaction graph", nodes=("users", "item"))
        cols, counts, lengths = ranked_neighbours(user_graph, self.user_knn_k)
        self.nb_cols = torch.as_tensor(cols, device=self.device)
        self.nb_counts = torch.as_tensor(counts, device=self.device)
        self.nb_len = torch.as_tensor(lengths, device=self.device)

        # parameters (MMRec's order: user fusion weights, then per modality P_m and the MLP)
        if len(self.modalities) == 2:
            w = nn.init.xavier_normal_(torch.empty(self.n_users, 2))
            self.weight_u = nn.Parameter(F.softmax(w, dim=1))
        else:
            self.weight_u = None
        self.preference = nn.ParameterDict()
        self.mlp = nn.ModuleDict()
        for m in self.modalities:
            self.preference[m] = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, LATENT)))
            self.mlp[m] = nn.Sequential(nn.Linear(self.feats[m].shape[1], 4 * LATENT), nn.LeakyReLU(),
                                        nn.Linear(4 * LATENT, LATENT))
        # this epoch's sampled user graph (buffers: saved with the weights)
        self.register_buffer("epoch_cols", torch.zeros(self.n_users, self.user_knn_k, dtype=torch.long))
        self.register_buffer("epoch_weights", torch.zeros(self.n_users, self.user_knn_k))
        self._user_adj: tuple[torch.Tensor, torch.Tensor] | None = None
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sample_user_graph()

    # --- the user graph --------------------------------------------------------------------------
    def sample_user_graph(self) -> None:
        """Pad every user's neighbour list to user_knn_k as MMRec does (slot j >= n copies a random
        slot among 0..j-1), then a_u = softmax of the counts; users without neighbours get 0."""
        n_users, k = self.nb_cols.shape
        src = torch.arange(k, device=self.nb_cols.device).repeat(n_users, 1)   # slot -> original slot
        draws = torch.rand(n_users, k, device=self.nb_cols.device)
        for j in range(1, k):                   # over the k slots, vectorised over users
            pick = (draws[:, j] * j).long().clamp_max(j - 1)
            pad = self.nb_len <= j
            src[:, j] = torch.where(pad, src.gather(1, pick.unsqueeze(1)).squeeze(1), src[:, j])
        cols = self.nb_cols.gather(1, src)
        weights = F.softmax(self.nb_counts.gather(1, src), dim=1) * (self.nb_len > 0).unsqueeze(1)
        self.epoch_cols.copy_(cols)
        self.epoch_weights.copy_(weights)
        self._user_adj = None
        self._cache = None

    def user_adj(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_u, A_uᵀ) of the epoch's sample as torch CSR (built once per sample or load)."""
        if self._user_adj is None:
            adj = neighbour_matrix(self.epoch_cols, self.epoch_weights, self.n_users)
            self._user_adj = (adj, transpose_csr(adj))
        return self._user_adj

    def pre_epoch_processing(self) -> None:
        self.sample_user_graph()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._user_adj = None   # loaded buffers: rebuild A_u and the scores
        self._cache = None

    # --- representations -------------------------------------------------------------------------
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ĥ_U, ĥ_I)."""
        reps = []
        for m in self.modalities:
            x = F.normalize(torch.cat([self.preference[m], self.mlp[m](self.feats[m])]), dim=1)
            reps.append(lightgcn(self.norm_adj, x, 2, symmetric=True) * 3.0)   # x + Âx + Â²x
        if len(reps) == 2:
            v, t = reps
            users = torch.cat([self.weight_u[:, :1] * v[:self.n_users], self.weight_u[:, 1:] * t[:self.n_users]], 1)
            items = torch.cat([v[self.n_users:], t[self.n_users:]], 1)
        else:
            users, items = torch.split(reps[0], [self.n_users, self.n_items])
        h = items
        for _ in range(self.n_mm_layers):
            h = spmm(self.mm_adj, h, self.mm_adj_t)
        adj, adj_t = self.user_adj()
        return users + spmm(adj, users, adj_t), items + h

    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all = self.forward()
        u = u_all[users]
        diff = (u * i_all[pos]).sum(-1) - (u * i_all[neg]).sum(-1)
        loss = F.softplus(-diff).mean() / math.log(2.0)     # -mean log2 sigmoid(diff)
        reg = sum(self.preference[m][users].pow(2).mean() for m in self.modalities)
        if self.weight_u is not None:
            reg = reg + self.weight_u.pow(2).mean()
        return loss + self.reg_weight * reg

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        if self._cache is None:
            self._cache = self.forward()
        u_all, i_all = self._cache
        return u_all[interaction[0]] @ i_all.t()
