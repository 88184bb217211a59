"""Seeding, model lookup and small helpers, plus the graph helpers that MMRec model files import
from ``utils.utils`` (``build_sim``, ``build_knn_neighbourhood``, ``compute_normalized_laplacian``,
``get_sparse_laplacian``, ``get_dense_laplacian``, ``build_knn_normalized_graph``), with MMRec's
signatures and outputs: dense N x N torch tensors where MMRec returns dense ones. They exist so
that MMRec model files run unchanged; the harness's own models use the blockwise sparse
``utils.graph.knn_graph`` instead."""
from __future__ import annotations

import importlib
import logging
import os
import random
from typing import Any

import numpy as np
import torch

from utils.errors import ConfigError
from utils.graph import normalize_dense, normalize_edges


def init_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch (CPU and CUDA), and choose the kernels.

    ``deterministic`` True: ``torch.use_deterministic_algorithms(True)`` without ``warn_only``, so
    an op with no deterministic kernel raises instead of warning, cuDNN deterministic and not
    benchmarking, and ``CUBLAS_WORKSPACE_CONFIG`` (``:4096:8`` unless already set) put in the
    environment here, before the first CUDA call: the entry points build data and models on the
    device only after this. False: the fast path, any kernel allowed."""
    if deterministic and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        if torch.cuda.is_initialized():  # cuBLAS may have read its workspace size already
            logging.getLogger().warning("CUDA was initialised before init_seed set CUBLAS_WORKSPACE_CONFIG; "
                                        "export CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting to be sure")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.use_deterministic_algorithms(bool(deterministic))
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = False


def threads_per_worker(workers: int, requested: int | None = None, on_cpu: bool = True) -> int | None:
    """Torch threads for each of ``workers`` processes sharing this machine: ``requested``
    (``--threads``) if given, else ``OMP_NUM_THREADS`` if set, else on the CPU
    ``max(1, cores // workers)`` so that N workers never oversubscribe the cores; None leaves
    torch's default (a GPU worker's CPU threads matter little)."""
    if requested:
        return int(requested)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    if not on_cpu:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def get_model(name: str) -> type:
    """``SIGREC`` -> ``models.sigrec.SIGREC``, as in MMRec."""
    module_name = f"models.{name.lower()}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(f"model '{name}' not found: expected class {name} in src/models/{name.lower()}.py") from None
    if not hasattr(module, name):
        raise ConfigError(f"src/models/{name.lower()}.py has no class named {name} (names are case-sensitive)")
    return getattr(module, name)


def resolve_device(requested: str | None, use_gpu: Any = True) -> torch.device:
    """``--device`` wins; otherwise cuda when available and ``use_gpu`` is not False."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"--device '{requested}' is not a device; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {requested} was asked for but CUDA is not available; use --device cpu")
        return device
    return torch.device("cuda" if use_gpu is not False and torch.cuda.is_available() else "cpu")


# --- MMRec's graph helpers (LATTICE, FREEDOM, MGCN, SMORE, ItemKNNCBF import them) ----------------
def build_sim(context: torch.Tensor) -> torch.Tensor:
    """Dense cosine similarity of the rows of ``context``: X X^T with X = rows / their L2 norm.
    A zero row gives NaN, as in MMRec."""
    unit = context.div(torch.norm(context, p=2, dim=-1, keepdim=True))
    return torch.mm(unit, unit.t())


def build_knn_neighbourhood(adj: torch.Tensor, topk: int) -> torch.Tensor:
    """Dense ``adj`` keeping the ``topk`` largest values of each row (self included when it is
    among them, as for a similarity matrix), zero elsewhere."""
    knn_val, knn_ind = torch.topk(adj, topk, dim=-1)
    return torch.zeros_like(adj).scatter_(-1, knn_ind, knn_val)


def compute_normalized_laplacian(adj: torch.Tensor) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of a dense ``adj`` (D: row sums; a zero row stays zero), dense."""
    return normalize_dense(adj, "sym")


def get_dense_laplacian(adj: torch.Tensor, normalization: str = "none") -> torch.Tensor:
    """Dense ``adj`` normalised: 'sym' D^-1/2 A D^-1/2, 'rw' D^-1 A, 'none' A itself."""
    return normalize_dense(adj, normalization)


def get_sparse_laplacian(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int,
                         normalization: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_index, normalised edge_weight)`` for edges given as a [2, E] index: 'sym'
    w / sqrt(d_row d_col), 'rw' w / d_row, 'none' w, with d the weighted row degrees (no
    torch_scatter needed)."""
    return edge_index, normalize_edges(edge_index, edge_weight, num_nodes, normalization)


def build_knn_normalized_graph(adj: torch.Tensor, topk: int, is_sparse: bool,
                               norm_type: str) -> torch.Tensor:
    """The ``topk`` largest entries of each row of a dense similarity ``adj``, normalised with
    ``norm_type`` ('sym', 'rw' or 'none'): a sparse COO tensor (row-major, each row in descending
    value order, not coalesced) when ``is_sparse``, else a dense tensor."""
    if not is_sparse:
        return get_dense_laplacian(build_knn_neighbourhood(adj, topk), normalization=norm_type)
    knn_val, knn_ind = torch.topk(adj, topk, dim=-1)
    rows = torch.arange(adj.shape[0], device=adj.device).repeat_interleave(knn_ind.shape[-1])
    edge_index = torch.stack((rows, knn_ind.reshape(-1)))
    edge_index, edge_weight = get_sparse_laplacian(edge_index, knn_val.reshape(-1), num_nodes=adj.shape[0],
                                                   normalization=norm_type)
    return torch.sparse_coo_tensor(edge_index, edge_weight, adj.shape, check_invariants=False)
