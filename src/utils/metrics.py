"""Top-k metrics with MMRec's definitions, kept per user.

Recall@k = hits / |truth|; NDCG@k with binary gains and an ideal DCG over min(|truth|, k)
positions; Precision@k = hits / k; MAP@k = sum over hit ranks of Precision@rank / min(|truth|, k).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

METRICS = ("recall", "ndcg", "precision", "map")


def hit_matrix(topk_items: np.ndarray, users: np.ndarray, truth: sp.csr_matrix,
               small: int = 4) -> np.ndarray:
    """Boolean [U, K]: whether the item at each rank is in the user's ground truth.

    Users with at most ``small`` truth items (most of them, in a validation or test split) are
    compared directly against their padded truth; the others by a search in the sorted
    (user, item) codes of the truth."""
    users = np.asarray(users, dtype=np.int64)
    topk_items = np.asarray(topk_items, dtype=np.int64)
    hits = np.zeros(topk_items.shape, dtype=bool)
    if users.size == 0:
        return hits
    counts = np.diff(truth.indptr)[users]
    few = counts <= small
    if few.any():
        offsets = np.arange(small)
        at = truth.indptr[users[few]][:, None] + offsets
        padded = np.where(offsets < counts[few][:, None], truth.indices[np.minimum(at, truth.indices.size - 1)], -1)
        hits[few] = (topk_items[few][:, :, None] == padded[:, None, :]).any(axis=2)
    if not few.all():
        n_items = truth.shape[1]
        rows = np.repeat(np.arange(truth.shape[0]), np.diff(truth.indptr))
        truth_codes = np.sort(rows.astype(np.int64) * n_items + truth.indices)
        codes = users[~few, None] * n_items + topk_items[~few]
        pos = np.searchsorted(truth_codes, codes)
        pos[pos == truth_codes.size] = 0
        hits[~few] = truth_codes[pos] == codes
    return hits


def per_user_metrics(hits: np.ndarray, n_truth: np.ndarray, metrics: list[str],
                     topk: list[int]) -> dict[str, np.ndarray]:
    """``{'recall@20': array over users, ...}`` for every metric and cut-off."""
    names = [m.lower() for m in metrics]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from Recall, NDCG, Precision, MAP")
    hits = hits.astype(np.float64)
    n_truth = n_truth.astype(np.float64)
    ranks = np.arange(1, hits.shape[1] + 1, dtype=np.float64)
    cum_hits = np.cumsum(hits, axis=1)
    discount = 1.0 / np.log2(ranks + 1.0)
    dcg = np.cumsum(hits * discount, axis=1)
    ideal = np.cumsum(discount)
    prec_at_hit = np.cumsum(hits * cum_hits / ranks, axis=1)
    out: dict[str, np.ndarray] = {}
    for k in topk:
        if k > hits.shape[1]:
            raise ValueError(f"top-k {k} exceeds the {hits.shape[1]} ranked items")
    for m in names:
        for k in topk:
            j, capped = k - 1, np.minimum(n_truth, k)
            if m == "recall":
                val = cum_hits[:, j] / n_truth
            elif m == "precision":
                val = cum_hits[:, j] / k
            elif m == "ndcg":
                val = dcg[:, j] / ideal[capped.astype(np.int64) - 1]
            else:
                val = prec_at_hit[:, j] / capped
            out[f"{m}@{k}"] = val
    return out


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v.mean()) if v.size else 0.0 for k, v in per_user.items()}


def dict2str(result: dict[str, float]) -> str:
    """MMRec's result line: ``recall@5: 0.0123    ndcg@5: 0.0456 ...``."""
    return "    ".join(f"{k}: {v:.4f}" for k, v in result.items())
