"""VBPR (He & McAuley, AAAI 2016), in MMRec's multimodal form.

Item vector = [I_id (d) || Linear(concat of the item's features) -> d]; user vector is 2d.
Loss = BPR + reg_weight * (L2 norms of the batch user/item vectors) / batch.
Works with either modality alone (the concatenation then holds one feature block).

As in MMRec's VBPR (checked against its ``src/models/vbpr.py``):
- the features are concatenated text first, then image (``feature_order: text_image``);
- the user (n_users x 2d) and item ID (n_items x d) tables are Xavier-uniform, drawn in that order,
  then the projection is built and re-initialised Xavier-normal with a zero bias: the same random
  draws in the same order as MMRec's constructor;
- the reg term is EmbLoss (L2 norms / batch) of the batch user, positive and negative vectors.

Differences from MMRec, none of which changes a score:
- the ID tables are ``nn.Embedding`` modules (state-dict names ``u_embedding.weight``,
  ``i_embedding.weight``) rather than bare parameters;
- a training step projects each distinct batch item once (MMRec projects every item), and scoring
  reuses the item vectors computed once per evaluation;
- MMRec's ``F.dropout(..., 0.0)`` in ``forward`` is a no-op and is left out.

Behaviour change: before MMRec's order and initialisation were adopted, this model concatenated
image first and drew Xavier-normal ID tables. Numbers recorded with that version are not
reproduced by this one; the ``feature_order`` key in VBPR.yaml gives every VBPR point a new result
key, so those records are not reused. ``--feature_order image_text`` restores the old column order
(not the old initialisation). Checkpoints of the old version (no ``feature_layout`` entry) load
correctly: their projection columns are reordered on load.
"""
from __future__ import annotations

import torch
from torch import nn

from common.abstract_recommender import GeneralRecommender
from common.init import xavier_normal_initialization
from common.loss import BPRLoss, EmbLoss
from utils.errors import ConfigError, ModelInputError

# feature_order -> (modalities in concatenation order, code stored in the state dict)
FEATURE_ORDERS = {"text_image": (("t", "v"), 0), "image_text": (("v", "t"), 1)}
LEGACY_ORDER = "image_text"  # checkpoints without a feature_layout entry were written in this order


class VBPR(GeneralRecommender):
    """Visual(-textual) Bayesian personalised ranking."""

    cached_scoring = True  # full_sort_predict reuses embeddings computed once per evaluation
    # [harness] allowed values, checked before any data is read (utils/schema.py; MMRec ignores them)
    choices = {"feature_order": ("text_image", "image_text")}
    ranges = {"reg_weight": (float, ">= 0")}

    def __init__(self, config, dataloader) -> None:
        super().__init__(config, dataloader)
        self.embedding_dim = int(config["embedding_size"])
        self.reg_weight = float(config["reg_weight"] or 0.0)
        self.feature_order = str(config["feature_order"] or "text_image")  # None: MMRec's order
        if self.feature_order not in FEATURE_ORDERS:
            raise ConfigError(f"VBPR feature_order must be one of {', '.join(FEATURE_ORDERS)}, "
                              f"got '{self.feature_order}'")
        blocks = {"v": self.v_feat, "t": self.t_feat}
        feats = [blocks[m] for m in FEATURE_ORDERS[self.feature_order][0] if blocks[m] is not None]
        if not feats:
            raise ModelInputError("VBPR needs at least one feature file (image_feat.npy or text_feat.npy)")
        self._block_dims = {m: int(f.shape[1]) for m, f in blocks.items() if f is not None}
        # frozen raw features, concatenated once
        self.register_buffer("item_raw_features", torch.cat(feats, dim=1), persistent=False)
        self.register_buffer("feature_layout", torch.tensor(FEATURE_ORDERS[self.feature_order][1]))
        d = self.embedding_dim
        # MMRec's draws, in its order: users, items (Xavier-uniform), then the projection
        self.u_embedding = nn.Embedding.from_pretrained(
            nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * d)), freeze=False)
        self.i_embedding = nn.Embedding.from_pretrained(
            nn.init.xavier_uniform_(torch.empty(self.n_items, d)), freeze=False)
        self.item_linear = nn.Linear(self.item_raw_features.shape[1], d)
        self.item_linear.apply(xavier_normal_initialization)
        self.bpr_loss, self.reg_loss = BPRLoss(), EmbLoss()
        self.register_load_state_dict_pre_hook(VBPR._reorder_legacy_columns)
        self._cache: torch.Tensor | None = None

    @staticmethod
    def _reorder_legacy_columns(module: "VBPR", state_dict: dict, prefix: str, *_args) -> None:
        """Load a state dict written in another feature order: reorder the projection's columns."""
        key = prefix + "feature_layout"
        code = state_dict.get(key)
        saved = LEGACY_ORDER if code is None else next(
            (name for name, (_, c) in FEATURE_ORDERS.items() if c == int(code)), module.feature_order)
        state_dict[key] = module.feature_layout.detach().clone()
        weight_key = prefix + "item_linear.weight"
        if saved == module.feature_order or len(module._block_dims) < 2 or weight_key not in state_dict:
            return
        weight = state_dict[weight_key]
        parts, start = {}, 0
        for m in FEATURE_ORDERS[saved][0]:
            parts[m] = weight[:, start:start + module._block_dims[m]]
            start += module._block_dims[m]
        state_dict[weight_key] = torch.cat([parts[m] for m in FEATURE_ORDERS[module.feature_order][0]], dim=1)

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """[I_id || Linear(features)] for the given items (all items when None)."""
        if items is None:
            return torch.cat([self.i_embedding.weight, self.item_linear(self.item_raw_features)], dim=1)
        return torch.cat([self.i_embedding(items), self.item_linear(self.item_raw_features[items])], dim=1)

    def calculate_loss(self, interaction: torch.Tensor) -> torch.Tensor:
        u = self.u_embedding(interaction[0])
        # project each distinct batch item once (cheaper than per row or all items)
        items, inverse = torch.unique(interaction[1:3], return_inverse=True)
        vecs = self.item_vectors(items)
        p, n = vecs[inverse[0]], vecs[inverse[1]]
        loss = self.bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        return loss + self.reg_weight * self.reg_loss(u, p, n)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        if self._cache is None:
            self._cache = self.item_vectors()
        return self.u_embedding(interaction[0]) @ self._cache.t()
