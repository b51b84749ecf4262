"""BertTokenizer: WordPiece tokenization (Wu et al. 2016; Devlin et al. 2019, section 3).

Text goes through four stages, each a component of the `tokenizers` library configured from the
checkpoint's vocab.txt and tokenizer_config.json:

1. normalise: clean control characters, put spaces around CJK characters, lower-case and strip
   accents (for uncased checkpoints);
2. pre-tokenise: split on white space and punctuation;
3. WordPiece: split each word into the longest vocabulary pieces, "##" marking continuations
   ("playing" -> "play", "##ing"); a word with no split is [UNK];
4. post-process: [CLS] a [SEP] for one sentence, [CLS] a [SEP] b [SEP] for a pair, with token
   type ids 0 for a's part and 1 for b's.

Sequences longer than the model's maximum are truncated (the longer of a pair first), and a batch
is padded to its longest member.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from bert.config import BertConfig
from bert.files import CheckpointError, write_text


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class Encoded:
    """One tokenised input, unpadded: what the data pipeline stores once per sentence."""

    input_ids: list[int]
    token_type_ids: list[int]
    truncated: bool = False  # whether tokens were cut off to fit max_length


class BertTokenizer:
    def __init__(
        self,
        vocab_file: str | Path,
        *,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int = 512,
    ):
        vocab_file = Path(vocab_file)
        try:
            wordpiece = models.WordPiece.from_file(str(vocab_file), unk_token="[UNK]")
        except Exception as err:
            raise CheckpointError(f"{vocab_file}: cannot read the WordPiece vocabulary ({err})") from None
        backend = Tokenizer(wordpiece)
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=tokenize_chinese_chars,
            # None: follow lower-casing, as the original BERT does (uncased models strip accents).
            strip_accents=strip_accents,
            lowercase=do_lower_case,
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        vocab = backend.get_vocab()
        missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]") if t not in vocab]
        if missing:
            raise CheckpointError(f"{vocab_file}: special tokens {missing} are not in the vocabulary")
        # Registered as special: kept whole in raw text, and dropped by decode(skip_special_tokens).
        backend.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
        self.cls_token_id = vocab["[CLS]"]
        self.sep_token_id = vocab["[SEP]"]
        self.pad_token_id = vocab["[PAD]"]
        self.unk_token_id = vocab["[UNK]"]
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A:0 [SEP]:0",
            pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_token_id), ("[SEP]", self.sep_token_id)],
        )
        self.backend = backend
        self.settings = {"do_lower_case": do_lower_case, "strip_accents": strip_accents,
                         "tokenize_chinese_chars": tokenize_chinese_chars}
        self.model_max_length = model_max_length
        self._truncation_length: int | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> "BertTokenizer":
        """The tokenizer of a checkpoint (local folder, hub id, or the offline MiniLM package)."""
        from bert.loading import resolve_file

        vocab_file = resolve_file(name_or_path, "vocab.txt")
        if vocab_file is None:
            raise CheckpointError(f"{name_or_path}: no vocab.txt; the tokenizer needs one")
        settings = {}
        tokenizer_config = resolve_file(name_or_path, "tokenizer_config.json")
        if tokenizer_config is not None:
            settings = _read_settings(tokenizer_config)
        max_length = int(min(settings.get("model_max_length") or 512, 10**6))
        model_config = resolve_file(name_or_path, "config.json")
        if model_config is not None:
            # The config loader checks every value and names the file and key of a bad one.
            max_length = min(max_length, BertConfig.from_json_file(model_config).max_position_embeddings)
        return cls(
            vocab_file,
            do_lower_case=settings.get("do_lower_case", True),
            strip_accents=settings.get("strip_accents"),
            tokenize_chinese_chars=settings.get("tokenize_chinese_chars", True),
            model_max_length=max_length,
        )

    def save_pretrained(self, folder: str | Path) -> None:
        """Write vocab.txt (one token per line, in id order) and tokenizer_config.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab = self.backend.get_vocab()
        tokens = sorted(vocab, key=vocab.__getitem__)
        write_text(folder / "vocab.txt", "".join(t + "\n" for t in tokens))
        settings = {**self.settings, "model_max_length": self.model_max_length,
                    "tokenizer_class": "BertTokenizer"}
        write_text(folder / "tokenizer_config.json", json.dumps(settings, indent=2) + "\n")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def _set_truncation(self, max_length: int | None, pairs: bool) -> None:
        max_length = self.model_max_length if max_length is None else max_length
        if max_length < (3 if pairs else 2):
            raise ValueError(f"max_length={max_length} leaves no room for the special tokens")
        if max_length > self.model_max_length:
            raise ValueError(
                f"max_length={max_length} exceeds the model's maximum of {self.model_max_length}"
            )
        if self._truncation_length != max_length:
            self.backend.enable_truncation(max_length, strategy="longest_first")
            self._truncation_length = max_length

    def encode(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        max_length: int | None = None,
    ) -> list[Encoded]:
        """Tokenise a batch of sentences (or sentence pairs) without padding."""
        texts = _check_texts(texts, "texts")
        if pairs is not None:
            pairs = _check_texts(pairs, "pairs")
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        self._set_truncation(max_length, pairs is not None)
        inputs = texts if pairs is None else list(zip(texts, pairs))
        return [
            Encoded(e.ids, e.type_ids, bool(e.overflowing))
            for e in self.backend.encode_batch(inputs, add_special_tokens=True)
        ]

    def untruncated_lengths(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[int]:
        """How many tokens each input (special tokens included) has before any truncation, so
        that a caller can say how much `encode` cuts off."""
        texts = _check_texts(texts, "texts")
        inputs = texts if pairs is None else list(zip(texts, _check_texts(pairs, "pairs")))
        self.backend.no_truncation()
        self._truncation_length = None  # the next encode() sets its truncation again
        return [len(e.ids) for e in self.backend.encode_batch(inputs, add_special_tokens=True)]

    def pad(self, encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """Stack encodings into (B, T) tensors, T the longest; padding has attention_mask 0."""
        length = max((len(e.input_ids) for e in encoded), default=0)
        input_ids = torch.full((len(encoded), length), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(encoded), length), dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for row, e in enumerate(encoded):
            n = len(e.input_ids)
            input_ids[row, :n] = torch.tensor(e.input_ids)
            token_type_ids[row, :n] = torch.tensor(e.token_type_ids)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Tokenise, truncate and pad: `input_ids`, `token_type_ids`, `attention_mask` (B, T)."""
        texts = [text] if isinstance(text, str) else text
        pairs = [text_pair] if isinstance(text_pair, str) else text_pair
        return self.pad(self.encode(texts, pairs, max_length))

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.backend.id_to_token(i) for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


# The tokenizer_config.json settings read here: what each must be, and how to say so.
_SETTINGS = {
    "do_lower_case": (lambda v: isinstance(v, bool), "true or false"),
    "strip_accents": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "tokenize_chinese_chars": (lambda v: isinstance(v, bool), "true or false"),
    # bool is an int in Python, so it is ruled out by name; NaN fails the comparison.
    "model_max_length": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 and v >= 1), "a number of at least 1, or null"),
}


def _read_settings(path: Path) -> dict:
    """tokenizer_config.json as a dict, each setting we use checked; a CheckpointError that names
    the file (and the key) when it is cut off, not JSON or holds a value of the wrong kind."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}). Fix the file, or download the "
                              f"checkpoint again.") from None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: expected a JSON object of tokenizer settings")
    for key, (valid, wanted) in _SETTINGS.items():
        if key in settings and not valid(settings[key]):
            raise CheckpointError(f"{path}: {key} is {settings[key]!r}; it must be {wanted}. Fix the "
                                  f"file, or download the checkpoint again.")
    return settings


def _check_texts(texts: Sequence[str], argument: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{argument} must be a list of strings, not one string")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{argument}[{index}] is {type(text).__name__}, expected str")
    return texts
