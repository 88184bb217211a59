"""LightGCN (He et al., SIGIR 2020): the mean of the layer embeddings of [U; I] propagated on Â."""
import torch
from torch import nn

from common.abstract_recommender import GeneralRecommender
from common.init import xavier_uniform_initialization
from common.loss import BPRLoss, EmbLoss
from utils.graph import lightgcn, lightgcn_at, normalized_adjacency


class LightGCN(GeneralRecommender):
    """Loss = BPR on propagated embeddings + reg_weight * L2 of the layer-0 batch embeddings."""

    cached_scoring = True  # full_sort_predict reuses embeddings computed once per evaluation
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    ranges = {"n_layers": (int, ">= 0"), "reg_weight": (float, ">= 0")}

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        self.latent_dim = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.user_embedding = nn.Embedding(self.n_users, self.latent_dim)
        self.item_embedding = nn.Embedding(self.n_items, self.latent_dim)
        self.adj = normalized_adjacency(dataloader.inter_matrix(form="csr"), self.device)
        self.bpr_loss, self.reg_loss = BPRLoss(), EmbLoss()
        self._cache = None
        self.apply(xavier_uniform_initialization)

    def forward(self):
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = lightgcn(self.adj, ego, self.n_layers, symmetric=True)
        return torch.split(out, [self.n_users, self.n_items])

    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        idx = torch.cat([users, pos + self.n_users, neg + self.n_users])
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out, ego_rows = lightgcn_at(self.adj, ego, self.n_layers, idx)  # last layer: batch rows only
        u, p, n = out.split(users.shape[0])
        loss = self.bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        reg = self.reg_loss(*ego_rows.split(users.shape[0]))  # layer-0 rows of the batch
        return loss + self.reg_weight * reg

    def full_sort_predict(self, interaction) -> torch.Tensor:
        if self._cache is None:
            self._cache = self.forward()
        user_all, item_all = self._cache
        return user_all[interaction[0]] @ item_all.t()
