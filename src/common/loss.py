"""Losses with MMRec's names and signatures (``BPRLoss``, ``EmbLoss``, ``L2Loss``)."""
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
    """Sum over the given tensors of their ``p``-norm, each divided by its number of rows."""

    def __init__(self, norm: int = 2) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, *embeddings: torch.Tensor) -> torch.Tensor:
        total = embeddings[0].new_zeros(())
        for emb in embeddings:
            total = total + torch.norm(emb, p=self.norm) / emb.shape[0]
        return total


class L2Loss(nn.Module):
    """Half the sum of squares of all given tensors (no division by the batch size)."""

    def forward(self, *embeddings: torch.Tensor) -> torch.Tensor:
        total = embeddings[0].new_zeros(())
        for emb in embeddings:
            total = total + 0.5 * emb.pow(2).sum()
        return total
