"""The heads a probe trains on the frozen encoder's features (the encoder itself never changes):

- ``attentive`` (the authors' default): LayerNorm, then one learned query attends over the tokens
  (``nn.MultiheadAttention`` with the tower's number of heads), then a linear classifier; initialised as the
  authors' ``ImageClassificationAttentiveProbe``.
- ``linear``: one ``nn.Linear`` on pooled tokens: their mean (the default) or, with ``pooling="pooler"``, the tower's
  ``pooler_output`` (SigLIP: the attention-pooling "MAP" head; CLIP: the normalised class token).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from .settings import ProbeSettings

__all__ = ["AttentiveProbeHead", "LinearProbeHead"]


class LinearProbeHead(nn.Module):
    """A linear classifier on pooled features `(B, D)`."""

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)  # (B, C)


def _lecun_normal_(weight: torch.Tensor) -> None:
    """timm's `lecun_normal_` (the authors' init of the attention's output projection): a normal truncated at two
    standard deviations, scaled so that its variance is 1 / fan_in."""
    std = math.sqrt(1.0 / weight.shape[1]) / 0.87962566103423978  # the std of a unit normal truncated at +-2
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class AttentiveProbeHead(nn.Module):
    """The authors' attentive probe (`ImageClassificationAttentiveProbe`): LayerNorm over the encoder's tokens
    `(B, N, D)`, one learned query attending over them (`nn.MultiheadAttention`), a linear classifier on the result.

    The LayerNorm is new and trainable: the probed features are a block's raw output, whose scale the query should not
    have to learn. Initialisation as the authors': query and packed q/k/v weights xavier-uniform, their biases zero,
    output projection lecun-normal, classifier normal with std `D ** -0.5` (transformers' SigLIP classifier init).
    """

    def __init__(self, hidden_size: int, num_classes: int, num_heads: int | None = None):
        super().__init__()
        num_heads = num_heads or max(1, hidden_size // 64)
        if hidden_size % num_heads:
            raise ValueError(f"The attentive probe's {num_heads} heads must divide the encoder width {hidden_size}.")
        self.norm = nn.LayerNorm(hidden_size)
        self.query = nn.Parameter(torch.empty(1, 1, hidden_size))
        nn.init.xavier_uniform_(self.query)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)  # xavier q/k/v, zero biases
        _lecun_normal_(self.attention.out_proj.weight)
        self.classifier = nn.Linear(hidden_size, num_classes)
        nn.init.normal_(self.classifier.weight, std=hidden_size**-0.5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(tokens)  # (B, N, D)
        query = self.query.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        pooled, _ = self.attention(query, tokens, tokens, need_weights=False)  # (B, 1, D)
        return self.classifier(pooled[:, 0])  # (B, C)


def _parameter_groups(head: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Biases, norms and the query token take no weight decay (timm's `no_weight_decay`, nanoGPT).
    decay = [p for n, p in head.named_parameters() if p.ndim == 2 and n != "query"]
    rest = [p for n, p in head.named_parameters() if not (p.ndim == 2 and n != "query")]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _head_factory(
    settings: ProbeSettings, hidden_size: int, num_classes: int, encoder_num_heads: int
) -> Callable[[], nn.Module]:
    """A fresh head of `settings.probe` per call; the attentive head has the encoder's number of attention heads unless
    `settings.attentive_num_heads` says otherwise."""
    if settings.probe == "attentive":
        return partial(AttentiveProbeHead, hidden_size, num_classes, settings.attentive_num_heads or encoder_num_heads)
    return partial(LinearProbeHead, hidden_size, num_classes)
