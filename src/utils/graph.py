"""Sparse graph pieces shared by the models: normalisation, the user-item adjacency, torch CSR
conversion, LightGCN propagation, blockwise kNN item graphs with a disk cache, and FREEDOM's
degree-sensitive edge pruning. Nothing here ever builds a dense N x N matrix."""
from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch

from utils.errors import ModelInputError
from utils.results import atomic_write

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
    # int32 indices when they fit: the CPU kernel then runs about 30% faster (same values)
    idx = np.int32 if max(mat.nnz, *mat.shape) < np.iinfo(np.int32).max else np.int64
    return torch.sparse_csr_tensor(torch.from_numpy(mat.indptr.astype(idx)),
                                   torch.from_numpy(mat.indices.astype(idx)),
                                   torch.from_numpy(mat.data), size=mat.shape, device=device,
                                   check_invariants=False)


def require_edges(mat: sp.spmatrix, what: str, cause: str, off_diagonal: bool = False) -> sp.spmatrix:
    """``mat`` itself, or a ModelInputError naming the graph and the cause when it has no edge
    (no nonzero entry; with ``off_diagonal``, none outside the diagonal): never a silent zero graph."""
    m = sp.csr_matrix(mat)
    edges = m.count_nonzero() - (int(np.count_nonzero(m.diagonal())) if off_diagonal else 0)
    if edges == 0:
        raise ModelInputError(f"the {what} ({m.shape[0]} x {m.shape[1]}) has no edges: {cause}")
    return mat


def normalized_adjacency(inter: sp.spmatrix, device: torch.device | str = "cpu",
                         what: str = "user-item graph") -> torch.Tensor:
    """Â = D^-1/2 [[0, R], [R^T, 0]] D^-1/2 as torch CSR."""
    require_edges(inter, what, "the training split holds no interaction")
    return to_torch_csr(sym_normalize(bipartite_adjacency(inter)), device)


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


def transpose_csr(adj: torch.Tensor) -> torch.Tensor:
    """A^T of a torch CSR matrix, as torch CSR (computed once, for ``spmm``)."""
    return adj.t().to_sparse_csr()


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


ROWS_SPMM_MAX_SHARE = 0.5  # above this share of the nonzeros, a full product is cheaper than slicing


class _RowsSpMM(torch.autograd.Function):
    """(x[rows], (A x)[rows]) for a constant symmetric A, touching only the nonzeros of those rows
    (forward) and of those columns (backward): the same values as the full product, at a fraction
    of its cost, and one dense gradient buffer for both outputs."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, rows: torch.Tensor, x: torch.Tensor):
        ctx.adj, ctx.rows = adj, rows
        return x[rows], torch.sparse.mm(csr_rows(adj, rows), x)

    @staticmethod
    def backward(ctx, grad_self: torch.Tensor, grad_prop: torch.Tensor):
        grad = torch.sparse.mm(csr_columns(ctx.adj, ctx.rows), grad_prop)  # A symmetric: Aᵀ[:, rows]
        grad[ctx.rows] += grad_self  # rows are unique: a plain, deterministic add
        return None, None, grad


def lightgcn_at(adj: torch.Tensor, emb: torch.Tensor, n_layers: int,
                idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``lightgcn(adj, emb, n_layers, symmetric=True)[idx]``, ``emb[idx]``) for a training batch
    (``idx`` in any order, repeats allowed), bit for bit, with the last layer computed for the
    batch's rows only. ``emb[idx]`` is for regularisers on the layer-0 embeddings. When the batch
    holds most of the nonzeros (small graphs), slicing costs more than it saves: full product."""
    crow = adj.crow_indices()
    if n_layers == 0 or (crow[idx + 1] - crow[idx]).sum() > ROWS_SPMM_MAX_SHARE * adj.values().numel():
        return lightgcn(adj, emb, n_layers, symmetric=True).index_select(0, idx), emb.index_select(0, idx)
    rows, where = torch.unique(idx, return_inverse=True)
    layers = [emb]
    for _ in range(n_layers - 1):
        layers.append(spmm(adj, layers[-1], adj))
    prev_rows, last = _RowsSpMM.apply(adj, rows, layers[-1])
    emb_rows = prev_rows if n_layers == 1 else emb[rows]
    total = emb_rows
    for h in layers[1:]:
        total = total + (prev_rows if h is layers[-1] else h[rows])
    return ((total + last) / (n_layers + 1)).index_select(0, where), emb_rows.index_select(0, where)


