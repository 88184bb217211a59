"""Losses with MMRec's names, signatures and values (``BPRLoss``, ``EmbLoss``, ``L2Loss``).

They return 0-d tensors where MMRec's ``EmbLoss``/``L2Loss`` return shape [1]; the values are the
same, and a sum with other losses broadcasts to the same number either way."""
import torch
from torch import nn


class BPRLoss(nn.Module):
    """Bayesian personalised ranking: ``-mean(log(gamma + sigmoid(pos - neg)))``."""

    def __init__(self, gamma: float = 1e-10) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, pos_score: torch.Tensor, neg_score: torch.Tensor) -> torch.Tensor:
        return -torch.log(self.gamma + torch.sigmoid(pos_score - neg_score)).mean()


class EmbLoss(nn.Module):
    """The sum of the ``norm``-norms of the given tensors, divided once by the number of rows of
    the last one (MMRec's definition; it matters when the tensors have different row counts)."""

    def __init__(self, norm: int = 2) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, *embeddings: torch.Tensor) -> torch.Tensor:
        total = embeddings[-1].new_zeros(())
        for emb in embeddings:
            total = total + torch.norm(emb, p=self.norm)
        return total / embeddings[-1].shape[0]


class L2Loss(nn.Module):
    """Half the sum of squares of all given tensors (no division by the batch size)."""

    def forward(self, *embeddings: torch.Tensor) -> torch.Tensor:
        total = embeddings[-1].new_zeros(())
        for emb in embeddings:
            total = total + torch.sum(emb ** 2) * 0.5
        return total
