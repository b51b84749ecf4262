"""BertConfig: the hyper-parameters of a BERT encoder, read from a checkpoint's config.json.

The field names are those of the public checkpoints' config.json files (Devlin et al. 2019,
"BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding"), so a
config written by any BERT library loads here unchanged; keys we do not use are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

from bert.files import CheckpointError, write_text


# What a config.json value must be for the encoder to be built: (type, smallest, largest). The
# upper bounds are far beyond any published BERT (bert-large: 1024 wide, 24 layers, 30522
# words; multilingual vocabularies reach about 250,000) yet stop a damaged file from asking
# nn.Embedding for terabytes. Floats must be finite as well.
_INTEGER_LIMITS = {
    "vocab_size": (1, 10_000_000),
    "hidden_size": (1, 65_536),
    "num_hidden_layers": (1, 1_000),
    "num_attention_heads": (1, 65_536),
    "intermediate_size": (1, 1_000_000),
    "max_position_embeddings": (1, 1_000_000),
    "type_vocab_size": (1, 1_000),
}
_PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob")


@dataclass
class BertConfig:
    """Shape and regularisation of a BERT encoder. Defaults are bert-base-uncased's."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    # "reference" writes softmax(QK^T / sqrt(d)) V out; "sdpa" calls torch's fused kernel.
    attention_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        for name, (lowest, highest) in _INTEGER_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
                raise ValueError(f"{name} is {value!r}; it must be a whole number from {lowest:,} "
                                 f"to {highest:,}")
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int) \
                or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id is {self.pad_token_id!r}; it must be a token id from 0 "
                             f"to vocab_size - 1 ({self.vocab_size - 1})")
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} is {value!r}; it must be a number from 0 up to (not "
                                 f"including) 1")
        if not _is_real(self.layer_norm_eps) or self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps is {self.layer_norm_eps!r}; it must be a finite "
                             f"number above 0")
        if not _is_real(self.initializer_range) or self.initializer_range < 0:
            raise ValueError(f"initializer_range is {self.initializer_range!r}; it must be a finite "
                             f"number, 0 or more")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ("gelu", "gelu_new", "relu"):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (gelu, gelu_new, relu)")
        if self.attention_implementation not in ("reference", "sdpa"):
            raise ValueError(
                f"attention_implementation must be 'reference' or 'sdpa', "
                f"got {self.attention_implementation!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        """Build from a config.json dict, keeping the keys we know and ignoring the rest."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such file; a checkpoint folder needs a config.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: not valid JSON ({err}); is this a BERT config.json?") from None
        if not isinstance(values, dict):
            raise CheckpointError(f"{path}: expected a JSON object of BERT settings")
        model_type = values.get("model_type", "bert")
        if model_type != "bert":
            raise CheckpointError(f"{path}: model_type is {model_type!r}; only 'bert' checkpoints load here")
        # Relative position schemes (Shaw et al. 2018; Huang et al. 2020) add distance embeddings
        # inside every attention layer, which BertModel lacks: loaded here, such a model would
        # silently lose them and run as another model.
        position = values.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise CheckpointError(f"{path}: position_embedding_type is {position!r}; this BERT implements "
                                  f"absolute position embeddings only (the original BERT's), so the checkpoint "
                                  f"cannot be loaded here: choose one with absolute position embeddings")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: {err}. The file is damaged or not a BERT config.json: "
                                  f"fix it, or download the checkpoint again.") from None

    def to_dict(self) -> dict:
        """The config.json form (with the keys other BERT libraries expect)."""
        values = dataclasses.asdict(self)
        values.pop("attention_implementation")
        values.update(model_type="bert", architectures=["BertModel"], position_embedding_type="absolute")
        return values

    def save(self, folder: str | Path) -> None:
        write_text(Path(folder, "config.json"), json.dumps(self.to_dict(), indent=2) + "\n")


def _is_real(value: object) -> bool:
    """A finite int or float from JSON (not a bool, a string or NaN)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
