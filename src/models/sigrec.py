"""SIGREC: Semantic Item Graph Enhancement for Multimodal Recommendation.

Reference: Zhang, Zhou, Zeng, Niyato, Shen, "Semantic Item Graph Enhancement for Multimodal
Recommendation", AAAI 2026 (arXiv 2508.06154). Only the paper's abstract is available; no public
code exists. This file is a reconstruction.

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
  * infusion: convex (1-b) S + b C | additive S + b C                         ``infusion``
  * item input: ID embedding gated by the modality (MGCN) | plain projection  ``item_input``
  * fusion: behaviour-driven gates | plain mean                               ``fusion``
  * noise: modulus-scaled | constant (SimGCL)                                 ``perturb_mode``
  * anchor loss: anchor InfoNCE | direct InfoNCE(s^v, s^t)                    ``anchor_mode``
  * gradient into the anchors stopped (True) or not                           ``anchor_detach``
  * no gradient from the fusion alignment into B, neither as its target nor   ``align_detach``
    through the fusion gate σ(W_g B) inside Z (True), or both paths open (False)
    (with False, L_align drowned BPR on ml100k: valid Recall@20 fell from 0.07 to 0.03 over
    5 epochs even at align_weight 0.01, while BPR alone reached 0.19 after one epoch)
  * modalities: both | image | text                                           ``modalities``
  * contrastive sets: all unique batch users / positive items (spec) | a random
    subset of at most N of each, a speed switch beyond the spec             ``cl_max_nodes``
  * behaviour encoder LightGCN, user semantics = user->item block of Â times item semantics,
    final representation F = B + Z, BPR with one uniform negative.

Implementation notes: the two perturbed views are computed as the clean branch plus a
gradient-free noise offset (exactly equal, since propagation is linear and the noise carries no
gradient); the contrastive losses use a fused softmax kernel; a training step computes B's last
layer and the user semantics for the batch's rows only, on large graphs (the same losses and
gradients, bit for bit, as the full forward). All of these only save time.

The module only imports torch, numpy, scipy, the standard library and ``common.*`` so it can be
dropped into an MMRec checkout. Frozen graphs (kNN per modality, co-interaction C) are built
blockwise and sparse from the *training* interactions, and cached on disk under a content hash.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
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

CACHE_VERSION = "sigrec-graphs-v1"  # bump when a builder's output changes meaning
ROWS_MAX_SHARE = 0.5  # rows-only products above this share of a graph's nonzeros use the full product


# ---------------------------------------------------------------------------------------------
# graph helpers (self-contained: no import of the harness's utils.graph)
# ---------------------------------------------------------------------------------------------
def knn_graph(feat: np.ndarray | torch.Tensor, k: int, weight: str = "cosine",
              block: int = 2048) -> sp.csr_matrix:
    """Top-k cosine neighbours of every row of ``feat`` (itself included), built in row blocks.

    Only a [block, N] similarity slice exists at any time; the output holds N*k triplets.
    ``weight='cosine'`` keeps the cosine (clipped at 0), ``'binary'`` sets every kept edge to 1.
    The item itself is always kept (its similarity is forced to the top before ``topk``)."""
    if weight not in ("cosine", "binary"):
        raise ValueError(f"knn_weight must be 'cosine' or 'binary', not {weight!r}")
    x = torch.as_tensor(feat)
    x = x.float() if x.dtype != torch.float32 else x
    n = x.shape[0]
    k = max(1, min(int(k), n))
    inv = x.norm(dim=1)
    inv = torch.where(inv > 0, 1.0 / inv, torch.zeros_like(inv))
    rows, cols, vals = [], [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        sim = torch.mm(x[start:stop] * inv[start:stop, None], x.t())  # [b, n]
        sim.mul_(inv[None, :])
        local = torch.arange(stop - start, device=sim.device)
        sim[local, local + start] = 2.0  # cosine <= 1, so the item itself always ranks first
        top = torch.topk(sim, k, dim=1)
        del sim
        v = top.values
        v[:, 0] = 1.0  # self edge (column 0 after the forced 2.0)
        v = torch.ones_like(v) if weight == "binary" else v.clamp_min(0.0)
        rows.append(np.repeat(np.arange(start, stop, dtype=np.int64), k))
        cols.append(top.indices.reshape(-1).cpu().numpy().astype(np.int64))
        vals.append(v.reshape(-1).cpu().numpy().astype(np.float32))
    mat = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    mat.eliminate_zeros()
    return mat


def _topk_per_row(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k largest entries of every row (ties: smaller column first), vectorised."""
    order = np.lexsort((cols, -vals, rows))  # by row, then value descending, then column
    r = rows[order]
    first = np.searchsorted(r, r, side="left")  # index of each row's first entry in sorted order
    rank = np.arange(r.size) - first
    keep = np.zeros(rows.size, dtype=bool)
    keep[order[rank < k]] = True
    return keep


