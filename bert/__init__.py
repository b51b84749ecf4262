"""bert: a hand-written BERT encoder, its WordPiece tokenizer and AdamW.

Read in this order: config.py (the hyper-parameters), attention.py (multi-head self-attention),
model.py (embeddings, layers, pooler), loading.py (public checkpoints), tokenizer.py, optimizer.py.

`from bert import BertModel` works as usual; each name is imported on first use, so a tool that
needs only bert.files or bert.tokenizer does not wait a second or two for torch to load.
"""

import importlib

_HOMES = {"AdamW": "bert.optimizer", "BertConfig": "bert.config", "BertModel": "bert.model",
          "BertTokenizer": "bert.tokenizer", "CheckpointError": "bert.files", "Encoded": "bert.tokenizer"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    """`bert.BertModel` and the other names of __all__, from their modules (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'bert' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
