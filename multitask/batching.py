"""Turning loaded examples into padded training and evaluation batches.

Every sentence is tokenized once per run (`tokenize_split`); batches then only pad and stack
stored token ids. Three input layouts, chosen by the task head:

- "single":   one sentence,  [CLS] a [SEP]                  (SST)
- "joint":    a pair as one, [CLS] a [SEP] b [SEP], token types 0 then 1   (paraphrase, STS concat)
- "separate": each sentence of a pair alone, both in one stacked batch     (STS dot, cosine, MNR;
              the siamese paraphrase head)

Padding is the main waste on a CPU: a random batch of 32 sentences is padded to its longest
member, and on this data about half of its tokens are padding. `plan_batches` therefore groups
sentences of similar length: it shuffles, cuts the shuffled order into pools of many batches,
sorts each pool by length, cuts batches from it and shuffles the batches. Batches stay random
in content and order, yet carry about 3% padding on SST instead of about 60%
(tests/test_batching.py measures both).

Length buckets (`buckets`, off by default; on with --cuda-graphs): a GPU step replayed from a
captured CUDA graph needs the shapes it was captured with, so every batch's padded length is
rounded up to one of a few fixed lengths (`length_buckets`), at most 8, and each (task, length)
is captured once. A "separate" pair's two sentences share one stacked (2B, T) tensor, so they are
always padded to the same bucket. The extra padding is masked like any other: real tokens'
outputs do not change (tests/test_batching.py checks it on a tiny model); it costs only time,
measured on the real training files by benchmarks/padding.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from bert import BertTokenizer, Encoded
from multitask.data import SentenceExample, Split

LAYOUTS = ("single", "joint", "separate")
POOL_BATCHES = 50  # batches per sorting pool: large enough to match lengths, small enough to mix
# The bucket lengths below the length cap (the cap itself is always the last bucket). Chosen on the
# real training files (benchmarks/padding.py, benchmarks/measured/): length-grouped batches of 32
# pad to 9-60 tokens in 90% of cases (SST 9-47, QQP 17-58, STS pairs 15-62, STS sentences 9-35),
# so the buckets are dense there, 8 tokens apart, and sparse above; the cap, the last bucket, is
# the longest training input (`training_buckets`), 160 tokens on this data, not the model's 512,
# which would pad the rare long Quora batch to 512 (QQP 31% padding instead of 17%). Every bucket
# is a multiple of 8, the granularity at which GPU tensor cores take bf16 matrices without waste.
BUCKETS = (16, 24, 32, 40, 48, 64, 96)
MAX_BUCKETS = 8  # one CUDA graph per (task, bucket): capture time and memory grow with the count


@dataclass
class TokenizedSplit:
    """One split, tokenized: per example its id, one or two token sequences and its label."""

    task: str  # "sst", "qqp" or "sts": which head the batches go to
    name: str  # the split, e.g. "sts-train", for messages
    layout: str
    ids: list[str]
    first: list[Encoded]
    second: list[Encoded] | None  # the second sentences, for the "separate" layout only
    labels: torch.Tensor | None  # (N,) long for SST, float for the pair tasks; None when unlabelled

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        """Tokens per example: what a batch pads to (the longer sentence for "separate")."""
        first = np.array([len(e.input_ids) for e in self.first])
        if self.second is None:
            return first
        return np.maximum(first, np.array([len(e.input_ids) for e in self.second]))

    def truncated(self) -> int:
        """How many of the split's token sequences were cut to the length limit when tokenized."""
        return sum(e.truncated for e in [*self.first, *(self.second or [])])

    def subset(self, rows: np.ndarray, name: str | None = None) -> "TokenizedSplit":
        pick = lambda items: [items[i] for i in rows]  # noqa: E731
        return TokenizedSplit(
            self.task, name or self.name, self.layout, pick(self.ids), pick(self.first),
            None if self.second is None else pick(self.second),
            None if self.labels is None else self.labels[torch.as_tensor(rows, dtype=torch.long)],
        )


