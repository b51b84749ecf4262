"""The multitask training loop (Multi-BERT, section 4): one encoder, three tasks, one optimizer.

    for each epoch:
        the sampler plans which task each of the epoch's batches comes from
        for each planned task: take that task's next batch, compute its loss, one AdamW step
        evaluate on the three dev sets; keep the weights if the overall score is the best so far
    reload the best weights, evaluate in full, write predictions for the dev and test files

Everything a run produces lands in its output folder:
    metrics.jsonl         one JSON line per epoch (dev metrics, mean training loss per task, times)
    train_config.json     the settings of the run
    checkpoint.pt         the training state, written every --save-every steps and at each epoch's
                          end, from which --resume continues a killed run exactly
    best/                 the best checkpoint (see multitask/checkpoint.py)
    final_metrics.json    the best checkpoint's full dev evaluation
    predictions/          CS224N-format prediction files for the dev and test sets
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from bert import AdamW, BertModel, BertTokenizer
from bert.loading import atomic_write
from multitask import checkpoint
from multitask.batching import BatchStream, TokenizedSplit, collate, tokenize_split
from multitask.config import TrainConfig
from multitask.data import Split, dataset_paths, load_quora, load_sst, load_sts
from multitask.distributed import (SINGLE_PROCESS, Distributed, ReplicatedEncoder, from_environment,
                                   plan_fingerprint, shard_rows)
from multitask.download import ensure_files
from multitask.evaluation import evaluate, predict_split, prediction_path, write_predictions
from multitask.heads import TASKS, MultitaskBert, layouts
from multitask.losses import MNR_POSITIVE_THRESHOLD
from multitask.runtime import RuntimeSetupError, autocast, grad_scaler, resolve_device, resolve_precision
from multitask.samplers import epoch_plan, round_robin_batches

LOADERS = {"sst": load_sst, "qqp": load_quora, "sts": load_sts}
FILE_KEYS = {"sst": "sst", "qqp": "quora", "sts": "sts"}  # dataset_paths() names Quora "quora"


@dataclass
class TaskData:
    train: TokenizedSplit
    dev: TokenizedSplit
    test: TokenizedSplit | None  # None where the test file is absent


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def load_splits(config: TrainConfig, log: Callable[[str], None]) -> dict[str, dict[str, Split]]:
    """Read the nine CS224N files (downloading missing ones); report skipped rows."""
    paths = dataset_paths(config.data_dir)
    needed = [paths[f"{FILE_KEYS[t]}-{part}"].name for t in TASKS for part in ("train", "dev")]
    ensure_files(config.data_dir, needed, progress=config.progress)
    splits: dict[str, dict[str, Split]] = {}
    for task in TASKS:
        splits[task] = {}
        for part in ("train", "dev", "test"):
            path = paths[f"{FILE_KEYS[task]}-{part}"]
            if part == "test" and not path.is_file():
                try:
                    ensure_files(config.data_dir, [path.name], progress=config.progress)
                except Exception as err:  # noqa: BLE001 — test files are optional
                    log(f"warning: no test predictions for {task}: {str(err).splitlines()[0]}")
                    continue
            split = LOADERS[task](path, labelled=part != "test")
            if split.report():
                log(split.report())
            splits[task][part] = split
    return splits


def cap_examples(split: Split, limit: int | None, seed: int) -> Split:
    """A seeded random subset of `limit` examples (file order kept), for quick runs."""
    if limit is None or len(split.examples) <= limit:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split.examples), limit, replace=False))
    return Split(split.name, split.path, [split.examples[i] for i in keep], split.skipped)


def prepare_data(config: TrainConfig, tokenizer: BertTokenizer, log: Callable[[str], None]) -> dict[str, TaskData]:
    """Load and tokenize every split once, in the layout the chosen STS head needs."""
    splits = load_splits(config, log)
    task_layouts = layouts(config.sts_head)
    data = {}
    for task in TASKS:
        train = cap_examples(splits[task]["train"], config.max_train_examples, config.seed)
        encode = lambda split: tokenize_split(split, task, tokenizer, task_layouts[task], config.max_length)  # noqa: E731
        test = splits[task].get("test")
        data[task] = TaskData(encode(train), encode(splits[task]["dev"]), test and encode(test))
    return data


def build_model(config: TrainConfig) -> tuple[MultitaskBert, BertTokenizer]:
    tokenizer = BertTokenizer.from_pretrained(config.model)
    encoder = BertModel.from_pretrained(config.model)
    return MultitaskBert(encoder, config.sts_head, config.dropout), tokenizer


def mnr_epochs(num_epochs: int) -> int:
    """The MNR head trains the ranking loss for the first half of the epochs (rounded up, so
    that a one-epoch run still uses it), then the cosine loss."""
    return math.ceil(num_epochs / 2)


@dataclass
class EpochProgress:
    """How far an epoch has got: enough to continue it exactly after a crash."""

    epoch: int
    step: int = 0  # batches done
    loss_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # kept on the device
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TASKS, 0))
    real_tokens: int = 0
    padded_tokens: int = 0
    skipped_nonfinite: int = 0
    seconds: float = 0.0  # training time so far, summed over resumed pieces

    def state(self) -> dict:
        return {**vars(self), "loss_sums": {t: v.detach().cpu() for t, v in self.loss_sums.items()}}


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite; the message says where and what to do."""


