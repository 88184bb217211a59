"""SIGREC: Semantic Item Graph Enhancement for Multimodal Recommendation.

Reference: Zhang, Zhou, Zeng, Niyato, Shen, "Semantic Item Graph Enhancement for Multimodal
Recommendation", AAAI 2026 (arXiv 2508.06154). Only the paper's abstract is available; no public
code exists. This file is a reconstruction; section numbers (§) refer to docs/sigrec-method.md.

From the abstract (fixed):
  * one item-item semantic graph per modality, built from the raw features;
  * collaborative-signal infusion: co-interaction signals from the user-item graph are mixed into
    *each* modality graph;
  * modulus-based personalised perturbation: every embedding gets noise whose size follows its own
    L2 norm; two perturbed views feed a contrastive loss;
  * dual representation alignment: an anchor-based InfoNCE aligns the per-modality semantic
    representations with the behaviour representations as anchors, then a standard InfoNCE
    aligns behaviour with the fused semantics.

Our design choices (each has a config switch; defaults first):
  * kNN edge weight: cosine (negative cosines clipped to 0) | binary          ``knn_weight``
  * co-interaction weight: count | binary                                     ``cf_weight_mode``
  * co-interaction threshold: pairs with >= 1 shared user | >= n (MSCA: 2)    ``cf_min_count``
  * infusion: convex (1-b) S + b C | additive S + b C                         ``infusion``
  * item input: ID embedding gated by the modality (MGCN) | plain projection  ``item_input``
  * fusion: behaviour-driven gates | plain mean                               ``fusion``
  * noise: modulus-scaled | constant (SimGCL)                                 ``perturb_mode``
  * noise placement: after every propagation step (spec) | on the output S^m  ``perturb_at``
  * what is perturbed: the semantic branch S^m (spec) | the behaviour branch  ``perturb_target``
    B, after every LightGCN layer (SimGCL's placement; beyond the spec) | both
  * user semantics: R̃ s_i with R̃ the user->item block of Â (spec) | the      ``user_semantics``
    mean of the user's items, D_u^-1 R s_i
  * anchor loss: anchor InfoNCE | direct InfoNCE(s^v, s^t)                    ``anchor_mode``
  * gradient into the anchors stopped (True) or not                           ``anchor_detach``
    (with False, a stabiliser beyond the spec: that gradient scaled by a    ``anchor_grad_scale``
    factor)
  * alignment weights from the first epoch (spec) | ramped up from 0 over   ``align_warmup_epochs``
    the first N epochs (a stabiliser beyond the spec, whatever anchor_detach)
  * no gradient from the fusion alignment into B, neither as its target nor   ``align_detach``
    through the fusion gate σ(W_g B) inside Z (True), or both paths open (False)
    (with False, L_align drowned BPR on ml100k: valid Recall@20 fell from 0.07 to 0.03 over
    5 epochs even at align_weight 0.01, while BPR alone reached 0.19 after one epoch)
  * modalities: both | image | text                                           ``modalities``
  * contrastive sets: all unique batch users / positive items (spec) | a random
    subset of at most N of each, a speed switch beyond the spec             ``cl_max_nodes``
  * behaviour encoder LightGCN, final representation F = B + Z, BPR with one uniform negative.

Implementation notes: the two perturbed views are computed as the clean branch plus a
gradient-free noise offset (exactly equal, since propagation is linear and the noise carries no
gradient); the contrastive losses use a fused softmax kernel; a training step computes B's last
layer and the user semantics for the batch's rows only, on large graphs (the same losses and
gradients, bit for bit, as the full forward). All of these only save time.

Layout: the model first, then an appendix of the kernels it needs. The module imports only torch,
numpy, scipy, the standard library and ``common.*``, so it can be dropped into an MMRec checkout;
the graph kernels that the harness also has (``utils/graph.py``, ``common/contrastive.py``) are
kept here as twins with the same names, signatures and results (tests/test_graph.py pins every
pair). Frozen graphs (kNN per modality, co-interaction C) are built blockwise and sparse from the
*training* interactions, and cached on disk under a content hash.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from common.abstract_recommender import GeneralRecommender
from common.init import xavier_uniform_initialization
from common.loss import BPRLoss

try:  # [harness] a refusal of the data, reported as one line; MMRec has no such class
    from common.abstract_recommender import ModelInputError
except ImportError:  # inside MMRec
    ModelInputError = ValueError

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

CACHE_VERSION = "sigrec-graphs-v3"  # bump when a builder's output changes meaning
ROWS_MAX_SHARE = 0.5  # rows-only products above this share of a graph's nonzeros use the full product


class SIGREC(GeneralRecommender):
    """SIGREC (see the module docstring for what is from the paper and what is our choice).

    Objective (§8), one returned term each (the trainer sums them):
    L = [L_BPR + λ_reg L_reg] + λ_p L_pert + λ_a L_anchor + λ_f L_align."""

    cached_scoring = True  # F is computed once per evaluation (a harness hint; MMRec ignores it)
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    choices = {"modalities": ("both", "image", "text"), "knn_weight": ("cosine", "binary"),
               "cf_weight_mode": ("count", "binary"), "infusion": ("convex", "additive"),
               "item_input": ("gated", "projection"), "fusion": ("gate", "mean"),
               "perturb_mode": ("modulus", "constant"), "anchor_mode": ("anchor", "direct"),
               "anchor_detach": (True, False), "align_detach": (True, False),
               "perturb_at": ("every_step", "output"), "user_semantics": ("sym", "mean"),
               "perturb_target": ("semantic", "behavior", "both")}
    ranges = {"n_ui_layers": (int, ">= 0"), "n_mm_layers": (int, ">= 1"), "reg_weight": (float, ">= 0"),
              "knn_k": (int, ">= 1"), "cf_topk": (int, ">= 1"), "cf_min_count": (int, ">= 1"),
              "cf_weight": (float, ">= 0"), "graph_block_size": (int, ">= 1"), "perturb_eps": (float, ">= 0"),
              "cl_weight": (float, ">= 0"), "temperature": (float, "> 0"), "cl_max_nodes": (int, ">= 0"),
              "anchor_weight": (float, ">= 0"), "align_weight": (float, ">= 0"),
              "anchor_grad_scale": (float, ">= 0"), "align_warmup_epochs": (int, ">= 0")}
    # [harness] the terms calculate_loss returns, named once in the log (train_loss1, ...)
    loss_names = ("BPR + reg", "perturbation InfoNCE", "anchor alignment", "fusion alignment")

    def __init__(self, config: Any, dataloader: Any) -> None:
        super().__init__(config, dataloader)
        self.dim = int(_cfg(config, "embedding_size", 64))
        self.n_ui_layers = int(_cfg(config, "n_ui_layers", 2))
        self.n_mm_layers = int(_cfg(config, "n_mm_layers", 1))
        self.reg_weight = float(_cfg(config, "reg_weight", 1e-4))
        self.eps = float(_cfg(config, "perturb_eps", 0.1))
        self.perturb_mode = str(_cfg(config, "perturb_mode", "modulus"))
        self.cl_weight = float(_cfg(config, "cl_weight", 0.1))
        self.anchor_weight = float(_cfg(config, "anchor_weight", 0.1))
        self.anchor_detach = bool(_cfg(config, "anchor_detach", True))
        self.anchor_mode = str(_cfg(config, "anchor_mode", "anchor"))
        self.align_weight = float(_cfg(config, "align_weight", 0.1))
        self.align_detach = bool(_cfg(config, "align_detach", True))
        self.tau = float(_cfg(config, "temperature", 0.2))
        self.cl_max_nodes = int(_cfg(config, "cl_max_nodes", 0))
        self.item_input = str(_cfg(config, "item_input", "gated"))
        self.fusion = str(_cfg(config, "fusion", "gate"))
        self.perturb_at = str(_cfg(config, "perturb_at", "every_step"))
        self.perturb_target = str(_cfg(config, "perturb_target", "semantic"))
        self.user_semantics = str(_cfg(config, "user_semantics", "sym"))
        self.anchor_grad_scale = float(_cfg(config, "anchor_grad_scale", 1.0))
        self.align_warmup_epochs = int(_cfg(config, "align_warmup_epochs", 0))
        for key in ("perturb_mode", "perturb_at", "perturb_target", "user_semantics", "anchor_mode",
                    "item_input", "fusion"):  # also inside MMRec, which has no schema check
            if getattr(self, key) not in self.choices[key]:
                raise ValueError(f"{key} must be one of {', '.join(self.choices[key])}, not {getattr(self, key)!r}")
        if self.perturb_target != "semantic" and self.n_ui_layers == 0:
            raise ValueError(f"perturb_target {self.perturb_target!r} perturbs B after its LightGCN layers: "
                             f"set n_ui_layers to 1 or more")

        feats = self._select_modalities(str(_cfg(config, "modalities", "both")))
        self.modal_names = list(feats)
        if self.anchor_mode == "direct" and len(feats) < 2 and self.anchor_weight > 0:
            raise ModelInputError(f"anchor_mode 'direct' contrasts two modalities, but this data has one "
                                  f"({'image' if 'v' in feats else 'text'}): use anchor_mode anchor, or anchor_weight 0")

        # frozen graphs
        inter = _binary(dataloader.inter_matrix(form="coo"))
        adj = sym_normalize(bipartite_adjacency(inter))
        self.adj = FrozenGraph(adj, self.device)  # Â (§1)
        user_item = adj[:self.n_users, self.n_users:] if self.user_semantics == "sym" else _row_mean(inter)
        self.user_item = FrozenGraph(user_item, self.device)  # R̃ (§4), or D_u^-1 R
        self.sem_graphs = self._semantic_graphs(config, feats, inter)  # S̄^m (§2-3)

        # parameters
        self.user_embedding = nn.Embedding(self.n_users, self.dim)
        self.item_embedding = nn.Embedding(self.n_items, self.dim)
        self.proj = nn.ModuleDict({m: nn.Linear(f.shape[1], self.dim) for m, f in feats.items()})
        self.item_gate = nn.ModuleDict({m: nn.Linear(self.dim, self.dim) for m in feats}) \
            if self.item_input == "gated" else None
        self.fusion_gate = nn.ModuleDict({m: nn.Linear(self.dim, self.dim) for m in feats}) \
            if self.fusion == "gate" else None
        for m, f in feats.items():
            self.register_buffer(f"feat_{m}", f, persistent=False)
        self.bpr = BPRLoss()
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        # epochs trained, for the alignment warm-up (saved with the weights only when it is used)
        self.register_buffer("epochs_trained", torch.zeros((), dtype=torch.long),
                             persistent=self.align_warmup_epochs > 0)
        self.align_scale = 1.0 if self.align_warmup_epochs == 0 else 0.0
        self.apply(xavier_uniform_initialization)

    # --- set-up --------------------------------------------------------------------------
    def _select_modalities(self, which: str) -> dict[str, torch.Tensor]:
        """The features to use: {'v': image, 't': text}, as ``modalities`` asks."""
        if which not in ("both", "image", "text"):
            raise ValueError(f"modalities must be 'both', 'image' or 'text', not {which!r}")
        avail = {"v": self.v_feat, "t": self.t_feat}
        wanted = {"both": ["v", "t"], "image": ["v"], "text": ["t"]}[which]
        feats = {m: avail[m].float() for m in wanted if avail[m] is not None}
        names = {"v": "image (vision_feature_file)", "t": "text (text_feature_file)"}
        if not feats:
            raise ModelInputError(f"SIGREC needs item features, but no {' or '.join(names[m] for m in wanted)} "
                                  f"feature was loaded for modalities '{which}'; check the dataset folder and "
                                  f"that is_multimodal_model is True")
        if len(feats) < len(wanted):
            missing = " and ".join(names[m] for m in wanted if m not in feats)
            logging.getLogger().warning(f"SIGREC: modalities '{which}' asked for, but no {missing} feature was "
                                        f"loaded; training with {' and '.join(names[m].split()[0] for m in feats)} only")
        return feats

    def _semantic_graphs(self, config: Any, feats: dict[str, torch.Tensor],
                         inter: sp.csr_matrix) -> dict[str, FrozenGraph]:
        """S̄^m = infuse(Ŝ^m, Ĉ) for every modality (§2-3), from cached or freshly built graphs."""
        knn_k = int(_cfg(config, "knn_k", 10))
        knn_weight = str(_cfg(config, "knn_weight", "cosine"))
        cf_topk = int(_cfg(config, "cf_topk", 10))
        cf_min_count = int(_cfg(config, "cf_min_count", 1))
        cf_mode = str(_cfg(config, "cf_weight_mode", "count"))
        beta = float(_cfg(config, "cf_weight", 0.3))
        infusion = str(_cfg(config, "infusion", "convex"))
        block = int(_cfg(config, "graph_block_size", 2048))
        if infusion not in ("convex", "additive"):
            raise ValueError(f"infusion must be 'convex' or 'additive', not {infusion!r}")
        folder = resolve_cache_dir(config)
        self.graph_cache_dir = folder
        self.cache_files: list[Path] = []
        co = None
        if beta != 0:
            params = {"cf_topk": cf_topk, "cf_weight_mode": cf_mode, "cf_min_count": cf_min_count}
            key = graph_cache_key("co", inter_arrays(inter), params)
            self.cache_files.append(folder / f"co_{key}.npz")
            raw = cached_graph(folder, f"co_{key}", lambda: co_interaction_graph(
                inter, cf_topk, min_count=cf_min_count, weighting=cf_mode, block_size=block))
            if raw.count_nonzero() == 0:  # never infuse a silent zero graph
                shared = "a training user" if cf_min_count <= 1 else f"{cf_min_count} or more training users"
                raise ModelInputError(f"SIGREC's co-interaction graph C = RᵀR has no edges: no two items share "
                                      f"{shared}; set cf_weight 0 to train without the infusion"
                                      + (" or lower cf_min_count" if cf_min_count > 1 else ""))
            co = sym_normalize(raw)
        self.co_graph = co  # Ĉ (scipy), kept for inspection
        graphs = {}
        for m, f in feats.items():
            arr = f.detach().cpu().numpy()
            key = graph_cache_key("knn", [arr], {"knn_k": knn_k, "knn_weight": knn_weight})
            self.cache_files.append(folder / f"knn_{m}_{key}.npz")
            sem = sym_normalize(cached_graph(folder, f"knn_{m}_{key}",
                                             lambda: knn_graph(f, knn_k, knn_weight, block_size=block)))
            graphs[m] = FrozenGraph(infuse(sem, co, beta, infusion), self.device)
        return graphs

    # --- representations ---------------------------------------------------------------------
    def behavior(self) -> torch.Tensor:
        """B (§1): the mean of H⁰..H^L of LightGCN on Â, users first."""
        h = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        total = h
        for _ in range(self.n_ui_layers):
            h = self.adj @ h
            total = total + h
        return total / (self.n_ui_layers + 1)

    def behavior_rows(self, nodes: torch.Tensor) -> torch.Tensor:
        """B[nodes] (sorted, unique) with the last layer computed for those rows only."""
        h = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        layers = [h]
        for _ in range(self.n_ui_layers - 1):
            layers.append(self.adj @ layers[-1])
        total = h[nodes]
        for layer in layers[1:]:
            total = total + layer[nodes]
        if self.n_ui_layers > 0:
            total = total + self.adj.rows(nodes, layers[-1])
        return total / (self.n_ui_layers + 1)

    def item_inputs(self) -> dict[str, torch.Tensor]:
        """x^m (§4): the item ID embedding gated by the projected modality feature, or the projection."""
        out = {}
        for m in self.modal_names:
            p = self.proj[m](getattr(self, f"feat_{m}"))
            out[m] = self.item_embedding.weight * torch.sigmoid(self.item_gate[m](p)) \
                if self.item_gate is not None else p
        return out

    def semantic(self, m: str, x: torch.Tensor,
                 users: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Clean S^m = [R̃ s_i; s_i] with s_i = (S̄^m)^L x (§4), and the item states after each step.
        With ``users`` (sorted, unique), only those users' rows sit above all the items."""
        states, s = [], x
        for _ in range(self.n_mm_layers):
            s = self.sem_graphs[m] @ s
            states.append(s)
        user_part = self.user_item @ s if users is None else self.user_item.rows(users, s)
        return torch.cat([user_part, s]), states

    def noise_offsets(self, m: str, sem: torch.Tensor, states: list[torch.Tensor], views: int = 2,
                      users: torch.Tensor | None = None) -> torch.Tensor:
        """[views, M+N, d] offsets e with view = S^m + e (§6), equal to running the branch with noise
        injected after every propagation step (item layers, then the user aggregation).
        With ``users`` (sorted, unique), only those users' rows: [views, len(users)+N, d], and
        ``sem`` holds only those users' rows above the items; noise is drawn for those rows only
        (the item draws come first and are the same; ``users`` = all users gives the full result).

        The noise carries no gradient (its modulus is detached and sign() has zero derivative), and
        propagation is linear, so the noisy branch is the clean branch plus a gradient-free offset:
        e_l = S̄ e_{l-1} + Δ(s_l + S̄ e_{l-1}), e_u = R̃ e_L + Δ(u + R̃ e_L).
        ``perturb_at: output`` perturbs the outputs only: e_i = Δ(s_L), e_u = Δ(u)."""
        with torch.no_grad():
            n, d = self.n_items, sem.shape[1]
            if self.perturb_at == "output":
                rows = self.n_users if users is None else users.numel()
                items = perturb(states[-1].detach().expand(views, n, d), self.eps, self.perturb_mode)
                user_part = perturb(sem[:rows].detach().expand(views, rows, d), self.eps, self.perturb_mode)
                return torch.cat([user_part, items], dim=1)
            e = None
            for clean in states:
                prop = torch.zeros(views, n, d, device=sem.device) if e is None else \
                    (self.sem_graphs[m] @ e.permute(1, 0, 2).reshape(n, -1)).reshape(n, views, d).permute(1, 0, 2)
                e = prop + perturb(clean.detach() + prop, self.eps, self.perturb_mode)
            flat = e.permute(1, 0, 2).reshape(n, -1)
            if users is None:
                rows, prop = self.n_users, self.user_item @ flat
            else:
                rows, prop = users.numel(), self.user_item.rows(users, flat)
            prop = prop.reshape(rows, views, d).permute(1, 0, 2)
            eu = prop + perturb(sem[:rows].detach() + prop, self.eps, self.perturb_mode)
            return torch.cat([eu, e], dim=1)

    def behavior_noise_offsets(self, nodes: torch.Tensor, views: int = 2) -> torch.Tensor:
        """[views, len(nodes), d] offsets e with view = B[nodes] + e: noise after every LightGCN
        layer, placed as SimGCL places it (``perturb_target`` behavior; beyond the spec; the noise
        is ``perturb_mode``'s, modulus by default, and ``perturb_at`` concerns the semantic branch
        only). With H'⁰ = H⁰ and H'^l = Â H'^{l-1} + Δ(Â H'^{l-1}), the offsets follow
        e_l = Â e_{l-1} + Δ(H^l + Â e_{l-1}) (e_0 = 0), and B' - B = Σ_l e_l / (L+1). The last
        layer is computed for ``nodes`` (sorted, unique) only, so its noise is drawn for those rows."""
        with torch.no_grad():
            h = torch.cat([self.user_embedding.weight, self.item_embedding.weight]).detach()
            n, d = h.shape
            e, total = None, h.new_zeros(views, nodes.numel(), d)
            for layer in range(1, self.n_ui_layers + 1):
                last = layer == self.n_ui_layers
                h = self.adj.rows(nodes, h) if last else self.adj @ h  # the clean H^l
                if e is None:  # layer 1: nothing to propagate yet
                    e = perturb(h.expand(views, *h.shape), self.eps, self.perturb_mode)
                else:
                    flat = e.permute(1, 0, 2).reshape(n, -1)
                    prop = self.adj.rows(nodes, flat) if last else self.adj @ flat
                    prop = prop.reshape(h.shape[0], views, d).permute(1, 0, 2)
                    e = prop + perturb(h + prop, self.eps, self.perturb_mode)
                total = total + (e if last else e[:, nodes])
            return total / (self.n_ui_layers + 1)

    def fuse(self, b: torch.Tensor, sem: dict[str, torch.Tensor]) -> torch.Tensor:
        """Z (§5) = mean_m g_m(B) ⊙ S^m (gate) or mean_m S^m (mean)."""
        parts = [torch.sigmoid(self.fusion_gate[m](b)) * sem[m] if self.fusion_gate is not None else sem[m]
                 for m in self.modal_names]
        return torch.stack(parts).mean(0)

    def forward(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Clean pass over all nodes: (B, {m: S^m}, {m: item states per step}); Z = fuse(B, S)."""
        b = self.behavior()
        x = self.item_inputs()
        sem, states = {}, {}
        for m in self.modal_names:
            sem[m], states[m] = self.semantic(m, x[m])
        return b, sem, states

    def train(self, mode: bool = True) -> "SIGREC":
        self._cache = None  # scores use representations computed once per evaluation
        return super().train(mode)

    def pre_epoch_processing(self) -> None:
        """The alignment warm-up: λ_a and λ_f are scaled by min(1, e / align_warmup_epochs) in
        epoch e (0-based; one host read per epoch). The count is saved with the weights."""
        if self.align_warmup_epochs > 0:
            self.align_scale = min(1.0, int(self.epochs_trained) / self.align_warmup_epochs)
            self.epochs_trained += 1

    # --- the objective (§8) ------------------------------------------------------------------
    def calculate_loss(self, interaction: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """L = [L_BPR + λ_reg L_reg] + λ_p L_pert + λ_a L_anchor + λ_f L_align; a term whose weight
        is 0 is not computed; ``align_warmup_epochs`` ramps λ_a and λ_f up from 0 (beyond the spec).
        Every term reads the batch's rows only (``batch_rows``)."""
        batch = self.encode(self.batch_rows(interaction))
        zero = batch.b.new_zeros(())
        lam_a, lam_f = self.align_scale * self.anchor_weight, self.align_scale * self.align_weight
        return (self.bpr_loss(batch) + self.reg_weight * self.reg_loss(batch),
                self.cl_weight * self.perturbation_loss(batch) if self.cl_weight > 0 else zero,
                lam_a * self.anchor_loss(batch) if lam_a > 0 else zero,
                lam_f * self.align_loss(batch) if lam_f > 0 else zero)

    def bpr_loss(self, batch: BatchRows) -> torch.Tensor:
        """L_BPR = -mean log σ(F_u·F_p - F_u·F_n), F = B + Z, one uniform negative (§8)."""
        fu, fp, fn = batch.final
        return self.bpr((fu * fp).sum(-1), (fu * fn).sum(-1))

    def reg_loss(self, batch: BatchRows) -> torch.Tensor:
        """L_reg = ½(‖F_u‖² + ‖F_p‖² + ‖F_n‖²) / batch, over the batch rows (§8)."""
        fu, fp, fn = batch.final
        return 0.5 * (fu.pow(2).sum() + fp.pow(2).sum() + fn.pow(2).sum()) / batch.users.shape[0]

    def perturbation_loss(self, batch: BatchRows) -> torch.Tensor:
        """L_pert = Σ_m [InfoNCE(S^m'_U, S^m''_U) + InfoNCE(S^m'_I, S^m''_I)] (§6): two views with
        modulus-scaled noise after every propagation step, over the unique users and positives.
        ``perturb_target`` behavior: the same two terms on B's views instead (SimGCL's placement,
        beyond the spec); both: the sum of the two."""
        loss = batch.b.new_zeros(())
        if self.perturb_target != "semantic":
            e = self.behavior_noise_offsets(batch.nodes)
            for at in (batch.at_users, batch.at_items):
                clean = batch.b[at]
                loss = loss + info_nce(clean + e[0, at], clean + e[1, at], self.tau)
            if self.perturb_target == "behavior":
                return loss
        for m in self.modal_names:
            e = self.noise_offsets(m, batch.sem_users_items[m], batch.states[m], users=batch.user_rows)
            e = torch.cat([e[:, :batch.n_user_nodes], e[:, batch.n_user_nodes:][:, batch.item_rows]], dim=1)
            for at in (batch.at_users, batch.at_items):
                clean = batch.sem[m][at]
                loss = loss + info_nce(clean + e[0, at], clean + e[1, at], self.tau)
        return loss

    def anchor_loss(self, batch: BatchRows) -> torch.Tensor:
        """L_anchor (§7), over the unique users and over the unique positives: anchor b_k, positives
        s_k^m for every modality, one shared denominator over all entities and modalities:
        -1/(n|M|) Σ_k Σ_m log[exp(cos(b_k, s_k^m)/τ) / Σ_j Σ_m' exp(cos(b_k, s_j^m')/τ)].
        ``anchor_mode: direct`` is the ablation InfoNCE(s^v, s^t); ``anchor_detach`` stops the
        gradient into the anchors; without it, ``anchor_grad_scale`` scales that gradient."""
        loss = batch.b.new_zeros(())
        for at in (batch.at_users, batch.at_items):
            views = [batch.sem[m][at] for m in self.modal_names]
            if self.anchor_mode == "direct":
                loss = loss + info_nce(views[0], views[1], self.tau)  # two modalities: checked in __init__
                continue
            anchor = batch.b[at].detach() if self.anchor_detach else _scale_grad(batch.b[at], self.anchor_grad_scale)
            loss = loss + anchor_info_nce(anchor, views, self.tau)
        return loss

    def align_loss(self, batch: BatchRows) -> torch.Tensor:
        """L_align = InfoNCE(Z_U, B_U) + InfoNCE(Z_I, B_I) (§7). With ``align_detach`` no gradient
        of it reaches B, neither through the target nor through the fusion gate σ(W_g B) inside
        Z: Z is fused again from B.detach() (W_g and the semantic branch still learn from it)."""
        loss = batch.b.new_zeros(())
        for at in (batch.at_users, batch.at_items):
            if not self.align_detach:
                loss = loss + info_nce(batch.z[at], batch.b[at], self.tau)
                continue
            target = batch.b[at].detach()
            loss = loss + info_nce(self.fuse(target, {m: s[at] for m, s in batch.sem.items()}), target, self.tau)
        return loss

    # --- rows-only bookkeeping ---------------------------------------------------------------
    def batch_rows(self, interaction: Any) -> BatchRows:
        """The batch's sorted unique nodes and where every user, positive, negative and contrastive
        entity sits among them: the losses read only these rows of B, S^m and Z (the same values
        as the full forward, at a fraction of its cost on large graphs)."""
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        nodes, where = torch.unique(torch.cat([users, pos + self.n_users, neg + self.n_users]), return_inverse=True)
        n_user_nodes = int(torch.searchsorted(nodes, self.n_users))
        user_rows = nodes[:n_user_nodes]  # the batch's unique users, sorted: no second torch.unique
        at_users = torch.searchsorted(nodes, self._contrast_set(user_rows))
        at_items = torch.searchsorted(nodes, self._contrast_set(torch.unique(pos)) + self.n_users)
        return BatchRows(users=users, nodes=nodes, where=where, n_user_nodes=n_user_nodes,
                         user_rows=user_rows, item_rows=nodes[n_user_nodes:] - self.n_users,
                         at_users=at_users, at_items=at_items)

    def encode(self, batch: BatchRows) -> BatchRows:
        """B, S^m and Z at the batch's nodes (clean forward), and S^m over [the batch's users; all
        items] with the item states, which the perturbation views start from."""
        batch.b = self.behavior_rows(batch.nodes)
        x = self.item_inputs()
        batch.sem, batch.states, batch.sem_users_items = {}, {}, {}
        for m in self.modal_names:
            full, batch.states[m] = self.semantic(m, x[m], batch.user_rows)
            batch.sem_users_items[m] = full
            batch.sem[m] = torch.cat([full[:batch.n_user_nodes], full[batch.n_user_nodes:][batch.item_rows]])
        batch.z = self.fuse(batch.b, batch.sem)
        batch.final = (batch.b + batch.z)[batch.where].split(batch.users.shape[0])  # F_u, F_p, F_n
        return batch

    def _contrast_set(self, ids: torch.Tensor) -> torch.Tensor:
        """The batch's unique ids (spec), or a random ``cl_max_nodes`` of them, sorted (speed switch)."""
        if 0 < self.cl_max_nodes < ids.numel():
            keep = torch.randperm(ids.numel(), device=ids.device)[:self.cl_max_nodes]
            return ids[keep.sort().values]
        return ids

    # --- scoring -----------------------------------------------------------------------------
    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        """Scores F_u · F_i over all items (§5); F is computed once per evaluation (no noise)."""
        if self._cache is None:
            b, sem, _ = self.forward()
            f = b + self.fuse(b, sem)
            self._cache = (f[:self.n_users], f[self.n_users:])
        user_all, item_all = self._cache
        return user_all[interaction[0]] @ item_all.t()


# =============================================================================================
# Appendix: the kernels SIGREC needs, self-contained (no import of the harness's utils.*).
# Twins of utils/graph.py and common/contrastive.py carry the same names, signatures and
# results; tests/test_graph.py::test_sigrec_twin_kernels runs every pair on random input.
# =============================================================================================

# --- a training step's rows --------------------------------------------------------------------
@dataclass
class BatchRows:
    """The rows one training step reads (the rows-only bookkeeping, in one place).

    ``nodes``: the batch's sorted unique node ids (users 0..M-1, then items offset by M);
    ``where``: the position in ``nodes`` of every user, positive and negative of the batch;
    ``user_rows``/``item_rows``: the batch's users and items (item ids), in ``nodes`` order;
    ``at_users``/``at_items``: positions in ``nodes`` of the contrastive sets (the unique users
    and unique positive items, §6-7). Filled by ``encode``: B, S^m and Z at ``nodes``, F = B + Z
    of the batch's users, positives and negatives (``final``), and per modality S^m over
    [the batch's users; all items] with the item states, where the perturbation views start."""
    users: torch.Tensor
    nodes: torch.Tensor
    where: torch.Tensor
    n_user_nodes: int
    user_rows: torch.Tensor
    item_rows: torch.Tensor
    at_users: torch.Tensor
    at_items: torch.Tensor
    b: torch.Tensor | None = None
    sem: dict[str, torch.Tensor] | None = None
    z: torch.Tensor | None = None
    sem_users_items: dict[str, torch.Tensor] | None = None
    states: dict[str, list[torch.Tensor]] | None = None
    final: tuple[torch.Tensor, ...] | None = None


# --- graphs (twins of utils/graph.py) --------------------------------------------------------
def sym_normalize(mat: sp.spmatrix) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 with D the row sums; a zero-degree row stays zero (never NaN)."""
    mat = sp.csr_matrix(mat, dtype=np.float32)
    deg = np.asarray(mat.sum(axis=1)).ravel()
    inv = np.zeros_like(deg)
    np.power(deg, -0.5, out=inv, where=deg > 0)
    scale = sp.diags(inv.astype(np.float32))
    return (scale @ mat @ scale).tocsr()


def bipartite_adjacency(inter: sp.spmatrix) -> sp.csr_matrix:
    """The (M+N) x (M+N) matrix [[0, R], [R^T, 0]] of a binary M x N interaction matrix."""
    r = sp.csr_matrix(inter, dtype=np.float32)
    return sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)


def to_torch_csr(mat: sp.spmatrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A scipy matrix as a torch sparse CSR tensor (faster than COO for forward and backward)."""
    mat = sp.csr_matrix(mat, dtype=np.float32)
    mat.sort_indices()
    # int32 indices when they fit: the CPU kernel then runs about 30% faster (same values)
    idx = np.int32 if max(mat.nnz, *mat.shape) < np.iinfo(np.int32).max else np.int64
    return torch.sparse_csr_tensor(torch.from_numpy(mat.indptr.astype(idx)),
                                   torch.from_numpy(mat.indices.astype(idx)),
                                   torch.from_numpy(mat.data), size=mat.shape, device=device,
                                   check_invariants=False)


class _SpMM(torch.autograd.Function):
    """y = A x with the backward A^T g taken from a given A^T (no CSR transpose + sort per step)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj_t = adj_t
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, torch.sparse.mm(ctx.adj_t, grad)


def spmm(adj: torch.Tensor, x: torch.Tensor, adj_t: torch.Tensor) -> torch.Tensor:
    """A @ x for a constant sparse A; ``adj_t`` is A^T (pass ``adj`` itself when A is symmetric).

    Same values as torch.sparse.mm, but the backward reuses A^T instead of transposing A."""
    if not x.requires_grad:
        return torch.sparse.mm(adj, x)
    return _SpMM.apply(adj, adj_t, x)


def csr_rows(adj: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A[rows, :] of a torch CSR matrix, as torch CSR (each row keeps its column order)."""
    crow, col, val = adj.crow_indices(), adj.col_indices(), adj.values()
    rows = rows.to(crow.device, torch.int64)
    starts = crow[rows].long()
    lengths = crow[rows + 1].long() - starts
    new_crow = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=crow.device)
    torch.cumsum(lengths, 0, out=new_crow[1:])
    total = int(new_crow[-1])  # the slice's size: one host read (output_size spares a second)
    pick = torch.arange(total, device=crow.device) + \
        torch.repeat_interleave(starts - new_crow[:-1], lengths, output_size=total)
    return torch.sparse_csr_tensor(new_crow.to(crow.dtype), col[pick], val[pick],
                                   size=(rows.numel(), adj.shape[1]), check_invariants=False)


