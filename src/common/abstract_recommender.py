"""The model contract, as in MMRec: subclass ``GeneralRecommender`` and implement
``calculate_loss`` and ``full_sort_predict``."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

# [harness] raised by a model that refuses its data (one line on the command line, no traceback);
# a model file meant to run inside MMRec too imports it with ``except ImportError: ... = ValueError``
from utils.errors import ModelInputError  # noqa: F401


class AbstractRecommender(nn.Module):
    """Base of all models: optional epoch hooks and a parameter count in ``str(model)``."""

    #: [harness] True when ``full_sort_predict`` reuses representations computed once per
    #: evaluation, so that the evaluator may score small blocks of users (on the CPU a block of
    #: scores then stays in cache between scoring and top-k). MMRec's models recompute their
    #: graph on every call, so the default is False: one call per evaluation batch, as in MMRec.
    cached_scoring: bool = False
    #: [harness] optional names of the terms a tuple-returning ``calculate_loss`` gives, logged
    #: once at the start of training (``train_loss1 = ...``); the epoch lines keep MMRec's format.
    loss_names: tuple[str, ...] = ()
    #: [harness] allowed values of the model's keys, checked before any data is read
    #: (``utils/schema.py``): ``choices = {key: (value, ...)}``, ``ranges = {key: (int|float, ">= 0", ...)}``.
    choices: dict = {}
    ranges: dict = {}

    def train(self, mode: bool = True) -> "AbstractRecommender":
        """[harness] Switch mode; drops ``_cache`` (scoring representations) when the model has one,
        so ``train()``/``eval()`` make the next ``full_sort_predict`` recompute it."""
        if hasattr(self, "_cache"):
            self._cache = None
        return super().train(mode)

    def pre_epoch_processing(self) -> None:
        """Run before every training epoch (e.g. FREEDOM's edge pruning)."""

    def post_epoch_processing(self) -> str | None:
        """Run after every training epoch; a returned string is logged."""
        return None

    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor | tuple:
        raise NotImplementedError

    def predict(self, interaction: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def full_sort_predict(self, interaction: Any) -> torch.Tensor:
        """Scores [len(users), n_items] for the users in ``interaction[0]``."""
        raise NotImplementedError

    def __str__(self) -> str:
        n = sum(int(np.prod(p.size())) for p in self.parameters() if p.requires_grad)
        return super().__str__() + f"\nTrainable parameters: {n}"


class GeneralRecommender(AbstractRecommender):
    """Sets ``n_users``, ``n_items``, ``device``, ``batch_size``, the ID field names, and
    ``v_feat``/``t_feat`` (float tensors on the device, or None)."""

    def __init__(self, config: Any, dataloader: Any) -> None:
        super().__init__()
        self.USER_ID = config["USER_ID_FIELD"]
        self.ITEM_ID = config["ITEM_ID_FIELD"]
        self.NEG_ITEM_ID = config["NEG_PREFIX"] + self.ITEM_ID
        dataset = dataloader.dataset
        self.n_users = dataset.get_user_num()
        self.n_items = dataset.get_item_num()
        self.batch_size = config["train_batch_size"]
        self.device = config["device"]
        self.v_feat = self.t_feat = None
        if config["is_multimodal_model"] and not config["end2end"]:
            for attr in ("v_feat", "t_feat"):
                feat = getattr(dataset, attr, None)
                if feat is not None:
                    setattr(self, attr, torch.as_tensor(feat, dtype=torch.float32).to(self.device))
