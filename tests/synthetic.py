"""A small synthetic multitask dataset in the CS224N file format, and a tiny BERT checkpoint.

The labels follow surface rules a tiny model can learn within a few dozen steps, so a training
run on them must show its loss falling: sentiment from the adjective's class, paraphrase from
which half of the word list the questions use, similarity from a number word.
"""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import torch

from bert import BertConfig, BertModel

ADJECTIVES = [["awful", "terrible"], ["bad", "dull"], ["okay", "average"], ["good", "nice"],
              ["great", "wonderful"]]
NOUNS = ["movie", "film", "story", "plot", "cast", "music", "ending", "scene", "script", "actor"]
WORDS = ["cat", "dog", "house", "river", "city", "car", "tree", "book", "song", "game", "food",
         "school", "money", "phone", "water", "light"]
NUMBERS = ["zero", "one", "two", "three", "four", "five"]


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow([""] + header)
        for index, row in enumerate(rows):
            writer.writerow([index] + row)


def _sst_rows(rng: random.Random, count: int, labelled: bool) -> list[list]:
    rows = []
    for i in range(count):
        label = rng.randrange(5)
        sentence = f"the {rng.choice(NOUNS)} was {rng.choice(ADJECTIVES[label])} and {rng.choice(NOUNS)}"
        rows.append([f"sst{i:05d}", sentence] + ([label] if labelled else []))
    return rows


def _question(rng: random.Random, words: list[str]) -> str:
    return "what is the " + " ".join(rng.sample(words, 3)) + " ?"


def _qqp_rows(rng: random.Random, count: int, labelled: bool) -> list[list]:
    """Duplicates draw their words from the first half of WORDS, the others from the second."""
    rows = []
    half = len(WORDS) // 2
    for i in range(count):
        duplicate = rng.random() < 0.5
        words = WORDS[:half] if duplicate else WORDS[half:]
        rows.append([f"qqp{i:05d}", _question(rng, words), _question(rng, words)]
                    + ([f"{float(duplicate):.1f}"] if labelled else []))
    return rows


def _sts_rows(rng: random.Random, count: int, labelled: bool) -> list[list]:
    """Similarity k (0..5) is spelled out as the second sentence's first word."""
    rows = []
    for i in range(count):
        k = rng.randrange(6)
        first = " ".join(rng.sample(WORDS, 4))
        second = " ".join([NUMBERS[k]] + rng.sample(WORDS, 4))
        rows.append([f"sts{i:05d}", first, second] + ([float(k)] if labelled else []))
    return rows


def write_dataset(folder: Path, train: int = 160, dev: int = 48, test: int = 24, seed: int = 0) -> Path:
    """All nine CS224N files under `folder`, with `train`/`dev`/`test` rows per task."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for part, count in (("train", train), ("dev", dev), ("test-student", test)):
        labelled = part != "test-student"
        _write(folder / f"ids-sst-{part}.csv", ["id", "sentence"] + (["sentiment"] if labelled else []),
               _sst_rows(rng, count, labelled))
        _write(folder / f"quora-{part}.csv", ["id", "sentence1", "sentence2"] + (["is_duplicate"] if labelled else []),
               _qqp_rows(rng, count, labelled))
        _write(folder / f"sts-{part}.csv", ["id", "sentence1", "sentence2"] + (["similarity"] if labelled else []),
               _sts_rows(rng, count, labelled))
    return folder


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(folder: Path) -> Path:
    """A WordPiece vocabulary of every word the synthetic dataset uses (for machines without the
    offline MiniLM package, such as a GPU box): folder/vocab.txt."""
    words = {"the", "was", "and", "what", "is", "?"} | set(NOUNS) | set(WORDS) | set(NUMBERS)
    words |= {w for pair in ADJECTIVES for w in pair}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + sorted(words)) + "\n")
    return folder


def write_tiny_checkpoint(folder: Path, vocab_source: Path | None, seed: int = 0, dropout: float = 0.1) -> Path:
    """A randomly initialised 2-layer BERT with the real WordPiece vocabulary of `vocab_source`,
    or with write_vocab's small one when `vocab_source` is None (`dropout` 0 makes training
    deterministic given the batches, for equivalence tests)."""
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if vocab_source is None:
        write_vocab(folder)
        config.vocab_size = len((folder / "vocab.txt").read_text().split())
    BertModel(config).save_pretrained(folder)
    if vocab_source is not None:
        shutil.copy(vocab_source / "vocab.txt", folder / "vocab.txt")
    return folder


def write_random_run(folder: Path, encoder_dir: Path, sts_head: str, max_length: int | None = None,
                     record: dict | None = None, **options) -> Path:
    """A run folder (best/ and metrics.jsonl), untrained: the encoder of `encoder_dir` and every
    weight (heads included) redrawn large enough that each nonlinearity (the pooler's tanh, the
    heads' squashing) works away from its linear part. For tests of the tools that read a run
    (export, predict), where only agreement with the model's own numbers matters. `options` are
    TrainConfig settings (pooling="mean", say); those MultitaskBert takes are passed to it too."""
    import inspect
    import json
    import math

    from bert import BertTokenizer
    from multitask import checkpoint
    from multitask.config import STS_HEADS, TrainConfig
    from multitask.heads import MultitaskBert

    # The paper's recipe unless `options` say otherwise: [CLS] pooling, which every export can express.
    config = TrainConfig(model=str(encoder_dir), sts_head=sts_head, max_length=max_length,
                         **{"recipe": "paper", **options})
    torch.manual_seed(STS_HEADS.index(sts_head))
    model_options = {k: v for k, v in options.items() if k in inspect.signature(MultitaskBert).parameters}
    model_options["private_groups"] = config.private_groups  # (from --private-tasks)
    model = MultitaskBert(BertModel.from_pretrained(encoder_dir), sts_head=sts_head, dropout=0.3, **model_options)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name or name.startswith("task_weighting."):
                continue
            if parameter.dim() == 2 and "embeddings" not in name:  # a Linear's weight
                parameter.normal_(0.0, 1.5 / math.sqrt(parameter.shape[1]))
            else:
                parameter.normal_(0.0, 0.5 if parameter.dim() == 1 else 1.0)
    record = {"epoch": 1, "overall": 0.5, "batches_sst": 3, "batches_qqp": 3, "batches_sts": 3,
              **(record or {})}
    checkpoint.save(folder / "best", model, BertTokenizer.from_pretrained(encoder_dir), config, record)
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return folder
