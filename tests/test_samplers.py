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

from multitask.samplers import (
    SAMPLERS,
    AnnealedSampler,
    EquitableSampler,
    RoundRobinSampler,
    annealing_alpha,
    make_sampler,
)

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


@pytest.mark.parametrize("epoch, num_epochs", [(0, 10), (11, 10), (-1, 10), (1, 0), (2.5, 10)])
def test_alpha_rejects_epochs_out_of_range(epoch, num_epochs):
    with pytest.raises(ValueError, match="epoch"):
        annealing_alpha(epoch, num_epochs)


# ---------------------------------------------------------------------------- probabilities


def test_equitable_probabilities_are_proportional_to_size():
    p = EquitableSampler(PAPER_SIZES, seed=0).probabilities(1, NUM_EPOCHS)
    total = sum(PAPER_SIZES.values())
    assert list(p) == list(PAPER_SIZES)
    for name, size in PAPER_SIZES.items():
        assert p[name] == pytest.approx(size / total, rel=1e-12)
    assert sum(p.values()) == pytest.approx(1.0, abs=1e-12)


def test_annealed_first_epoch_equals_equitable():
    annealed = AnnealedSampler(PAPER_SIZES, seed=0).probabilities(1, NUM_EPOCHS)
    equitable = EquitableSampler(PAPER_SIZES, seed=0).probabilities(1, NUM_EPOCHS)
    assert annealed == pytest.approx(equitable, rel=1e-12)


@pytest.mark.parametrize("epoch", [1, 5, 10])
def test_annealed_probabilities_follow_size_to_the_alpha(epoch):
    alpha = 1 - 0.8 * (epoch - 1) / (NUM_EPOCHS - 1)
    weights = {name: size**alpha for name, size in PAPER_SIZES.items()}
    total = sum(weights.values())
    p = AnnealedSampler(PAPER_SIZES, seed=0).probabilities(epoch, NUM_EPOCHS)
    assert p == pytest.approx({name: w / total for name, w in weights.items()}, rel=1e-12)


def test_annealed_moves_towards_uniform():
    sampler = AnnealedSampler(PAPER_SIZES, seed=0)
    spreads = []
    for epoch in range(1, NUM_EPOCHS + 1):
        p = sampler.probabilities(epoch, NUM_EPOCHS)
        spreads.append(max(p.values()) / min(p.values()))
    assert all(later < earlier for earlier, later in zip(spreads, spreads[1:]))
    # At alpha = 0.2 the largest task is (141506 / 6040) ** 0.2 ~= 1.9 times as likely as the smallest.
    assert spreads[-1] == pytest.approx((141506 / 6040) ** 0.2, rel=1e-12)


def test_round_robin_probabilities_are_uniform():
    p = RoundRobinSampler(PAPER_SIZES, seed=0, batch_size=32).probabilities(3, NUM_EPOCHS)
    assert p == pytest.approx({name: 1 / 3 for name in PAPER_SIZES})


# ---------------------------------------------------------------------------- empirical frequencies


@pytest.mark.parametrize(
    "sampler_cls, epoch",
    [(EquitableSampler, 1), (AnnealedSampler, 1), (AnnealedSampler, 5), (AnnealedSampler, NUM_EPOCHS)],
)
def test_drawn_task_frequencies_match_probabilities(sampler_cls, epoch):
    sampler = sampler_cls(PAPER_SIZES, seed=1234)
    tasks = sampler.epoch_tasks(epoch, NUM_EPOCHS, NUM_DRAWS)
    assert len(tasks) == NUM_DRAWS
    assert_frequencies_match(tasks, sampler.probabilities(epoch, NUM_EPOCHS))


def test_random_sampler_draws_exactly_batches_per_epoch():
    for n in (1, 7, 3000):
        assert len(EquitableSampler(PAPER_SIZES, seed=0).epoch_tasks(1, NUM_EPOCHS, n)) == n


# ---------------------------------------------------------------------------- round-robin


