# coding: utf-8
"""A model written the way MMRec models are written, kept outside the harness's src/ tree.

It is copied into models/outsidemodel.py by tests/test_baselines.py to show that a model file
written for MMRec trains and evaluates through main.py unchanged. Score = u . (i + P x_i + G i),
where x_i are the item's image and text features, P a linear projection and G a kNN item-item
graph built with MMRec's helpers (utils.utils.build_sim + build_knn_normalized_graph), with a
one-layer propagation of the user embeddings over the row-normalised interaction matrix.
"""
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn

from common.abstract_recommender import GeneralRecommender
from common.loss import BPRLoss, EmbLoss
from common.init import xavier_normal_initialization
from utils.utils import build_sim, build_knn_normalized_graph


class OutsideModel(GeneralRecommender):
    def __init__(self, config, dataloader):
        super(OutsideModel, self).__init__(config, dataloader)
        self.embedding_dim = config['embedding_size']
        self.reg_weight = config['reg_weight']
        self.mix = config['user_mix'] if config['user_mix'] is not None else 0.5

        # MMRec models build their graphs from the COO training matrix
        inter = dataloader.inter_matrix(form='coo').astype(np.float32)
        deg = np.asarray(inter.sum(axis=1)).ravel()
        deg[deg == 0] = 1.0
        norm = sp.diags(1.0 / deg) @ inter
        norm = norm.tocoo()
        idx = torch.LongTensor(np.vstack([norm.row, norm.col]))
        self.norm_inter = torch.sparse_coo_tensor(idx, torch.FloatTensor(norm.data),
                                                  norm.shape).coalesce().to(self.device)

        self.user_embedding = nn.Embedding(self.n_users, self.embedding_dim)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_dim)
        feats = [f for f in (self.v_feat, self.t_feat) if f is not None]
        self.item_feat = torch.cat(feats, dim=1)
        # item-item graph as MMRec models build it: cosine kNN, symmetric normalisation
        knn_k = config['knn_k'] if config['knn_k'] is not None else 10
        sim = build_sim(self.item_feat)
        self.item_graph = build_knn_normalized_graph(sim, topk=knn_k, is_sparse=True, norm_type='sym')
        self.feat_proj = nn.Linear(self.item_feat.shape[1], self.embedding_dim)
        self.loss = BPRLoss()
        self.reg_loss = EmbLoss()
        self.apply(xavier_normal_initialization)

    def forward(self):
        item_id = self.item_embedding.weight
        items = item_id + self.feat_proj(self.item_feat) + torch.sparse.mm(self.item_graph, item_id)
        users = self.user_embedding.weight + self.mix * torch.sparse.mm(self.norm_inter, items)
        return users, items

    def calculate_loss(self, interaction):
        user = interaction[0]
        pos_item = interaction[1]
        neg_item = interaction[2]
        users, items = self.forward()
        u_e, p_e, n_e = users[user], items[pos_item], items[neg_item]
        pos_score = torch.mul(u_e, p_e).sum(dim=1)
        neg_score = torch.mul(u_e, n_e).sum(dim=1)
        reg = self.reg_loss(self.user_embedding(user), self.item_embedding(pos_item),
                            self.item_embedding(neg_item))
        return self.loss(pos_score, neg_score) + self.reg_weight * reg

    def full_sort_predict(self, interaction):
        user = interaction[0]
        users, items = self.forward()
        return torch.matmul(users[user], items.transpose(0, 1))
