"""``LightGCN_Encoder``, the encoder MMRec's SELFCFED_LGN imports from ``common.encoders``.

Same contract as MMRec's: a ``GeneralRecommender`` built from ``(config, dataloader)`` holding
``embedding_dict['user_emb' | 'item_emb']`` (Xavier-uniform) and ``sparse_norm_adj``, the COO
tensor D^-1/2 A D^-1/2 of the user-item graph A = [[0, R], [R^T, 0]] with D the node degrees
plus 1e-7. ``forward((users, items, ...))`` drops edges with a rate drawn uniformly from
[0, drop_ratio) on every call (numpy's global generator, as in MMRec), propagates ``n_layers``
times (config ``n_layers``, default 3), averages the layers and returns the rows of the given
users and items; ``get_embedding()`` does the same without dropout and gradients, for all users
and items.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from common.abstract_recommender import GeneralRecommender
from utils.graph import lightgcn


class LightGCN_Encoder(GeneralRecommender):  # noqa: N801 (MMRec's name)
    """LightGCN over the training graph with MMRec's edge dropout (see the module docstring)."""

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        self.interaction_matrix = dataset.inter_matrix(form="coo").astype(np.float32)
        self.user_count = self.n_users
        self.item_count = self.n_items
        self.latent_size = config["embedding_size"]
        self.n_layers = 3 if config["n_layers"] is None else config["n_layers"]
        self.layers = [self.latent_size] * self.n_layers
        self.drop_ratio = 1.0
        self.drop_flag = True
        self.embedding_dict = self._init_model()
        self.sparse_norm_adj = self.get_norm_adj_mat().to(self.device)

    def _init_model(self) -> nn.ParameterDict:
        init = nn.init.xavier_uniform_
        return nn.ParameterDict({
            "user_emb": nn.Parameter(init(torch.empty(self.user_count, self.latent_size))),
            "item_emb": nn.Parameter(init(torch.empty(self.item_count, self.latent_size))),
        })

    def get_norm_adj_mat(self) -> torch.Tensor:
        """D^-1/2 A D^-1/2 (coalesced COO, float32); A binary, D = node degree + 1e-7."""
        inter = self.interaction_matrix
        n = self.n_users + self.n_items
        rows = np.concatenate([inter.row, inter.col + self.n_users])
        cols = np.concatenate([inter.col + self.n_users, inter.row])
        adj = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n, n))
        adj.sum_duplicates()
        adj = adj.tocoo()  # row-major, one entry per (row, col), every value 1
        d = np.power(np.bincount(adj.row, minlength=n) + 1e-7, -0.5)  # float64, as MMRec
        values = (d[adj.row] * d[adj.col]).astype(np.float32)
        index = torch.from_numpy(np.vstack([adj.row, adj.col]).astype(np.int64))
        return torch.sparse_coo_tensor(index, torch.from_numpy(values), (n, n),
                                       check_invariants=False).coalesce()

    def sparse_dropout(self, x: torch.Tensor, rate: float, noise_shape: int) -> torch.Tensor:
        """Keep each nonzero of the coalesced COO ``x`` with probability 1 - rate; rescale by
        1 / (1 - rate)."""
        keep = torch.floor((1 - rate) + torch.rand(noise_shape).to(self.device)).type(torch.bool)
        # a subset of sorted unique indices stays coalesced
        out = torch.sparse_coo_tensor(x._indices()[:, keep], x._values()[keep], x.shape,
                                      is_coalesced=True, check_invariants=False)
        return out * (1.0 / (1 - rate))

    def _propagate(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.embedding_dict["user_emb"], self.embedding_dict["item_emb"]], 0)
        out = lightgcn(adj, ego, len(self.layers))  # mean of the layer-0..L embeddings
        return out[:self.user_count], out[self.user_count:]

    def forward(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        adj = self.sparse_norm_adj
        if self.drop_flag:
            adj = self.sparse_dropout(adj, np.random.random() * self.drop_ratio, adj._nnz())
        users, items = self._propagate(adj)
        return users[inputs[0], :], items[inputs[1], :]

    @torch.no_grad()
    def get_embedding(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._propagate(self.sparse_norm_adj)
