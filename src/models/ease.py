"""EASE (Steck, WWW 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"), closed form, and
an opt-in text-augmented variant ("EASE + text", SCOPE's base).

- min_B ||X - X B||_F^2 + λ ||B||_F^2 subject to diag(B) = 0, X the binary training matrix (M x N),
  λ = ``reg_weight``. Closed form: G = XᵀX + λI, P = G⁻¹, B_ij = -P_ij / P_jj, B_jj = 0.
- Scores s_u = x_u B, computed per evaluation batch of users from the sparse rows of X; the
  evaluator masks the training items. Only B (N x N) is kept, never an M x N score matrix.
- No gradient steps: ``req_training = False`` (MMRec's name). The trainer calls ``fit`` once in
  place of the batches; ``full_sort_predict`` fits too if nothing did (a re-scored checkpoint, or
  MMRec's own trainer, which never calls ``fit``). B is a non-persistent buffer: the closed form is
  deterministic, so checkpoints stay small and are re-solved on load.
- G is formed on the model's device in column blocks (Xᵀ X[:, block]); the solve is a float32
  Cholesky factorisation and inverse. Peak memory is about 2 N² float32 (G with its factor, then the
  factor with P, which becomes B in place); the constructor refuses with one line when that does
  not fit in the available memory (GPU memory for a CUDA device).

Text variant (``text_weight`` a > 0; 0, the default, is plain EASE) **[inference]**: SCOPE's
supplement describes it only as "one-hop EASE on the interaction Gram matrix plus a text-kNN
affinity term", its Add-EASE-z row calls the text term z-scored. We score
s_u = z_u(x_u B) + a z_u(x_u K_t), with K_t the cosine top-``text_knn_k`` (20) text kNN graph
(self included, cosines clipped at 0, not normalised) and z_u the per-user standardisation over all items.
It needs text features.

MMRec itself ships no EASE; its non-SGD convention (ItemKNNCBF: ``req_training: False``,
``epochs: 1``, a dummy 2-element parameter so that the optimiser accepts the model, a constant 0
loss) is kept.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from common.abstract_recommender import GeneralRecommender
from utils.errors import ConfigError, ModelInputError
from utils.graph import cached_knn, graph_cache_dir, csr_columns, csr_rows, to_torch_csr

GRAM_BLOCK_ENTRIES = 1 << 24  # entries of the dense M x b block of X per Gram column block


def available_memory(device: torch.device | str) -> int:
    """Bytes that can still be allocated: free GPU memory for a CUDA device, otherwise the
    system's available memory (psutil if installed, else MemAvailable of /proc/meminfo)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def solve_bytes(n_items: int, itemsize: int = 4) -> int:
    """Peak bytes of the solve: G and its Cholesky factor, then the factor and P (2 N²)."""
    return 2 * n_items * n_items * itemsize


def ease_closed_form(gram: torch.Tensor, reg_weight: float) -> torch.Tensor:
    """B = I - P diag(1/diag(P)) with P = (gram + λI)⁻¹, i.e. B_ij = -P_ij / P_jj, zero diagonal.

    Works in ``gram``'s dtype and device and overwrites ``gram`` (pass a tensor nothing else
    needs: it is freed as soon as it is factorised)."""
    gram.diagonal().add_(float(reg_weight))
    factor = torch.linalg.cholesky(gram)
    del gram
    p = torch.cholesky_inverse(factor)
    del factor
    # LAPACK returns P column-major; sparse @ B would then copy all of B into row-major order at
    # every scoring call (minutes per evaluation on Sports), so it is made row-major once, here
    # (after the factor is freed: the peak stays 2 N²)
    p = p.contiguous()
    diag = p.diagonal().clone()
    p.div_(diag.neg())              # column j divided by -P_jj
    p.fill_diagonal_(0.0)
    return p


def zscore_rows(scores: torch.Tensor) -> torch.Tensor:
    """Per-row standardisation (x - mean) / std over all columns (a constant row gives 0)."""
    mean = scores.mean(dim=1, keepdim=True)
    std = scores.std(dim=1, unbiased=False, keepdim=True)
    return (scores - mean) / std.clamp_min(1e-12)


