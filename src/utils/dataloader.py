"""Training batches with vectorised negative sampling, and user batches for full-ranking evaluation.

On the CPU, shuffling and negative sampling use numpy generators (the batches of every earlier
run, bit for bit). When the model's device is CUDA they run there, with torch generators on that
device (``DeviceNegativeSampler``): same rules and distributions, another random stream, and the
batches never cross the PCIe bus."""
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


def samples_on_device(device: Any) -> bool:
    """True when shuffling and negative sampling run on ``device`` with torch (CUDA); False keeps
    the numpy path (the CPU)."""
    return device is not None and torch.device(device).type == "cuda"


class DeviceNegativeSampler:
    """``NegativeSampler``'s rule with torch ops on ``device`` and a seeded torch.Generator there:
    uniform over the items seen in training, never one of the user's training items. Rejected
    draws are redrawn in rounds (one host sync per round, a few per epoch, none per step)."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int, device: Any,
                 seed: int = 0) -> None:
        self.n_items = n_items
        self.device = torch.device(device)
        self.pool = torch.from_numpy(np.unique(items)).to(self.device)
        self.seen = torch.from_numpy(np.unique(users * n_items + items)).to(self.device)  # sorted codes
        self.generator = torch.Generator(device=self.device)
        self.reset(seed)

    def reset(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def _is_seen(self, users: torch.Tensor, negs: torch.Tensor) -> torch.Tensor:
        codes = users * self.n_items + negs
        if self.seen.numel() == 0:
            return torch.zeros(codes.shape, dtype=torch.bool, device=codes.device)
        pos = torch.searchsorted(self.seen, codes).clamp_(max=self.seen.numel() - 1)
        return self.seen[pos] == codes

    def _draw(self, n: int) -> torch.Tensor:
        idx = torch.randint(0, self.pool.numel(), (n,), generator=self.generator, device=self.device)
        return self.pool[idx]

    def sample(self, users: torch.Tensor) -> torch.Tensor:
        negs = self._draw(users.numel())
        todo = torch.nonzero(self._is_seen(users, negs)).squeeze(1)
        while todo.numel():
            negs[todo] = self._draw(todo.numel())
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
        self.sampler = NegativeSampler(self.users, self.items, dataset.n_items)  # also checks the data
        self.rng = np.random.default_rng(0)
        self._inter = {}
        # the CUDA path (None on the CPU): the arrays and both generators on the model's device,
        # set up by pretrain_setup (after init_seed: CUDA is not touched before it), or by the
        # first epoch with seed 0 as the numpy streams above
        self.device: torch.device | None = None
        self.generator: torch.Generator | None = None
        self.device_sampler: DeviceNegativeSampler | None = None
        self._device_ready = False

    def _config_device(self) -> Any:
        try:
            return self.config["device"]
        except KeyError:
            return None

    def _use_device(self, device: Any, seed: int) -> None:
        """Move the sampling to ``device`` when it is CUDA (seeded as numpy is: shuffling ``seed``,
        negatives ``seed + 1``), or back to numpy."""
        self._device_ready = True
        if not samples_on_device(device):
            self.device = self.generator = self.device_sampler = None
            return
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda": the current device, named
            device = torch.device("cuda", torch.cuda.current_device())
        if self.device != device:
            self.device = device
            self.users_dev = torch.from_numpy(self.users).to(device)
            self.items_dev = torch.from_numpy(self.items).to(device)
            self.unique_users_dev = torch.unique(self.users_dev)
            self.generator = torch.Generator(device=device)
            self.device_sampler = DeviceNegativeSampler(self.users, self.items, self.dataset.n_items, device)
        self.generator.manual_seed(int(seed))
        self.device_sampler.reset(int(seed) + 1)

    def pretrain_setup(self, seed: int | None = None) -> None:
        """Reset the shuffling and sampling streams; called after seeding, before each grid point.
        The device is read from the config here (CUDA: torch generators on it)."""
        seed = int(self.config["seed"] if seed is None else seed)
        self.rng = np.random.default_rng(seed)
        self.sampler.reset(seed + 1)
        self._use_device(self._config_device(), seed)

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
        if not self._device_ready:
            self._use_device(self._config_device(), 0)
        if self.device is not None:
            yield from self._iter_on_device()
            return
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

    def _iter_on_device(self) -> Iterator[torch.Tensor]:
        """``__iter__`` on CUDA: the same batches' layout, shuffled and sampled there."""
        g, dev = self.generator, self.device
        if self.full_sampling:
            rows = self.unique_users_dev
            if self.shuffle:
                rows = rows[torch.randperm(rows.numel(), generator=g, device=dev)]
            for start in range(0, rows.numel(), self.batch_size):
                yield rows[start:start + self.batch_size]
            return
        n = self.users.size
        order = torch.randperm(n, generator=g, device=dev) if self.shuffle else torch.arange(n, device=dev)
        users, items = self.users_dev[order], self.items_dev[order]
        parts = [users, items] + ([self.device_sampler.sample(users)] if self.neg_sampling else [])
        data = torch.stack(parts)
        for start in range(0, data.shape[1], self.batch_size):
            yield data[:, start:start + self.batch_size]

    # state for resumable training
    def state_dict(self) -> dict:
        state = {"rng": self.rng.bit_generator.state, "sampler": self.sampler.rng.bit_generator.state}
        if self.device is not None:  # CPU byte tensors, as torch.Generator.get_state gives them
            state.update(device_rng=self.generator.get_state(),
                         device_sampler=self.device_sampler.generator.get_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.sampler.rng.bit_generator.state = state["sampler"]
        if self.device is not None and "device_rng" in state:
            self.generator.set_state(state["device_rng"].cpu())
            self.device_sampler.generator.set_state(state["device_sampler"].cpu())


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
