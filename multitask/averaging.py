"""--average-last: the weights a run evaluates and keeps are the mean of its last steps' weights.

Tail averaging (Polyak & Juditsky 1992; stochastic weight averaging, Izmailov et al. 2018): SGD's
last iterate carries the noise of its last few batches; the mean of the iterates over the end of
the run carries less. In multitask training that noise has a structure of its own: each step
moves the shared encoder towards one task, so the last iterate leans towards whichever tasks the
sampler happened to draw last, and the mean over the last steps should even that out. Measured
(docs/ablation-unseen-seeds.md, session 26; 600 batches, ten seeds), the last tenth's mean moved
the multitask and the single-task models alike, by at most 0.002, and left one model tied with
three: with a linear decay to zero, the last steps already move the weights little.

The window is a share of the whole run's steps (0.1: the last tenth), so that a single-task
baseline, which takes exactly its task's steps of the multitask plan, averages over as many of
its own steps as the multitask run's window holds of that task. Training itself never sees the
mean: the steps go on from the last iterate, and the mean is swapped in only to be evaluated and
saved (`Trainer.run`). An evaluation before the window starts sees the last iterate.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def window_start(total_steps: int, share: float) -> int:
    """The first step (0-based, over the whole run) whose weights join the mean: the last
    ceil(share * total_steps) steps are averaged (share 0: none, the window starts after the last
    step). The tolerance keeps a product like 0.07 * 100 = 7.000000000000001 at 7 steps."""
    return total_steps - math.ceil(share * total_steps - 1e-9)


class WeightAverage:
    """The running mean of a model's trainable parameters after each step of the window."""

    def __init__(self, model: nn.Module, start: int):
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.start = start  # the first step (0-based, over the run) that counts
        self.count = 0  # steps averaged so far
        self.mean: list[torch.Tensor] | None = None  # float32 copies, made at the window's first step

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Add the weights as they are after step `step` (0-based) if it lies in the window."""
        if step < self.start:
            return
        self.count += 1
        weights = [p.detach() for p in self.parameters]
        if self.mean is None:
            self.mean = [w.float().clone() for w in weights]
        else:  # mean += (w - mean) / n, on every tensor in one call: the mean of the n weights so far
            torch._foreach_lerp_(self.mean, [w.float() for w in weights], 1.0 / self.count)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the model holds the mean (if the window has started); after it, the
        weights it held before, exactly."""
        if self.mean is None:
            yield
            return
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.parameters]
            for parameter, mean in zip(self.parameters, self.mean):
                parameter.copy_(mean)
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, weights in zip(self.parameters, saved):
                    parameter.copy_(weights)

    def state_dict(self) -> dict:
        """What a training checkpoint keeps, to resume with the same mean."""
        return {"count": self.count, "mean": None if self.mean is None else [m.cpu() for m in self.mean]}

    def load_state_dict(self, state: dict) -> None:
        device = self.parameters[0].device
        self.count = state["count"]
        self.mean = None if state["mean"] is None else [m.to(device) for m in state["mean"]]
