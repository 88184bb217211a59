"""Sparse graph pieces shared by the models: normalisation, the user-item adjacency, torch CSR
conversion and LightGCN propagation. Nothing here ever builds a dense N x N matrix."""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


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
    return torch.sparse_csr_tensor(torch.from_numpy(mat.indptr.astype(np.int64)),
                                   torch.from_numpy(mat.indices.astype(np.int64)),
                                   torch.from_numpy(mat.data), size=mat.shape, device=device)


def normalized_adjacency(inter: sp.spmatrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """Â = D^-1/2 [[0, R], [R^T, 0]] D^-1/2 as torch CSR."""
    return to_torch_csr(sym_normalize(bipartite_adjacency(inter)), device)


def lightgcn(adj: torch.Tensor, emb: torch.Tensor, n_layers: int) -> torch.Tensor:
    """The mean of emb, Â emb, ..., Â^L emb."""
    total, h = emb, emb
    for _ in range(n_layers):
        h = torch.sparse.mm(adj, h)
        total = total + h
    return total / (n_layers + 1)