def cooccurrence_graph(inter: sp.spmatrix, k: int, weight: str = "count", block: int = 2048) -> sp.csr_matrix:
    """C = RᵀR with its diagonal zeroed, top ``k`` entries per row; sparse x sparse per row block.

    ``inter`` is the binary M x N training matrix. ``weight='count'`` keeps the co-interaction
    counts, ``'binary'`` sets kept edges to 1. An item without co-interactions keeps an empty row."""
    if weight not in ("count", "binary"):
        raise ValueError(f"cf_weight_mode must be 'count' or 'binary', not {weight!r}")
    r = sp.csr_matrix(inter, dtype=np.float32, copy=True)  # never alter the caller's matrix
    r.sum_duplicates()
    r.data[:] = 1.0  # binary, duplicates count once
    rt = r.T.tocsr()
    n = r.shape[1]
    rows, cols, vals = [], [], []
    for start in range(0, n, block):
        part = (rt[start:start + block] @ r).tocoo()  # [b, n] sparse
        keep = part.col != part.row + start  # zero the diagonal
        pr, pc, pv = part.row[keep].astype(np.int64), part.col[keep].astype(np.int64), part.data[keep]
        top = _topk_per_row(pr, pc, pv, int(k))
        rows.append(pr[top] + start)
        cols.append(pc[top])
        vals.append(np.ones(int(top.sum()), np.float32) if weight == "binary" else pv[top].astype(np.float32))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