def lightgcn(adj: torch.Tensor, emb: torch.Tensor, n_layers: int, symmetric: bool = False) -> torch.Tensor:
    """The mean of emb, Â emb, ..., Â^L emb. ``symmetric=True`` (Â = Â^T, as for the normalised
    user-item graph) lets the backward reuse Â instead of transposing it."""
    total, h = emb, emb
    for _ in range(n_layers):
        h = spmm(adj, h, adj) if symmetric else torch.sparse.mm(adj, h)
        total = total + h
    return total / (n_layers + 1)


# --- torch normalisation of small graphs (MMRec's conventions) -------------------------------------
NORMALIZATIONS = ("sym", "rw", "none")


def inverse_degree(deg: torch.Tensor, power: float) -> torch.Tensor:
    """deg^-power with the infinity of a zero degree set to 0, as MMRec does (a negative degree
    gives NaN there and here)."""
    out = deg.pow(-power)
    return out.masked_fill(torch.isinf(out), 0.0)


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, not {normalization!r}")


def normalize_dense(adj: torch.Tensor, normalization: str = "sym") -> torch.Tensor:
    """'sym': D^-1/2 A D^-1/2, 'rw': D^-1 A, 'none': A, with D the row sums of the dense ``adj``.
    Broadcast products (no N x N diagonal matrices); differentiable in ``adj``."""
    _check_normalization(normalization)
    if normalization == "none":
        return adj
    if normalization == "sym":
        d = inverse_degree(adj.sum(-1), 0.5)
        return d.unsqueeze(-1) * adj * d.unsqueeze(-2)
    return inverse_degree(adj.sum(-1), 1.0).unsqueeze(-1) * adj


def normalize_edges(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int,
                    normalization: str = "none") -> torch.Tensor:
    """The weights of edges (row, col) normalised by the weighted out-degree of the rows:
    'sym': w / sqrt(d_row d_col), 'rw': w / d_row, 'none': w unchanged."""
    _check_normalization(normalization)
    if normalization == "none":
        return edge_weight
    row, col = edge_index[0], edge_index[1]
    deg = edge_weight.new_zeros(num_nodes).index_add_(0, row, edge_weight)
    if normalization == "sym":
        d = inverse_degree(deg, 0.5)
        return d[row] * edge_weight * d[col]
    return inverse_degree(deg, 1.0)[row] * edge_weight