class EASE(GeneralRecommender):
    """Closed-form item-item linear autoencoder; optionally plus a z-scored text-kNN term."""

    req_training = False   # [MMRec's name] no gradient steps: the trainer calls fit() instead
    cached_scoring = True  # B is fixed during an evaluation: users may be scored in small blocks
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    ranges = {"reg_weight": (float, "> 0"), "text_weight": (float, ">= 0"), "text_knn_k": (int, ">= 1")}

    def __init__(self, config: Any, dataloader: Any) -> None:
        super().__init__(config, dataloader)
        self.reg_weight = float(config["reg_weight"])
        self.text_weight = float(config["text_weight"] or 0.0)
        self.text_knn_k = int(config["text_knn_k"] or 20)
        if self.reg_weight <= 0:
            raise ConfigError(f"EASE: reg_weight (λ) must be > 0 for the closed form, not {self.reg_weight}")
        if self.text_weight < 0:
            raise ConfigError(f"EASE: text_weight must be >= 0, not {self.text_weight}")
        if self.text_weight > 0 and self.t_feat is None:
            raise ModelInputError("EASE with text_weight > 0 (EASE + text) needs text features; this dataset has "
                                  "none (set text_weight 0 for plain EASE)")
        need, free = solve_bytes(self.n_items), available_memory(self.device)
        if need > free:
            where = "GPU memory" if torch.device(self.device).type == "cuda" else "memory"
            raise ModelInputError(f"EASE needs about {need / 2**30:.2f} GiB for its {self.n_items} x {self.n_items} "
                             f"float32 item-item matrix (twice n_items^2 at the solve's peak), but only "
                             f"{free / 2**30:.2f} GiB of {where} is available")
        self.dummy = nn.Parameter(torch.zeros(2))   # MMRec's convention: the optimiser needs a parameter
        inter = sp.csr_matrix(dataloader.inter_matrix(form="csr"), dtype=np.float32, copy=True)
        inter.sum_duplicates()
        inter.data[:] = 1.0                          # binary X
        self.x = to_torch_csr(inter, self.device)
        self.x_t = to_torch_csr(inter.T, self.device)
        self.register_buffer("B", torch.empty(0, 0, device=self.device), persistent=False)
        self.text_knn_t: torch.Tensor | None = None
        if self.text_weight > 0:
            knn = cached_knn(self.t_feat, self.text_knn_k, "cosine", graph_cache_dir(config),
                             what="text kNN item graph")
            self.text_knn_t = to_torch_csr(knn.T, self.device)   # K_tᵀ: scores as (K_tᵀ x_uᵀ)ᵀ

    @property
    def fitted(self) -> bool:
        return self.B.numel() > 0

    def gram(self) -> torch.Tensor:
        """XᵀX as a dense N x N float32 tensor on the model's device, one column block at a time."""
        n, m = self.n_items, self.n_users
        block = max(1, min(n, GRAM_BLOCK_ENTRIES // max(m, 1)))
        g = torch.empty(n, n, device=self.x.device)
        for start in range(0, n, block):
            cols = torch.arange(start, min(n, start + block), device=self.x.device)
            g[:, start:start + cols.numel()] = torch.sparse.mm(self.x_t, csr_columns(self.x, cols).to_dense())
        return g

    def fit(self, train_data: Any = None) -> None:
        """Solve B once (the training matrix was read in ``__init__``; ``train_data`` is unused)."""
        if not self.fitted:
            self.B = ease_closed_form(self.gram(), self.reg_weight)

    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        return (self.dummy * 0.0).sum()   # nothing to learn by gradient

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        if not self.fitted:
            self.fit()
        rows = csr_rows(self.x, interaction[0].to(self.x.device))
        scores = torch.sparse.mm(rows, self.B)
        if self.text_knn_t is None:
            return scores
        text = torch.sparse.mm(self.text_knn_t, rows.to_dense().t()).t()   # x_u K_t
        return zscore_rows(scores) + self.text_weight * zscore_rows(text)
