"""Training on several processes (GPUs or nodes) with torchrun and DistributedDataParallel.

    torchrun --nproc_per_node=4 multitask_classifier.py --sampler annealed --sts-head concat

torchrun starts one process per GPU and tells each its place through environment variables
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Every process ("rank") holds a full
copy of the model; each training step is one *global* batch of --batch-size examples that the
ranks split between them. How the pieces fit:

- **Same task on every rank.** The sampler's plan of an epoch depends on (seed, epoch) only
  (multitask/samplers.py), and each task's batch order on (seed, pass) only
  (multitask/batching.py), so every rank draws the same task and the same global batch at every
  step without talking to the others. The trainer checks it once per epoch (`check_same` on a
  `plan_fingerprint`), because ranks that disagreed would run different heads and hang in the
  gradient all-reduce.
- **Sharding.** A rank takes its contiguous share of the global batch's rows (`shard_rows`), so
  no example is seen twice per epoch and the ranks together see exactly the single-process batch.
- **Gradients.** DistributedDataParallel wraps the *encoder*, which every task uses in full at
  every step, so its reducer needs no `find_unused_parameters` graph search; it all-reduces the
  encoder's gradients in buckets while the backward pass is still running. The task heads sit
  outside DDP: a step uses one of them, and the ranks average that one head's few gradients
  explicitly (`average_gradients`) after the backward pass. Heads a step does not use keep no
  gradient at all, exactly as in a single-process run, so AdamW skips them in both.
- **Loss scale.** A rank's loss is its rows' mean times (its rows / global rows); summed over the
  ranks that is the global batch's mean. DDP *averages* gradients over the W ranks, so the
  backward pass scales by W to turn that average into the sum (`Piece`, Trainer.train_step). Uneven
  shares (a last batch of 31 rows on 2 ranks) are therefore exact too.
- **Gradient accumulation.** With --grad-accum, a rank's share is cut into micro-batches
  (`pieces`); all but the last run without DDP's gradient sync (`sync_gradients`), so the
  gradients are all-reduced once per step.
- **MNR and CoSENT.** The ranking losses are not sums over rows: MNR takes the other rows of the
  batch as negatives, CoSENT ranks every two pairs of the batch. So the ranks gather each other's
  sentence embeddings (`gather_rows`, differentiable; CoSENT also the labels): each computes the
  loss of the whole batch, as one process would. Its backward pass sums the W identical copies
  into each rank's rows, which DDP's average turns back into one.
- **Input/output.** Rank 0 alone writes logs, metrics, checkpoints and predictions. Evaluation is
  sharded batch by batch and the predictions gathered, so the metrics are computed once over the
  whole dev set: exactly the single-process numbers, not an average of per-rank scores.

Single-process runs use `Distributed()` (world size 1), whose methods do nothing, so the
trainer has one code path.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from multitask.runtime import RuntimeSetupError


@dataclass
class Piece:
    """One forward and backward pass of a training step.

    In one process without --grad-accum a step is one piece: the whole batch, weight 1. Under
    torchrun it is this rank's share of the batch's rows, cut into --grad-accum micro-batches.
    """

    rows: np.ndarray  # row indices into the task's split (one stand-in row if the share is empty)
    real: bool  # False for the stand-in row: it runs only so that this rank joins the all-reduce
    weight: float  # the piece's part of the batch's mean loss: the pieces of all ranks add up to 1
    last: bool  # the step's last piece: its backward pass all-reduces the encoder's gradients
    gather_rows: Callable | None = None  # MNR, CoSENT under torchrun: every rank's rows of this micro-step


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: rank r of world_size, local_rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes files and prints."""
        return self.rank == 0

    # ---- one training step --------------------------------------------------------------------

    def pieces(self, rows: np.ndarray, micro_steps: int, ranking: bool = False) -> list[Piece]:
        """How this process runs the step whose global batch is `rows` (see `Piece`).

        Each micro-batch's mean loss is weighted by its share of the batch's rows, so the
        weighted losses of all pieces on all ranks add up to the batch's mean loss. A ranking loss
        (`ranking`: MNR, whose negatives are the other rows, or CoSENT, which ranks every two
        rows) is computed by every rank over all ranks' rows of the micro-step instead, and
        weighted 1 / world size.
        """
        shares = [shard_rows(rows, r, self.world_size, micro_steps) for r in range(self.world_size)]
        pieces = []
        for i, own in enumerate(shares[self.rank]):
            weight, gather = len(own) / len(rows), None
            if ranking and self.enabled:
                counts = [len(share[i]) for share in shares]
                weight = sum(counts) / len(rows) / self.world_size
                if sum(counts):
                    gather = functools.partial(self.gather_rows, counts=counts)
            pieces.append(Piece(own if len(own) else rows[:1], len(own) > 0, weight, i == micro_steps - 1, gather))
        return pieces

    def sync_gradients(self, model: nn.Module, now: bool) -> None:
        """Whether the next backward pass all-reduces the encoder's gradients: only a step's last
        piece does (DDP's no_sync as one flag, set before the forward pass that DDP reads it in)."""
        if model.replicated_encoder is not None:
            model.replicated_encoder.ddp.require_backward_grad_sync = now

    # ---- setting a run up ----------------------------------------------------------------------

    def own_device(self, device: torch.device) -> torch.device:
        """The GPU of this process's LOCAL_RANK under torchrun; `device` otherwise."""
        return torch.device("cuda", self.local_rank) if self.enabled and device.type == "cuda" else device

    def replicate(self, model: nn.Module, device: torch.device, seed: int, compile: bool) -> None:
        """Give every rank rank 0's weights and wrap the encoder in DDP (`ReplicatedEncoder`)."""
        if not self.enabled:
            return
        self.broadcast_module(model)
        model.replicated_encoder = ReplicatedEncoder(model.bert, device, compile)
        # Dropout must differ between ranks (they see different rows), so torch's generator gets
        # a per-rank seed; rank 0 keeps the single-process stream.
        if self.rank:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))

    def first_on_each_node(self, work: Callable):
        """Run `work` on each node's first process, then on the others (which then find the
        files it downloaded); returns its result."""
        if self.local_rank != 0:
            self.barrier()
        result = work()
        if self.local_rank == 0:
            self.barrier()
        return result

    # ---- collectives (each a no-op in a single process) --------------------------------------

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce `tensor` in place to its sum over the ranks; returns it."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, value):
        """Every rank's `value` (any picklable object), as a list indexed by rank."""
        if not self.enabled:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank, in place."""
        if self.enabled:
            with torch.no_grad():
                for tensor in module.state_dict().values():
                    dist.broadcast(tensor, src=0)

    def average_gradients(self, parameters) -> None:
        """Average the gradients of `parameters` that have one over the ranks (every rank must
        pass the same parameters with gradients, which holds when all run the same task)."""
        if not self.enabled:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # one all-reduce for all of them
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather_rows(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Every rank's rows of `x`, stacked in rank order, with gradients flowing back to each
        rank's own rows (the MNR loss uses this for in-batch negatives from all ranks, CoSENT for
        its pairs).

        counts[r] is how many rows rank r holds; x may carry more (a stand-in row on a rank with
        none), which are left out. All ranks must call this with the same counts.
        """
        if not self.enabled:
            return x[:counts[0]]
        from torch.distributed.nn.functional import all_gather  # the version with a backward pass

        # The collective needs one shape on every rank: pad to the largest share. (A rank with
        # no rows holds one stand-in row, and this is only called when some rank has rows.)
        width = max(counts)
        padded = torch.nn.functional.pad(x, (0, 0, 0, width - x.shape[0]))
        pieces = all_gather(padded)
        return torch.cat([piece[:n] for piece, n in zip(pieces, counts)])

    def check_same(self, what: str, value) -> None:
        """Raise if `value` differs between ranks, naming the ranks (and for a dict, the keys)
        that disagree with rank 0."""
        if not self.enabled:
            return
        values = self.gather(value)
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if not differ:
            return
        r = differ[0]
        if isinstance(value, dict):
            keys = sorted(k for k in set(values[0]) | set(values[r]) if values[0].get(k) != values[r].get(k))
            detail = "; ".join(f"{k}: {values[0].get(k)!r} on rank 0, {values[r].get(k)!r} on rank {r}" for k in keys)
        else:
            detail = f"{values[0]!r} on rank 0, {values[r]!r} on rank {r}"
        raise RuntimeSetupError(
            f"the ranks disagree on {what} ({detail}; rank(s) {', '.join(map(str, differ))} differ "
            f"from rank 0). Every rank must run the same code with the same data and settings (on "
            f"several nodes: the same command line and the same files in --data-dir).")

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


