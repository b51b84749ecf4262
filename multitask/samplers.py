"""Task samplers: which task each training batch of an epoch comes from.

Multi-BERT ("Investigating Methods for BERT Multitask Learning", section 4.2) trains one encoder
on three datasets of very different sizes and compares three ways of interleaving their batches:

- round-robin (the baseline): one batch of each task in turn; an epoch ends once the smallest
  dataset has been seen once, so the large datasets are mostly left unseen.
- equitable: each batch's task is drawn at random with p_i proportional to the dataset size N_i,
  so every example is seen once per "epoch" in expectation.
- annealed (Stickland & Murray 2019, "BERT and PALs"): p_i proportional to N_i ** alpha, with
  alpha falling linearly from 1 (equitable) in the first epoch to 0.2 (near uniform) in the last.

A sampler only decides the *order of tasks*; the data loaders decide which examples fill each
batch. So a sampler is two functions: `task_probabilities` (the share each task gets in an
epoch) and `epoch_plan` (the task of every batch of the epoch). Two more rearrange a plan and
keep how many batches each task gets: `spread_evenly` serves --spread-tasks (each task's batches
evenly spaced over the epoch instead of where the draws put them) and `mixed_steps` serves
--mix-tasks (steps that take a batch of several tasks).
A plan is drawn in one go from a generator seeded by (seed, epoch) alone, never from global
random state, so that:

- a run resumed after a crash regenerates exactly the plan of the epoch it stopped in, and
- every rank of a distributed run draws the same task sequence, so all ranks run the same task
  head at each step and their gradients can be averaged.

The arguments are checked once, where they enter (TrainConfig and the data loaders); these
functions trust them. Epochs are counted from 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np

SAMPLERS = ("round-robin", "equitable", "annealed")


def annealing_alpha(epoch: int, num_epochs: int) -> float:
    """The annealed sampler's exponent: alpha = 1 - 0.8 * (e - 1) / (E - 1) for epoch e of E.

    The first epoch samples in proportion to dataset size (alpha = 1) and the last nearly
    uniformly (alpha = 0.2). With a single epoch the formula divides by zero; alpha is 1 there,
    because the first epoch is always proportional.
    """
    if num_epochs == 1:
        return 1.0
    progress = (epoch - 1) / (num_epochs - 1)  # 0 in the first epoch, 1 in the last
    # Written as an interpolation between the end points (equal to 1 - 0.8 * progress) so that
    # both ends are exact in floating point: 1 - 0.8 would give 0.19999999999999996.
    alpha_first, alpha_last = 1.0, 0.2
    return alpha_first * (1.0 - progress) + alpha_last * progress


def task_probabilities(sampler: str, task_sizes: Mapping[str, int], epoch: int, num_epochs: int) -> dict[str, float]:
    """The share of epoch `epoch`'s batches each task gets: p_i = N_i ** alpha / sum_j N_j ** alpha.

    alpha is 1 for equitable and `annealing_alpha` for annealed; round-robin is uniform.
    """
    names = list(task_sizes)
    if sampler == "round-robin":
        return {name: 1.0 / len(names) for name in names}
    alpha = annealing_alpha(epoch, num_epochs) if sampler == "annealed" else 1.0
    sizes = np.array([task_sizes[name] for name in names], dtype=np.float64)  # (T,)
    weights = sizes ** alpha  # (T,)
    p = weights / weights.sum()  # (T,)
    return {name: float(p_i) for name, p_i in zip(names, p)}


def round_robin_batches(task_sizes: Mapping[str, int], batch_size: int) -> int:
    """Round-robin's epoch length: num_tasks * ceil(min_size / batch_size), one pass over the
    smallest dataset (a last, partial batch counts)."""
    return len(task_sizes) * math.ceil(min(task_sizes.values()) / batch_size)


def epoch_plan(sampler: str, task_sizes: Mapping[str, int], epoch: int, num_epochs: int,
               num_batches: int, seed: int) -> list[str]:
    """The task of each of epoch `epoch`'s `num_batches` batches, in order.

    round-robin cycles through the tasks in `task_sizes`' order (`num_batches` is then
    `round_robin_batches(...)`); the random samplers make `num_batches` independent draws from
    `task_probabilities`, with a generator seeded by (seed, epoch) only.
    """
    names = list(task_sizes)
    if sampler == "round-robin":
        return names * (num_batches // len(names))
    p = np.array(list(task_probabilities(sampler, task_sizes, epoch, num_epochs).values()))  # (T,)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))  # no state from other epochs
    return [names[i] for i in rng.choice(len(names), size=num_batches, p=p)]


def spread_evenly(plan: list[str]) -> list[str]:
    """The plan's batches with each task's spread evenly over the epoch (--spread-tasks).

    Independent draws clump: in 600 annealed draws a task often gets a long run of steps, and
    then none for a while, by chance alone. Here each task keeps its number of batches n_t, and
    its k-th of them (k = 0 .. n_t - 1) is due at the share (k + 1/2) / n_t of the epoch; the
    plan is the batches sorted by when they are due, a tie going to the task that appears first
    in the plan. (It is the order in which Webster's / Sainte-Lague's apportionment hands out
    seats.) With T tasks in a plan of N batches, the place p (0-based) of task t's k-th batch
    is never more than (T - 1) / 2 from where it is due,
        |(p + 1/2) - (k + 1/2) N / n_t| <= (T - 1) / 2,
    at most one place for three tasks (every other task j has between x n_j - 1/2 and
    x n_j + 1/2 batches due before the share x). Round-robin's plan comes back unchanged. Each
    task's data comes from its own stream, so every task still sees the same examples in the same
    order: only when it sees them moves, and single-task runs at the same per-task steps stay the
    fair comparison.
    """
    counts = Counter(plan)  # task -> n_t, in order of first appearance
    due = sorted(((k + 0.5) / n, order, task)  # (when, tie-break, task) for every batch
                 for order, (task, n) in enumerate(counts.items()) for k in range(n))
    return [task for _, _, task in due]


def mixed_steps(plan: list[str]) -> list[tuple[str, ...]]:
    """The plan's batches as --mix-tasks steps: each step takes one batch of several tasks.

    One task per step (the paper, MT-DNN) moves the shared encoder along one task's gradient at
    a time; heterogeneous steps, whose gradients add up over tasks before the update, were what
    made massive multitask fine-tuning stable in Muppet (Aghajanyan et al. 2021). Here the plan
    keeps deciding how many batches each task gets in the epoch, n_t; the steps are as many as
    the largest n_t (N), and task t's n_t batches are spread evenly over them: t takes part in
    step s (0-based) when floor((s + 1) n_t / N) > floor(s n_t / N), so a task with N batches is
    in every step and one with N / 2 in every other. Within a step the tasks keep the order in
    which they first appear in the plan. Every task keeps its batches and their order (each
    task's data comes from its own stream), so single-task runs at the same per-task steps stay
    the fair comparison; the update count falls from the plan's length to N.
    """
    counts = Counter(plan)  # task -> n_t, in order of first appearance
    steps = max(counts.values(), default=0)  # N
    return [tuple(task for task, n in counts.items() if (s + 1) * n // steps > s * n // steps)
            for s in range(steps)]
