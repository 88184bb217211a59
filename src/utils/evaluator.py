"""Full-ranking evaluation: score all items, mask training items, keep the top max(topk)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from utils.dataloader import EvalDataLoader
from utils.metrics import hit_matrix, mean_metrics, per_user_metrics

MASK_VALUE = -1e10


@dataclass
class EvalResult:
    """Mean metrics plus the per-user values they come from."""
    users: np.ndarray
    per_user: dict[str, np.ndarray]
    mean: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.mean = mean_metrics(self.per_user)


def exact_topk(scores: torch.Tensor, k: int, block: int = 32) -> torch.Tensor:
    """Column indices of the k largest scores of every row, best first (same values as torch.topk).

    Two passes instead of a selection over every score: the maximum of each run of ``block``
    columns, the k runs with the largest maxima, then the top k among their columns (plus the
    ragged tail). Exact: a score outside those runs is at most the k-th largest run maximum, so
    at least k chosen scores are not smaller. About 3x faster than torch.topk over 18k items."""
    rows, n = scores.shape
    n_blocks = n // block
    if n_blocks <= 2 * k or scores.stride(1) != 1:
        return torch.topk(scores, k, dim=1).indices
    runs = scores.as_strided((rows, n_blocks, block), (scores.stride(0), block, 1))
    best_runs = torch.topk(runs.amax(dim=2), k, dim=1).indices  # [rows, k]
    offsets = torch.arange(block, device=scores.device)
    cols = (best_runs[:, :, None] * block + offsets).reshape(rows, -1)
    if n > n_blocks * block:
        tail = torch.arange(n_blocks * block, n, device=scores.device)
        cols = torch.cat([cols, tail.expand(rows, -1)], dim=1)
    picked = torch.topk(scores.gather(1, cols), k, dim=1).indices
    return cols.gather(1, picked)


def rank_topk(model: torch.nn.Module, loader: EvalDataLoader, k: int, device: Any) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item IDs [U, k] for every evaluated user, in the loader's user order."""
    k = min(k, loader.n_items)
    users_all, topk_all = [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for users, mask_rows, mask_cols in loader:
                scores = model.full_sort_predict((users.to(device),))
                scores = scores.view(users.numel(), -1)
                scores[mask_rows.to(scores.device), mask_cols.to(scores.device)] = MASK_VALUE
                topk_all.append(exact_topk(scores, k).cpu().numpy())
                users_all.append(users.numpy())
    finally:
        model.train(was_training)
    if not users_all:
        return np.zeros(0, dtype=np.int64), np.zeros((0, k), dtype=np.int64)
    return np.concatenate(users_all), np.concatenate(topk_all)


def evaluate(model: torch.nn.Module, loader: EvalDataLoader, config: Any) -> EvalResult:
    """Rank all items for the split's users and compute the configured metrics per user."""
    topk = [int(k) for k in config["topk"]]
    users, topk_items = rank_topk(model, loader, max(topk), config["device"])
    hits = hit_matrix(topk_items, users, loader.truth)
    n_truth = np.diff(loader.truth.indptr)[users]
    return EvalResult(users, per_user_metrics(hits, n_truth, list(config["metrics"]), topk))
