"""Metric values checked by hand, and the full evaluation path on a tiny hand-made case."""
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from utils.metrics import dict2str, hit_matrix, mean_metrics, per_user_metrics


def _truth(rows, n_users=2, n_items=10):
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(n_users, n_items))


def test_hand_computed_values():
    # user 0: truth {1, 3} (fewer than k), hits at ranks 1 and 3
    # user 1: truth {0..5} (more than k), one hit at rank 2
    truth = _truth([[1, 3], [0, 1, 2, 3, 4, 5]])
    top = np.array([[3, 0, 1, 4, 2], [9, 0, 8, 7, 6]])
    hits = hit_matrix(top, np.array([0, 1]), truth)
    assert hits.tolist() == [[True, False, True, False, False], [False, True, False, False, False]]
    m = per_user_metrics(hits, np.array([2, 6]), ["Recall", "NDCG", "Precision", "MAP"], [1, 3, 5])
    assert m["recall@1"].tolist() == [0.5, 0.0]
    assert m["recall@3"].tolist() == pytest.approx([1.0, 1 / 6])
    assert m["recall@5"].tolist() == pytest.approx([1.0, 1 / 6])  # whole count, not min(count, k)
    assert m["precision@3"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert m["precision@5"].tolist() == pytest.approx([2 / 5, 1 / 5])
    ideal2 = 1 + 1 / math.log2(3)
    ndcg3_u0 = (1 + 1 / math.log2(4)) / ideal2
    assert m["ndcg@3"][0] == pytest.approx(ndcg3_u0)
    assert m["ndcg@5"][0] == pytest.approx(ndcg3_u0)  # ideal DCG over min(|truth|, k) = 2 positions
    ideal5 = sum(1 / math.log2(r + 1) for r in range(1, 6))
    assert m["ndcg@5"][1] == pytest.approx((1 / math.log2(3)) / ideal5)
    assert m["map@3"][0] == pytest.approx((1 + 2 / 3) / 2)
    assert m["map@5"][1] == pytest.approx(0.5 / 5)
    assert m["map@1"].tolist() == [1.0, 0.0]
    assert list(m)[:3] == ["recall@1", "recall@3", "recall@5"]  # metric-major order, as MMRec prints
    assert mean_metrics(m)["recall@1"] == 0.25
    assert dict2str({"recall@5": 0.12345}) == "recall@5: 0.1235"


def test_unknown_metric_and_large_k_are_errors():
    hits = np.zeros((1, 3), dtype=bool)
    with pytest.raises(ValueError, match="unknown metric"):
        per_user_metrics(hits, np.array([1]), ["AUC"], [1])
    with pytest.raises(ValueError, match="exceeds"):
        per_user_metrics(hits, np.array([1]), ["Recall"], [5])


class _FixedScores(torch.nn.Module):
    """Scores item i with n_items - i for every user, so the ranking is 0, 1, 2, ..."""

    def __init__(self, n_items):
        super().__init__()
        self.n_items = n_items

    def full_sort_predict(self, interaction):
        users = interaction[0]
        return torch.arange(self.n_items, 0, -1, dtype=torch.float32).repeat(users.numel(), 1)


def test_evaluation_masks_training_items_only(tmp_path):
    from utils.dataloader import EvalDataLoader
    from utils.evaluator import evaluate

    class _Split:
        def __init__(self, pairs):
            self.users = np.array([p[0] for p in pairs])
            self.items = np.array([p[1] for p in pairs])
            self.n_users, self.n_items = 2, 6

        def inter_matrix(self, form="csr"):
            return sp.csr_matrix((np.ones(len(self.users)), (self.users, self.items)), shape=(2, 6))

    train = _Split([(0, 0), (0, 1), (1, 2)])
    test = _Split([(0, 2), (1, 0)])
    cfg = {"topk": [1, 2], "metrics": ["Recall"], "device": torch.device("cpu")}
    loader = EvalDataLoader(cfg, test, additional_dataset=train, batch_size=1)
    res = evaluate(_FixedScores(6), loader, cfg)
    # user 0: items 0, 1 masked, so item 2 ranks first; user 1: item 2 masked, item 0 ranks first
    assert res.per_user["recall@1"].tolist() == [1.0, 1.0]
    assert res.users.tolist() == [0, 1]


def test_blocked_scoring_equals_one_call_per_batch(monkeypatch):
    """Models with cached_scoring are scored in small user blocks; the ranking must not change."""
    from utils import evaluator
    from utils.dataloader import EvalDataLoader

    gen = torch.Generator().manual_seed(0)
    table = torch.randn(10, 7, generator=gen)

    class _Table(torch.nn.Module):
        def __init__(self, cached):
            super().__init__()
            self.cached_scoring, self.calls = cached, 0

        def full_sort_predict(self, interaction):
            self.calls += 1
            return table[interaction[0]].clone()

    class _Split:
        def __init__(self, seed, n):
            rng = np.random.default_rng(seed)
            self.users, self.items = rng.integers(0, 10, n), rng.integers(0, 7, n)
            self.n_users, self.n_items = 10, 7

        def inter_matrix(self, form="csr"):
            return sp.csr_matrix((np.ones(len(self.users)), (self.users, self.items)), shape=(10, 7))

    cfg = {"device": torch.device("cpu")}
    loader = EvalDataLoader(cfg, _Split(1, 15), additional_dataset=_Split(2, 25), batch_size=4)
    monkeypatch.setattr(evaluator, "CPU_SCORE_BLOCK", 14)  # 2 users per block
    plain, blocked = _Table(False), _Table(True)
    u1, top1 = evaluator.rank_topk(plain, loader, 3, "cpu")
    u2, top2 = evaluator.rank_topk(blocked, loader, 3, "cpu")
    assert np.array_equal(u1, u2) and np.array_equal(top1, top2)
    assert plain.calls == len(loader) and blocked.calls == sum((len(b[0]) + 1) // 2 for b in loader)
    mask = loader.mask.toarray()
    assert not mask[u2[:, None], top2].any()  # no training item is ranked


@pytest.mark.parametrize("small", [0, 1, 4, 100])
def test_hit_matrix_paths_agree_with_a_dense_lookup(small):
    """The padded comparison (few truth items) and the code search (many) give the same hits."""
    rng = np.random.default_rng(small)
    n_users, n_items = 60, 40
    dense = rng.random((n_users, n_items)) < rng.choice([0.02, 0.3], size=(n_users, 1))
    dense[5] = False  # a user without truth
    truth = sp.csr_matrix(dense)
    users = rng.permutation(n_users)[:50]
    top = np.stack([rng.permutation(n_items)[:10] for _ in users])
    assert np.array_equal(hit_matrix(top, users, truth, small=small), dense[users[:, None], top])
