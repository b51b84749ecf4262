"""--spread-tasks: the sampler's batches per task, each task's spaced evenly over the epoch
(multitask/samplers.py, spread_evenly; multitask/training.py, Trainer.epoch_plan)."""

from collections import Counter

import pytest

import multitask_classifier
from multitask import training
from multitask.batching import BatchStream
from multitask.config import TrainConfig
from multitask.samplers import epoch_plan, round_robin_batches, spread_evenly

from test_training import tiny_config

SIZES = {"sst": 8544, "qqp": 14998, "sts": 6040}  # the ablation's task sizes (Quora capped)


def farthest_from_due(plan: list[str]) -> float:
    """The largest |(p + 1/2) - (k + 1/2) N / n_t| over the plan: how far a task's k-th batch,
    at place p, is from where an even spacing of its n_t batches over the N would put it."""
    counts, seen, farthest = Counter(plan), Counter(), 0.0
    for place, task in enumerate(plan):
        due = (seen[task] + 0.5) * len(plan) / counts[task]
        farthest = max(farthest, abs(place + 0.5 - due))
        seen[task] += 1
    return farthest


# ---- the plan ----------------------------------------------------------------------------------


def test_a_hand_worked_plan():
    """qqp 4, sst 2, sts 1 batches, due at: qqp 1/8, 3/8, 5/8, 7/8; sst 1/4, 3/4; sts 1/2."""
    plan = ["sts", "qqp", "sst", "qqp", "qqp", "sst", "qqp"]
    assert spread_evenly(plan) == ["qqp", "sst", "qqp", "sts", "qqp", "sst", "qqp"]


def test_a_tie_goes_to_the_task_that_appears_first_in_the_plan():
    assert spread_evenly(["b", "a", "a", "b"]) == ["b", "a", "b", "a"]
    assert spread_evenly(["a", "b", "b", "a"]) == ["a", "b", "a", "b"]


@pytest.mark.parametrize("sampler, epoch, epochs, seed", [
    ("annealed", 1, 1, 0), ("annealed", 1, 1, 4), ("equitable", 1, 1, 1), ("annealed", 3, 3, 2)])
def test_every_batch_is_at_most_one_place_from_where_it_is_due(sampler, epoch, epochs, seed):
    """Three tasks: |(p + 1/2) - (k + 1/2) N / n_t| <= (3 - 1) / 2 for every batch, with every
    task's count kept; the drawn plan it comes from is nowhere near as even."""
    drawn = epoch_plan(sampler, SIZES, epoch, epochs, 600, seed)
    spread = spread_evenly(drawn)
    assert Counter(spread) == Counter(drawn)  # no batch lost or added
    assert farthest_from_due(spread) <= 1.0
    assert farthest_from_due(drawn) > 10  # (by chance, the draws run tens of places early or late)


def test_the_bound_holds_for_any_number_of_tasks_and_counts():
    """(T - 1) / 2 places for T tasks, on plans of 2 to 5 tasks with counts from 1 to 40 (the
    bound is reached: it is the tightest there is)."""
    worst = {}
    for tasks in range(2, 6):
        for first in range(1, 41):
            counts = {f"t{i}": 1 + (first * (i + 3) + 7 * i) % 40 for i in range(tasks)}
            plan = [task for task, n in counts.items() for _ in range(n)]
            spread = spread_evenly(plan)
            assert Counter(spread) == counts
            worst[tasks] = max(worst.get(tasks, 0.0), farthest_from_due(spread))
    assert all(worst[tasks] <= (tasks - 1) / 2 for tasks in worst), worst
    assert worst[3] == 1.0


def test_round_robin_one_task_and_an_empty_plan_come_back_unchanged():
    plan = epoch_plan("round-robin", SIZES, 1, 1, round_robin_batches(SIZES, 32), 0)
    assert spread_evenly(plan) == plan
    assert spread_evenly(["sts"] * 5) == ["sts"] * 5
    assert spread_evenly([]) == []


# ---- a run -------------------------------------------------------------------------------------


def trained(config, monkeypatch):
    """Train `config`; the tasks of every step, in order, and the rows each task's stream gave."""
    steps, rows = [], {}
    train_step, next_rows = training.Trainer.train_step, BatchStream.next_rows

    def recording_step(self, tasks, use_mnr, progress):
        steps.append(tasks)
        return train_step(self, tasks, use_mnr, progress)

    def recording_rows(self):
        batch = next_rows(self)
        rows.setdefault(self.split.name, []).append(batch.tolist())
        return batch

    monkeypatch.setattr(training.Trainer, "train_step", recording_step)
    monkeypatch.setattr(BatchStream, "next_rows", recording_rows)
    training.train(config, log=lambda m: None)
    monkeypatch.undo()
    return steps, rows


def test_a_spread_run_trains_the_spread_plan_on_the_same_batches_of_each_task(tiny_setup, tmp_path, monkeypatch):
    """Each epoch's steps are the drawn plan spread evenly, and each task's stream gives the
    same rows in the same order as in a run without the flag: only when a task trains moves."""
    values = dict(epochs=2, batches_per_epoch=30)
    spread_steps, spread_rows = trained(tiny_config(tiny_setup, tmp_path / "spread", spread_tasks=True,
                                                    **values), monkeypatch)
    drawn_steps, drawn_rows = trained(tiny_config(tiny_setup, tmp_path / "drawn", spread_tasks=False, **values),
                                      monkeypatch)
    config = tiny_config(tiny_setup, tmp_path / "unused", **values)
    trainer = training.Trainer(config, log=lambda m: None)
    plans = [epoch_plan(config.sampler, trainer.task_sizes, e, 2, 30, config.seed) for e in (1, 2)]
    assert drawn_steps == [(task,) for plan in plans for task in plan]
    assert spread_steps == [(task,) for plan in plans for task in spread_evenly(plan)]
    assert spread_steps != drawn_steps  # (the flag changed the order)
    assert spread_rows == drawn_rows


# ---- the configuration -------------------------------------------------------------------------


def test_with_mix_tasks_it_is_refused_and_alone_each_is_fine(tiny_setup, tmp_path):
    with pytest.raises(ValueError, match="--mix-tasks already spreads .* --spread-tasks would change nothing"):
        tiny_config(tiny_setup, tmp_path, spread_tasks=True, mix_tasks=True).validate()
    tiny_config(tiny_setup, tmp_path, spread_tasks=True).validate()
    mixed = tiny_config(tiny_setup, tmp_path, mix_tasks=True)  # the tuned recipe's spread gives way to it
    mixed.validate()
    assert mixed.spread_tasks is False


@pytest.mark.parametrize("flags, spread", [
    ([], True), (["--no-spread-tasks"], False), (["--recipe", "paper"], False),
    (["--recipe", "paper", "--spread-tasks"], True), (["--mix-tasks"], False),
])
def test_the_tuned_recipe_spreads_and_a_flag_or_the_paper_recipe_does_not(flags, spread):
    config = multitask_classifier.config_from_args(multitask_classifier.build_parser().parse_args(flags))
    config.validate()
    assert config.spread_tasks is spread


def test_a_run_written_before_the_tuned_recipe_spread_reads_back_unspread():
    old = TrainConfig(recipe="tuned").to_dict()
    del old["spread_tasks"]  # a train_config.json from before the setting existed
    assert TrainConfig.from_dict(old).spread_tasks is False
    assert TrainConfig.from_dict(TrainConfig(recipe="tuned").to_dict()).spread_tasks is True
