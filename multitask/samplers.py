"""Task samplers: which task the next training batch comes from.

Multi-BERT ("Investigating Methods for BERT Multitask Learning", section 4.2) trains one encoder
on three datasets of very different sizes and compares three ways of interleaving their batches:

- round-robin (the baseline): one batch of each task in turn; an epoch ends once the smallest
  dataset has been seen once, so the large datasets are mostly left unseen.
- equitable: each batch's task is drawn at random with p_i proportional to the dataset size N_i,
  so every example is seen once per "epoch" in expectation.
- annealed (Stickland & Murray 2019, "BERT and PALs"): p_i proportional to N_i ** alpha, with
  alpha falling linearly from 1 (equitable) in the first epoch to 0.2 (near uniform) in the last.

A sampler only decides the *order of tasks*; the data loaders decide which examples fill each
batch. Every epoch's plan is drawn in one go from a random generator seeded by (seed, epoch)
alone, never from global random state, so that:

- a run resumed after a crash regenerates exactly the plan of the epoch it stopped in, and
- every rank of a distributed run draws the same task sequence, so all ranks run the same task
  head at each step and their gradients can be averaged.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

SAMPLERS = ("round-robin", "equitable", "annealed")


def _check_positive_int(name: str, value: object) -> None:
    """Raise ValueError unless `value` is an integer >= 1 (bools are not accepted as integers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_epoch(epoch: int, num_epochs: int) -> None:
    """Raise ValueError unless 1 <= epoch <= num_epochs (epochs are counted from 1)."""
    _check_positive_int("num_epochs", num_epochs)
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or not 1 <= epoch <= num_epochs:
        raise ValueError(f"epoch must be an integer in 1..{num_epochs} (1-based), got {epoch!r}")


def annealing_alpha(epoch: int, num_epochs: int) -> float:
    """The annealed sampler's exponent: alpha = 1 - 0.8 * (e - 1) / (E - 1) for epoch e of E.

    Epochs are 1-based, so the first epoch samples in proportion to dataset size (alpha = 1)
    and the last nearly uniformly (alpha = 0.2). With a single epoch the formula divides by zero;
    we return alpha = 1 there, because the first epoch is always proportional.
    """
    _check_epoch(epoch, num_epochs)
    if num_epochs == 1:
        return 1.0
    progress = (epoch - 1) / (num_epochs - 1)  # 0 in the first epoch, 1 in the last
    # Written as an interpolation between the end points (equal to 1 - 0.8 * progress) so that
    # both ends are exact in floating point: 1 - 0.8 would give 0.19999999999999996.
    alpha_first, alpha_last = 1.0, 0.2
    return alpha_first * (1.0 - progress) + alpha_last * progress


class TaskSampler(ABC):
    """Plans the task of every batch of an epoch.

    Args:
        task_sizes: task name -> number of training examples (or of batches: only the ratios
            matter to the random samplers). Its order is the order round-robin cycles in.
        seed: seeds the random samplers; the plan of an epoch depends only on (seed, epoch).
    """

    def __init__(self, task_sizes: Mapping[str, int], seed: int) -> None:
        if not task_sizes:
            raise ValueError("task_sizes is empty: a sampler needs at least one task")
        for name, size in task_sizes.items():
            _check_positive_int(f"the size of task {name!r}", size)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.task_sizes = dict(task_sizes)  # a copy, so the caller's dict can change freely
        self.task_names = tuple(self.task_sizes)
        self.seed = int(seed)

    @abstractmethod
    def epoch_tasks(self, epoch: int, num_epochs: int, batches_per_epoch: int | None) -> list[str]:
        """The task of every batch of epoch `epoch` (1-based, of `num_epochs`), in order."""

    @abstractmethod
    def probabilities(self, epoch: int, num_epochs: int) -> dict[str, float]:
        """The share of epoch `epoch`'s batches that each task is expected to get."""

    def _rng(self, epoch: int) -> np.random.Generator:
        """A generator seeded by (seed, epoch) only: no state carries over from other epochs."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task_sizes={self.task_sizes}, seed={self.seed})"


class RoundRobinSampler(TaskSampler):
    """One batch of each task in turn, in task_sizes' order (the paper's baseline).

    An epoch ends when the smallest dataset has been seen once, so it has
    num_tasks * ceil(min_size / batch_size) batches; that is why this sampler needs the batch
    size, and why `epoch_tasks` ignores its `batches_per_epoch` argument.
    """

    def __init__(self, task_sizes: Mapping[str, int], seed: int, batch_size: int) -> None:
        super().__init__(task_sizes, seed)
        _check_positive_int("batch_size", batch_size)
        self.batch_size = int(batch_size)

    @property
    def batches_per_epoch(self) -> int:
        """num_tasks * ceil(min_size / batch_size): one pass over the smallest dataset."""
        rounds = math.ceil(min(self.task_sizes.values()) / self.batch_size)
        return len(self.task_names) * rounds

    def epoch_tasks(self, epoch: int, num_epochs: int, batches_per_epoch: int | None = None) -> list[str]:
        """The fixed cycle (task 1, task 2, ..., task 1, ...); `batches_per_epoch` is ignored."""
        _check_epoch(epoch, num_epochs)
        rounds = self.batches_per_epoch // len(self.task_names)
        return list(self.task_names) * rounds

    def probabilities(self, epoch: int, num_epochs: int) -> dict[str, float]:
        """Uniform: every task gets exactly 1 / num_tasks of the batches, in every epoch."""
        _check_epoch(epoch, num_epochs)
        share = 1.0 / len(self.task_names)
        return {name: share for name in self.task_names}


class SizeWeightedSampler(TaskSampler):
    """Draws each batch's task at random with p_i proportional to N_i ** alpha(epoch).

    The shared machinery of the equitable (alpha = 1) and annealed samplers; a subclass only
    says which exponent an epoch uses. The epoch's `batches_per_epoch` draws are made in one
    call, from a generator seeded by (seed, epoch).
    """

    @abstractmethod
    def alpha(self, epoch: int, num_epochs: int) -> float:
        """The exponent applied to the dataset sizes in epoch `epoch` of `num_epochs`."""

    def _probability_vector(self, epoch: int, num_epochs: int) -> np.ndarray:
        sizes = np.array([self.task_sizes[name] for name in self.task_names], dtype=np.float64)  # (T,)
        weights = sizes ** self.alpha(epoch, num_epochs)  # (T,)
        return weights / weights.sum()  # (T,)

    def probabilities(self, epoch: int, num_epochs: int) -> dict[str, float]:
        """p_i = N_i ** alpha / sum_j N_j ** alpha for epoch `epoch`."""
        _check_epoch(epoch, num_epochs)
        p = self._probability_vector(epoch, num_epochs)
        return {name: float(p_i) for name, p_i in zip(self.task_names, p)}

    def epoch_tasks(self, epoch: int, num_epochs: int, batches_per_epoch: int | None) -> list[str]:
        """`batches_per_epoch` independent draws from `probabilities(epoch, num_epochs)`."""
        _check_epoch(epoch, num_epochs)
        if batches_per_epoch is None:
            raise ValueError(f"{type(self).__name__} needs batches_per_epoch (the paper uses 3000)")
        _check_positive_int("batches_per_epoch", batches_per_epoch)
        p = self._probability_vector(epoch, num_epochs)
        indices = self._rng(epoch).choice(len(self.task_names), size=int(batches_per_epoch), p=p)  # (n,)
        return [self.task_names[i] for i in indices]


class EquitableSampler(SizeWeightedSampler):
    """p_i proportional to N_i: every example is seen once per epoch in expectation."""

    def alpha(self, epoch: int, num_epochs: int) -> float:
        _check_epoch(epoch, num_epochs)
        return 1.0


class AnnealedSampler(SizeWeightedSampler):
    """p_i proportional to N_i ** alpha, alpha from 1 down to 0.2 (Stickland & Murray 2019).

    Proportional sampling at first makes use of the large dataset; moving towards uniform
    later keeps long runs of one task's gradients from crowding out the small tasks.
    """

    def alpha(self, epoch: int, num_epochs: int) -> float:
        return annealing_alpha(epoch, num_epochs)


def make_sampler(name: str, task_sizes: Mapping[str, int], seed: int, batch_size: int) -> TaskSampler:
    """Build the sampler called `name` (one of SAMPLERS); only round-robin uses batch_size."""
    if name == "round-robin":
        return RoundRobinSampler(task_sizes, seed, batch_size)
    if name == "equitable":
        return EquitableSampler(task_sizes, seed)
    if name == "annealed":
        return AnnealedSampler(task_sizes, seed)
    raise ValueError(f"unknown sampler {name!r}; valid names are: {', '.join(SAMPLERS)}")
