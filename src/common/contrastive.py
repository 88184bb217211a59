"""InfoNCE, shared by the contrastive baselines (MGCN, LGMRec) and any model that needs it."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float,
             pos_index: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """InfoNCE of L2-normalised views: -log softmax_j(a_k . b_j / t) at the positive j.

    By default row k of ``a`` and row k of ``b`` are positives and the other rows of ``b`` are the
    negatives. With ``pos_index``, row k of ``a`` is paired with row ``pos_index[k]`` of ``b`` and
    every other row of ``b`` is a negative (LGMRec: negatives over all users or items).
    ``reduction``: 'mean' or 'sum' over the rows of ``a``.
    """
    # 1/temperature is folded into a (B x d) rather than applied to the B x N logits
    a = F.normalize(a, p=2, dim=1) / temperature
    b = F.normalize(b, p=2, dim=1)
    if pos_index is None:
        if a.shape[0] != b.shape[0]:
            raise ValueError("info_nce without pos_index needs a and b with the same number of rows")
        pos = (a * b).sum(1)
    else:
        pos = (a * b[pos_index]).sum(1)
    # -log softmax at the positive = logsumexp over all of b - the positive logit
    loss = torch.logsumexp(a @ b.t(), dim=1) - pos
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")


def info_nce_indexed(a_all: torch.Tensor, b_all: torch.Tensor, index: torch.Tensor, temperature: float,
                     negatives: str = "batch", reduction: str = "mean") -> torch.Tensor:
    """InfoNCE of the rows ``a_all[index]`` against ``b_all[index]``, computed once per distinct
    index and weighted by its multiplicity, which gives the same value and gradients:

    - ``negatives='batch'``: equals ``info_nce(a_all[index], b_all[index], t)`` (in-batch
      negatives; a repeated row counts as often as it occurs, via + log(count) on its logit);
    - ``negatives='all'``: equals ``info_nce(a_all[index], b_all, t, pos_index=index)``.
    """
    uniq, counts = torch.unique(index, return_counts=True)
    a = F.normalize(a_all[uniq], p=2, dim=1) / temperature
    if negatives == "batch":
        b = F.normalize(b_all[uniq], p=2, dim=1)
        logits = a @ b.t() + torch.log(counts.to(a.dtype)).unsqueeze(0)
        pos = (a * b).sum(1)
    elif negatives == "all":
        b_full = F.normalize(b_all, p=2, dim=1)
        logits = a @ b_full.t()
        pos = (a * b_full[uniq]).sum(1)
    else:
        raise ValueError(f"negatives must be 'batch' or 'all', not {negatives!r}")
    total = ((torch.logsumexp(logits, dim=1) - pos) * counts.to(a.dtype)).sum()
    if reduction == "mean":
        return total / index.numel()
    if reduction == "sum":
        return total
    raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")


def cosine_bootstrap(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean_k cos(online_k, target_k): the negative-free alignment loss of BM3 (BYOL-style);
    ``target`` is used as given (detach it for a stop-gradient target)."""
    return 1.0 - F.cosine_similarity(online, target, dim=-1).mean()