# --- kNN item graphs (blockwise, sparse) -------------------------------------------------------
def knn_graph(feat: np.ndarray | torch.Tensor, k: int, weighting: str = "binary",
              block_size: int = 2048) -> sp.csr_matrix:
    """Cosine top-k neighbours of every row (self included, as in MMRec), as a sparse N x N matrix.

    Rows are processed in blocks: L2-normalise, block @ feat^T, torch.topk; only the (row, col,
    value) triplets are kept, so memory is O(block_size * N + N * k), never N x N. The row itself
    is always among its k (forced to the top, so duplicate or all-zero feature rows cannot push it
    out; it keeps its own cosine as its value, 1 for an all-zero row). ``weighting``: 'binary'
    (value 1) or 'cosine' (the similarity, clipped at 0: a negative weight has no meaning in a
    normalised graph; zero entries are dropped). ``models/sigrec.py`` keeps a twin of this function (tests/test_graph.py pins it).
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


# --- disk cache for derived graphs ---------------------------------------------------------------
def content_hash(*parts: object) -> str:
    """sha256 over arrays (their bytes, dtype and shape), sparse matrices and plain values."""
    h = hashlib.sha256()
    for part in parts:
        if part is None:
            h.update(b"<none>")
        elif sp.issparse(part):
            m = sp.csr_matrix(part)
            m.sort_indices()
            for arr in (m.indptr, m.indices, m.data):
                h.update(np.ascontiguousarray(arr).tobytes())
            h.update(repr(m.shape).encode())
        elif isinstance(part, (np.ndarray, torch.Tensor)):
            arr = np.ascontiguousarray(part.detach().cpu().numpy() if torch.is_tensor(part) else part)
            h.update(arr.tobytes())
            h.update(f"{arr.dtype}{arr.shape}".encode())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()


def _writable(path: Path) -> bool:
    """Writable for us and not marked read-only (root ignores permission bits, so check them)."""
    try:
        return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)
    except OSError:
        return False


def default_cache_dir(dataset: str | None) -> Path:
    return Path(os.path.expanduser("~/.cache/mmrec-harness")) / (dataset or "default")


def graph_cache_dir(config: Any) -> Path:
    """Where a run's derived graphs are cached: ``graph_cache_dir`` when the config sets it, else
    ``<output>/cache/<dataset>/`` (main.py puts the output folder in ``output_dir``), else
    ``~/.cache/mmrec-harness/<dataset>/``; never the data folder, which may be shared or read-only.
    Caches are named by content hashes, so an old one (e.g. under ``data/<name>/cache/``) is
    never reused by mistake; it can be deleted."""
    dataset = config.get("dataset")
    explicit = config.get("graph_cache_dir")
    if explicit:
        return Path(os.path.expanduser(str(explicit)))
    if config.get("output_dir"):
        return Path(config["output_dir"]) / "cache" / str(dataset or "default")
    return default_cache_dir(dataset)


def _usable_folder(folder: Path | None, dataset: str | None = None) -> Path:
    """``folder`` created if needed, or the default cache when it cannot be written."""
    for candidate in ([Path(folder)] if folder is not None else []) + [default_cache_dir(dataset)]:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if _writable(candidate):
            return candidate
    return default_cache_dir(dataset)


def cached_sparse(name: str, key_parts: tuple, build: Callable[[], sp.spmatrix],
                  cache: Path | None = None) -> sp.csr_matrix:
    """Load ``name-<hash(key_parts)>.npz`` from the cache folder, or build, save atomically and
    return it. A cache that cannot be read is rebuilt; one that cannot be written is skipped."""
    path = _usable_folder(cache) / f"{name}-{content_hash(name, *key_parts)[:20]}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache file: rebuild it
    mat = sp.csr_matrix(build(), dtype=np.float32)
    try:
        with atomic_write(path) as fh:  # a temporary per process and thread, renamed into place
            np.savez(fh, data=mat.data, indices=mat.indices, indptr=mat.indptr, shape=np.array(mat.shape))
    except OSError:
        pass  # a cache that cannot be written is not an error
    return mat


def cached_knn(feat: np.ndarray | torch.Tensor, k: int, weighting: str, cache: Path | None = None,
               what: str = "kNN item graph") -> sp.csr_matrix:
    """``knn_graph`` through the disk cache, keyed by the feature bytes, k and the weighting; a
    graph without edges (all-zero features under cosine weights) is a ModelInputError."""
    arr = feat.detach().cpu().numpy() if torch.is_tensor(feat) else np.asarray(feat)
    mat = cached_sparse(f"knn{k}-{weighting}-v3", (arr, int(k), weighting), lambda: knn_graph(feat, k, weighting), cache)
    return require_edges(mat, what, "every feature row is zero, so no item has a positive cosine neighbour",
                         off_diagonal=True)


# --- degree-sensitive edge pruning (FREEDOM) -----------------------------------------------------
def degree_sensitive_prune(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                           dropout: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the floor(|E| (1 - dropout)) kept edges, sampled without replacement with
    probability proportional to 1 / sqrt(deg_u deg_i) (Gumbel top-k = successive sampling)."""
    n_edges = users.numel()
    keep = int(np.floor(n_edges * (1.0 - float(dropout))))
    deg_u = torch.bincount(users, minlength=n_users).float()
    deg_i = torch.bincount(items, minlength=n_items).float()
    log_w = -0.5 * (torch.log(deg_u[users]) + torch.log(deg_i[items]))
    uniform = torch.rand(n_edges, generator=generator, device=users.device).clamp_(1e-20, 1.0)
    keys = log_w - torch.log(-torch.log(uniform))  # log weight + Gumbel noise
    return torch.topk(keys, keep, sorted=False).indices.sort().values


@functools.lru_cache(maxsize=8)
def inverse_sqrt_table(size: int, device: str = "cpu") -> torch.Tensor:
    """float32 d^-1/2 for every integer degree d in [0, size), 0 for d = 0, on ``device``.

    Computed once on the host with exactly ``sym_normalize``'s numpy formula: torch's float32
    pow(-0.5) and rsqrt, and even a float64 pow rounded to float32, differ from numpy's float32
    power in the last bit for a third of the integers up to 2^21, so a lookup is the only way a
    graph built with torch ops carries the scipy graph's values bit for bit."""
    deg = np.arange(size, dtype=np.float32)
    inv = np.zeros_like(deg)
    np.power(deg, -0.5, out=inv, where=deg > 0)
    return torch.from_numpy(inv).to(device)


