"""Tests for multitask/samplers.py: the task distributions, the round-robin cycle, reproducibility.

The random samplers are checked statistically: 200k draws from one epoch's plan must pass a
chi-square goodness-of-fit test against p_i (p-value > 1e-3) and every task's empirical share
must lie within 0.005 of p_i. With n = 200k the standard error of a share is at most
sqrt(0.25 / n) ~= 0.0011, so 0.005 is more than four standard errors. The draws are seeded, so
the outcome is fixed: these tests cannot flake from run to run.
"""

import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from multitask.config import TrainConfig
from multitask.samplers import SAMPLERS, annealing_alpha, epoch_plan, round_robin_batches, task_probabilities

# Roughly the CS224N training sets: SST-5, Quora (QQP) and STS-B, about 20x apart.
PAPER_SIZES = {"sst": 8544, "para": 141506, "sts": 6040}
NUM_EPOCHS = 10
NUM_DRAWS = 200_000
P_VALUE_FLOOR = 1e-3
MAX_ABS_DEVIATION = 0.005


def assert_frequencies_match(tasks: list[str], expected: dict[str, float]) -> None:
    """Chi-square goodness of fit plus a max-abs-deviation bound on the empirical shares."""
    counts = Counter(tasks)
    assert set(counts) <= set(expected), f"unexpected tasks {set(counts) - set(expected)}"
    names = list(expected)
    observed = np.array([counts[name] for name in names], dtype=np.float64)
    p = np.array([expected[name] for name in names])
    result = chisquare(observed, f_exp=p * len(tasks))
    assert result.pvalue > P_VALUE_FLOOR, (
        f"chi-square p-value {result.pvalue:.2e} for {dict(counts)} vs {expected}"
    )
    deviation = np.abs(observed / len(tasks) - p).max()
    assert deviation < MAX_ABS_DEVIATION, f"shares deviate from p by up to {deviation:.4f}"


# ---------------------------------------------------------------------------- annealing_alpha


@pytest.mark.parametrize("num_epochs", [2, 3, 5, 10, 20])
def test_alpha_is_exactly_one_first_and_exactly_point_two_last(num_epochs):
    assert annealing_alpha(1, num_epochs) == 1.0
    assert annealing_alpha(num_epochs, num_epochs) == 0.2


@pytest.mark.parametrize("num_epochs", [2, 3, 10, 20])
def test_alpha_follows_the_formula_and_decreases(num_epochs):
    alphas = [annealing_alpha(e, num_epochs) for e in range(1, num_epochs + 1)]
    for e, alpha in enumerate(alphas, start=1):
        assert alpha == pytest.approx(1 - 0.8 * (e - 1) / (num_epochs - 1), abs=1e-12)
    assert all(later < earlier for earlier, later in zip(alphas, alphas[1:]))


def test_alpha_with_a_single_epoch_is_one():
    assert annealing_alpha(1, 1) == 1.0


# ---------------------------------------------------------------------------- probabilities


def test_equitable_probabilities_are_proportional_to_size():
    p = task_probabilities("equitable", PAPER_SIZES, 1, NUM_EPOCHS)
    total = sum(PAPER_SIZES.values())
    assert list(p) == list(PAPER_SIZES)
    for name, size in PAPER_SIZES.items():
        assert p[name] == pytest.approx(size / total, rel=1e-12)
    assert sum(p.values()) == pytest.approx(1.0, abs=1e-12)


def test_annealed_first_epoch_equals_equitable():
    annealed = task_probabilities("annealed", PAPER_SIZES, 1, NUM_EPOCHS)
    equitable = task_probabilities("equitable", PAPER_SIZES, 1, NUM_EPOCHS)
    assert annealed == pytest.approx(equitable, rel=1e-12)


@pytest.mark.parametrize("epoch", [1, 5, 10])
def test_annealed_probabilities_follow_size_to_the_alpha(epoch):
    alpha = 1 - 0.8 * (epoch - 1) / (NUM_EPOCHS - 1)
    weights = {name: size**alpha for name, size in PAPER_SIZES.items()}
    total = sum(weights.values())
    p = task_probabilities("annealed", PAPER_SIZES, epoch, NUM_EPOCHS)
    assert p == pytest.approx({name: w / total for name, w in weights.items()}, rel=1e-12)


def test_annealed_moves_towards_uniform():
    spreads = []
    for epoch in range(1, NUM_EPOCHS + 1):
        p = task_probabilities("annealed", PAPER_SIZES, epoch, NUM_EPOCHS)
        spreads.append(max(p.values()) / min(p.values()))
    assert all(later < earlier for earlier, later in zip(spreads, spreads[1:]))
    # At alpha = 0.2 the largest task is (141506 / 6040) ** 0.2 ~= 1.9 times as likely as the smallest.
    assert spreads[-1] == pytest.approx((141506 / 6040) ** 0.2, rel=1e-12)


def test_round_robin_probabilities_are_uniform():
    p = task_probabilities("round-robin", PAPER_SIZES, 3, NUM_EPOCHS)
    assert p == pytest.approx({name: 1 / 3 for name in PAPER_SIZES})


# ---------------------------------------------------------------------------- empirical frequencies


@pytest.mark.parametrize(
    "sampler, epoch", [("equitable", 1), ("annealed", 1), ("annealed", 5), ("annealed", NUM_EPOCHS)])
