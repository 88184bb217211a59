"""VBPR (He & McAuley, AAAI 2016), in MMRec's multimodal form.

Item vector = [I_id (d) || Linear(concat of the item's features) -> d]; user vector is 2d.
Loss = BPR + reg_weight * (L2 norms of the batch user/item vectors) / batch.
Works with either modality alone (the concatenation then holds one feature block).
"""
from __future__ import annotations

import torch
from torch import nn

from common.abstract_recommender import GeneralRecommender
from common.init import xavier_normal_initialization
from common.loss import BPRLoss, EmbLoss
from utils.errors import ConfigError


class VBPR(GeneralRecommender):
    """Visual(-textual) Bayesian personalised ranking."""

    cached_scoring = True  # full_sort_predict reuses embeddings computed once per evaluation

    def __init__(self, config, dataloader) -> None:
        super().__init__(config, dataloader)
        self.embedding_dim = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"] or 0.0)
        feats = [f for f in (self.v_feat, self.t_feat) if f is not None]
        if not feats:
            raise ConfigError("VBPR needs at least one feature file (image_feat.npy or text_feat.npy)")
        # frozen raw features, concatenated once
        self.register_buffer("item_raw_features", torch.cat(feats, dim=1), persistent=False)
        self.u_embedding = nn.Embedding(self.n_users, 2 * self.embedding_dim)
        self.i_embedding = nn.Embedding(self.n_items, self.embedding_dim)
        self.item_linear = nn.Linear(self.item_raw_features.shape[1], self.embedding_dim)
        self.bpr_loss, self.reg_loss = BPRLoss(), EmbLoss()
        self.apply(xavier_normal_initialization)
        self._cache: torch.Tensor | None = None

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """[I_id || Linear(features)] for the given items (all items when None)."""
        if items is None:
            return torch.cat([self.i_embedding.weight, self.item_linear(self.item_raw_features)], dim=1)
        return torch.cat([self.i_embedding(items), self.item_linear(self.item_raw_features[items])], dim=1)

    def train(self, mode: bool = True):
        self._cache = None  # item vectors are recomputed once per evaluation
        return super().train(mode)

    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        u = self.u_embedding(interaction[0])
        # project each distinct batch item once (cheaper than per row or all items)
        items, inverse = torch.unique(interaction[1:3], return_inverse=True)
        vecs = self.item_vectors(items)
        p, n = vecs[inverse[0]], vecs[inverse[1]]
        loss = self.bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        return loss + self.reg_weight * self.reg_loss(u, p, n)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        if self._cache is None:
            self._cache = self.item_vectors()
        return self.u_embedding(interaction[0]) @ self._cache.t()