class Trainer:
    """One training run: the model, its data, the optimizer and the bookkeeping of epochs."""

    NONFINITE_CHECK_EVERY = 50  # steps between checks that the losses are finite (one sync each)

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print,
                 model: MultitaskBert | None = None, tokenizer: BertTokenizer | None = None,
                 distributed: Distributed = SINGLE_PROCESS):
        config.validate()
        self.config = config
        self.distributed = distributed
        self.log = log if distributed.is_main else (lambda message: None)  # rank 0 speaks for all
        self.out_dir = Path(config.out_dir)
        self.state_path = self.out_dir / "checkpoint.pt"
        self.device = resolve_device(config.device)
        if distributed.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", distributed.local_rank)
        self.precision = resolve_precision(config.precision, self.device)
        if config.batch_size < distributed.world_size * config.grad_accum:
            raise RuntimeSetupError(
                f"--batch-size {config.batch_size} is the global batch, shared by {distributed.world_size} "
                f"process(es) x --grad-accum {config.grad_accum} micro-batches: make it at least "
                f"{distributed.world_size * config.grad_accum}")
        seed_everything(config.seed)  # the same on every rank: the heads start identical
        if model is None:
            model, tokenizer = build_model(config)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        if config.compile:
            self.model.compile_encoder()
        if distributed.enabled:
            distributed.broadcast_module(self.model)
            self.model.replicated_encoder = ReplicatedEncoder(self.model.bert, self.device, config.compile)
            # Dropout must differ between ranks (they see different rows), so torch's generator
            # gets a per-rank seed; rank 0 keeps the single-process stream.
            if distributed.rank:
                torch.manual_seed(int(np.random.SeedSequence([config.seed, distributed.rank]).generate_state(1)[0]))
        # The first process on each node downloads missing files while the others wait for it.
        if distributed.local_rank != 0:
            distributed.barrier()
        self.data = prepare_data(config, tokenizer, self.log)
        if distributed.local_rank == 0:
            distributed.barrier()
        self.streams = {
            task: BatchStream(self.data[task].train, config.batch_size, config.seed + i,
                              tokenizer.pad_token_id, config.group_by_length)
            for i, task in enumerate(TASKS)
        }
        if config.sts_head == "mnr":
            sts = self.data["sts"].train
            positives = np.flatnonzero(sts.labels.numpy() >= MNR_POSITIVE_THRESHOLD)
            self.streams["sts-mnr"] = BatchStream(sts.subset(positives, "sts-train (label >= 4)"),
                                                  config.batch_size, config.seed + len(TASKS),
                                                  tokenizer.pad_token_id, config.group_by_length)
        sizes = {task: len(self.data[task].train) for task in TASKS}
        # Paths may differ between nodes; what they hold may not (rank 0's weights are broadcast).
        distributed.check_same("the settings", {k: v for k, v in config.to_dict().items()
                                                if k not in ("progress", "model", "data_dir")})
        # (A test file missing on one node only would leave the others waiting in its evaluation.)
        distributed.check_same("the dataset sizes", {
            task: (len(self.data[task].train), len(self.data[task].dev),
                   None if self.data[task].test is None else len(self.data[task].test)) for task in TASKS})
        self.task_sizes = sizes
        self.optimizer = AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = grad_scaler(self.device, self.precision)
        self.best_overall = -math.inf
        self.history: list[dict] = []
        self.start_epoch = 1
        self.resumed_progress: EpochProgress | None = None

    @property
    def batches_per_epoch(self) -> int:
        if self.config.sampler == "round-robin":
            return round_robin_batches(self.task_sizes, self.config.batch_size)
        return self.config.batches_per_epoch

    def epoch_plan(self, epoch: int) -> list[str]:
        """The task of each of the epoch's batches (multitask/samplers.py)."""
        return epoch_plan(self.config.sampler, self.task_sizes, epoch, self.config.epochs,
                          self.batches_per_epoch, self.config.seed)

    # ---- one step -------------------------------------------------------------------------

    def train_step(self, task: str, use_mnr: bool, progress: EpochProgress) -> tuple[torch.Tensor, list[str]]:
        """One optimizer step on the next (global) batch of `task`.

        The batch's rows are shared between the ranks of a distributed run, and each rank's share
        is cut into --grad-accum micro-batches whose gradients add up before the one optimizer
        step; only the last micro-batch's backward pass all-reduces the gradients. Each
        micro-batch's mean loss is weighted by its share of the batch's rows, so the weighted
        losses of all micro-batches on all ranks add up to the batch's mean loss: the step is the
        single-process step on the whole batch. (The MNR loss, whose negatives are the other rows,
        is computed by every rank over all ranks' rows instead, and weighted 1 / world size.)
        Returns this rank's part of the batch's loss (detached) and the batch's example ids.
        """
        mnr = use_mnr and task == "sts"
        stream = self.streams["sts-mnr" if mnr else task]
        rows = stream.next_rows()
        ids = [stream.split.ids[i] for i in rows]
        distributed, micro_steps = self.distributed, self.config.grad_accum
        # Every rank's micro-batches (each rank can work them out: they depend on the rows only).
        shares = [shard_rows(rows, r, distributed.world_size, micro_steps) for r in range(distributed.world_size)]
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=self.device)
        for i, micro_rows in enumerate(shares[distributed.rank]):
            has_rows = len(micro_rows) > 0
            weight = len(micro_rows) / len(rows)
            gather = None
            if mnr and distributed.enabled:
                # Every rank computes the ranking loss over all ranks' rows of this micro-step.
                counts = [len(share[i]) for share in shares]
                weight = sum(counts) / len(rows) / distributed.world_size
                if sum(counts):
                    gather = functools.partial(distributed.gather_rows, counts=counts)
            if not has_rows:
                # An empty share still runs, on a stand-in row weighted 0: every rank must join
                # the gradient all-reduce.
                micro_rows = rows[:1]
            batch = collate(stream.split, micro_rows, self.tokenizer.pad_token_id)
            if has_rows:
                progress.real_tokens += batch.real_tokens
                progress.padded_tokens += batch.padded_tokens
            last = i == micro_steps - 1
            replicated = self.model.replicated_encoder
            with replicated.no_sync(skip=not last) if replicated else contextlib.nullcontext():
                with autocast(self.device, self.precision):
                    loss = self.model.loss(batch.to(self.device), use_mnr=mnr, gather_rows=gather) * weight
                if self.config.skip_nonfinite and not self.all_finite(loss):
                    progress.skipped_nonfinite += 1  # no step: the weights stay good
                    self.optimizer.zero_grad(set_to_none=True)
                    return torch.zeros((), device=self.device), ids
                # DDP averages the ranks' gradients; scaling by the world size makes that the sum.
                self.scaler.scale(loss * distributed.world_size).backward()
            step_loss += loss.detach()
        distributed.average_gradients(self.model.head_parameters())  # DDP covers the encoder
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return step_loss, ids

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether `loss` is finite on every rank (one sync; all ranks reach the same answer)."""
        bad = (~torch.isfinite(loss)).float().reshape(1)
        return not bool(self.distributed.sum_(bad).item())

    def check_finite(self, pending: list[tuple[int, str, list[str], torch.Tensor]], epoch: int) -> None:
        """Raise NonFiniteLossError naming the first of `pending`'s steps whose loss is not finite.

        Checking every step would make the CPU wait for the GPU at every step; checking a list
        of recent losses costs one wait. Nothing is saved before a check, so the last checkpoint
        on disk always holds finite weights.
        """
        if not pending:
            return
        # Summed over the ranks, the losses are the global batches' losses: a NaN on any rank
        # shows on all of them, so every rank stops at the same step.
        losses = self.distributed.sum_(torch.stack([loss for *_, loss in pending])).cpu()
        finite = torch.isfinite(losses)
        if bool(finite.all()):
            pending.clear()
            return
        first_bad = int((~finite).nonzero()[0])
        step, task, ids, _ = pending[first_bad]
        loss = losses[first_bad]
        shown = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
        raise NonFiniteLossError(
            f"the {task} loss is {loss.item()} at epoch {epoch}, step {step + 1}; batch ids: {shown}. "
            f"Training stopped; the last good checkpoint ({self.state_path}) is unchanged, and "
            f"--resume continues from it. Try a lower --lr or --precision fp32, or "
            f"--skip-nonfinite to skip such batches.")

    # ---- one epoch ------------------------------------------------------------------------

    def train_epoch(self, progress: EpochProgress) -> dict:
        config, epoch = self.config, progress.epoch
        self.model.train()
        use_mnr = config.sts_head == "mnr" and epoch <= mnr_epochs(config.epochs)
        plan = self.epoch_plan(epoch)
        self.distributed.check_same(f"the task plan of epoch {epoch}", plan_fingerprint(plan))
        for task in TASKS:
            progress.loss_sums.setdefault(task, torch.zeros((), device=self.device))
        pending: list[tuple[int, str, list[str], torch.Tensor]] = []
        start = time.perf_counter()
        bar = tqdm(total=len(plan), initial=progress.step, desc=f"epoch {epoch}/{config.epochs}",
                   disable=not (config.progress and self.distributed.is_main), dynamic_ncols=True, leave=False)
        for step in range(progress.step, len(plan)):
            task = plan[step]
            loss, ids = self.train_step(task, use_mnr, progress)
            # Loss sums stay on the device: reading them every step would wait for the GPU.
            progress.loss_sums[task] += loss
            progress.counts[task] += 1
            progress.step = step + 1
            pending.append((step, task, ids, loss))
            bar.update(1)
            if progress.step % self.NONFINITE_CHECK_EVERY == 0 or progress.step == len(plan):
                self.check_finite(pending, epoch)
                means = self.mean_losses(progress)
                bar.set_postfix({t: f"{v:.3f}" for t, v in means.items() if v is not None})
            if config.save_every and progress.step % config.save_every == 0 and progress.step < len(plan):
                self.check_finite(pending, epoch)
                progress.seconds += time.perf_counter() - start
                start = time.perf_counter()
                self.save_state(progress)
        bar.close()
        progress.seconds += time.perf_counter() - start
        totals = self.global_progress(progress)
        counts = progress.counts
        losses = {f"train_loss_{t}": v for t, v in self.mean_losses(progress).items()}
        return {**losses, **{f"batches_{t}": counts[t] for t in TASKS},
                # The MNR head's second phase trains the cosine head's loss.
                "sts_objective": "mnr" if use_mnr else config.sts_head.replace("mnr", "cosine"),
                "skipped_nonfinite": progress.skipped_nonfinite,
                "train_seconds": progress.seconds,
                "train_tokens_per_second": totals.real_tokens / max(progress.seconds, 1e-9),
                "padding_fraction": 1.0 - totals.real_tokens / max(totals.padded_tokens, 1)}

    def global_progress(self, progress: EpochProgress) -> EpochProgress:
        """`progress` with the loss sums and token counts summed over the ranks (a copy; in a
        single process, the same numbers). Task counts and times are the same on every rank."""
        sums = self.distributed.sum_(torch.stack([progress.loss_sums[t] for t in TASKS]))
        tokens = self.distributed.sum_(torch.tensor([progress.real_tokens, progress.padded_tokens],
                                                    dtype=torch.float64, device=self.device))
        return EpochProgress(progress.epoch, progress.step, dict(zip(TASKS, sums.unbind())),
                             dict(progress.counts), int(tokens[0]), int(tokens[1]),
                             progress.skipped_nonfinite, progress.seconds)

    def mean_losses(self, progress: EpochProgress) -> dict[str, float | None]:
        """The mean training loss of each task so far in the epoch (None for a task not drawn)."""
        sums = self.global_progress(progress).loss_sums
        return {t: (sums[t] / progress.counts[t]).item() if progress.counts[t] else None for t in TASKS}

    # ---- evaluation -----------------------------------------------------------------------

    def dev_splits(self, qqp_limit: int | None) -> dict[str, TokenizedSplit]:
        dev = {task: self.data[task].dev for task in TASKS}
        if qqp_limit is not None and len(dev["qqp"]) > qqp_limit:
            dev["qqp"] = dev["qqp"].subset(np.arange(qqp_limit))  # the first ones, as the paper
        return dev

    def evaluate(self, qqp_limit: int | None = None) -> tuple[dict, dict]:
        return evaluate(self.model, self.dev_splits(qqp_limit), self.config.eval_batch_size,
                        self.tokenizer.pad_token_id, self.device, self.precision, self.distributed)

    # ---- saving and resuming --------------------------------------------------------------

    def save_state(self, progress: EpochProgress | None, next_epoch: int | None = None) -> None:
        """Write OUT/checkpoint.pt: mid-epoch (`progress`) or between epochs (`next_epoch`).

        Every rank takes part (the random generators and each rank's running sums are
        gathered); rank 0 writes. Each rank's own loss sums and token counts are stored, so a
        resumed rank adds the same numbers in the same order as an uninterrupted one (float sums
        depend on the order); "progress" holds the totals over the ranks, for readers.
        """
        rng = self.distributed.gather(checkpoint.capture_rng_state())
        progress_state = self.global_progress(progress).state() if progress else None
        progress_of_ranks = self.distributed.gather(progress.state()) if progress else None
        if not self.distributed.is_main:
            return
        checkpoint.save_training_state(self.state_path, {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng[0],
            "rng_of_ranks": rng,  # one per rank; rank 0's is also "rng"
            "streams": {name: stream.state() for name, stream in self.streams.items()},
            "epoch": progress.epoch if progress else next_epoch,
            "progress": progress_state,
            "progress_of_ranks": progress_of_ranks,  # one per rank, each its own running sums
            "best_overall": self.best_overall,
            "history": self.history,
        })

    def resume(self, path: Path) -> None:
        """Continue from a training checkpoint exactly where it was written.

        Under torchrun every rank reads the file (on several nodes it must be on a shared
        filesystem). Resuming with another number of processes works, but is not bit-exact:
        dropout then draws other masks.
        """
        state = checkpoint.load_training_state(path)
        changed = {k: (v, getattr(self.config, k)) for k, v in state["config"].items()
                   if k not in RESUMABLE_CHANGES and getattr(self.config, k, v) != v}
        if changed:
            raise checkpoint.CheckpointError(
                f"{path} was written with other settings: " + ", ".join(
                    f"{k}={old!r} (now {new!r})" for k, (old, new) in changed.items()))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for name, stream_state in state["streams"].items():
            self.streams[name].load_state(stream_state)
        self.best_overall = state["best_overall"]
        self.history = state["history"]
        self.start_epoch = state["epoch"]
        rngs = state.get("rng_of_ranks", [state["rng"]])
        same_world = len(rngs) == self.distributed.world_size
        if state["progress"] is not None:
            if same_world and state.get("progress_of_ranks"):  # this rank's own running sums:
                values = dict(state["progress_of_ranks"][self.distributed.rank])  # same order of adds
            else:  # another number of processes: rank 0 carries the totals, the others start at 0
                values = dict(state["progress"])
                if not self.distributed.is_main:
                    values["loss_sums"] = {t: torch.zeros_like(v) for t, v in values["loss_sums"].items()}
                    values["real_tokens"] = values["padded_tokens"] = 0
            values["loss_sums"] = {t: v.to(self.device) for t, v in values["loss_sums"].items()}
            self.resumed_progress = EpochProgress(**values)
        if same_world:
            checkpoint.restore_rng_state(rngs[self.distributed.rank])
        else:
            self.log(f"warning: {path} was written by {len(rngs)} process(es), this run has "
                     f"{self.distributed.world_size}: the run continues, but dropout draws other "
                     f"masks than the original run would have")
        where = (f"epoch {self.start_epoch}, step {self.resumed_progress.step}"
                 if self.resumed_progress else f"the start of epoch {self.start_epoch}")
        self.log(f"resuming from {path} at {where}")

    def write_metrics(self) -> None:
        """Rewrite metrics.jsonl from the history (so a resumed run drops lines it redoes)."""
        if not self.distributed.is_main:
            return
        text = "".join(json.dumps(record) + "\n" for record in self.history)
        atomic_write(self.out_dir / "metrics.jsonl", lambda temp: Path(temp).write_text(text))

    # ---- the run --------------------------------------------------------------------------

    def run(self) -> dict:
        """Train all epochs, then evaluate the best checkpoint and write predictions."""
        config, main = self.config, self.distributed.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        processes = f" x {self.distributed.world_size} processes" if self.distributed.enabled else ""
        self.log(f"training on {self.device}{processes} ({self.precision}); {self.batches_per_epoch} batches "
                 f"per epoch; train sizes " + ", ".join(f"{t} {len(self.data[t].train)}" for t in TASKS))
        for epoch in range(self.start_epoch, config.epochs + 1):
            progress = self.resumed_progress or EpochProgress(epoch)
            self.resumed_progress = None
            record = {"epoch": epoch, **self.train_epoch(progress)}
            eval_start = time.perf_counter()
            dev_metrics, _ = self.evaluate(config.qqp_eval_examples)
            record.update(dev_metrics, eval_seconds=time.perf_counter() - eval_start)
            # Every rank computed the same metrics from the gathered predictions, so all agree.
            record["best"] = dev_metrics["overall"] > self.best_overall
            if record["best"]:
                self.best_overall = dev_metrics["overall"]
                if main:
                    checkpoint.save(self.out_dir / "best", self.model, self.tokenizer, config, record)
            record["epoch_seconds"] = record["train_seconds"] + record["eval_seconds"]
            self.history.append(record)
            self.write_metrics()
            self.save_state(None, next_epoch=epoch + 1)
            self.log(f"epoch {epoch}: sst acc {record['sst_acc']:.3f}  qqp acc {record['qqp_acc']:.3f}  "
                     f"sts r {record['sts_corr']:.3f}  overall {record['overall']:.3f}"
                     f"{'  (best)' if record['best'] else ''}  [{record['epoch_seconds']:.0f} s]")
        return self.finish()

    def finish(self) -> dict:
        """Reload the best weights, evaluate them in full and write every prediction file."""
        if self.distributed.is_main:
            checkpoint.load_weights(self.out_dir / "best", self.model)
        self.distributed.broadcast_module(self.model)  # rank 0's copy: no shared filesystem needed
        metrics, predictions = self.evaluate()
        main = self.distributed.is_main
        if main:
            (self.out_dir / "final_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        for task in TASKS:
            dev = self.data[task].dev
            if main:
                write_predictions(prediction_path(self.out_dir, task, "dev"), task, dev.ids, predictions[task])
            test = self.data[task].test
            if test is not None:
                scores = predict_split(self.model, test, self.config.eval_batch_size,
                                       self.tokenizer.pad_token_id, self.device, self.precision,
                                       self.distributed)
                if main:
                    write_predictions(prediction_path(self.out_dir, task, "test"), task, test.ids, scores)
        self.log("best checkpoint, full dev evaluation: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics


# Settings that may differ when a run is resumed: they change neither the numbers nor the files.
RESUMABLE_CHANGES = {"progress", "device", "compile", "save_every", "out_dir", "data_dir", "skip_nonfinite"}


def train(config: TrainConfig, log: Callable[[str], None] = print, resume: str | Path | None = None) -> dict:
    """Run a whole training; `resume` names a training checkpoint (or run folder) to continue.

    Under torchrun, every process calls this: it joins the process group from the environment
    (see multitask/distributed.py) and leaves it at the end.
    """
    distributed = from_environment(config.device)
    try:
        trainer = Trainer(config, log, distributed=distributed)
        if resume is not None:
            path = Path(resume)
            trainer.resume(path / "checkpoint.pt" if path.is_dir() else path)
        return trainer.run()
    finally:
        distributed.shutdown()