def sym_normalize(mat: sp.spmatrix) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 with D the row sums; a zero row stays zero (never NaN)."""
    mat = sp.csr_matrix(mat, dtype=np.float32)
    deg = np.asarray(mat.sum(axis=1), dtype=np.float64).ravel()
    inv = np.zeros_like(deg)
    np.power(deg, -0.5, out=inv, where=deg > 0)
    d = sp.diags(inv.astype(np.float32))
    return (d @ mat @ d).tocsr()


def bipartite_normalized(inter: sp.spmatrix) -> sp.csr_matrix:
    """Â = D^-1/2 [[0, R], [Rᵀ, 0]] D^-1/2 of a binary M x N matrix."""
    r = sp.csr_matrix(inter, dtype=np.float32, copy=True)
    r.sum_duplicates()
    r.data[:] = 1.0
    return sym_normalize(sp.bmat([[None, r], [r.T, None]], format="csr"))


def to_sparse_tensor(mat: sp.spmatrix, device: Any = "cpu") -> torch.Tensor:
    """A scipy matrix as a torch sparse CSR tensor (supports autograd through ``torch.sparse.mm``)."""
    mat = sp.csr_matrix(mat, dtype=np.float32)
    mat.sort_indices()
    return torch.sparse_csr_tensor(torch.from_numpy(mat.indptr.astype(np.int64)),
                                   torch.from_numpy(mat.indices.astype(np.int64)),
                                   torch.from_numpy(mat.data.copy()), size=mat.shape, device=device,
                                   check_invariants=False)


class _SpMM(torch.autograd.Function):
    """A @ X for a constant sparse A whose transpose is given: the backward is Aᵀ @ grad, with no
    per-step CSR transpose (torch's own CSR backward rebuilds the transpose on every call)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, torch.sparse.mm(ctx.a_t, grad)


def csr_rows(a: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """a[rows, :] of a torch CSR matrix, as torch CSR (each row keeps its column order)."""
    crow, col, val = a.crow_indices(), a.col_indices(), a.values()
    starts = crow[rows]
    lengths = crow[rows + 1] - starts
    new_crow = torch.zeros(rows.numel() + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(lengths, 0, out=new_crow[1:])
    pick = torch.arange(int(new_crow[-1]), device=crow.device) + torch.repeat_interleave(starts - new_crow[:-1], lengths)
    return torch.sparse_csr_tensor(new_crow, col[pick], val[pick], size=(rows.numel(), a.shape[1]),
                                   check_invariants=False)


def csr_columns(a: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """a[:, cols] of a torch CSR matrix (``cols`` sorted, unique), as torch CSR: one pass, no sort."""
    crow, col, val = a.crow_indices(), a.col_indices(), a.values()
    local = torch.full((a.shape[1],), -1, dtype=col.dtype, device=col.device)
    local[cols] = torch.arange(cols.numel(), dtype=col.dtype, device=col.device)
    mapped = local[col]
    keep = mapped >= 0
    kept_before = torch.zeros(col.numel() + 1, dtype=crow.dtype, device=col.device)
    torch.cumsum(keep, 0, out=kept_before[1:])
    pick = keep.nonzero().squeeze(1)
    return torch.sparse_csr_tensor(kept_before[crow], mapped[pick], val[pick], size=(a.shape[0], cols.numel()),
                                   check_invariants=False)


class _RowsSpMM(torch.autograd.Function):
    """(A x)[rows] touching only those rows' nonzeros; the backward is Aᵀ[:, rows] @ grad. The
    same values, bit for bit, as the full product followed by indexing (zero rows add nothing)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, a_t: torch.Tensor, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.a_t, ctx.rows = a_t, rows
        return torch.sparse.mm(csr_rows(a, rows), x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None, torch.Tensor]:
        return None, None, None, torch.sparse.mm(csr_columns(ctx.a_t, ctx.rows), grad)


class FrozenGraph:
    """A frozen sparse matrix with its transpose, both torch CSR, multiplied through ``_SpMM``."""

    def __init__(self, mat: sp.spmatrix, device: Any = "cpu") -> None:
        mat = sp.csr_matrix(mat, dtype=np.float32)
        self.shape = mat.shape
        self.a = to_sparse_tensor(mat, device)
        self.a_t = to_sparse_tensor(mat.T.tocsr(), device)
        self.rows_only: bool | None = None  # decided on the first call of rows(), then kept

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return _SpMM.apply(self.a, self.a_t, x) if x.requires_grad else torch.sparse.mm(self.a, x)

    def rows(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(A @ x)[rows] for sorted unique ``rows``, computed for those rows only; when they hold
        most of the nonzeros (small graphs), the full product is cheaper than slicing. Both paths
        give the same values; which one pays is decided once per graph, on the first batch (one
        host sync then, none per step after)."""
        if self.rows_only is None:
            crow = self.a.crow_indices()
            self.rows_only = bool((crow[rows + 1] - crow[rows]).sum() <= ROWS_MAX_SHARE * self.a.values().numel())
        if not self.rows_only:
            return (self @ x)[rows]
        return _RowsSpMM.apply(self.a, self.a_t, rows, x) if x.requires_grad else \
            torch.sparse.mm(csr_rows(self.a, rows), x)


def infuse(sem: sp.spmatrix, co: sp.spmatrix | None, beta: float, mode: str = "convex") -> sp.csr_matrix:
    """S̄ = (1-β)Ŝ + βĈ (``convex``) or Ŝ + βĈ (``additive``); both inputs already normalised."""
    if mode not in ("convex", "additive"):
        raise ValueError(f"infusion must be 'convex' or 'additive', not {mode!r}")
    if co is None or beta == 0:
        return sp.csr_matrix(sem)
    return ((1.0 - beta) * sem + beta * co).tocsr() if mode == "convex" else (sem + beta * co).tocsr()


def perturb(x: torch.Tensor, eps: float, mode: str = "modulus") -> torch.Tensor:
    """Δ = ε · s_k · sign(x) ⊙ normalize(u), u ~ U(0,1)^d, with s_k = ‖x_k‖ (detached) in
    ``modulus`` mode and 1 in ``constant`` (SimGCL) mode. Returns the noise Δ, not x + Δ."""
    x = x.detach()  # the noise carries no gradient (sign() has a zero derivative anyway)
    u = torch.rand_like(x)
    direction = F.normalize(u, dim=-1) * torch.sign(x)
    if mode == "modulus":
        direction = direction * x.norm(dim=-1, keepdim=True)
    elif mode != "constant":
        raise ValueError(f"perturb_mode must be 'modulus' or 'constant', not {mode!r}")
    return eps * direction


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
    """Mean over rows k of -log softmax_k(cos(a_k, b_·)/τ): row k of b is a_k's positive."""
    return _Contrast.apply(F.normalize(a, dim=-1), F.normalize(b, dim=-1), temperature, 1)


def anchor_info_nce(anchor: torch.Tensor, views: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Anchor-based InfoNCE: anchor b_k, positives s_k^m for every modality m, one shared
    denominator over all batch entities j and all modalities m':
    -1/(n|M|) Σ_k Σ_m [cos(b_k, s_k^m)/τ - log Σ_j Σ_m' exp(cos(b_k, s_j^m')/τ)]."""
    s = F.normalize(torch.cat(views, dim=0), dim=-1)  # [|M| n, d], modality-major
    return _Contrast.apply(F.normalize(anchor, dim=-1), s, temperature, len(views))


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


def _writable(folder: Path) -> bool:
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
        if not _writable(folder):
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
    tmp = folder / f"{name}.tmp{os.getpid()}.npz"
    sp.save_npz(tmp, mat)
    os.replace(tmp, path)
    return mat


def _cfg(config: Any, key: str, default: Any) -> Any:
    """config[key], or the default when the key is missing (MMRec's Config gives None)."""
    value = config[key]
    return default if value is None else value


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class SIGREC(GeneralRecommender):
    """SIGREC (see the module docstring for what is from the paper and what is our choice).

    Loss terms returned by ``calculate_loss`` (the trainer sums them):
    BPR + λ_reg L_reg, λ_p L_pert, λ_a L_anchor, λ_f L_align."""

    cached_scoring = True  # F is computed once per evaluation (a harness hint; MMRec ignores it)
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    choices = {"modalities": ("both", "image", "text"), "knn_weight": ("cosine", "binary"),
               "cf_weight_mode": ("count", "binary"), "infusion": ("convex", "additive"),
               "item_input": ("gated", "projection"), "fusion": ("gate", "mean"),
               "perturb_mode": ("modulus", "constant"), "anchor_mode": ("anchor", "direct"),
               "anchor_detach": (True, False), "align_detach": (True, False)}
    ranges = {"n_ui_layers": (int, ">= 0"), "n_mm_layers": (int, ">= 1"), "reg_weight": (float, ">= 0"),
              "knn_k": (int, ">= 1"), "cf_topk": (int, ">= 1"), "cf_weight": (float, ">= 0"),
              "graph_block_size": (int, ">= 1"), "perturb_eps": (float, ">= 0"), "cl_weight": (float, ">= 0"),
              "temperature": (float, "> 0"), "cl_max_nodes": (int, ">= 0"), "anchor_weight": (float, ">= 0"),
              "align_weight": (float, ">= 0")}
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
        for key, value, allowed in (("perturb_mode", self.perturb_mode, ("modulus", "constant")),
                                    ("anchor_mode", self.anchor_mode, ("anchor", "direct")),
                                    ("item_input", self.item_input, ("gated", "projection")),
                                    ("fusion", self.fusion, ("gate", "mean"))):
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {value!r}")

        feats = self._select_modalities(str(_cfg(config, "modalities", "both")))
        self.modal_names = list(feats)
        if self.anchor_mode == "direct" and len(feats) < 2 and self.anchor_weight > 0:
            logging.getLogger().warning("anchor_mode 'direct' needs two modalities; the anchor loss is 0")

        # frozen graphs
        inter = sp.csr_matrix(dataloader.inter_matrix(form="coo"), dtype=np.float32)
        adj = bipartite_normalized(inter)
        self.adj = FrozenGraph(adj, self.device)
        self.user_item = FrozenGraph(adj[:self.n_users, self.n_users:], self.device)  # R̃
        self.sem_graphs = self._semantic_graphs(config, feats, inter)

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
        """S̄^m for every modality as torch CSR, from cached or freshly built kNN and C graphs."""
        knn_k = int(_cfg(config, "knn_k", 10))
        knn_weight = str(_cfg(config, "knn_weight", "cosine"))
        cf_topk = int(_cfg(config, "cf_topk", 10))
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
            key = graph_cache_key("co", inter_arrays(inter), {"cf_topk": cf_topk, "cf_weight_mode": cf_mode})
            self.cache_files.append(folder / f"co_{key}.npz")
            raw = cached_graph(folder, f"co_{key}", lambda: cooccurrence_graph(inter, cf_topk, cf_mode, block))
            if raw.count_nonzero() == 0:  # never infuse a silent zero graph
                raise ModelInputError("SIGREC's co-interaction graph C = RᵀR has no edges: no two items share a "
                                      "training user; set cf_weight 0 to train without the infusion")
            co = sym_normalize(raw)
        self.co_graph = co  # Ĉ (scipy), kept for inspection
        graphs = {}
        for m, f in feats.items():
            arr = f.detach().cpu().numpy()
            key = graph_cache_key("knn", [arr], {"knn_k": knn_k, "knn_weight": knn_weight})
            self.cache_files.append(folder / f"knn_{m}_{key}.npz")
            sem = sym_normalize(cached_graph(folder, f"knn_{m}_{key}", lambda: knn_graph(f, knn_k, knn_weight, block)))
            graphs[m] = FrozenGraph(infuse(sem, co, beta, infusion), self.device)
        return graphs

    # --- forward -------------------------------------------------------------------------
    def behavior(self) -> torch.Tensor:
        """B: the mean of H⁰..H^L of LightGCN on Â, users first."""
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
        """x^m: the item ID embedding gated by the projected modality feature, or the projection."""
        out = {}
        for m in self.modal_names:
            p = self.proj[m](getattr(self, f"feat_{m}"))
            out[m] = self.item_embedding.weight * torch.sigmoid(self.item_gate[m](p)) \
                if self.item_gate is not None else p
        return out

    def semantic(self, m: str, x: torch.Tensor,
                 users: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Clean S^m = [R̃ s_i; s_i] with s_i = (S̄^m)^L x, and the item states after each step.
        With ``users`` (sorted, unique), only those users' rows sit above all the items."""
        states, s = [], x
        for _ in range(self.n_mm_layers):
            s = self.sem_graphs[m] @ s
            states.append(s)
        user_part = self.user_item @ s if users is None else self.user_item.rows(users, s)
        return torch.cat([user_part, s]), states

    def noise_offsets(self, m: str, sem: torch.Tensor, states: list[torch.Tensor], views: int = 2,
                      users: torch.Tensor | None = None) -> torch.Tensor:
        """[views, M+N, d] offsets e with view = S^m + e, equal to running the branch with noise
        injected after every propagation step (item layers, then the user aggregation).
        With ``users`` (sorted, unique), only those users' rows: [views, len(users)+N, d], and
        ``sem`` holds only those users' rows above the items; noise is drawn for those rows only
        (the item draws come first and are the same; ``users`` = all users gives the full result).

        The noise carries no gradient (its modulus is detached and sign() has zero derivative), and
        propagation is linear, so the noisy branch is the clean branch plus a gradient-free offset:
        e_l = S̄ e_{l-1} + Δ(s_l + S̄ e_{l-1}), e_u = R̃ e_L + Δ(u + R̃ e_L)."""
        with torch.no_grad():
            n, d = self.n_items, sem.shape[1]
            e = None
            for step, clean in enumerate(states):
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

    def fuse(self, b: torch.Tensor, sem: dict[str, torch.Tensor]) -> torch.Tensor:
        """Z = mean_m g_m(B) ⊙ S^m (gate) or mean_m S^m (mean)."""
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

    # --- losses --------------------------------------------------------------------------
    def calculate_loss(self, interaction: torch.Tensor) -> tuple[torch.Tensor, ...]:
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        # every loss reads the batch's nodes only: B, the user semantics and the users' noise are
        # computed for those rows (the same values as the full forward, at a fraction of its cost)
        nodes, where = torch.unique(torch.cat([users, pos + self.n_users, neg + self.n_users]), return_inverse=True)
        n_user_nodes = int(torch.searchsorted(nodes, self.n_users))
        user_rows, item_rows = nodes[:n_user_nodes], nodes[n_user_nodes:] - self.n_users
        b_nodes = self.behavior_rows(nodes)
        x = self.item_inputs()
        sem_nodes, states, sem_users_items = {}, {}, {}
        for m in self.modal_names:  # [batch users; all items], then the batch's nodes
            sem_users_items[m], states[m] = self.semantic(m, x[m], user_rows)
            sem_nodes[m] = torch.cat([sem_users_items[m][:n_user_nodes], sem_users_items[m][n_user_nodes:][item_rows]])
        z_nodes = self.fuse(b_nodes, sem_nodes)
        fu, fp, fn = (b_nodes + z_nodes)[where].split(users.shape[0])
        bpr = self.bpr((fu * fp).sum(-1), (fu * fn).sum(-1))
        reg = 0.5 * (fu.pow(2).sum() + fp.pow(2).sum() + fn.pow(2).sum()) / users.shape[0]
        zero = bpr.new_zeros(())
        uu = self._contrast_nodes(torch.unique(users))
        ii = self._contrast_nodes(torch.unique(pos)) + self.n_users
        at_u, at_i = torch.searchsorted(nodes, uu), torch.searchsorted(nodes, ii)
        pert = anchor = align = zero
        if self.cl_weight > 0:
            for m in self.modal_names:
                e = self.noise_offsets(m, sem_users_items[m], states[m], users=user_rows)
                e = torch.cat([e[:, :n_user_nodes], e[:, n_user_nodes:][:, item_rows]], dim=1)  # node-aligned
                for at in (at_u, at_i):
                    clean = sem_nodes[m][at]
                    pert = pert + info_nce(clean + e[0, at], clean + e[1, at], self.tau)
        if self.anchor_weight > 0:
            anchor = self._anchor_loss(b_nodes, sem_nodes, at_u) + self._anchor_loss(b_nodes, sem_nodes, at_i)
        if self.align_weight > 0:
            align = self._align_loss(b_nodes, sem_nodes, z_nodes, at_u) + \
                self._align_loss(b_nodes, sem_nodes, z_nodes, at_i)
        return (bpr + self.reg_weight * reg, self.cl_weight * pert, self.anchor_weight * anchor,
                self.align_weight * align)

    def _contrast_nodes(self, ids: torch.Tensor) -> torch.Tensor:
        """The batch's unique ids (spec), or a random ``cl_max_nodes`` of them, sorted (speed switch)."""
        if 0 < self.cl_max_nodes < ids.numel():
            keep = torch.randperm(ids.numel(), device=ids.device)[:self.cl_max_nodes]
            return ids[keep.sort().values]
        return ids

    def _anchor_loss(self, b: torch.Tensor, sem: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        views = [sem[m][idx] for m in self.modal_names]
        if self.anchor_mode == "direct":
            return info_nce(views[0], views[1], self.tau) if len(views) > 1 else b.new_zeros(())
        anchor = b[idx].detach() if self.anchor_detach else b[idx]
        return anchor_info_nce(anchor, views, self.tau)

    def _align_loss(self, b: torch.Tensor, sem: dict[str, torch.Tensor], z: torch.Tensor,
                    idx: torch.Tensor) -> torch.Tensor:
        """L_align = InfoNCE(Z, B) over the rows ``idx``. With ``align_detach`` no gradient of it
        reaches B, neither through the target nor through the fusion gate σ(W_g B) inside Z:
        Z is fused again from B.detach() (W_g and the semantic branch still learn from it)."""
        if not self.align_detach:
            return info_nce(z[idx], b[idx], self.tau)
        target = b[idx].detach()
        return info_nce(self.fuse(target, {m: s[idx] for m, s in sem.items()}), target, self.tau)

    # --- scoring -------------------------------------------------------------------------
    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        """Scores F_u · F_i over all items; F is computed once per evaluation (no noise)."""
        if self._cache is None:
            b, sem, _ = self.forward()
            f = b + self.fuse(b, sem)
            self._cache = (f[:self.n_users], f[self.n_users:])
        user_all, item_all = self._cache
        return user_all[interaction[0]] @ item_all.t()
