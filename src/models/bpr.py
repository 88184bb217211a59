"""BPR matrix factorisation (Rendle et al., UAI 2009): score = <U[u], I[i]>."""
import torch
from torch import nn

from common.abstract_recommender import GeneralRecommender
from common.init import xavier_normal_initialization
from common.loss import BPRLoss, EmbLoss


class BPR(GeneralRecommender):
    """Loss = BPR + reg_weight * (L2 norms of the batch embeddings) / batch."""

    cached_scoring = True  # full_sort_predict reuses embeddings computed once per evaluation
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    ranges = {"reg_weight": (float, ">= 0")}

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        self.embedding_dim = config["embedding_size"]
        self.reg_weight = config["reg_weight"]
        self.user_embedding = nn.Embedding(self.n_users, self.embedding_dim)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_dim)
        self.bpr_loss, self.reg_loss = BPRLoss(), EmbLoss()
        self.apply(xavier_normal_initialization)

    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        u = self.user_embedding(interaction[0])
        p = self.item_embedding(interaction[1])
        n = self.item_embedding(interaction[2])
        loss = self.bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        return loss + self.reg_weight * self.reg_loss(u, p, n)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        return self.user_embedding(interaction[0]) @ self.item_embedding.weight.t()