def tokenize_split(split: Split, task: str, tokenizer: BertTokenizer, layout: str,
                   max_length: int | None = None) -> TokenizedSplit:
    """Tokenize every example of `split` once, in the given layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    examples = split.examples
    ids = [e.id for e in examples]
    second = None
    if examples and isinstance(examples[0], SentenceExample):
        if layout != "single":
            raise ValueError(f"{split.name} holds single sentences; it has no {layout!r} layout")
        first = tokenizer.encode([e.sentence for e in examples], max_length=max_length)
    elif layout == "joint":
        first = tokenizer.encode([e.sentence1 for e in examples], [e.sentence2 for e in examples], max_length)
    elif layout == "separate":
        first = tokenizer.encode([e.sentence1 for e in examples], max_length=max_length)
        second = tokenizer.encode([e.sentence2 for e in examples], max_length=max_length)
    elif examples:
        raise ValueError(f"{split.name} holds sentence pairs; use the 'joint' or 'separate' layout")
    else:
        first = []
    labels = None
    if examples and examples[0].label is not None:
        dtype = torch.long if isinstance(examples[0], SentenceExample) else torch.float32
        labels = torch.tensor([e.label for e in examples], dtype=dtype)
    return TokenizedSplit(task, split.name, layout, ids, first, second, labels)


def plan_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None,
                 group_by_length: bool = True) -> list[np.ndarray]:
    """Split example indices into batches.

    With `rng` (training): a fresh random order; with `group_by_length`, sorted by length inside
    pools of POOL_BATCHES batches, and the batches shuffled. Without `rng` (evaluation): sorted
    by length over the whole split, the least padding possible; callers restore the order.
    """
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    if group_by_length and len(order):
        # Pools of exactly POOL_BATCHES batches, so that no batch straddles two pools (it would
        # take one pool's longest sentences and the next one's shortest).
        pool = batch_size * POOL_BATCHES
        order = np.concatenate([
            order[i:i + pool][np.argsort(lengths[order[i:i + pool]], kind="stable")]
            for i in range(0, len(order), pool)
        ])
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@dataclass
class Batch:
    """Padded tensors for one batch. For "separate", the first B rows of `inputs` are the first
    sentences and the next B rows the second ones (one stacked forward pass encodes both)."""

    task: str
    rows: np.ndarray  # which examples of the split, for ids and error messages
    inputs: dict[str, torch.Tensor]  # input_ids, token_type_ids, attention_mask: (B or 2B, T)
    labels: torch.Tensor | None
    ids: list[str] = field(default_factory=list)  # the examples' ids, for messages

    def to(self, device: torch.device) -> "Batch":
        non_blocking = device.type == "cuda"
        moved = {k: v.to(device, non_blocking=non_blocking) for k, v in self.inputs.items()}
        labels = None if self.labels is None else self.labels.to(device, non_blocking=non_blocking)
        return Batch(self.task, self.rows, moved, labels, self.ids)

    @property
    def real_tokens(self) -> int:
        return int(self.inputs["attention_mask"].sum())

    @property
    def padded_tokens(self) -> int:
        return self.inputs["attention_mask"].numel()


def length_buckets(cap: int, boundaries: tuple[int, ...] = BUCKETS) -> tuple[int, ...]:
    """The padded lengths a batch may take when inputs are at most `cap` tokens long: the
    boundaries below the cap, then the cap itself (so that every batch has a bucket)."""
    if cap < 1:
        raise ValueError(f"the length cap must be at least 1, got {cap}")
    buckets = tuple(sorted({b for b in boundaries if 0 < b < cap})) + (cap,)
    if len(buckets) > MAX_BUCKETS:
        raise ValueError(f"at most {MAX_BUCKETS} bucket lengths (one CUDA graph each per task), got {buckets}")
    return buckets


def training_buckets(splits: list[TokenizedSplit], limit: int) -> tuple[int, ...]:
    """The buckets of a training run: `length_buckets` capped at the longest input of `splits`
    rounded up to a multiple of 8, and never above `limit` (the tokenization's length cap)."""
    longest = max((int(split.lengths().max()) for split in splits if len(split)), default=1)
    return length_buckets(min(limit, -(-longest // 8) * 8))


def bucket_length(length: int, buckets: tuple[int, ...] | None) -> int:
    """`length` rounded up to the smallest bucket that holds it; itself without buckets.

    A length above the largest bucket is an error, not silently kept: it would be a shape no
    graph was captured for, and it means the buckets were built for a smaller length cap.
    """
    if buckets is None:
        return length
    for bucket in buckets:  # (sorted, at most 8: a scan is as fast as a bisection)
        if length <= bucket:
            return bucket
    raise ValueError(f"a batch of {length} tokens is longer than the largest bucket ({buckets[-1]}); "
                     f"build the buckets from the same length cap as the tokenization")


def pad_encodings(encodings: list[Encoded], pad_id: int,
                  buckets: tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
    """Stack unpadded encodings into (B, T) tensors padded to the longest, or with `buckets` to
    the smallest bucket length that holds the longest."""
    length = bucket_length(max((len(e.input_ids) for e in encodings), default=0), buckets)
    input_ids = np.full((len(encodings), length), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((len(encodings), length), dtype=np.int64)
    attention_mask = np.zeros((len(encodings), length), dtype=np.int64)
    for row, e in enumerate(encodings):
        n = len(e.input_ids)
        input_ids[row, :n] = e.input_ids
        token_type_ids[row, :n] = e.token_type_ids
        attention_mask[row, :n] = 1
    return {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(token_type_ids),
            "attention_mask": torch.from_numpy(attention_mask)}


def collate(split: TokenizedSplit, rows: np.ndarray, pad_id: int, buckets: tuple[int, ...] | None = None) -> Batch:
    encodings = [split.first[i] for i in rows]
    if split.second is not None:
        # (2B,): first sentences, then second ones; one tensor, so both in the same bucket
        encodings += [split.second[i] for i in rows]
    labels = None if split.labels is None else split.labels[torch.as_tensor(rows, dtype=torch.long)]
    return Batch(split.task, np.asarray(rows), pad_encodings(encodings, pad_id, buckets), labels,
                 [split.ids[i] for i in rows])


class BatchStream:
    """An endless supply of training batches from one split.

    Each pass over the split is a fresh shuffle seeded by (seed, pass number) alone, so the
    stream's position is two integers (`state`), enough to resume it exactly.
    """

    def __init__(self, split: TokenizedSplit, batch_size: int, seed: int, pad_id: int,
                 group_by_length: bool = True, buckets: tuple[int, ...] | None = None):
        if len(split) == 0:  # (an endless stream of nothing would never end)
            raise ValueError(f"{split.name} has no examples to train on")
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self.group_by_length = group_by_length
        self.buckets = buckets  # padded lengths allowed (see length_buckets); None: the longest
        self._lengths = split.lengths()
        self.passes = 0  # completed passes over the split
        self.position = 0  # batches taken from the current pass
        self._batches = self._plan(self.passes)

    def _plan(self, pass_number: int) -> list[np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, pass_number]))
        return plan_batches(self._lengths, self.batch_size, rng, self.group_by_length)

    def __len__(self) -> int:
        return len(self._batches)

    def next_rows(self) -> np.ndarray:
        """The rows (example indices) of the next batch."""
        if self.position == len(self._batches):
            self.passes += 1
            self.position = 0
            self._batches = self._plan(self.passes)
        rows = self._batches[self.position]
        self.position += 1
        return rows

    def next(self) -> Batch:
        return collate(self.split, self.next_rows(), self.pad_id, self.buckets)

    def fingerprint(self) -> str:
        """A digest of the examples the stream draws from (their ids and token counts): the
        position in `state` means the same batches only over the same examples."""
        digest = hashlib.sha256("\n".join(self.split.ids).encode())
        digest.update(self._lengths.astype(np.int64).tobytes())
        return digest.hexdigest()[:16]

    def state(self) -> dict:
        return {"passes": self.passes, "position": self.position, "examples": len(self.split),
                "fingerprint": self.fingerprint()}

    def check_examples(self, state: dict) -> None:
        """ValueError (saying what differs) if `state` was written over other examples than this
        stream's. (A state from before the fingerprint existed is taken as it is.)"""
        if "fingerprint" in state and state["fingerprint"] != self.fingerprint():
            if state["examples"] != len(self.split):
                raise ValueError(f"{self.split.name} now has {len(self.split):,} examples; the checkpoint's "
                                 f"run trained on {state['examples']:,}")
            raise ValueError(f"{self.split.name} now holds other examples than the checkpoint's run trained "
                             f"on (as many, {len(self.split):,}, but other ids or texts)")

    def load_state(self, state: dict) -> None:
        """Continue from `state`; ValueError if it was written over other examples."""
        self.check_examples(state)
        self.passes, self.position = int(state["passes"]), int(state["position"])
        self._batches = self._plan(self.passes)


def evaluation_batches(split: TokenizedSplit, batch_size: int, pad_id: int, rank: int = 0,
                       world_size: int = 1):
    """Length-sorted batches over the whole split, in a fixed order (see plan_batches).

    In a distributed run rank r takes batches r, r + W, r + 2W, ...: the very batches a single
    process would run, so every prediction is computed exactly as it would be there.
    """
    for rows in plan_batches(split.lengths(), batch_size, rng=None)[rank::world_size]:
        yield collate(split, rows, pad_id)
