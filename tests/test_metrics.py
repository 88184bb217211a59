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


@pytest.mark.parametrize("n_items,k,block", [(1000, 5, 8), (1003, 20, 16), (4099, 50, 32), (300, 50, 32)])
def test_exact_topk_equals_torch_topk(n_items, k, block):
    from utils.evaluator import exact_topk
    gen = torch.Generator().manual_seed(n_items)
    scores = torch.randn(64, n_items, generator=gen)
    scores[:, -3:] += 5.0  # the best items sit in the ragged tail
    scores[0, :] = -1e10  # a fully masked user
    scores[0, 7] = 0.0
    got = exact_topk(scores, k, block)
    want = torch.topk(scores, k, dim=1)
    assert torch.equal(scores.gather(1, got), want.values)  # same scores, best first
    assert (got.sort(dim=1).values.diff(dim=1) > 0).all()  # no item twice
    assert got[0, 0] == 7


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