def edge_adjacency(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """The symmetric D^-1/2 [[0,R],[R^T,0]] D^-1/2 of the given edges (a repeated edge counts
    once), degrees taken from these edges only, as torch CSR.

    Built with torch ops where the edges live: no copy to the host, no scipy. Indices, their
    dtype and the float32 values equal ``normalized_adjacency`` of the same edges bit for bit
    (each value is one float32 product d_u^-1/2 d_i^-1/2, as scipy's, with the factors from
    ``inverse_sqrt_table``). One host sync: the number of distinct edges. ``device`` moves the
    result (default: stay on the edges' device)."""
    dev = users.device
    codes = torch.unique(users.long() * n_items + items.long().to(dev))  # sorted: user, then item
    u, i = codes // n_items, codes % n_items
    deg_u = torch.bincount(u, minlength=n_users)
    deg_i = torch.bincount(i, minlength=n_items)
    inv = inverse_sqrt_table(max(n_users, n_items) + 1, str(dev))  # a degree never exceeds this
    val = inv[deg_u][u] * inv[deg_i][i]
    order = torch.argsort(i * n_users + u)  # the item rows: item, then user (keys are unique)
    n = n_users + n_items
    crow = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    torch.cumsum(torch.cat([deg_u, deg_i]), 0, out=crow[1:])  # integer cumsum: deterministic
    # int32 indices when they fit, as to_torch_csr chooses them
    idx = torch.int32 if max(2 * codes.numel(), n) < np.iinfo(np.int32).max else torch.int64
    adj = torch.sparse_csr_tensor(crow.to(idx), torch.cat([i + n_users, u[order]]).to(idx),
                                  torch.cat([val, val[order]]), size=(n, n), check_invariants=False)
    return adj if device is None or torch.device(device) == dev else adj.to(device)


# --- SMORE / MSCA: the user-item block, layer means, co-interaction graphs, graph unions ----------
def normalized_interactions(inter: sp.spmatrix) -> sp.csr_matrix:
    """R~ = D_u^-1/2 R D_i^-1/2, the user->item block of Â (same float32 values as slicing Â)."""
    n_users = inter.shape[0]
    return sp.csr_matrix(sym_normalize(bipartite_adjacency(inter))[:n_users, n_users:])


def behaviour_graphs(inter: sp.spmatrix, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frozen behaviour graphs of the models that propagate over Â and aggregate items into
    users with R~: (Â, R~, R~ᵀ) as torch CSR on ``device``."""
    r_block = normalized_interactions(inter)
    return normalized_adjacency(inter, device), to_torch_csr(r_block, device), to_torch_csr(r_block.T, device)


def propagate_mean(adj: torch.Tensor, emb: torch.Tensor, n_layers: int, skip_ego: bool = False,
                   symmetric: bool = False) -> torch.Tensor:
    """The mean of Â^l emb over l = 0..L (``lightgcn``), or over l = 1..L with ``skip_ego``
    (MSCA's collaborative view, which leaves the layer-0 embeddings out; needs L >= 1)."""
    if not skip_ego:
        return lightgcn(adj, emb, n_layers, symmetric)
    if n_layers < 1:
        raise ValueError(f"a layer mean without layer 0 needs n_layers >= 1, not {n_layers}")
    h = emb
    total = None
    for _ in range(n_layers):
        h = spmm(adj, h, adj) if symmetric else torch.sparse.mm(adj, h)
        total = h if total is None else total + h
    return total / n_layers


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


def cached_co_interaction(inter: sp.spmatrix, k: int, min_count: int = 1, self_loop: bool = False,
                          weighting: str = "count", cache: Path | None = None,
                          what: str = "item-item co-interaction graph",
                          nodes: tuple[str, str] = ("items", "user")) -> sp.csr_matrix:
    """``co_interaction_graph`` through the disk cache, keyed by the binary training matrix, k,
    the threshold, the self-loop and the weighting (a new split gives a new file). A graph with
    no edge between two different nodes is a ModelInputError naming ``what``; ``nodes`` names the
    rows and the columns of ``inter`` for that message (("users", "item") for R Rᵀ)."""
    r = sp.csr_matrix(inter, dtype=np.float32, copy=True)
    r.sum_duplicates()
    r.data[:] = 1.0
    mat = cached_sparse(f"co{k}-min{min_count}-{weighting}{'-self' if self_loop else ''}",
                        (r, int(k), int(min_count), bool(self_loop), weighting),
                        lambda: co_interaction_graph(r, k, min_count, self_loop, weighting), cache)
    shared = f"a training {nodes[1]}" if int(min_count) <= 1 else f"{int(min_count)} or more training {nodes[1]}s"
    return require_edges(mat, what, f"no two {nodes[0]} share {shared}", off_diagonal=True)


def union_max(a: sp.spmatrix, b: sp.spmatrix) -> sp.csr_matrix:
    """Entry-wise max over the union of two sparsity patterns: an entry stored in both takes the
    larger value, one stored in one only keeps it (a missing entry is not a 0, so a negative
    value survives). SMORE's fusion graph of two normalised kNN graphs; not re-normalised."""
    if a.shape != b.shape:
        raise ValueError(f"union_max needs equal shapes, not {a.shape} and {b.shape}")
    a, b = sp.csr_matrix(a, dtype=np.float32, copy=True), sp.csr_matrix(b, dtype=np.float32, copy=True)
    a.sum_duplicates()
    b.sum_duplicates()
    a, b = a.tocoo(), b.tocoo()
    n_cols = a.shape[1]
    key = np.concatenate([a.row.astype(np.int64) * n_cols + a.col, b.row.astype(np.int64) * n_cols + b.col])
    val = np.concatenate([a.data, b.data])
    if key.size == 0:
        return sp.csr_matrix(a.shape, dtype=np.float32)
    order = np.argsort(key, kind="stable")
    key, val = key[order], val[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    mat = sp.csr_matrix((np.maximum.reduceat(val, starts), (key[starts] // n_cols, key[starts] % n_cols)),
                        shape=a.shape)
    mat.sort_indices()
    return mat


# --- DRAGON: mixed modality kNN graphs, ranked neighbour lists, neighbour-list matrices ----------
def mixed_knn_graph(feats: list[tuple[np.ndarray | torch.Tensor | None, float]], k: int,
                    weighting: str = "binary", cache: Path | None = None) -> sp.csr_matrix:
    """S = Σ_m w_m D^-1/2 kNN_k(X_m) D^-1/2 over the (features, weight) pairs whose features are
    not None; with one modality present, its normalised graph alone (weight 1), as FREEDOM and
    DRAGON do in MMRec. Each kNN graph comes through the disk cache (``cached_knn``)."""
    present = [(f, float(w)) for f, w in feats if f is not None]
    if not present:
        raise ValueError("mixed_knn_graph needs at least one modality's features")
    graphs = [sym_normalize(cached_knn(f, k, weighting, cache)) for f, _ in present]
    if len(graphs) == 1:
        return graphs[0]
    return sp.csr_matrix(sum(w * g for (_, w), g in zip(present, graphs)), dtype=np.float32)


def ranked_neighbours(graph: sp.spmatrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's first ``k`` stored entries ranked by value descending, ties by smaller column
    (the order ``co_interaction_graph`` keeps), as dense arrays: columns [n, k] and values
    [n, k] (0 beyond a row's length) and the lengths [n] (at most k). No Python loop."""
    g = sp.csr_matrix(graph, dtype=np.float32)
    g.sum_duplicates()
    n = g.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(g.indptr))
    cols, vals = g.indices.astype(np.int64), g.data
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    rank = np.arange(rows.size) - g.indptr[rows]
    keep = rank < k
    out_cols = np.zeros((n, k), dtype=np.int64)
    out_vals = np.zeros((n, k), dtype=np.float32)
    out_cols[rows[keep], rank[keep]] = cols[keep]
    out_vals[rows[keep], rank[keep]] = vals[keep]
    return out_cols, out_vals, np.minimum(np.diff(g.indptr), k).astype(np.int64)


def neighbour_matrix(cols: torch.Tensor, weights: torch.Tensor, n_cols: int) -> torch.Tensor:
    """The n x ``n_cols`` torch CSR matrix whose row u is Σ_j weights[u, j] e_{cols[u, j]}: a column
    listed twice in a row gets the sum of its weights; zero sums are not stored. Built on the
    tensors' device without scatter or float cumsum (each row's list is sorted and equal runs are
    summed over the k offsets, vectorised over rows), so it is deterministic on every device."""
    n, k = cols.shape
    cols, order = torch.sort(cols, dim=1, stable=True)
    weights = torch.gather(weights, 1, order)
    last = torch.ones_like(cols, dtype=torch.bool)           # last entry of a run of equal columns
    last[:, :-1] = cols[:, 1:] != cols[:, :-1]
    sums = weights.clone()                                   # at a run's end: the run's total
    for d in range(1, k):                                    # runs are contiguous after the sort
        same = cols[:, d:] == cols[:, :-d]
        sums[:, d:] += torch.where(same, weights[:, :-d], torch.zeros_like(weights[:, :-d]))
    keep = last & (sums != 0)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=cols.device)
    torch.cumsum(keep.sum(1), 0, out=crow[1:])               # integer cumsum: deterministic
    return torch.sparse_csr_tensor(crow, cols[keep], sums[keep], size=(n, n_cols), check_invariants=False)