def test_round_robin_cycles_in_task_sizes_order():
    sampler = RoundRobinSampler({"b": 100, "a": 50, "c": 70}, seed=0, batch_size=10)
    tasks = sampler.epoch_tasks(1, NUM_EPOCHS, None)
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
    sampler = RoundRobinSampler(sizes, seed=0, batch_size=batch_size)
    tasks = sampler.epoch_tasks(1, NUM_EPOCHS, None)
    assert sampler.batches_per_epoch == expected_batches == len(tasks)
    assert expected_batches == len(sizes) * math.ceil(min(sizes.values()) / batch_size)
    assert tasks == list(sizes) * (expected_batches // len(sizes))


def test_round_robin_ignores_batches_per_epoch_and_epoch():
    sampler = RoundRobinSampler(PAPER_SIZES, seed=0, batch_size=32)
    plan = sampler.epoch_tasks(1, NUM_EPOCHS, None)
    assert sampler.epoch_tasks(7, NUM_EPOCHS, 3000) == plan


# ---------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("sampler_cls", [EquitableSampler, AnnealedSampler])
def test_same_seed_and_epoch_give_the_same_plan(sampler_cls):
    first = sampler_cls(PAPER_SIZES, seed=7).epoch_tasks(3, NUM_EPOCHS, 3000)
    second = sampler_cls(PAPER_SIZES, seed=7).epoch_tasks(3, NUM_EPOCHS, 3000)
    assert first == second


@pytest.mark.parametrize("sampler_cls", [EquitableSampler, AnnealedSampler])
def test_different_epochs_and_seeds_give_different_plans(sampler_cls):
    # Uniform-ish sizes so that two plans agreeing by chance is astronomically unlikely.
    sizes = {"a": 100, "b": 120, "c": 90}
    plan = sampler_cls(sizes, seed=7).epoch_tasks(3, NUM_EPOCHS, 3000)
    assert sampler_cls(sizes, seed=7).epoch_tasks(4, NUM_EPOCHS, 3000) != plan
    assert sampler_cls(sizes, seed=8).epoch_tasks(3, NUM_EPOCHS, 3000) != plan


def test_resumed_run_regenerates_the_same_epoch_plan():
    """A fresh sampler (a resumed run) draws epoch 3 exactly as one that has drawn epochs 1-2."""
    continuing = AnnealedSampler(PAPER_SIZES, seed=11)
    for epoch in (1, 2):
        continuing.epoch_tasks(epoch, NUM_EPOCHS, 500)
    resumed = AnnealedSampler(PAPER_SIZES, seed=11)
    assert resumed.epoch_tasks(3, NUM_EPOCHS, 500) == continuing.epoch_tasks(3, NUM_EPOCHS, 500)


def test_plans_ignore_and_leave_alone_the_global_random_state():
    sampler = EquitableSampler(PAPER_SIZES, seed=3)
    np.random.seed(0)
    plan = sampler.epoch_tasks(2, NUM_EPOCHS, 1000)
    global_draw = np.random.random()
    np.random.seed(0)
    assert np.random.random() == global_draw  # drawing a plan consumed no global randomness
    np.random.seed(999)
    assert sampler.epoch_tasks(2, NUM_EPOCHS, 1000) == plan  # nor depends on it


def test_sampler_copies_task_sizes():
    sizes = {"a": 10, "b": 20}
    sampler = EquitableSampler(sizes, seed=0)
    sizes["a"] = 1_000_000
    assert sampler.probabilities(1, 1) == pytest.approx({"a": 1 / 3, "b": 2 / 3})


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize("sampler_name", SAMPLERS)
@pytest.mark.parametrize(
    "sizes, message",
    [({}, "empty"), ({"a": 10, "b": 0}, "positive"), ({"a": -3}, "positive"), ({"a": 2.5}, "positive")],
)
def test_bad_task_sizes_are_rejected(sampler_name, sizes, message):
    with pytest.raises(ValueError, match=message):
        make_sampler(sampler_name, sizes, seed=0, batch_size=32)


@pytest.mark.parametrize("sampler_cls", [EquitableSampler, AnnealedSampler])
@pytest.mark.parametrize("batches_per_epoch", [0, -5, None, 2.5])
def test_random_samplers_need_a_positive_batches_per_epoch(sampler_cls, batches_per_epoch):
    with pytest.raises(ValueError, match="batches_per_epoch"):
        sampler_cls(PAPER_SIZES, seed=0).epoch_tasks(1, NUM_EPOCHS, batches_per_epoch)


@pytest.mark.parametrize("sampler_name", SAMPLERS)
@pytest.mark.parametrize("epoch, num_epochs", [(0, 10), (11, 10), (1, 0)])
def test_epochs_out_of_range_are_rejected(sampler_name, epoch, num_epochs):
    sampler = make_sampler(sampler_name, PAPER_SIZES, seed=0, batch_size=32)
    with pytest.raises(ValueError, match="epoch"):
        sampler.epoch_tasks(epoch, num_epochs, 100)
    with pytest.raises(ValueError, match="epoch"):
        sampler.probabilities(epoch, num_epochs)


def test_round_robin_needs_a_positive_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        RoundRobinSampler(PAPER_SIZES, seed=0, batch_size=0)


def test_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="seed"):
        EquitableSampler(PAPER_SIZES, seed=-1)


# ---------------------------------------------------------------------------- make_sampler


@pytest.mark.parametrize(
    "name, expected_cls",
    [("round-robin", RoundRobinSampler), ("equitable", EquitableSampler), ("annealed", AnnealedSampler)],
)
def test_make_sampler_builds_each_named_sampler(name, expected_cls):
    sampler = make_sampler(name, PAPER_SIZES, seed=5, batch_size=16)
    assert type(sampler) is expected_cls
    assert sampler.seed == 5


def test_samplers_lists_every_name_make_sampler_accepts():
    assert SAMPLERS == ("round-robin", "equitable", "annealed")


def test_make_sampler_rejects_unknown_names_and_lists_the_valid_ones():
    with pytest.raises(ValueError) as excinfo:
        make_sampler("uniform", PAPER_SIZES, seed=0, batch_size=32)
    for name in SAMPLERS:
        assert name in str(excinfo.value)
