"""The multitask training loop (Multi-BERT, section 4): one encoder, three tasks, one optimizer.

    for each epoch:
        the sampler plans which task each of the epoch's batches comes from
        for each planned step: take its task's next batch, compute the loss, one AdamW step
            (with --mix-tasks a step takes a batch of several tasks and adds up their gradients)
        evaluate on the three dev sets; keep the weights if the overall score is the best so far
            (with --average-last, the mean of the last steps' weights is what is evaluated and kept)
    reload the best weights, evaluate in full, write predictions for the dev and test files

The file reads top-down: `train` (the run), `Trainer.run` (the epochs), `Trainer.train_epoch`
(the steps of one epoch), `Trainer.train_step` (one step), then evaluation and the setup helpers.
Saving and resuming live in multitask/checkpoint.py, the NaN watch in multitask/nonfinite.py,
and what torchrun changes in multitask/distributed.py (in one process, nothing).

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
import gc
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from bert import AdamW, BertModel, BertTokenizer, CheckpointError
from bert.files import write_text
from multitask import checkpoint
from multitask.averaging import WeightAverage, window_start
from multitask.batching import BatchStream, TokenizedSplit, collate, tokenize_split
from multitask.config import TrainConfig
from multitask.diagnostics import encoder_gradient_norm, encoder_gradients, probe_batches, task_gradient_cosines
from multitask.data import DataError, Split, dataset_paths, load_quora, load_sst, load_sts
from multitask.distill import Teachers
from multitask.distributed import SINGLE_PROCESS, Distributed, from_environment, plan_fingerprint
from multitask.download import ensure_files
from multitask.evaluation import evaluate, predict_split, prediction_path, write_predictions
from multitask.graphs import GraphedSteps, check_cuda_graphs
from multitask.heads import TASKS, MultitaskBert, layouts
from multitask.losses import MNR_POSITIVE_THRESHOLD
from multitask.nonfinite import LossWatch, NonFiniteLossError, all_finite
from multitask.runtime import RuntimeSetupError, autocast, grad_scaler, resolve_device, resolve_precision
from multitask.report import make_reporter
from multitask.samplers import epoch_plan, mixed_steps, round_robin_batches, spread_evenly
from multitask.surgery import ConflictProjection

__all__ = ["EpochProgress", "NonFiniteLossError", "Trainer", "train"]


def train(config: TrainConfig, log: Callable[[str], None] = print, resume: str | Path | None = None) -> dict:
    """Run a whole training; `resume` names a training checkpoint (or run folder) to continue.

    Under torchrun, every process calls this: it joins the process group from the environment
    (see multitask/distributed.py) and leaves it at the end.
    """
    distributed = from_environment(config.device)
    trainer = None
    try:
        trainer = Trainer(config, log, distributed=distributed)
        if resume is not None:
            path = Path(resume)
            trainer.resume(path / "checkpoint.pt" if path.is_dir() else path)
        return trainer.run()
    finally:
        # DDP's wrapper holds the process group, and gloo's worker threads with it: free them
        # now, while Python is whole. Left to the interpreter's exit, their teardown could abort
        # the process after a finished run ("terminate called without an active exception").
        del trainer
        gc.collect()
        distributed.shutdown()


class Trainer:
    """One training run: the model, its data and optimizer, and the loop over epochs and steps."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print,
                 model: MultitaskBert | None = None, tokenizer: BertTokenizer | None = None,
                 distributed: Distributed = SINGLE_PROCESS):
        self.config, self.distributed = config, distributed
        self.log = log if distributed.is_main else (lambda message: None)  # rank 0 speaks for all
        self.out_dir = Path(config.out_dir)
        self.device = distributed.own_device(resolve_device(config.device))
        self.precision = resolve_precision(config.precision, self.device)
        check_cuda_graphs(config, self.device, self.precision, distributed)  # --cuda-graphs: where it cannot apply
        self.report = make_reporter(config.report_to if distributed.is_main else None, self.out_dir)  # TensorBoard
        if config.batch_size < distributed.world_size * config.grad_accum:  # known only now
            raise RuntimeSetupError(
                f"--batch-size {config.batch_size} is the global batch, shared by {distributed.world_size} "
                f"process(es) x --grad-accum {config.grad_accum} micro-batches: make it at least "
                f"{distributed.world_size * config.grad_accum}")
        seed_everything(config.seed)  # the same on every rank: the heads start identical
        if model is None:
            model, tokenizer = build_model(config)
        self.model, self.tokenizer = model.to(self.device), tokenizer
        if config.max_length is not None and config.max_length > tokenizer.model_max_length:
            raise RuntimeSetupError(f"--max-length {config.max_length} exceeds {config.model}'s limit of "
                                    f"{tokenizer.model_max_length} tokens; give at most that (longer "
                                    f"inputs are cut to it anyway)")
        if config.compile:
            self.model.compile_encoder()
        distributed.replicate(self.model, self.device, config.seed, config.compile)  # torchrun: DDP
        # --teachers: loaded before the data is read, so a teacher that cannot serve this run is refused
        # in seconds; the data draws from its own generators, so no random number moves.
        self.teachers = Teachers(config.teacher_folders, config, tokenizer, self.device) if config.teachers else None
        self.data = distributed.first_on_each_node(lambda: prepare_data(config, tokenizer, self.log))
        self.streams = make_streams(self.data, config, tokenizer.pad_token_id)
        self.task_sizes = {task: len(self.data[task].train) for task in config.task_names}
        check_ranks_agree(distributed, config, self.data)
        self.optimizers = make_optimizers(self.model, config)  # task -> its AdamW (one shared, or --task-moments)
        self.scaler = grad_scaler(self.device, self.precision)  # loss scaling for fp16; else a no-op
        self.surgery = (ConflictProjection(config.task_names, self.model.bert.parameters())  # --project-conflicts
                        if config.project_conflicts else None)
        self.graphs = GraphedSteps(self) if config.cuda_graphs else None  # --cuda-graphs: multitask/graphs.py
        self.probes = config.probe_every and probe_batches(  # --probe-every: fixed batches, one a task
            {task: self.data[task].train for task in config.task_names}, config.batch_size, tokenizer.pad_token_id)
        self.plans: dict[int, list[tuple[str, ...]]] = {}  # epoch -> the tasks of each step (epoch_plan)
        self.plan_counts: list[Counter] | None = None  # each epoch's steps per task (--task-schedules)
        self.average = (WeightAverage(self.model, start=window_start(self.steps_before(config.epochs + 1),
                                                                     config.average_last))
                        if config.average_last else None)  # --average-last: multitask/averaging.py
        self.best_overall, self.history = -math.inf, []
        self.best_evaluation: tuple[dict, dict] | None = None  # the best epoch's metrics and predictions
        self.start_epoch, self.resumed_progress = 1, None  # where `run` starts (see `resume`)

    # ---- the run: every epoch, then the best checkpoint's evaluation -------------------------

    def run(self) -> dict:
        """Train all epochs, then evaluate the best checkpoint and write predictions."""
        config, main = self.config, self.distributed.is_main
        if main:
            checkpoint.start_run(self.out_dir, config)  # train_config.json; no leftover temp files
            checkpoint.warn_if_short_of_space(self)  # now, not when the disk fills hours later
        processes = f" x {self.distributed.world_size} processes" if self.distributed.enabled else ""
        self.log(f"training on {self.device}{processes} ({self.precision}); {self.batches_per_epoch} batches "
                 f"per epoch; train sizes " + ", ".join(f"{t} {n}" for t, n in self.task_sizes.items()))
        for epoch in range(self.start_epoch, config.epochs + 1):
            progress, self.resumed_progress = self.resumed_progress or EpochProgress(epoch), None
            record = {"epoch": epoch, **self.train_epoch(progress)}
            eval_start = time.perf_counter()
            with self.averaged_weights():  # --average-last: the mean of the last steps' weights, if begun
                dev_metrics, predictions = self.evaluate(config.qqp_eval_examples)
                record.update(dev_metrics, eval_seconds=time.perf_counter() - eval_start)
                record["best"] = dev_metrics["overall"] > self.best_overall  # the same on every rank
                if record["best"]:
                    self.best_overall = dev_metrics["overall"]
                    # what finish() reports: the best weights on the whole dev sets (unless QQP's was cut)
                    in_full = not self.cuts_qqp(config.qqp_eval_examples)
                    self.best_evaluation = (dev_metrics, predictions) if in_full else None
                    if main:
                        checkpoint.save(self.out_dir / "best", self.model, self.tokenizer, config, record)
            record["epoch_seconds"] = record["train_seconds"] + record["eval_seconds"]
            self.history.append(record)
            self.report.scalars(epoch, {k: v for k, v in record.items() if isinstance(v, float)}, "epoch")
            if main:
                checkpoint.write_metrics(self.out_dir, self.history)
            checkpoint.save_training_state(self, next_epoch=epoch + 1)
            self.log(f"epoch {epoch}: " + "  ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in dev_metrics.items())
                     + f"{'  (best)' if record['best'] else ''}  [{record['epoch_seconds']:.0f} s]")
        return self.finish()

    # ---- one epoch ------------------------------------------------------------------------

    def train_epoch(self, progress: EpochProgress) -> dict:
        """Train the epoch's planned steps from `progress.step` on; return its training figures."""
        config, epoch = self.config, progress.epoch
        self.model.train()
        use_mnr = config.sts_head == "mnr" and epoch <= mnr_epochs(config.epochs)  # then cosine
        plan, earlier = self.epoch_plan(epoch), self.steps_before(epoch)  # (earlier: the run's steps before this epoch)
        self.distributed.check_same(f"the task plan of epoch {epoch}", plan_fingerprint(plan))
        for task in TASKS:
            progress.loss_sums.setdefault(task, torch.zeros((), device=self.device))
        watch = LossWatch(self.distributed, checkpoint.training_state_path(self.out_dir))
        bar = tqdm(total=len(plan), initial=progress.step, desc=f"epoch {epoch}/{config.epochs}",
                   disable=not (config.progress and self.distributed.is_main), dynamic_ncols=True, leave=False)
        start = time.perf_counter()
        for step in range(progress.step, len(plan)):
            tasks = plan[step]  # the step's task (with --mix-tasks, its tasks: one batch of each)
            self.set_learning_rate(tasks[0], earlier + step, progress)  # --lr-schedule
            for task, (loss, ids) in zip(tasks, self.train_step(tasks, use_mnr, progress)):
                progress.loss_sums[task] += loss  # stays on the device: no wait for the GPU
                progress.counts[task] += 1
                watch.add(step, task, ids, loss)
            if self.average is not None:  # --average-last: the new weights join the mean, in its window
                self.average.update(earlier + step)
            progress.step = step + 1
            if config.probe_every and progress.step % config.probe_every == 0:  # how tasks interfere
                progress.add_probe(task_gradient_cosines(self.model, self.probes, self.device, self.precision))
            bar.update(1)
            if progress.step % watch.every == 0 or progress.step == len(plan):
                watch.check(epoch)  # one wait for the device every `every` steps
                means = progress.mean_losses(self.distributed)
                bar.set_postfix({t: f"{v:.3f}" for t, v in means.items() if v is not None})
                self.report.scalars(earlier + progress.step, {
                    **{f"loss_{t}": v for t, v in means.items()}, "lr": self.current_lr(tasks[0]),
                    **{f"grad_norm_{t}": v for t, v in progress.mean_grad_norms().items()}}, "train")
            if config.save_every and progress.step % config.save_every == 0 and progress.step < len(plan):
                watch.check(epoch)  # a checkpoint never holds NaN weights
                progress.seconds += time.perf_counter() - start
                start = time.perf_counter()
                checkpoint.save_training_state(self, progress)
        bar.close()
        progress.seconds += time.perf_counter() - start
        # The MNR head's second phase trains the cosine head's loss.
        return progress.record(self.distributed, "mnr" if use_mnr else config.sts_head.replace("mnr", "cosine"))

    # ---- one step ---------------------------------------------------------------------------

    def train_step(self, tasks: tuple[str, ...], use_mnr: bool,
                   progress: EpochProgress) -> list[tuple[torch.Tensor, list[str]]]:
        """One AdamW step on the next batch of each of `tasks`: forward, loss, backward, update.

        One task, unless --mix-tasks: then each task's gradients add to the others' before the
        one update. Returns, per task, the batch's loss (detached; under torchrun this rank's part
        of it) and the batch's example ids, for the message if the loss turns out not to be finite.
        """
        if self.graphs is not None:  # --cuda-graphs (one task a step): the same step, replayed from a CUDA graph
            return [self.graphs.step(tasks[0], use_mnr, progress)]
        optimizer = self.optimizers[tasks[0]]  # (the same AdamW for every task, unless --task-moments)
        optimizer.zero_grad(set_to_none=True)
        results, norms = [], []
        for task in tasks:
            before = encoder_gradients(self.model.bert) if results else None  # --mix-tasks: the others' so far
            results.append(self.backward(task, use_mnr, progress))
            if len(tasks) > 1:  # --mix-tasks: this task's own part of the encoder's gradient (fp16: unscaled)
                norms.append(encoder_gradient_norm(self.model.bert, minus=before) / self.scaler.get_scale())
        if any(loss is None for loss, _ in results):  # --skip-nonfinite: no step, the weights stay good
            progress.skipped_nonfinite += 1
            optimizer.zero_grad(set_to_none=True)
            return [(torch.zeros((), device=self.device), ids) for _, ids in results]
        self.distributed.average_gradients(self.model.head_parameters())  # DDP covers the encoder
        self.scaler.unscale_(optimizer)  # (fp16: the true gradients, for the norm and the step)
        norms = norms or [encoder_gradient_norm(self.model.bert)]  # how hard each task pushes
        for task, norm in zip(tasks, norms):
            progress.add_grad_norm(task, norm)
        # (--balance equal-norm and --project-conflicts work on one task's step: --mix-tasks refuses them)
        self.model.task_weighting.balance_gradients(tasks[0], norms[0], self.model.bert.parameters())
        if self.surgery is not None:
            self.surgery.project(tasks[0])  # --project-conflicts: no step against the other tasks' recent ones
        self.scaler.step(optimizer)  # AdamW (skipped by the fp16 scaler on inf gradients)
        self.scaler.update()
        return results

    def backward(self, task: str, use_mnr: bool, progress: EpochProgress) -> tuple[torch.Tensor | None, list[str]]:
        """Forward, loss and backward of `task`'s next batch; its gradients add to any already there.

        Returns the batch's loss (detached; None if it was not finite under --skip-nonfinite, which
        then leaves the batch without a backward pass) and the batch's example ids.
        """
        mnr = use_mnr and task == "sts"  # the MNR phase ranks the positive STS pairs only
        stream = self.streams["sts-mnr" if mnr else task]
        rows = stream.next_rows()  # the batch: row numbers of the task's tokenized split
        ids = [stream.split.ids[i] for i in rows]
        batch_loss = torch.zeros((), device=self.device)
        # One piece, the whole batch, in one process; under torchrun or with --grad-accum, this
        # rank's share cut into micro-batches whose gradients add up (multitask/distributed.py).
        # A loss over the whole batch's rows (MNR's negatives, CoSENT's pairs) is computed by every
        # rank over all ranks' rows.
        ranking = task == "sts" and (mnr or self.model.sts_cosent)
        for piece in self.distributed.pieces(rows, self.config.grad_accum, ranking=ranking):
            batch = collate(stream.split, piece.rows, self.tokenizer.pad_token_id)  # pad and stack
            progress.count_tokens(batch, piece.real)
            self.distributed.sync_gradients(self.model, now=piece.last)
            with autocast(self.device, self.precision):  # bf16/fp16 matrix products where chosen
                batch = batch.to(self.device)
                if self.teachers is not None and not mnr:  # --teachers: targets from the teacher to the gold labels
                    batch = self.teachers.relabel(batch, self.trained_share(progress))
                loss = self.model.loss(batch, use_mnr=mnr, gather_rows=piece.gather_rows)
            objective = self.model.task_weighting(task, loss) * piece.weight  # --loss-weights, --balance
            loss = loss * piece.weight  # (the unweighted loss is what metrics.jsonl reports)
            if self.config.skip_nonfinite and not all_finite(objective, self.distributed):
                return None, ids
            # (DDP averages the ranks' gradients; times the world size, that is their sum.)
            self.scaler.scale(objective * self.distributed.world_size).backward()
            batch_loss += loss.detach()
        return batch_loss, ids

    # ---- the plan, evaluation, the end ------------------------------------------------------

    @property
    def batches_per_epoch(self) -> int:
        if self.config.sampler == "round-robin":
            return round_robin_batches(self.task_sizes, self.config.batch_size)
        return self.config.batches_per_epoch

    @property
    def distinct_optimizers(self) -> list[AdamW]:
        """The AdamW objects, each once, in --tasks order: one, unless --task-moments."""
        return distinct(self.optimizers)

    def set_learning_rate(self, task: str, step: int, progress: EpochProgress) -> None:
        """Each AdamW group's learning rate for a step of `task` at global step `step` (0-based).

        --task-schedules: the schedule runs over `task`'s own steps instead, the k-th of its n
        steps in the whole run getting what step k of n would in a single-task run of it (over
        several epochs the annealed sampler draws the large tasks early and the small ones late,
        so on the global schedule the tasks' steps see different shares of the warmup, the peak
        and the decay; within an epoch its shares are fixed).
        """
        total = self.steps_before(self.config.epochs + 1)
        if self.config.task_schedules:
            step = self.task_steps_before(task, progress.epoch) + progress.counts[task]
            total = self.task_steps_before(task, self.config.epochs + 1)
        lr = scheduled_lr(self.config, step, total)
        for optimizer in self.distinct_optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]

    def averaged_weights(self) -> contextlib.AbstractContextManager:
        """A block in which the model holds what an evaluation should see: with --average-last, once
        its window has begun, the mean of the weights over it; else the weights as trained."""
        return self.average.swapped_in() if self.average is not None else contextlib.nullcontext()

    def current_lr(self, task: str) -> float:
        """The rate the schedule set for `task`'s last step: --lr's share, before any group's multiplier."""
        group = self.optimizers[task].param_groups[0]
        return group["lr"] / group["lr_mult"]

    def trained_share(self, progress: EpochProgress) -> float:
        """The part of the whole run's steps done before this step: 0 at the first, (N-1)/N at the last."""
        done = self.steps_before(progress.epoch) + progress.step
        return done / self.steps_before(self.config.epochs + 1)

    def steps_before(self, epoch: int) -> int:
        """How many steps the epochs before `epoch` plan (`epochs + 1`: the whole run's)."""
        return sum(len(self.epoch_plan(e)) for e in range(1, epoch))

    def task_steps_before(self, task: str, epoch: int) -> int:
        """How many steps of `task` the epochs before `epoch` plan."""
        if self.plan_counts is None:  # (counted once)
            self.plan_counts = [Counter(t for tasks in self.epoch_plan(e) for t in tasks)
                                for e in range(1, self.config.epochs + 1)]
        return sum(counts[task] for counts in self.plan_counts[:epoch - 1])

    def epoch_plan(self, epoch: int) -> list[tuple[str, ...]]:
        """The tasks of each of the epoch's steps: one a step, or with --mix-tasks one batch of
        several (multitask/samplers.py). The seed fixes every epoch's plan: each is drawn once."""
        if epoch not in self.plans:
            plan = epoch_plan(self.config.sampler, self.task_sizes, epoch, self.config.epochs,
                              self.batches_per_epoch, self.config.seed)
            if self.config.spread_tasks:  # the same batches per task, each task's evenly spaced
                plan = spread_evenly(plan)
            self.plans[epoch] = mixed_steps(plan) if self.config.mix_tasks else [(task,) for task in plan]
        return self.plans[epoch]

    def cuts_qqp(self, qqp_limit: int | None) -> bool:
        """Whether an evaluation with `qqp_limit` (--qqp-eval-examples) leaves Quora dev examples out."""
        return qqp_limit is not None and "qqp" in self.config.task_names and len(self.data["qqp"].dev) > qqp_limit

    def dev_splits(self, qqp_limit: int | None) -> dict[str, TokenizedSplit]:
        dev = {task: self.data[task].dev for task in self.config.task_names}
        if self.cuts_qqp(qqp_limit):
            dev["qqp"] = dev["qqp"].subset(np.arange(qqp_limit))  # the first ones, as the paper
        return dev

    def evaluate(self, qqp_limit: int | None = None) -> tuple[dict, dict]:
        return evaluate(self.model, self.dev_splits(qqp_limit), self.config.eval_batch_size,
                        self.tokenizer.pad_token_id, self.device, self.precision, self.distributed)

    def resume(self, path: Path) -> None:
        """Continue from the training checkpoint `path` exactly where it was written."""
        values = checkpoint.resume_training(self, path)
        self.resumed_progress = EpochProgress(**values) if values else None

    def finish(self) -> dict:
        """Reload the best weights, report their evaluation on the whole dev sets and write every
        prediction file."""
        main = self.distributed.is_main
        if main:
            checkpoint.load_weights(self.out_dir / "best", self.model)
        self.distributed.broadcast_module(self.model)  # rank 0's copy: no shared filesystem needed
        # The best epoch's own evaluation when it read every dev example and this process made it
        # (not before a --resume): the same weights, so the same scores, without a second pass.
        metrics, predictions = self.best_evaluation or self.evaluate()
        if main:
            write_text(self.out_dir / "final_metrics.json", json.dumps(metrics, indent=2) + "\n")
        for task in self.config.task_names:
            dev, test = self.data[task].dev, self.data[task].test
            if main:
                write_predictions(prediction_path(self.out_dir, task, "dev"), task, dev.ids, predictions[task])
            if test is not None:
                scores = predict_split(self.model, test, self.config.eval_batch_size,
                                       self.tokenizer.pad_token_id, self.device, self.precision, self.distributed)
                if main:
                    write_predictions(prediction_path(self.out_dir, task, "test"), task, test.ids, scores)
        self.log("best checkpoint, full dev evaluation: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        self.report.close()
        return metrics


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
    grad_norms: dict[str, torch.Tensor] = field(default_factory=dict)  # task -> (sum, steps), on the device
    probe_sums: dict[str, float] = field(default_factory=dict)  # gradient cosines, summed over probes
    probes: int = 0

    def add_grad_norm(self, task: str, norm: torch.Tensor) -> None:
        finite = torch.isfinite(norm)  # (an fp16 step the scaler skips has no true norm)
        entry = torch.stack([torch.where(finite, norm, 0.0), finite.float()])  # (2,)
        self.grad_norms[task] = self.grad_norms[task] + entry if task in self.grad_norms else entry

    def add_probe(self, cosines: dict[str, float]) -> None:
        self.probe_sums = {k: self.probe_sums.get(k, 0.0) + v for k, v in cosines.items()}
        self.probes += 1

    def count_tokens(self, batch, real: bool) -> None:
        if real:  # (not a rank's stand-in row)
            self.real_tokens += batch.real_tokens
            self.padded_tokens += batch.padded_tokens

    def state(self) -> dict:
        return {**vars(self), "loss_sums": {t: v.detach().cpu() for t, v in self.loss_sums.items()},
                "grad_norms": {t: v.detach().cpu() for t, v in self.grad_norms.items()}}

    def totals(self, distributed: Distributed) -> EpochProgress:
        """A copy with the loss sums and token counts summed over the ranks (in one process, the
        same numbers). Task counts and times are the same on every rank."""
        sums = distributed.sum_(torch.stack([self.loss_sums[t] for t in TASKS]))
        tokens = distributed.sum_(torch.tensor([self.real_tokens, self.padded_tokens], dtype=torch.float64,
                                               device=sums.device))
        return EpochProgress(self.epoch, self.step, dict(zip(TASKS, sums.unbind())), dict(self.counts),
                             int(tokens[0]), int(tokens[1]), self.skipped_nonfinite, self.seconds,
                             dict(self.grad_norms), dict(self.probe_sums), self.probes)  # (the same on every rank)

    def mean_losses(self, distributed: Distributed) -> dict[str, float | None]:
        """The mean training loss of each task so far in the epoch (None for a task not drawn)."""
        sums = self.totals(distributed).loss_sums
        return {t: (sums[t] / self.counts[t]).item() if self.counts[t] else None for t in TASKS}

    def mean_grad_norms(self) -> dict[str, float | None]:
        """Each task's mean encoder gradient norm over its steps so far (None: no step yet)."""
        means = dict.fromkeys(TASKS)
        for task, (total, steps) in self.grad_norms.items():
            means[task] = (total / steps).item() if steps > 0 else None
        return means

    def record(self, distributed: Distributed, sts_objective: str) -> dict:
        """The epoch's line of metrics.jsonl, training part."""
        totals = self.totals(distributed)
        return {**{f"train_loss_{t}": v for t, v in self.mean_losses(distributed).items()},
                **{f"batches_{t}": self.counts[t] for t in TASKS},
                "sts_objective": sts_objective,
                "skipped_nonfinite": self.skipped_nonfinite,
                # Each task's mean encoder gradient norm, and the probes' mean cosines (diagnostics.py).
                **{f"grad_norm_{t}": v for t, v in self.mean_grad_norms().items()},
                **{k: v / self.probes for k, v in self.probe_sums.items()},
                "train_seconds": self.seconds,
                "train_tokens_per_second": totals.real_tokens / max(self.seconds, 1e-9),
                "padding_fraction": 1.0 - totals.real_tokens / max(totals.padded_tokens, 1)}


def mnr_epochs(num_epochs: int) -> int:
    """The MNR head trains the ranking loss for the first half of the epochs (rounded up, so
    that a one-epoch run still uses it), then the cosine loss."""
    return math.ceil(num_epochs / 2)


def scheduled_lr(config: TrainConfig, step: int, total_steps: int) -> float:
    """--lr-schedule at global step `step` of `total_steps` (0-based): constant (the paper), or
    linear: a warmup from near 0 over the first --warmup of the steps, then a linear decay that
    reaches 0 just after the last step (Devlin et al. 2019). The warmup never passes --lr: where
    --warmup of the steps is not a whole number (10% of 168 steps: 16.8), its last step is at --lr."""
    if config.lr_schedule == "constant":
        return config.lr
    warmup_steps = config.warmup * total_steps
    if step < warmup_steps:
        return config.lr * min(1.0, (step + 1) / warmup_steps)
    return config.lr * (total_steps - step) / max(total_steps - warmup_steps, 1.0)


def make_optimizers(model: MultitaskBert, config: TrainConfig) -> dict[str, AdamW]:
    """Each trained task's AdamW.

    By default one AdamW serves every task (the paper): its moments m and v average the gradients
    of whichever tasks came last, so a task whose encoder gradients are large sets the step size
    of all (v is the same for all), and each step's direction carries the previous tasks' momentum.

    --task-moments: one AdamW per task over the same weights. A step of task t then moves the
    shared encoder by t's own first moment over t's own second moment, with t's own step count for
    the bias correction: single-task training's update rule, whose moments hold t's gradients
    only, however large or small the other tasks' gradients are. So --loss-weights and --balance
    no longer change the balance much: Adam's step barely depends on the scale of a task's loss.
    (MTAdam, Malkiel & Wolf 2021, likewise keeps Adam's moments per loss term, to balance the
    terms; here the tasks take turns, so the separate moments are all it takes.) Each AdamW holds
    every parameter, but a head or a private layer only ever gets a gradient, and so moments, in
    its own task's AdamW: what grows threefold is the shared encoder's optimizer state.
    """
    def new() -> AdamW:
        return AdamW(parameter_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    if config.task_moments:
        return {task: new() for task in config.task_names}
    return dict.fromkeys(config.task_names, new())


def distinct(optimizers: dict[str, AdamW]) -> list[AdamW]:
    """The different AdamW objects among a task -> AdamW map (one, unless --task-moments)."""
    return list({id(optimizer): optimizer for optimizer in optimizers.values()}.values())


def parameter_groups(model: MultitaskBert, config: TrainConfig) -> list[dict]:
    """AdamW's parameter groups: the encoder, and the heads at --head-lr-mult times the learning
    rate; with weight decay, biases, LayerNorm weights and the learned task weights are not
    decayed (as in BERT's own fine-tuning: decay is meant for the matrices). The tasks' private
    top layers (--private-layers) and PALs (--pals) are parts of the encoder: they train at the
    encoder's rate.

    --layer-lr-decay d: each encoder layer trains at d^k times the rate, k the number of layers
    above it (the top layer and the pooler: d^0 = 1; the embeddings: d^L), so the lower layers, which
    hold what is most general, move least (Howard & Ruder 2018, "Universal Language Model
    Fine-tuning"; Clark et al. 2020, ELECTRA, decay 0.8). A private copy of a layer keeps that
    layer's depth; the PALs, new weights beside every layer, train at the top layer's rate."""
    groups: dict[tuple[bool, float, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:  # (the pooler, under mean pooling)
            continue
        no_decay = config.weight_decay > 0 and (name.endswith(".bias") or "LayerNorm" in name
                                                or name.startswith("task_weighting."))
        head = not name.startswith(("bert.", "private.", "pals."))
        lr_mult = config.head_lr_mult if head else config.layer_lr_decay ** layers_above(model, name)
        groups.setdefault((head, lr_mult, no_decay), []).append(parameter)
    return [{"params": params, "lr_mult": lr_mult, "weight_decay": 0.0 if no_decay else config.weight_decay}
            for (head, lr_mult, no_decay), params in groups.items()]


def layers_above(model: MultitaskBert, name: str) -> int:
    """How many encoder layers lie above the encoder parameter `name`, counting a task's private
    top layers as the layers they copy: 0 for the top layer, L for the embeddings."""
    parts = name.split(".")
    if name.startswith("bert.embeddings."):
        return model.bert.config.num_hidden_layers
    if name.startswith("bert.encoder.layer."):  # bert.encoder.layer.<i>.…, the layers below any private ones
        return model.bert.config.num_hidden_layers - 1 - int(parts[3])
    if name.startswith("private.tasks."):  # private.tasks.<group>.<k>.…, the k-th of the copied top layers
        return len(model.private.tasks[parts[2]]) - 1 - int(parts[3])
    return 0  # the pooler, above the top layer; the PALs


# ---- setting a run up: model, data, batch streams ----------------------------------------------

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


def build_model(config: TrainConfig) -> tuple[MultitaskBert, BertTokenizer]:
    tokenizer = BertTokenizer.from_pretrained(config.model)
    encoder = BertModel.from_pretrained(config.model)
    layers = encoder.config.num_hidden_layers
    if config.private_layers >= layers:  # (the command line checks only that it is not negative)
        raise CheckpointError(f"--private-layers {config.private_layers}: {config.model} has {layers} layers "
                              f"and at least one must stay shared by the tasks; use 1 to {layers - 1}")
    heads, hidden = encoder.config.num_attention_heads, encoder.config.hidden_size
    if config.pals > hidden:  # (the command line checks only that it is not negative)
        raise CheckpointError(f"--pals {config.pals}: the PALs project {config.model}'s hidden size, {hidden}, down "
                              f"to a smaller width; use at most {hidden} (Stickland & Murray: 204 of 768)")
    if config.pals % heads:
        nearest = heads * max(1, round(config.pals / heads))
        raise CheckpointError(f"--pals {config.pals}: the PALs' attention has {config.model}'s {heads} heads, "
                              f"so its width must be a multiple of {heads} (for example {nearest})")
    return checkpoint.build_heads(encoder, config), tokenizer


def load_splits(config: TrainConfig, log: Callable[[str], None],
                with_test: bool = True) -> dict[str, dict[str, Split]]:
    """Read the nine CS224N files (downloading missing ones; the test files only `with_test`);
    report skipped rows."""
    paths = dataset_paths(config.data_dir)
    needed = [paths[f"{FILE_KEYS[t]}-{part}"].name for t in config.task_names for part in ("train", "dev")]
    ensure_files(config.data_dir, needed, progress=config.progress)
    splits: dict[str, dict[str, Split]] = {}
    for task in config.task_names:
        splits[task] = {}
        for part in ("train", "dev", "test") if with_test else ("train", "dev"):
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


def prepare_data(config: TrainConfig, tokenizer: BertTokenizer, log: Callable[[str], None],
                 with_test: bool = True) -> dict[str, TaskData]:
    """Load and tokenize every split once, in the layouts the chosen heads need (not `with_test`:
    the training and dev splits only, for the tools that score a finished run)."""
    splits = load_splits(config, log, with_test)
    task_layouts = layouts(config.sts_head, config.paraphrase_head)
    data = {}
    for task in config.task_names:
        train = cap_examples(splits[task]["train"], config.max_train_examples, config.seed)
        encode = lambda split: tokenize_split(split, task, tokenizer, task_layouts[task], config.max_length)  # noqa: E731
        test = splits[task].get("test")
        data[task] = TaskData(encode(train), encode(splits[task]["dev"]), test and encode(test))
        for split in filter(None, (data[task].train, data[task].dev, data[task].test)):
            if split.truncated():
                log(f"note: {split.name}: {split.truncated()} input(s) longer than "
                    f"{config.max_length or tokenizer.model_max_length} tokens were cut to that length (--max-length)")
    return data


def make_streams(data: dict[str, TaskData], config: TrainConfig, pad_id: int) -> dict[str, BatchStream]:
    """Each task's endless, seeded stream of training batches (and the MNR head's positives)."""
    streams = {task: BatchStream(data[task].train, config.batch_size, config.seed + TASKS.index(task), pad_id,
                                 config.group_by_length) for task in data}
    if config.sts_head == "mnr" and "sts" in data:
        sts = data["sts"].train
        positives = np.flatnonzero(sts.labels.numpy() >= MNR_POSITIVE_THRESHOLD)
        if len(positives) == 0:
            raise DataError(f"{sts.name}: no pair is labelled {MNR_POSITIVE_THRESHOLD} or more, and the mnr "
                            f"head trains on those alone; choose another --sts-head")
        streams["sts-mnr"] = BatchStream(sts.subset(positives, "sts-train (label >= 4)"), config.batch_size,
                                         config.seed + len(TASKS), pad_id, config.group_by_length)
    return streams


def check_ranks_agree(distributed: Distributed, config: TrainConfig, data: dict[str, TaskData]) -> None:
    """Under torchrun, stop with a clear error if the ranks differ in settings or data (they
    would run different steps and hang in the all-reduce); nothing in one process."""
    # Paths may differ between nodes; what they hold may not (rank 0's weights are broadcast).
    distributed.check_same("the settings", {k: v for k, v in config.to_dict().items()
                                            if k not in ("progress", "model", "data_dir")})
    # (A test file missing on one node only would leave the others waiting in its evaluation.)
    distributed.check_same("the dataset sizes", {
        task: (len(d.train), len(d.dev), None if d.test is None else len(d.test)) for task, d in data.items()})
