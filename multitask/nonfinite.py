"""Watching the training losses for NaN and infinity without slowing the loop down.

Reading a loss's value makes the CPU wait for the GPU to finish the step. So the trainer hands
each step's loss (a device tensor) to a `LossWatch`, which checks the recent ones together, one
wait every `every` steps, and before every checkpoint is written: a checkpoint on disk therefore
always holds finite weights. With --skip-nonfinite, `all_finite` checks each batch's loss before
its backward pass instead (one wait per step), and the trainer skips the bad ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from multitask.distributed import Distributed


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite; the message says where and what to do."""


def all_finite(loss: torch.Tensor, distributed: Distributed) -> bool:
    """Whether `loss` is finite on every rank (one sync; all ranks reach the same answer)."""
    bad = (~torch.isfinite(loss)).float().reshape(1)
    return not bool(distributed.sum_(bad).item())


class LossWatch:
    """The losses of the steps since the last check, and the check itself."""

    def __init__(self, distributed: Distributed, checkpoint_path: Path, every: int = 50):
        self.distributed, self.checkpoint_path, self.every = distributed, checkpoint_path, every
        self.pending: list[tuple[int, str, list[str], torch.Tensor]] = []  # (step, task, ids, loss)

    def add(self, step: int, task: str, ids: list[str], loss: torch.Tensor) -> None:
        self.pending.append((step, task, ids, loss))

    def check(self, epoch: int) -> None:
        """Raise NonFiniteLossError naming the first pending step whose loss is not finite."""
        if not self.pending:
            return
        # Summed over the ranks, the losses are the global batches' losses: a NaN on any rank
        # shows on all of them, so every rank stops at the same step.
        losses = self.distributed.sum_(torch.stack([loss for *_, loss in self.pending])).cpu()
        finite = torch.isfinite(losses)
        if bool(finite.all()):
            self.pending.clear()
            return
        first_bad = int((~finite).nonzero()[0])
        step, task, ids, _ = self.pending[first_bad]
        shown = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
        raise NonFiniteLossError(
            f"the {task} loss is {losses[first_bad].item()} at epoch {epoch}, step {step + 1}; batch ids: "
            f"{shown}. Training stopped; the last good checkpoint ({self.checkpoint_path}) is unchanged, "
            f"and --resume continues from it. Try a lower --lr or --precision fp32, or "
            f"--skip-nonfinite to skip such batches.")
