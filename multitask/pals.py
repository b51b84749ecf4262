"""Projected attention layers (PALs): a few task-specific parameters in every encoder layer.

Stickland & Murray 2019 ("BERT and PALs: Projected Attention Layers for Efficient Adaptation in
Multi-Task Learning", the paper the annealed sampler comes from) keep one BERT for all tasks and
give each task a small module beside every layer, so that each task can bend the shared
features its own way without pulling them away from the others:

    TS_t(h) = V_D^t SA_t^l(V_E^t h)          h: layer l's input (B, T, H)

V_E^t (H -> d) projects the layer's input down to a small width d, SA_t^l is multi-head
self-attention at that width (its own for every task t and layer l), and V_D^t (d -> H)
projects back up. V_E^t and V_D^t are shared by all the layers of task t (the paper's way of
affording attention at this size). The term runs in parallel with the layer and joins the
feed-forward block's residual sum before its LayerNorm, as in the authors' code:

    a = LN(h + SelfOutput(SA(h)))                          BERT's attention sub-layer
    layer(h) = LN(a + FFN(a) + TS_t(h))                    BertLayer with side = TS_t(h)

Two choices differ from the authors' code. V_D starts at zero, so that training starts from
the checkpoint itself: the first forward pass computes exactly what the encoder alone computes
(LoRA starts its up-projection at zero for the same reason; the authors draw it at random).
And there is no GELU on the output, as in the paper's equation (their code applies one). The
other weights start as BERT's do, N(0, 0.02). The attention has as many heads as the
encoder's; d must be a multiple of that number. The paper kept everything it added under 13%
of bert-base's parameters; for all-MiniLM-L6-v2 (H = 384, 12 heads) d = 96 adds about 1% per
task.

The cost per task: 2 H d + L (3 d^2 + 3 d) + H + d parameters (about 240,000 for MiniLM at
d = 96, 1% of the encoder), and a batch's forward pass gets L small attention blocks more.
"""

from __future__ import annotations

import torch
from torch import nn

from bert import BertModel
from bert.attention import BertSelfAttention
from bert.config import BertConfig


class TaskPALs(nn.Module):
    """One task's PALs: V_E and V_D (shared by the layers) and one small self-attention per layer."""

    def __init__(self, encoder: BertConfig, width: int):
        super().__init__()
        small = BertConfig(hidden_size=width, num_attention_heads=encoder.num_attention_heads,
                           attention_probs_dropout_prob=encoder.attention_probs_dropout_prob,
                           attention_implementation=encoder.attention_implementation)
        self.down = nn.Linear(encoder.hidden_size, width)  # V_E
        self.attention = nn.ModuleList(BertSelfAttention(small) for _ in range(encoder.num_hidden_layers))
        self.up = nn.Linear(width, encoder.hidden_size)  # V_D
        for linear in self.modules():
            if isinstance(linear, nn.Linear):
                nn.init.normal_(linear.weight, std=encoder.initializer_range)
                nn.init.zeros_(linear.bias)
        nn.init.zeros_(self.up.weight)  # the term starts at 0: the checkpoint's own function

    def forward(self, layer: int, hidden: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        """TS(h) for `layer`'s input `hidden` (B, T, H): (B, T, H)."""
        small = self.attention[layer](self.down(hidden), mask_bias)  # (B, T, d)
        return self.up(small)  # (B, T, H)


class PALs(nn.Module):
    """Every task's PALs. `pals.adapter(task)` is what the encoder takes as its `adapter`."""

    def __init__(self, encoder: BertModel, width: int, tasks: tuple[str, ...]):
        super().__init__()
        heads = encoder.config.num_attention_heads
        if width <= 0 or width % heads:
            raise ValueError(f"--pals {width}: the width must be a positive multiple of the encoder's "
                             f"{heads} attention heads (for example {heads * max(1, round(width / heads))})")
        self.tasks = nn.ModuleDict({task: TaskPALs(encoder.config, width) for task in tasks})

    def adapter(self, task: str) -> TaskPALs:
        return self.tasks[task]
