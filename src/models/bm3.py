"""BM3 (Zhou et al., WWW 2023, "Bootstrap Latent Representations for Multi-modal
Recommendation"), as MMRec's code trains it.

- Encoder: [E_U; E'_I] = LightGCN(Â, [U; I], n_layers) (binary R, symmetric normalisation), and
  E_I = E'_I + I, a residual ID term on the items only. T = Lin_t(X_t), V = Lin_v(X_v) (to
  embedding_size, Xavier-normal weights); the raw feature tables are trainable, as in MMRec.
- One predictor φ = Linear(64, 64) (Xavier-normal), shared by users, items and both modalities.
- Targets (no gradient): Ẽ = Dropout_p(sg(E)) for E_U, E_I, T and V (p = ``dropout``); this
  dropout is the only augmentation. As in MMRec a row is dropped once however often it occurs in
  the batch (dropout runs over the batch's distinct users / items, then rows are repeated).
- Loss over the batch users u and positives p, c(a, b) = 1 - mean_k cos(a_k, b_k)
  (``common.contrastive.cosine_bootstrap``):
  c(φE_U[u], Ẽ_I[p]) + c(φE_I[p], Ẽ_U[u])
  + cl_weight Σ_m [c(φM[p], Ẽ_I[p]) + c(φM[p], M̃[p])]
  + reg_weight (||E_U||_F + ||E_I||_F) / n_items   (MMRec's EmbLoss over the full tables: unsquared)
- No negative sampling (``use_neg_sampling: False``): batches are [2, B] (users, positives);
  a [3, B] batch works too (row 2 is ignored).
- Scores (φE_U)[u] · (φE_I)ᵀ, deterministic.

Either modality alone works, as in MMRec's code (its terms for a missing modality are 0); a
dataset without features is refused. Where MMRec and the paper may differ: the cl_weight = 2 factor
on the four feature terms and the unsquared EmbLoss are MMRec's (its published numbers come from
them); the paper's weighting was not checked against its PDF. Efficiency only (same values): the
feature projections and predictor run on the batch's distinct items, not on all items.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.abstract_recommender import GeneralRecommender
from common.contrastive import cosine_bootstrap
from common.loss import EmbLoss
from utils.errors import ModelInputError
from utils.graph import lightgcn, normalized_adjacency


class BM3(GeneralRecommender):
    """Self-supervised multimodal recommendation by bootstrapped latent representations."""

    cached_scoring = True  # full_sort_predict reuses embeddings computed once per evaluation
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    ranges = {"n_layers": (int, ">= 0"), "reg_weight": (float, ">= 0"), "dropout": (float, ">= 0", "< 1"),
              "cl_weight": (float, ">= 0")}

    def __init__(self, config: Any, dataloader: Any) -> None:
        super().__init__(config, dataloader)
        if self.v_feat is None and self.t_feat is None:
            raise ModelInputError("BM3 needs at least one feature file (image_feat.npy or text_feat.npy)")
        self.embedding_dim = d = int(config["embedding_size"])
        self.n_layers = int(config["n_layers"])
        self.reg_weight = float(config["reg_weight"] or 0.0)
        self.cl_weight = float(config["cl_weight"] or 0.0)
        self.dropout = float(config["dropout"] or 0.0)

        self.norm_adj = normalized_adjacency(dataloader.inter_matrix(form="csr"), self.device)
        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_id_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)
        self.reg_loss = EmbLoss()
        # modality order as in MMRec's constructor: image, then text
        self.feat_emb = nn.ModuleDict()
        self.feat_trs = nn.ModuleDict()
        for name, feat in (("v", self.v_feat), ("t", self.t_feat)):
            if feat is None:
                continue
            self.feat_emb[name] = nn.Embedding.from_pretrained(feat.clone(), freeze=False)
            self.feat_trs[name] = nn.Linear(feat.shape[1], d)
            nn.init.xavier_normal_(self.feat_trs[name].weight)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_U, E_I) with E_I = LightGCN items + the item ID embeddings."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        users, items = torch.split(lightgcn(self.norm_adj, ego, self.n_layers, symmetric=True),
                                   [self.n_users, self.n_items])
        return users, items + self.item_id_embedding.weight

    def _target(self, rows: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        """Dropout_p of the detached distinct rows, repeated back to the batch (always dropped:
        this is the loss's augmentation, as MMRec's F.dropout in calculate_loss)."""
        return F.dropout(rows.detach(), self.dropout, training=True)[inverse]

    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        users, items = interaction[0], interaction[1]
        u_all, i_all = self.forward()
        uniq_u, inv_u = torch.unique(users, return_inverse=True)
        uniq_i, inv_i = torch.unique(items, return_inverse=True)
        u_target = self._target(u_all[uniq_u], inv_u)
        i_target = self._target(i_all[uniq_i], inv_i)
        loss = (cosine_bootstrap(self.predictor(u_all[users]), i_target)
                + cosine_bootstrap(self.predictor(i_all[items]), u_target))
        feat_terms = users.new_zeros((), dtype=u_all.dtype)
        for name in self.feat_emb:
            proj = self.feat_trs[name](self.feat_emb[name](uniq_i))   # M = Lin_m(X_m) on distinct items
            online = self.predictor(proj)[inv_i]
            feat_terms = (feat_terms + cosine_bootstrap(online, i_target)
                          + cosine_bootstrap(online, self._target(proj, inv_i)))
        reg = self.reg_loss(u_all, i_all)   # (||E_U||_F + ||E_I||_F) / n_items
        return loss + self.cl_weight * feat_terms + self.reg_weight * reg

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        if self._cache is None:
            u_all, i_all = self.forward()
            self._cache = (self.predictor(u_all), self.predictor(i_all))
        u_on, i_on = self._cache
        return u_on[interaction[0]] @ i_on.t()
