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
                topk_all.append(torch.topk(scores, k, dim=1).indices.cpu().numpy())
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
