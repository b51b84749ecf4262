"""--cuda-graphs: the training step replayed from captured CUDA graphs (issue 14).

Written on a CPU-only machine, first run on an H200 on 2026-11-28: the GPU tests
(tests/test_gpu.py, which skip without CUDA) passed, and a bert-base step took 9.8 ms graphed
against 35-45 ms eager (README, Speed).

Why: on a GPU, a BERT training step of 32 sentences is launch-bound. Its matrix work takes about
a millisecond on an H100, but the step launches about a thousand small kernels (forward, backward,
AdamW), each queued by Python; measured on an H200, 35 ms eager, 26 ms compiled. A CUDA graph
records the kernels of one step once and replays them with one launch, so the host no longer sets
the pace.

What a graph needs, and where this project provides it:

- static shapes: a graph replays the exact shapes it recorded. Batches are padded to one of at
  most 8 bucket lengths (`training_buckets` in multitask/batching.py), so there is one graph per
  (task, rows, bucket): about 3 x 8, plus the smaller last batch of a pass;
- static memory: inputs are copied into tensors that the graph reads at fixed addresses; the
  optimizer's state, step counts and learning rate live in device tensors that are updated in
  place (`AdamW(capturable=True)`: the step size is computed on the device, the lr is written
  into its tensor before each replay by `write_learning_rates`);
- no host sync inside the step: the loss and the gradient norm stay on the device (the NaN watch
  keeps checking every N steps, outside the graph), the encoder skips its "any padding?" check
  while capturing, and fp16's loss scaler (which reads a found-inf flag on the host) is refused;
- dropout: the graph registers torch's CUDA generator, so every replay draws new masks.

How a step runs (`GraphedSteps.step`): the first batch of each shape runs eagerly, on a side
stream as torch's documentation asks for the warm-up before a capture; it is a real training step
that also creates the optimizer state of that task's head. The second batch of that shape is
captured (which computes nothing) and then replayed; every later one is copied into the graph's
inputs and replayed. All graphs share one memory pool: that is safe because they replay one after
another on one stream and nothing a graph produces is read after the next replay (the loss is
cloned out; gradients live and die inside one replay).

Chosen over `torch.compile(mode="reduce-overhead")` because the graph here holds the whole step,
backward and AdamW included, with no compilation time; the two should combine (`--compile`
compiles the encoder, whose kernels are then captured), which is still untested.

Not supported (refused at startup with a message, `check_cuda_graphs`): a CPU run, torchrun
(DDP's all-reduce hooks and its bucketing are not captured here), fp16, --grad-accum above 1,
--skip-nonfinite (a per-step host check), --probe-every (reads gradients outside the step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from multitask.batching import Batch, collate, training_buckets
from multitask.diagnostics import encoder_gradient_norm
from multitask.runtime import AUTOCAST_DTYPES, RuntimeSetupError


def check_cuda_graphs(config, device: torch.device, precision: str, distributed) -> None:
    """Stop a run that asks for --cuda-graphs where they cannot apply, saying why (nothing when
    the flag is off). Called by the Trainer once the device and precision are known."""
    if not config.cuda_graphs:
        return
    if device.type != "cuda":
        raise RuntimeSetupError(f"--cuda-graphs captures the training step as CUDA graphs and needs a CUDA GPU; "
                                f"this run is on {device.type} (drop --cuda-graphs, or use --device cuda on a GPU)")
    if distributed.enabled:
        raise RuntimeSetupError("--cuda-graphs runs in one process only: under torchrun, DDP's gradient "
                                "all-reduce is not captured into the graphs; drop --cuda-graphs or run one process")
    refusals = {
        precision == "fp16": "--precision fp16: its loss scaler reads an overflow flag on the host at every "
                             "step; use bf16 or fp32",
        config.grad_accum > 1: f"--grad-accum {config.grad_accum}: the graphed step takes the batch in one piece",
        config.skip_nonfinite: "--skip-nonfinite: it checks every loss on the host, a sync the graph avoids",
        bool(config.probe_every): "--probe-every: the probes read gradients outside the captured step",
        bool(config.teachers): "--teachers: the teachers' forward passes are not part of the captured step",
    }
    for refused, why in refusals.items():
        if refused:
            raise RuntimeSetupError(f"--cuda-graphs cannot be combined with {why}")


@dataclass
class CapturedStep:
    """One captured step: its graph, the input tensors it reads and the outputs it writes."""

    graph: torch.cuda.CUDAGraph
    batch: Batch  # static inputs on the device, overwritten before each replay
    loss: torch.Tensor  # () the unweighted loss, written by each replay
    norm: torch.Tensor  # () the encoder's gradient norm, written by each replay


class GraphedSteps:
    """The Trainer's training step for --cuda-graphs (see the module docstring)."""

    def __init__(self, trainer):
        self.trainer = trainer
        config, tokenizer = trainer.config, trainer.tokenizer
        limit = config.max_length or tokenizer.model_max_length
        self.buckets = training_buckets([trainer.data[task].train for task in config.task_names], limit)
        for stream in trainer.streams.values():
            stream.buckets = self.buckets  # every training batch padded to a bucket length
        self.dtype = AUTOCAST_DTYPES.get(trainer.precision)  # None: fp32
        self.seen: set[tuple] = set()  # shapes stepped eagerly once (the warm-up)
        self.captured: dict[tuple, CapturedStep] = {}
        self.pool = None  # the memory pool all graphs share
        self.side_stream = torch.cuda.Stream(trainer.device)
        self.capture_seconds = 0.0
        trainer.log(f"--cuda-graphs: batches padded to lengths {', '.join(map(str, self.buckets))}")

    def step(self, task: str, use_mnr: bool, progress) -> tuple[torch.Tensor, list[str]]:
        """What Trainer.train_step does, for one batch in one piece: returns the batch's loss
        (detached, on the device) and its example ids."""
        trainer = self.trainer
        for group in trainer.optimizers[task].param_groups:
            group["capturable"] = True  # (the trainer builds its AdamW on the eager path; a resume keeps that)
        mnr = use_mnr and task == "sts"
        stream = trainer.streams["sts-mnr" if mnr else task]
        rows = stream.next_rows()
        batch = collate(stream.split, rows, trainer.tokenizer.pad_token_id, stream.buckets)
        progress.count_tokens(batch, True)
        key = (task, mnr, tuple(batch.inputs["input_ids"].shape))
        if key not in self.seen:
            self.seen.add(key)
            loss, norm = self._eager(task, mnr, batch.to(trainer.device))
        else:
            captured = self.captured.get(key) or self._capture(key, task, mnr, batch)
            for name, tensor in batch.inputs.items():
                captured.batch.inputs[name].copy_(tensor, non_blocking=True)
            captured.batch.labels.copy_(batch.labels, non_blocking=True)
            trainer.optimizers[task].write_learning_rates()  # this step's lr into the tensor the graph reads
            captured.graph.replay()
            loss, norm = captured.loss.clone(), captured.norm.clone()  # (the next replay overwrites them)
        progress.add_grad_norm(task, norm)
        return loss, [stream.split.ids[i] for i in rows]

    def _body(self, task: str, mnr: bool, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss, backward and AdamW: the step that is captured. (Autocast's weight cache
        is off: cached casts made during a capture would be freed behind the graph's back.)"""
        model, optimizer = self.trainer.model, self.trainer.optimizers[task]
        optimizer.zero_grad(set_to_none=True)  # backward writes fresh gradients
        with torch.autocast("cuda", dtype=self.dtype or torch.float32, enabled=self.dtype is not None,
                            cache_enabled=False):
            loss = model.loss(batch, use_mnr=mnr)
        model.task_weighting(task, loss).backward()  # --loss-weights, --balance
        norm = encoder_gradient_norm(model.bert)
        model.task_weighting.balance_gradients(task, norm, model.bert.parameters())  # --balance equal-norm
        if self.trainer.surgery is not None:
            self.trainer.surgery.project(task)  # --project-conflicts (no value-dependent branch)
        optimizer.step()
        return loss.detach(), norm

    def _eager(self, task: str, mnr: bool, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The first step of a shape, run normally on a side stream (the warm-up)."""
        current = torch.cuda.current_stream(self.trainer.device)
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream):
            loss, norm = self._body(task, mnr, batch)
        current.wait_stream(self.side_stream)
        return loss, norm

    def _capture(self, key: tuple, task: str, mnr: bool, batch: Batch) -> CapturedStep:
        started = time.perf_counter()
        static = batch.to(self.trainer.device)  # allocated outside the graph: fixed addresses
        torch.cuda.synchronize(self.trainer.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            loss, norm = self._body(task, mnr, static)
        self.pool = self.pool or graph.pool()
        self.captured[key] = CapturedStep(graph, static, loss, norm)
        seconds = time.perf_counter() - started
        self.capture_seconds += seconds
        task_name, _, shape = key
        self.trainer.log(f"captured the {task_name} step for {shape[0]} x {shape[1]} tokens in {seconds:.2f} s "
                         f"({len(self.captured)} graph(s), {self.capture_seconds:.1f} s of capture so far)")
        return self.captured[key]
