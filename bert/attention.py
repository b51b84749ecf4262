"""Multi-head self-attention (Vaswani et al. 2017, "Attention Is All You Need", section 3.2).

Each of `heads` heads projects the hidden states to queries, keys and values of size
head_dim = hidden / heads and mixes the values with weights softmax(Q K^T / sqrt(head_dim)).
Two interchangeable implementations of that formula live here:

- `reference_attention`: the formula written out, line by line, for reading;
- `sdpa_attention`: torch's fused `scaled_dot_product_attention`, the fast path.

`tests/test_model.py` holds them equal. `BertSelfAttention` picks one from the config.

Padding enters as an additive bias on the scores, built once per forward by `BertModel` with
`additive_attention_mask`; a batch without padding passes None and skips the addition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from bert.config import BertConfig


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) mask of 1 = attend, 0 = padding  ->  (B, 1, 1, T) bias added to the scores.

    Padding keys get the most negative finite number of `dtype` rather than -inf, so a row whose
    keys are all padding gives a uniform (finite) softmax instead of NaN.
    """
    bias = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return bias  # (B, 1, 1, T)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_bias: torch.Tensor | None,
    dropout: nn.Dropout,
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V, written out. q, k, v: (B, heads, T, head_dim);
    mask_bias: (B, 1, 1, T), or None where no key is padding."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))  # (B, heads, T, T)
    if mask_bias is not None:
        scores = scores + mask_bias  # padding keys -> ~ -inf, broadcast over heads and queries
    weights = torch.softmax(scores, dim=-1)  # (B, heads, T, T), each row sums to 1
    weights = dropout(weights)  # BERT drops attention weights, not scores
    return weights @ v  # (B, heads, T, head_dim)


# The fused kernels the fast path may use on a GPU. cuDNN's attention, which PyTorch may pick for
# bf16 and fp16, builds an execution plan for every new input shape; length-grouped batches bring
# a new shape at nearly every step, so it is left out (timed on an H200: README.md, "Speed").
CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_bias: torch.Tensor | None,
    dropout: nn.Dropout,
) -> torch.Tensor:
    """The same computation through torch's fused kernel (flash / memory-efficient / math),
    returning (B, heads, T, head_dim). Without a mask (None) torch may pick a kernel that has no
    mask input at all."""
    dropout_p = dropout.p if dropout.training else 0.0
    if not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias, dropout_p=dropout_p)
    with sdpa_kernel(CUDA_SDPA_BACKENDS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias, dropout_p=dropout_p)


ATTENTION_IMPLEMENTATIONS = {"reference": reference_attention, "sdpa": sdpa_attention}


class BertSelfAttention(nn.Module):
    """Query, key and value projections and the attention itself (checkpoint: `attention.self`)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.implementation = config.attention_implementation

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        x = x.view(batch, length, self.num_heads, self.head_dim)  # (B, T, heads, head_dim)
        return x.transpose(1, 2)  # (B, heads, T, head_dim)

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        """hidden: (B, T, hidden); mask_bias: (B, 1, 1, T) from `additive_attention_mask` in
        the dtype q, k and v are computed in, or None where no token is padding."""
        q = self.split_heads(self.query(hidden))
        k = self.split_heads(self.key(hidden))
        v = self.split_heads(self.value(hidden))
        attend = ATTENTION_IMPLEMENTATIONS[self.implementation]
        context = attend(q, k, v, mask_bias, self.dropout)  # (B, heads, T, head_dim)
        batch, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, length, -1)  # (B, T, hidden)
