"""Training batches with vectorised negative sampling, and user batches for full-ranking evaluation."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from utils.dataset import RecDataset
from utils.errors import DataError


class NegativeSampler:
    """Uniform negatives over the items seen in training, never one of the user's training items.

    Rejection is vectorised: all rows are drawn at once, and only the rejected ones are redrawn.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int, seed: int = 0) -> None:
        self.n_items = n_items
        self.pool = np.unique(items)
        self.seen = np.unique(users * n_items + items)  # sorted codes of (user, item) pairs
        per_user = np.bincount(self.seen // n_items) if self.seen.size else np.zeros(0, dtype=np.int64)
        full = np.flatnonzero(per_user >= self.pool.size)
        if full.size:
            raise DataError(f"user {int(full[0])} interacted with every training item, so no negative "
                            f"item exists for it; remove that user or set use_neg_sampling: False")
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def _is_seen(self, users: np.ndarray, negs: np.ndarray) -> np.ndarray:
        codes = users * self.n_items + negs
        pos = np.searchsorted(self.seen, codes)
        pos[pos == self.seen.size] = 0
        return self.seen[pos] == codes if self.seen.size else np.zeros(codes.shape, dtype=bool)

    def sample(self, users: np.ndarray) -> np.ndarray:
        negs = self.pool[self.rng.integers(0, self.pool.size, size=users.size)]
        todo = np.flatnonzero(self._is_seen(users, negs))
        while todo.size:
            negs[todo] = self.pool[self.rng.integers(0, self.pool.size, size=todo.size)]
            todo = todo[self._is_seen(users[todo], negs[todo])]
        return negs


class TrainDataLoader:
    """Yields LongTensor batches: [3, B] (user, positive, negative), [2, B] without negative
    sampling, or 1-D user IDs with ``use_full_sampling``. Rows are reshuffled every epoch."""

    def __init__(self, config: Any, dataset: RecDataset, batch_size: int = 2048, shuffle: bool = True) -> None:
        self.config, self.dataset = config, dataset
        self.batch_size, self.shuffle = int(batch_size), shuffle
        self.users, self.items = dataset.users.astype(np.int64), dataset.items.astype(np.int64)
        self.neg_sampling = config["use_neg_sampling"] is not False
        self.full_sampling = bool(config["use_full_sampling"])
        self.sampler = NegativeSampler(self.users, self.items, dataset.n_items)
        self.rng = np.random.default_rng(0)
        self._inter = {}

    def pretrain_setup(self, seed: int | None = None) -> None:
        """Reset the shuffling and sampling streams; called after seeding, before each grid point."""
        seed = int(self.config["seed"] if seed is None else seed)
        self.rng = np.random.default_rng(seed)
        self.sampler.reset(seed + 1)

    def inter_matrix(self, form: str = "coo", value_field: Any = None) -> sp.spmatrix:
        if form not in self._inter:
            self._inter[form] = self.dataset.inter_matrix(form)
        return self._inter[form]

    def _rows(self) -> np.ndarray:
        if self.full_sampling:
            rows = np.unique(self.users)
            return self.rng.permutation(rows) if self.shuffle else rows
        n = self.users.size
        return self.rng.permutation(n) if self.shuffle else np.arange(n)

    def __len__(self) -> int:
        n = np.unique(self.users).size if self.full_sampling else self.users.size
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = self._rows()
        if self.full_sampling:
            data = torch.from_numpy(order)
            for start in range(0, data.numel(), self.batch_size):
                yield data[start:start + self.batch_size]
            return
        users, items = self.users[order], self.items[order]
        parts = [users, items] + ([self.sampler.sample(users)] if self.neg_sampling else [])
        data = torch.from_numpy(np.stack(parts))
        for start in range(0, data.shape[1], self.batch_size):
            yield data[:, start:start + self.batch_size]

    # state for resumable training
    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "sampler": self.sampler.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.sampler.rng.bit_generator.state = state["sampler"]


class EvalDataLoader:
    """Batches of the users that have ground truth in one split, with their training items to mask."""

    def __init__(self, config: Any, dataset: RecDataset, additional_dataset: RecDataset,
                 batch_size: int = 4096) -> None:
        self.config, self.dataset = config, dataset
        self.batch_size = int(batch_size)
        self.n_items = dataset.n_items
        self.truth = dataset.inter_matrix("csr")
        self.mask = additional_dataset.inter_matrix("csr")
        self.eval_users = np.flatnonzero(np.diff(self.truth.indptr) > 0)

    def __len__(self) -> int:
        return (self.eval_users.size + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yields (users, mask_rows, mask_cols): rows index into the batch."""
        for start in range(0, self.eval_users.size, self.batch_size):
            users = self.eval_users[start:start + self.batch_size]
            sub = self.mask[users].tocoo()
            yield (torch.from_numpy(users), torch.from_numpy(sub.row.astype(np.int64)),
                   torch.from_numpy(sub.col.astype(np.int64)))