def csr_columns(adj: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """A[:, cols] of a torch CSR matrix, as torch CSR; ``cols`` sorted and unique. One pass over
    the nonzeros, no sort. For a symmetric A this is (A[cols, :])^T."""
    crow, col, val = adj.crow_indices(), adj.col_indices(), adj.values()
    local = torch.full((adj.shape[1],), -1, dtype=col.dtype, device=col.device)
    local[cols] = torch.arange(cols.numel(), dtype=col.dtype, device=col.device)
    mapped = local[col]
    keep = mapped >= 0
    kept_before = torch.zeros(col.numel() + 1, dtype=torch.int64, device=col.device)
    torch.cumsum(keep, 0, out=kept_before[1:])
    pick = keep.nonzero().squeeze(1)
    return torch.sparse_csr_tensor(kept_before[crow].to(crow.dtype), mapped[pick], val[pick],
                                   size=(adj.shape[0], cols.numel()), check_invariants=False)


def knn_graph(feat: np.ndarray | torch.Tensor, k: int, weighting: str = "binary",
              block_size: int = 2048) -> sp.csr_matrix:
    """Cosine top-k neighbours of every row (self included, as in MMRec), as a sparse N x N matrix.

    Rows are processed in blocks: L2-normalise, block @ feat^T, torch.topk; only the (row, col,
    value) triplets are kept, so memory is O(block_size * N + N * k), never N x N. The row itself
    is always among its k (forced to the top, so duplicate or all-zero feature rows cannot push it
    out; it keeps its own cosine as its value, 1 for an all-zero row). ``weighting``: 'binary'
    (value 1) or 'cosine' (the similarity, clipped at 0: a negative weight has no meaning in a
    normalised graph; zero entries are dropped).
    """
    if weighting not in ("binary", "cosine"):
        raise ValueError(f"weighting must be 'binary' or 'cosine', not {weighting!r}")
    # computed where the features live (a CUDA tensor is processed on the GPU)
    x = feat.detach().float() if torch.is_tensor(feat) else torch.as_tensor(np.asarray(feat), dtype=torch.float32)
    x = torch.nn.functional.normalize(x, p=2, dim=1)
    n = x.shape[0]
    k = max(1, min(int(k), n))
    cols, vals = [], []
    with torch.no_grad():
        for start in range(0, n, block_size):
            sim = x[start:start + block_size] @ x.t()
            own = torch.arange(sim.shape[0], device=sim.device)
            self_sim = sim[own, own + start].clone()
            sim[own, own + start] = float("inf")        # the row itself always ranks first
            top = torch.topk(sim, k, dim=1)
            top.values[:, 0] = torch.where(self_sim > 0, self_sim, torch.ones_like(self_sim))  # a zero row: 1
            cols.append(top.indices.cpu())
            vals.append(top.values.cpu())
    col = torch.cat(cols).reshape(-1).numpy()
    val = torch.cat(vals).reshape(-1).clamp_min(0.0).numpy() if weighting == "cosine" else np.ones(n * k, np.float32)
    row = np.repeat(np.arange(n), k)
    mat = sp.csr_matrix((val.astype(np.float32), (row, col)), shape=(n, n))
    mat.eliminate_zeros()
    mat.sort_indices()
    return mat


def _top_k_per_row(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k largest values of every row (ties: smaller column first), no Python loop."""
    order = np.lexsort((cols, -vals, rows))          # row, then value descending, then column
    r = rows[order]
    rank = np.arange(r.size) - np.searchsorted(r, r, side="left")
    keep = np.zeros(rows.size, dtype=bool)
    keep[order[rank < k]] = True
    return keep


def co_interaction_graph(inter: sp.spmatrix, k: int, min_count: int = 1, self_loop: bool = False,
                         weighting: str = "count", block_size: int = 2048) -> sp.csr_matrix:
    """The item-item co-interaction graph of a binary M x N matrix R (pass the TRAINING split).

    C = RᵀR (C_ij = users who have both i and j), one sparse product per block of item rows,
    never N x N dense. Dropped: the diagonal and every C_ij < ``min_count`` (MSCA: 2). Each row
    then keeps its ``k`` largest counts (ties: smaller item id first), or all that are left when
    fewer. ``weighting``: 'count' (C_ij) or 'binary' (1). ``self_loop`` adds (i, i) with weight 1
    to every row, the items without partners included. Not normalised."""
    if weighting not in ("count", "binary"):
        raise ValueError(f"weighting must be 'count' or 'binary', not {weighting!r}")
    if int(min_count) < 1:
        raise ValueError(f"min_count must be >= 1, not {min_count}")
    r = sp.csr_matrix(inter, dtype=np.float32, copy=True)
    r.sum_duplicates()
    r.data[:] = 1.0                                   # binary: a repeated pair counts once
    rt = r.T.tocsr()
    n = r.shape[1]
    rows, cols, vals = [], [], []
    for start in range(0, n, block_size):
        part = (rt[start:start + block_size] @ r).tocoo()
        pr, pc, pv = part.row.astype(np.int64), part.col.astype(np.int64), part.data
        keep = (pc != pr + start) & (pv >= min_count)
        pr, pc, pv = pr[keep], pc[keep], pv[keep]
        top = _top_k_per_row(pr, pc, pv, int(k))
        rows.append(pr[top] + start)
        cols.append(pc[top])
        vals.append(pv[top] if weighting == "count" else np.ones(int(top.sum()), np.float32))
    if self_loop:
        rows.append(np.arange(n, dtype=np.int64))
        cols.append(np.arange(n, dtype=np.int64))
        vals.append(np.ones(n, np.float32))
    mat = sp.csr_matrix((np.concatenate(vals).astype(np.float32),
                         (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    mat.sort_indices()
    return mat


def _binary(inter: sp.spmatrix) -> sp.csr_matrix:
    """R as a binary float32 CSR matrix (a repeated pair counts once); the caller's stays untouched."""
    r = sp.csr_matrix(inter, dtype=np.float32, copy=True)
    r.sum_duplicates()
    r.data[:] = 1.0
    return r


def _row_mean(inter: sp.spmatrix) -> sp.csr_matrix:
    """D_u^-1 R: each user's row averages its items (an empty row stays zero)."""
    r = sp.csr_matrix(inter, dtype=np.float32)
    deg = np.asarray(r.sum(axis=1)).ravel()
    inv = np.zeros_like(deg)
    np.divide(1.0, deg, out=inv, where=deg > 0)
    return (sp.diags(inv.astype(np.float32)) @ r).tocsr()


def _scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward (bit for bit); its gradient multiplied by ``scale`` in the backward."""
    if scale == 1.0:
        return x
    frozen = x.detach()
    return frozen + scale * (x - frozen)


# --- SIGREC's own sparse pieces ----------------------------------------------------------------
class _RowsProduct(torch.autograd.Function):
    """(A x)[rows] touching only those rows' nonzeros, for any (non-symmetric) constant A; the
    backward is Aᵀ[:, rows] @ grad. The same values, bit for bit, as the full product followed by
    indexing (zero rows add nothing). (utils/graph.py's ``_RowsSpMM`` is the symmetric-only
    variant that LightGCN's batch forward uses.)"""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, a_t: torch.Tensor, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.a_t, ctx.rows = a_t, rows
        return torch.sparse.mm(csr_rows(a, rows), x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None, torch.Tensor]:
        return None, None, None, torch.sparse.mm(csr_columns(ctx.a_t, ctx.rows), grad)


class FrozenGraph:
    """A frozen sparse matrix with its transpose, both torch CSR: ``g @ x`` and ``g.rows(r, x)``."""

    def __init__(self, mat: sp.spmatrix, device: Any = "cpu") -> None:
        mat = sp.csr_matrix(mat, dtype=np.float32)
        self.shape = mat.shape
        self.a = to_torch_csr(mat, device)
        self.a_t = to_torch_csr(mat.T.tocsr(), device)
        self.rows_only: bool | None = None  # decided on the first call of rows(), then kept

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return spmm(self.a, x, self.a_t)

    def rows(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(A @ x)[rows] for sorted unique ``rows``, computed for those rows only; when they hold
        most of the nonzeros (small graphs), the full product is cheaper than slicing. Both paths
        give the same values; which one pays is decided once per graph, on the first batch (one
        host sync then, none per step after)."""
        if self.rows_only is None:
            crow = self.a.crow_indices().long()
            self.rows_only = bool((crow[rows + 1] - crow[rows]).sum() <= ROWS_MAX_SHARE * self.a.values().numel())
        if not self.rows_only:
            return (self @ x)[rows]
        return _RowsProduct.apply(self.a, self.a_t, rows, x) if x.requires_grad else \
            torch.sparse.mm(csr_rows(self.a, rows), x)


def infuse(sem: sp.spmatrix, co: sp.spmatrix | None, beta: float, mode: str = "convex") -> sp.csr_matrix:
    """S̄ = (1-β)Ŝ + βĈ (``convex``) or Ŝ + βĈ (``additive``), §3; both inputs already normalised."""
    if mode not in ("convex", "additive"):
        raise ValueError(f"infusion must be 'convex' or 'additive', not {mode!r}")
    if co is None or beta == 0:
        return sp.csr_matrix(sem)
    return ((1.0 - beta) * sem + beta * co).tocsr() if mode == "convex" else (sem + beta * co).tocsr()


def perturb(x: torch.Tensor, eps: float, mode: str = "modulus") -> torch.Tensor:
    """Δ = ε · s_k · sign(x) ⊙ normalize(u), u ~ U(0,1)^d (§6), with s_k = ‖x_k‖ (detached) in
    ``modulus`` mode and 1 in ``constant`` (SimGCL) mode. Returns the noise Δ, not x + Δ."""
    x = x.detach()  # the noise carries no gradient (sign() has a zero derivative anyway)
    u = torch.rand_like(x)
    direction = F.normalize(u, dim=-1) * torch.sign(x)
    if mode == "modulus":
        direction = direction * x.norm(dim=-1, keepdim=True)
    elif mode != "constant":
        raise ValueError(f"perturb_mode must be 'modulus' or 'constant', not {mode!r}")
    return eps * direction


# --- contrastive losses (info_nce: twin of common/contrastive.py's, at its defaults) ----------
class _Contrast(torch.autograd.Function):
    """Fused softmax contrast on L2-normalised rows: logits = a bᵀ/τ, row k's positives are the
    columns k + m·n (m < n_pos); loss = mean_k lse_k - mean_{k,m} logit[k, k + m·n].

    Cosines are at most 1, so exp(logit - 1/τ) <= 1 needs no max-shift; the shift is fused into
    the matmul, the exponentials are taken in place and reused as the softmax in the backward:
    three passes over the [n, n·n_pos] buffer instead of autograd's eight or so. A side that
    needs no gradient (a detached anchor or target) costs no backward product."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, tau: float, n_pos: int) -> torch.Tensor:
        n = a.shape[0]
        expo = a.new_full((n, b.shape[0]), -1.0 / tau).addmm_(a, b.t(), alpha=1.0 / tau)  # logits - 1/τ <= ~0
        cols = torch.arange(n, device=a.device)[:, None] + n * torch.arange(n_pos, device=a.device)[None, :]
        pos = expo.gather(1, cols)
        expo.exp_()
        rowsum = expo.sum(dim=1).clamp_min(torch.finfo(expo.dtype).tiny)
        ctx.save_for_backward(a, b)
        ctx.expo, ctx.rowsum, ctx.cols, ctx.tau, ctx.n_pos = expo, rowsum, cols, tau, n_pos
        return rowsum.log().mean() - pos.mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        a, b = ctx.saved_tensors
        scale = grad / (a.shape[0] * ctx.tau)
        p = ctx.expo.mul_((scale / ctx.rowsum)[:, None])  # softmax · grad/(nτ), in place
        p.scatter_add_(1, ctx.cols, (-scale / ctx.n_pos).expand(ctx.cols.shape).contiguous())
        ctx.expo = ctx.rowsum = None
        need_a, need_b = ctx.needs_input_grad[:2]  # a detached side (anchor, target) costs no product
        return p @ b if need_a else None, p.t() @ a if need_b else None, None, None


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows k of -log softmax_k(cos(a_k, b_·)/τ): row k of b is a_k's positive (§6-7).
    The same value and gradients as ``common.contrastive.info_nce(a, b, temperature)``, fused."""
    return _Contrast.apply(F.normalize(a, dim=-1), F.normalize(b, dim=-1), temperature, 1)


def anchor_info_nce(anchor: torch.Tensor, views: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Anchor-based InfoNCE: anchor b_k, positives s_k^m for every modality m, one shared
    denominator over all batch entities j and all modalities m':
    -1/(n|M|) Σ_k Σ_m [cos(b_k, s_k^m)/τ - log Σ_j Σ_m' exp(cos(b_k, s_j^m')/τ)]."""
    s = F.normalize(torch.cat(views, dim=0), dim=-1)  # [|M| n, d], modality-major
    return _Contrast.apply(F.normalize(anchor, dim=-1), s, temperature, len(views))


# --- graph cache ----------------------------------------------------------------------------
def graph_cache_key(kind: str, arrays: list[np.ndarray], params: dict) -> str:
    """A hash of the input arrays' bytes (with shapes and dtypes) and every graph parameter."""
    h = hashlib.sha256(f"{CACHE_VERSION}|{kind}|{sorted(params.items())}".encode())
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.shape}|{arr.dtype}".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:24]


def inter_arrays(inter: sp.spmatrix) -> list[np.ndarray]:
    """The arrays that identify a binary interaction matrix (for the cache key)."""
    r = sp.csr_matrix(inter)
    r.sum_duplicates()
    r.sort_indices()
    return [np.asarray(r.shape, np.int64), r.indptr.astype(np.int64), r.indices.astype(np.int64)]


def _can_write(folder: Path) -> bool:
    """Whether the folder (or its nearest existing ancestor) may be written: the access check
    and the write bits, so that read-only data stays untouched even for root."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK) and bool(probe.stat().st_mode & 0o222)


def resolve_cache_dir(config: Any) -> Path:
    """``graph_cache_dir``, else ``<output_dir>/cache/<dataset>/`` (the harness's output folder;
    never the data folder, which may be shared or read-only), else ~/.cache/sigrec/. The files
    are named by content hashes, so an old cache elsewhere is never reused by mistake."""
    explicit = config["graph_cache_dir"]
    candidates = [Path(os.path.expanduser(str(explicit)))] if explicit else []
    if config["output_dir"]:
        candidates.append(Path(str(config["output_dir"])) / "cache" / str(config["dataset"] or "default"))
    candidates.append(Path.home() / ".cache" / "sigrec")
    for folder in candidates:
        if not _can_write(folder):
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        return folder
    raise OSError(f"no writable graph cache folder among {', '.join(map(str, candidates))}")


def cached_graph(folder: Path | None, name: str, build: Any) -> sp.csr_matrix:
    """Load ``folder/name.npz`` or build it and write it atomically (tmp file + os.replace)."""
    if folder is None:
        return build()
    path = folder / f"{name}.npz"
    if path.exists():
        try:
            return sp.load_npz(path).tocsr()
        except (OSError, ValueError, KeyError) as exc:  # torn or foreign file: rebuild it
            logging.getLogger().warning(f"ignoring unreadable graph cache {path}: {exc}")
    mat = build()
    tmp = folder / f"{name}.tmp{os.getpid()}-{threading.get_ident()}.npz"  # per process and thread
    try:
        sp.save_npz(tmp, mat)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when writing failed
    return mat


def _cfg(config: Any, key: str, default: Any) -> Any:
    """config[key], or the default when the key is missing (MMRec's Config gives None)."""
    value = config[key]
    return default if value is None else value
