"""TrainConfig: every setting of a multitask training run, with the paper's defaults.

The command line (multitask_classifier.py) maps its flags one to one onto these fields; a run
writes its TrainConfig into its output folder so the run can be read back and repeated.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass


@dataclass
class TrainConfig:
    # What to train
    model: str = "bert-base-uncased"  # a folder, a hub id, or sentence-transformers/all-MiniLM-L6-v2
    sampler: str = "annealed"  # round-robin | equitable | annealed
    sts_head: str = "concat"  # dot | cosine | concat | mnr
    # Where
    data_dir: str = "data"
    out_dir: str = "runs/latest"
    # The paper's optimisation settings
    epochs: int = 10
    batches_per_epoch: int = 3000  # equitable and annealed; round-robin's epoch is data-defined
    batch_size: int = 32  # the global batch: summed over the processes of a torchrun job
    grad_accum: int = 1  # micro-batches per step: their gradients add up before the AdamW step
    lr: float = 1e-5
    weight_decay: float = 0.0
    dropout: float = 0.3  # before each task head
    seed: int = 11711
    # Data
    max_length: int | None = None  # tokens per input; None: the checkpoint's maximum (512)
    max_train_examples: int | None = None  # per task, a seeded random subset, for quick runs
    group_by_length: bool = True  # batches of similar lengths (little padding); False: random
    eval_batch_size: int = 128
    qqp_eval_examples: int | None = None  # cap on QQP dev examples in per-epoch evaluation
    # Hardware
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    progress: bool = True  # tqdm progress bars
    # Reliability
    save_every: int | None = 500  # steps between training checkpoints (also at every epoch end)
    skip_nonfinite: bool = False  # skip batches whose loss is NaN/inf instead of stopping

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting (the CLI shows it as a usage error)."""
        from multitask.heads import STS_HEADS
        from multitask.samplers import SAMPLERS

        choices = {"sampler": SAMPLERS, "sts_head": STS_HEADS, "device": ("auto", "cpu", "cuda"),
                   "precision": ("auto", "fp32", "bf16", "fp16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batches_per_epoch", "batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_length", "max_train_examples", "qqp_eval_examples", "save_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or unset), got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay non-negative")

        if self.grad_accum > self.batch_size:
            raise ValueError(f"grad_accum ({self.grad_accum}) cannot exceed batch_size ({self.batch_size}): "
                             f"each micro-batch needs at least one example")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def positive_int(text: str) -> int:
    """argparse type for counts: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
