"""Negative sampling: never a training item of the user, reproducible, uniform over the pool."""
import numpy as np
import pytest
import torch

from utils.dataloader import NegativeSampler
from utils.errors import DataError


def test_negatives_are_never_training_items(ml100k_data):
    loader = ml100k_data.train
    loader.pretrain_setup(7)
    seen = set(zip(loader.users.tolist(), loader.items.tolist()))
    batches = list(loader)
    assert all(b.dtype == torch.long and b.shape[0] == 3 for b in batches)
    assert sum(b.shape[1] for b in batches) == loader.users.size
    data = torch.cat(batches, dim=1).numpy()
    assert not any((u, n) in seen for u, n in zip(data[0].tolist(), data[2].tolist()))
    assert set(map(tuple, data[:2].T.tolist())) == seen  # every training row once per epoch


def test_same_seed_same_stream_and_reset(ml100k_data):
    loader = ml100k_data.train
    loader.pretrain_setup(3)
    first = [b.clone() for b in loader]
    second_epoch = [b.clone() for b in loader]
    loader.pretrain_setup(3)
    again = [b.clone() for b in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], second_epoch[0])  # reshuffled every epoch
    loader.pretrain_setup(4)
    assert not torch.equal(first[0], next(iter(loader)))


def test_forced_choice_and_uniformity():
    users = np.array([0, 0, 1])
    items = np.array([0, 1, 2])
    sampler = NegativeSampler(users, items, n_items=3, seed=0)
    negs = sampler.sample(np.zeros(1000, dtype=np.int64))
    assert set(negs.tolist()) == {2}  # the only item user 0 has not seen
    # user 1 may get 0 or 1, roughly half each
    negs = sampler.sample(np.ones(4000, dtype=np.int64))
    assert set(negs.tolist()) == {0, 1}
    assert abs((negs == 0).mean() - 0.5) < 0.05


def test_pool_is_training_items_only():
    sampler = NegativeSampler(np.array([0, 1]), np.array([0, 1]), n_items=10, seed=1)
    assert set(sampler.sample(np.zeros(500, dtype=np.int64)).tolist()) == {1}


def test_user_with_every_item_is_a_clear_error():
    with pytest.raises(DataError, match="interacted with every training item"):
        NegativeSampler(np.array([0, 0, 1]), np.array([0, 1, 0]), n_items=2)