def test_drawn_task_frequencies_match_probabilities(sampler, epoch):
    tasks = epoch_plan(sampler, PAPER_SIZES, epoch, NUM_EPOCHS, NUM_DRAWS, seed=1234)
    assert len(tasks) == NUM_DRAWS
    assert_frequencies_match(tasks, task_probabilities(sampler, PAPER_SIZES, epoch, NUM_EPOCHS))


def test_random_sampler_draws_exactly_batches_per_epoch():
    for n in (1, 7, 3000):
        assert len(epoch_plan("equitable", PAPER_SIZES, 1, NUM_EPOCHS, n, seed=0)) == n


# ---------------------------------------------------------------------------- round-robin


def test_round_robin_cycles_in_task_sizes_order():
    sizes = {"b": 100, "a": 50, "c": 70}
    tasks = epoch_plan("round-robin", sizes, 1, NUM_EPOCHS, round_robin_batches(sizes, 10), seed=0)
    assert tasks == ["b", "a", "c"] * 5  # ceil(50 / 10) = 5 rounds


@pytest.mark.parametrize(
    "sizes, batch_size, expected_batches",
    [
        ({"sst": 8544, "para": 141506, "sts": 6040}, 32, 3 * 189),  # ceil(6040 / 32) = 189
        ({"x": 64, "y": 1000}, 32, 2 * 2),  # the smallest divides evenly
        ({"x": 65, "y": 1000}, 32, 2 * 3),  # a last, partial batch still counts
        ({"x": 5, "y": 6}, 32, 2 * 1),  # smaller than one batch
        ({"only": 100}, 7, 1 * 15),  # a single task
    ],
)
def test_round_robin_epoch_length(sizes, batch_size, expected_batches):
    batches = round_robin_batches(sizes, batch_size)
    tasks = epoch_plan("round-robin", sizes, 1, NUM_EPOCHS, batches, seed=0)
    assert batches == expected_batches == len(tasks)
    assert expected_batches == len(sizes) * math.ceil(min(sizes.values()) / batch_size)
    assert tasks == list(sizes) * (expected_batches // len(sizes))


def test_round_robin_ignores_the_epoch_and_the_seed():
    batches = round_robin_batches(PAPER_SIZES, 32)
    plan = epoch_plan("round-robin", PAPER_SIZES, 1, NUM_EPOCHS, batches, seed=0)
    assert epoch_plan("round-robin", PAPER_SIZES, 7, NUM_EPOCHS, batches, seed=5) == plan


# ---------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("sampler", ["equitable", "annealed"])
def test_same_seed_and_epoch_give_the_same_plan(sampler):
    first = epoch_plan(sampler, PAPER_SIZES, 3, NUM_EPOCHS, 3000, seed=7)
    second = epoch_plan(sampler, PAPER_SIZES, 3, NUM_EPOCHS, 3000, seed=7)
    assert first == second


@pytest.mark.parametrize("sampler", ["equitable", "annealed"])
def test_different_epochs_and_seeds_give_different_plans(sampler):
    # Uniform-ish sizes so that two plans agreeing by chance is astronomically unlikely.
    sizes = {"a": 100, "b": 120, "c": 90}
    plan = epoch_plan(sampler, sizes, 3, NUM_EPOCHS, 3000, seed=7)
    assert epoch_plan(sampler, sizes, 4, NUM_EPOCHS, 3000, seed=7) != plan
    assert epoch_plan(sampler, sizes, 3, NUM_EPOCHS, 3000, seed=8) != plan


def test_resumed_run_regenerates_the_same_epoch_plan():
    """A resumed run draws epoch 3 exactly as a run that has drawn epochs 1-2 first."""
    fresh = epoch_plan("annealed", PAPER_SIZES, 3, NUM_EPOCHS, 500, seed=11)
    for epoch in (1, 2):
        epoch_plan("annealed", PAPER_SIZES, epoch, NUM_EPOCHS, 500, seed=11)
    assert epoch_plan("annealed", PAPER_SIZES, 3, NUM_EPOCHS, 500, seed=11) == fresh


def test_plans_ignore_and_leave_alone_the_global_random_state():
    np.random.seed(0)
    plan = epoch_plan("equitable", PAPER_SIZES, 2, NUM_EPOCHS, 1000, seed=3)
    global_draw = np.random.random()
    np.random.seed(0)
    assert np.random.random() == global_draw  # drawing a plan consumed no global randomness
    np.random.seed(999)
    assert epoch_plan("equitable", PAPER_SIZES, 2, NUM_EPOCHS, 1000, seed=3) == plan  # nor depends on it


# ---------------------------------------------------------------------------- the names


def test_every_sampler_name_gives_its_own_plan():
    """Each name in SAMPLERS is a sampler of its own: the three plans of one epoch differ, and
    the command line's configuration accepts each name (and only those)."""
    sizes = {"a": 300, "b": 100, "c": 50}
    plans = {}
    for name in SAMPLERS:
        TrainConfig(sampler=name).validate()
        batches = round_robin_batches(sizes, 10) if name == "round-robin" else 15
        plans[name] = epoch_plan(name, sizes, 2, 3, batches, seed=0)
        assert len(plans[name]) == 15 and set(plans[name]) <= set(sizes)
    assert len({tuple(plan) for plan in plans.values()}) == len(SAMPLERS)
    with pytest.raises(ValueError, match="round-robin, equitable, annealed"):
        TrainConfig(sampler="uniform").validate()
