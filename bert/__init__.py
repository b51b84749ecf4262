"""bert: a hand-written BERT encoder, its WordPiece tokenizer and AdamW.

Read in this order: config.py (the hyper-parameters), attention.py (multi-head self-attention),
model.py (embeddings, layers, pooler), loading.py (public checkpoints), tokenizer.py, optimizer.py.
"""

from bert.config import BertConfig
from bert.files import CheckpointError
from bert.model import BertModel
from bert.optimizer import AdamW
from bert.tokenizer import BertTokenizer, Encoded

__all__ = ["AdamW", "BertConfig", "BertModel", "BertTokenizer", "CheckpointError", "Encoded"]
