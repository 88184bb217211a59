"""SMORE (Ong & Khong, WSDM 2025): spectrum-based modality representation fusion GCN.

Written from docs/baselines-next.md §1, which describes MMRec's ``smore.py`` (the authors' code is
the same file); where that code and the paper might differ, the code is followed, as it produced
the published numbers (the paper's equations were not checked against its PDF).

- Graphs, frozen, built once from the initial raw features (disk-cached, blockwise, never N x N):
  S_v = kNN(X_v, image_knn_k), S_t = kNN(X_t, text_knn_k), cosine top-k (self included), weights
  W_ij / sqrt(d_i d_j) with d the row sums (MMRec's 'sym'); the fusion graph S_f is the union of
  the two edge sets, each entry the max of the two values, not re-normalised.
- Spectral fusion (torch.fft on the model's device): P_m = Lin_m(X_m); F = rfft over the 64
  dimensions (orthonormal, 33 bins); three learned complex filters w_v, w_t, w_f (N(0, 1) real and
  imaginary parts): C_v = F^-1(F P_v . w_v), C_t = F^-1(F P_t . w_t), C_f = F^-1(F P_v . F P_t . w_f).
  Item inputs H_m = I * sigmoid(Lin(C_m)), m in {v, t, f}.
- Behaviour view E_c = LightGCN(Â, [U; I], n_ui_layers), the mean over layers 0..L.
- Item views: h_m = S_m^{n_layers} H_m (last layer), E_m = [R~ h_m; h_m], R~ the user-item block of Â.
- Preference: a_m = softmax over the 64 dimensions of Q_m(E_f) (Linear-tanh-Linear, m in {v, t});
  g_m = Dropout(sigmoid(Lin(E_c))) (m in {v, t, f}, dropout in training only);
  Z = mean(g_v a_v E_v, g_t a_t E_t, g_f E_f); F = E_c + Z; score F_u . F_i.
- Loss = BPR(F) + reg_weight * 1/2 (|F_u|^2 + |F_p|^2 + |F_n|^2) / train_batch_size (squares summed
  over the batch; the divisor is the configured size even for a short last batch, as in MMRec)
  + cl_loss * [InfoNCE(Z_I[p], E_c,I[p]) + InfoNCE(Z_U[u], E_c,U[u])], in-batch negatives with
  the batch rows as given (a repeat is its own false negative), tau = ``temperature``.
- Trainable: U, I, every Linear, the three filters and the raw feature tables (the graphs stay
  those of the initial features).

Differences from MMRec's code, all without effect on the numbers: tau is read from
``temperature`` (MMRec hard-codes 0.2, the yaml's default); graphs are cached under a hash of the
features and k (MMRec: ``image_adj_{k}_True.pt``, shared by name with MGCN and MSCA); scoring
embeddings are computed once per evaluation. MMRec's code needs both modalities (its spectral
fusion multiplies the two spectra), so a one-modality dataset is refused.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.abstract_recommender import GeneralRecommender
from common.contrastive import info_nce_indexed
from utils.errors import ModelInputError
from utils.graph import (behaviour_graphs, cached_knn, graph_cache_dir, lightgcn, spmm,
                         sym_normalize, to_torch_csr, transpose_csr, union_max)

MODALITIES = ("v", "t")
VIEWS = ("v", "t", "f")  # image, text, spectral fusion


class SMORE(GeneralRecommender):
    """Spectral modality fusion, item-item views per modality and fused, behaviour-gated preference."""

    cached_scoring = True  # full_sort_predict reuses embeddings computed once per evaluation
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    ranges = {"n_ui_layers": (int, ">= 0"), "n_layers": (int, ">= 0"), "cl_loss": (float, ">= 0"),
              "temperature": (float, "> 0"), "reg_weight": (float, ">= 0"), "image_knn_k": (int, ">= 1"),
              "text_knn_k": (int, ">= 1"), "dropout_rate": (float, ">= 0", "< 1")}

    def __init__(self, config: Any, dataloader: Any) -> None:
        super().__init__(config, dataloader)
        if self.v_feat is None or self.t_feat is None:
            raise ModelInputError("SMORE needs both image and text features (its spectral fusion "
                              "multiplies the two modalities' spectra); this dataset has only one modality")
        self.embedding_dim = int(config["embedding_size"])
        self.n_ui_layers = int(config["n_ui_layers"])
        self.n_layers = int(config["n_layers"])
        self.knn_k = {"v": int(config["image_knn_k"]), "t": int(config["text_knn_k"])}
        self.reg_weight = float(config["reg_weight"] or 0.0)
        self.cl_loss = float(config["cl_loss"] or 0.0)
        self.tau = float(config["temperature"] or 0.2)
        self.dropout_rate = float(config["dropout_rate"] or 0.0)
        d = self.embedding_dim
        feats = {"v": self.v_feat, "t": self.t_feat}

        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_id_embedding = nn.Embedding(self.n_items, d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        # frozen graphs: behaviour Â, its user-item block R~, kNN per modality and their max-union
        inter = dataloader.inter_matrix(form="csr")
        self.norm_adj, self.r_adj, self.r_adj_t = behaviour_graphs(inter, self.device)
        graphs = {m: sym_normalize(cached_knn(feats[m], self.knn_k[m], "cosine", graph_cache_dir(config),
                                              what=f"{'image' if m == 'v' else 'text'} kNN item graph")) for m in MODALITIES}
        graphs["f"] = union_max(graphs["v"], graphs["t"])
        self.item_adj = {m: to_torch_csr(graphs[m], self.device) for m in VIEWS}
        self.item_adj_t = {m: transpose_csr(self.item_adj[m]) for m in VIEWS}

        # trainable raw features; modules in MMRec's construction order
        self.feat_emb = nn.ModuleDict({m: nn.Embedding.from_pretrained(feats[m].clone(), freeze=False)
                                       for m in MODALITIES})
        self.feat_trs = nn.ModuleDict({m: nn.Linear(feats[m].shape[1], d) for m in MODALITIES})
        self.query = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d, bias=False))
                                    for m in MODALITIES})
        self.gate = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in VIEWS})
        self.prefer = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in VIEWS})
        # complex filters over the d // 2 + 1 rfft bins, (real, imaginary) in the last dimension
        self.filters = nn.ParameterDict({m: nn.Parameter(torch.randn(d // 2 + 1, 2)) for m in VIEWS})
        self.dropout = nn.Dropout(p=self.dropout_rate)
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- representations ---------------------------------------------------------------
    def spectral(self) -> dict[str, torch.Tensor]:
        """C_v, C_t, C_f: the projected features filtered in the frequency domain [N, d]."""
        proj = {m: self.feat_trs[m](self.feat_emb[m].weight) for m in MODALITIES}
        d = proj["v"].shape[1]
        spec = {m: torch.fft.rfft(proj[m], dim=1, norm="ortho") for m in MODALITIES}
        w = {m: torch.view_as_complex(self.filters[m]) for m in VIEWS}  # broadcast over items
        spec["f"] = spec["v"] * spec["t"]
        return {m: torch.fft.irfft(spec[m] * w[m], n=d, dim=1, norm="ortho") for m in VIEWS}

    def item_view(self, m: str, h: torch.Tensor) -> torch.Tensor:
        """E_m = [R~ h; h] with h = S_m^{n_layers} H_m, (M+N) x d."""
        for _ in range(self.n_layers):
            h = spmm(self.item_adj[m], h, self.item_adj_t[m])
        return torch.cat([spmm(self.r_adj, h, self.r_adj_t), h])

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(final users F_U, final items F_I, side Z [U+I], behaviour E_c [U+I])."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        content = lightgcn(self.norm_adj, ego, self.n_ui_layers, symmetric=True)
        conv = self.spectral()
        views = {m: self.item_view(m, self.item_id_embedding.weight * self.gate[m](conv[m])) for m in VIEWS}
        parts = []
        for m in MODALITIES:  # softmax across the d dimensions, not across modalities
            att = torch.softmax(self.query[m](views["f"]), dim=-1)
            parts.append(self.dropout(self.prefer[m](content)) * (att * views[m]))
        parts.append(self.dropout(self.prefer["f"](content)) * views["f"])
        side = torch.stack(parts).mean(0)
        users, items = torch.split(content + side, [self.n_users, self.n_items])
        return users, items, side, content

    # --- loss ----------------------------------------------------------------------------
    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        """L = BPR + reg_weight * L_reg + cl_loss * L_cl (baselines-next.md §1, "Loss")."""
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all, side, content = self.forward()
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        return (self._l_bpr(u, p, n) + self.reg_weight * self._l_reg(u, p, n)
                + self.cl_loss * self._l_cl(side, content, users, pos))

    @staticmethod
    def _l_bpr(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """-mean log sigmoid(F_u.F_p - F_u.F_n)."""
        return F.softplus((u * n).sum(-1) - (u * p).sum(-1)).mean()

    def _l_reg(self, u: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """1/2 (|F_u|^2 + |F_p|^2 + |F_n|^2) / train_batch_size (MMRec's divisor)."""
        return 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / self.batch_size

    def _l_cl(self, side: torch.Tensor, content: torch.Tensor, users: torch.Tensor,
              pos: torch.Tensor) -> torch.Tensor:
        """InfoNCE(Z_I[p], E_c,I[p]) + InfoNCE(Z_U[u], E_c,U[u]), in-batch negatives, rows as given."""
        side_u, side_i = torch.split(side, [self.n_users, self.n_items])
        cont_u, cont_i = torch.split(content, [self.n_users, self.n_items])
        return (info_nce_indexed(side_i, cont_i, pos, self.tau, negatives="batch")
                + info_nce_indexed(side_u, cont_u, users, self.tau, negatives="batch"))

    # --- scoring -------------------------------------------------------------------------
    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        if self._cache is None:
            self._cache = self.forward()[:2]
        u_all, i_all = self._cache
        return u_all[interaction[0]] @ i_all.t()
