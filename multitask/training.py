"""The multitask training loop (Multi-BERT, section 4): one encoder, three tasks, one optimizer.

    for each epoch:
        the sampler plans which task each of the epoch's batches comes from
        for each planned task: take that task's next batch, compute its loss, one AdamW step
        evaluate on the three dev sets; keep the weights if the overall score is the best so far
    reload the best weights, evaluate in full, write predictions for the dev and test files

Everything a run produces lands in its output folder:
    metrics.jsonl         one JSON line per epoch (dev metrics, mean training loss per task, times)
    train_config.json     the settings of the run
    best/                 the best checkpoint (see multitask/checkpoint.py)
    final_metrics.json    the best checkpoint's full dev evaluation
    predictions/          CS224N-format prediction files for the dev and test sets
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from bert import AdamW, BertModel, BertTokenizer
from multitask import checkpoint
from multitask.batching import BatchStream, TokenizedSplit, tokenize_split
from multitask.config import TrainConfig
from multitask.data import Split, dataset_paths, load_quora, load_sst, load_sts
from multitask.download import ensure_files
from multitask.evaluation import evaluate, predict_split, prediction_path, write_predictions
from multitask.heads import TASKS, MultitaskBert, layouts
from multitask.losses import MNR_POSITIVE_THRESHOLD
from multitask.runtime import autocast, grad_scaler, resolve_device, resolve_precision
from multitask.samplers import RoundRobinSampler, make_sampler

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


class Trainer:
    """One training run: the model, its data, the optimizer and the bookkeeping of epochs."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print,
                 model: MultitaskBert | None = None, tokenizer: BertTokenizer | None = None):
        config.validate()
        self.config = config
        self.log = log
        self.out_dir = Path(config.out_dir)
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        seed_everything(config.seed)
        if model is None:
            model, tokenizer = build_model(config)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        if config.compile:
            self.model.compile_encoder()
        self.data = prepare_data(config, tokenizer, log)
        self.streams = {
            task: BatchStream(self.data[task].train, config.batch_size, config.seed + i,
                              tokenizer.pad_token_id, config.group_by_length)
            for i, task in enumerate(TASKS)
        }
        if config.sts_head == "mnr":
            sts = self.data["sts"].train
            positives = np.flatnonzero(sts.labels.numpy() >= MNR_POSITIVE_THRESHOLD)
            self.mnr_stream = BatchStream(sts.subset(positives, "sts-train (label >= 4)"),
                                          config.batch_size, config.seed + len(TASKS),
                                          tokenizer.pad_token_id, config.group_by_length)
        sizes = {task: len(self.data[task].train) for task in TASKS}
        self.sampler = make_sampler(config.sampler, sizes, config.seed, config.batch_size)
        self.optimizer = AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = grad_scaler(self.device, self.precision)
        self.best_overall = -math.inf
        self.history: list[dict] = []

    @property
    def batches_per_epoch(self) -> int:
        if isinstance(self.sampler, RoundRobinSampler):
            return self.sampler.batches_per_epoch
        return self.config.batches_per_epoch

    def train_step(self, task: str, use_mnr: bool) -> tuple[torch.Tensor, int, int]:
        """One optimizer step on the next batch of `task`: (detached loss, real tokens, all tokens)."""
        stream = self.mnr_stream if task == "sts" and use_mnr else self.streams[task]
        batch = stream.next()
        tokens = (batch.real_tokens, batch.padded_tokens)
        batch = batch.to(self.device)
        with autocast(self.device, self.precision):
            loss = self.model.loss(batch, use_mnr=use_mnr and task == "sts")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), *tokens

    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        self.model.train()
        use_mnr = config.sts_head == "mnr" and epoch <= mnr_epochs(config.epochs)
        plan = self.sampler.epoch_tasks(epoch, config.epochs, self.batches_per_epoch)
        # Loss sums stay on the device: reading them every step would wait for the GPU.
        loss_sums = {task: torch.zeros((), device=self.device) for task in TASKS}
        counts = dict.fromkeys(TASKS, 0)
        real_tokens = padded_tokens = 0
        start = time.perf_counter()
        bar = tqdm(plan, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress,
                   dynamic_ncols=True, leave=False)
        for step, task in enumerate(bar, 1):
            loss, real, padded = self.train_step(task, use_mnr)
            loss_sums[task] += loss
            counts[task] += 1
            real_tokens += real
            padded_tokens += padded
            if step % 50 == 0 or step == len(plan):
                bar.set_postfix({t: f"{(loss_sums[t] / max(counts[t], 1)).item():.3f}" for t in TASKS})
        bar.close()
        seconds = time.perf_counter() - start
        losses = {f"train_loss_{t}": (loss_sums[t] / counts[t]).item() if counts[t] else None for t in TASKS}
        return {**losses, **{f"batches_{t}": counts[t] for t in TASKS},
                # The MNR head's second phase trains the cosine head's loss.
                "sts_objective": "mnr" if use_mnr else config.sts_head.replace("mnr", "cosine"),
                "train_seconds": seconds, "train_tokens_per_second": real_tokens / seconds,
                "padding_fraction": 1.0 - real_tokens / max(padded_tokens, 1)}

    def dev_splits(self, qqp_limit: int | None) -> dict[str, TokenizedSplit]:
        dev = {task: self.data[task].dev for task in TASKS}
        if qqp_limit is not None and len(dev["qqp"]) > qqp_limit:
            dev["qqp"] = dev["qqp"].subset(np.arange(qqp_limit))  # the first ones, as the paper
        return dev

    def evaluate(self, qqp_limit: int | None = None) -> tuple[dict, dict]:
        return evaluate(self.model, self.dev_splits(qqp_limit), self.config.eval_batch_size,
                        self.tokenizer.pad_token_id, self.device, self.precision)

    def run(self) -> dict:
        """Train all epochs, then evaluate the best checkpoint and write predictions."""
        config = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        metrics_file = self.out_dir / "metrics.jsonl"
        metrics_file.write_text("")
        self.log(f"training on {self.device} ({self.precision}); {self.batches_per_epoch} batches "
                 f"per epoch; train sizes " + ", ".join(f"{t} {len(self.data[t].train)}" for t in TASKS))
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            record = {"epoch": epoch, **self.train_epoch(epoch)}
            eval_start = time.perf_counter()
            dev_metrics, _ = self.evaluate(config.qqp_eval_examples)
            record.update(dev_metrics, eval_seconds=time.perf_counter() - eval_start)
            record["best"] = dev_metrics["overall"] > self.best_overall
            if record["best"]:
                self.best_overall = dev_metrics["overall"]
                checkpoint.save(self.out_dir / "best", self.model, self.tokenizer, config, record)
            record["epoch_seconds"] = time.perf_counter() - epoch_start
            self.history.append(record)
            with open(metrics_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            self.log(f"epoch {epoch}: sst acc {record['sst_acc']:.3f}  qqp acc {record['qqp_acc']:.3f}  "
                     f"sts r {record['sts_corr']:.3f}  overall {record['overall']:.3f}"
                     f"{'  (best)' if record['best'] else ''}  [{record['epoch_seconds']:.0f} s]")
        return self.finish()

    def finish(self) -> dict:
        """Reload the best weights, evaluate them in full and write every prediction file."""
        checkpoint.load_weights(self.out_dir / "best", self.model)
        metrics, predictions = self.evaluate()
        (self.out_dir / "final_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        for task in TASKS:
            dev = self.data[task].dev
            write_predictions(prediction_path(self.out_dir, task, "dev"), task, dev.ids, predictions[task])
            test = self.data[task].test
            if test is not None:
                scores = predict_split(self.model, test, self.config.eval_batch_size,
                                       self.tokenizer.pad_token_id, self.device, self.precision)
                write_predictions(prediction_path(self.out_dir, task, "test"), task, test.ids, scores)
        self.log("best checkpoint, full dev evaluation: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics


def train(config: TrainConfig, log: Callable[[str], None] = print) -> dict:
    return Trainer(config, log).run()