SINGLE_PROCESS = Distributed()


def from_environment(device_name: str) -> Distributed:
    """Join the process group torchrun described in the environment, if any.

    The backend is nccl on CUDA (each process takes the GPU of its LOCAL_RANK) and gloo on the
    CPU. Without torchrun's variables (or with WORLD_SIZE=1) this is a single-process run.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE_PROCESS
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeSetupError("--device cuda under torchrun, but PyTorch sees no CUDA GPU")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeSetupError(
                f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                f"give torchrun --nproc_per_node at most the number of GPUs")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=30))
    return Distributed(rank, world_size, local_rank)


def shard_rows(rows: np.ndarray, rank: int, world_size: int, micro_steps: int) -> list[np.ndarray]:
    """This rank's micro-batches of one global batch.

    The global batch's rows are cut into world_size contiguous shares (sizes differ by at most
    one), rank r takes share r and cuts it into `micro_steps` micro-batches for gradient
    accumulation. A share or micro-batch may be empty when the batch has fewer rows than
    world_size * micro_steps; the trainer still runs such a step, with weight 0, so that every
    rank joins the gradient all-reduce.
    """
    share = np.array_split(np.asarray(rows), world_size)[rank]
    return np.array_split(share, micro_steps)


def plan_fingerprint(steps: list[tuple[str, ...]]) -> str:
    """A short hash of an epoch's plan (the tasks of each step), to compare between ranks cheaply."""
    return hashlib.sha256(",".join("+".join(tasks) for tasks in steps).encode()).hexdigest()[:16]


class ReplicatedEncoder:
    """The encoder wrapped in DistributedDataParallel, for the training forward passes.

    Held by MultitaskBert outside its module tree (this class is not an nn.Module), so the
    model's parameter names, and so its checkpoints, stay those of the plain model. With
    `compile`, the DDP module itself goes through torch.compile (which splits the graph at
    DDP's buckets).
    """

    def __init__(self, encoder: nn.Module, device: torch.device, compile: bool = False):
        from torch.nn.parallel import DistributedDataParallel

        # BERT's buffers (position ids) never change: no need to re-send them every step. The
        # option's name changed in torch 2.13 (the old one still works there, with a warning).
        takes_new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        no_buffer_sync = {"forward_sync_buffers" if takes_new_name else "broadcast_buffers": False}
        self.ddp = DistributedDataParallel(
            encoder, device_ids=[device.index] if device.type == "cuda" else None, **no_buffer_sync)
        if compile:
            from multitask.runtime import CompiledOrEager

            self._run = CompiledOrEager(self.ddp)
        else:
            self._run = self.ddp

    def __call__(self, *args, **kwargs):
        return self._run(*args, **kwargs)
