"""--mix-tasks: each AdamW step takes one batch of several tasks and adds up their gradients
(multitask/samplers.py, mixed_steps; multitask/training.py, Trainer.train_step)."""

import math
from collections import Counter

import pytest
import torch

from multitask import training
from multitask.batching import collate
from multitask.config import TASKS
from multitask.samplers import epoch_plan, mixed_steps, round_robin_batches

from test_reliability import inject_nan, without_timings
from test_training import read_metrics, tiny_config

PAPER_SIZES = {"sst": 8544, "qqp": 141498, "sts": 6040}


# ---- the steps ---------------------------------------------------------------------------------


def test_a_hand_worked_plan():
    """qqp 4, sst 2, sts 1 batches: four steps; sst in every other (floor((s+1)2/4) > floor(2s/4) at
    s = 1, 3), sts in the last (floor((s+1)/4) > floor(s/4) at s = 3); tasks in order of first draw."""
    plan = ["sts", "qqp", "sst", "qqp", "qqp", "sst", "qqp"]
    assert mixed_steps(plan) == [("qqp",), ("qqp", "sst"), ("qqp",), ("sts", "qqp", "sst")]


@pytest.mark.parametrize("sampler, seed", [("annealed", 0), ("annealed", 4), ("equitable", 1)])
def test_every_task_keeps_its_batches_spread_evenly_over_the_largest_task_s_count(sampler, seed):
    plan = epoch_plan(sampler, {"sst": 8544, "qqp": 14998, "sts": 6040}, 1, 1, 600, seed)
    steps = mixed_steps(plan)
    counts = Counter(plan)
    assert len(steps) == max(counts.values())
    assert Counter(task for tasks in steps for task in tasks) == counts  # no batch lost or added
    assert all(len(set(tasks)) == len(tasks) for tasks in steps)  # at most one batch of a task a step
    for task, n in counts.items():
        where = [s for s, tasks in enumerate(steps) if task in tasks]
        gaps = {b - a for a, b in zip(where, where[1:])}
        assert gaps <= {len(steps) // n, math.ceil(len(steps) / n)}, task  # evenly: N / n, rounded down or up


def test_round_robin_mixes_one_batch_of_every_task_into_each_step_and_one_task_changes_nothing():
    batches = round_robin_batches(PAPER_SIZES, 32)
    steps = mixed_steps(epoch_plan("round-robin", PAPER_SIZES, 1, 1, batches, 0))
    assert steps == [("sst", "qqp", "sts")] * (batches // 3)
    assert mixed_steps(["sts"] * 5) == [("sts",)] * 5  # a single-task run: its steps as they were
    assert mixed_steps([]) == []


# ---- the step ----------------------------------------------------------------------------------


def test_a_mixed_step_trains_on_the_sum_of_the_tasks_gradients(tiny_setup, tmp_path):
    """One step of (sst, qqp, sts): the encoder's and every head's gradient is the gradient of the
    three batches' summed losses, computed here by hand on an identical model with the same
    batches; each task's recorded norm is that of its own loss's encoder gradient; the losses
    returned are the batches' losses; and AdamW steps once."""
    config = tiny_config(tiny_setup, tmp_path / "mixed", mix_tasks=True, pooling="mean")
    mixed, by_hand = (training.Trainer(config, log=lambda m: None) for _ in range(2))
    for trainer in (mixed, by_hand):
        trainer.model.eval()  # no dropout: both models compute the same functions of the same batches
    progress = training.EpochProgress(1)
    results = mixed.train_step(("sst", "qqp", "sts"), False, progress)

    encoder = [p for p in by_hand.model.bert.parameters() if p.requires_grad]
    losses, own_norms = {}, {}
    for task in ("sst", "qqp", "sts"):
        stream = by_hand.streams[task]
        batch = collate(stream.split, stream.next_rows(), by_hand.tokenizer.pad_token_id)
        losses[task] = by_hand.model.loss(batch)
        grads = torch.autograd.grad(losses[task], encoder, retain_graph=True, allow_unused=True)
        own_norms[task] = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads if g is not None]))
    sum(losses.values()).backward()

    assert [loss.item() for loss, _ in results] == pytest.approx([v.item() for v in losses.values()], rel=1e-6)
    expected = {n: p.grad for n, p in by_hand.model.named_parameters() if p.grad is not None}
    got = {n: p.grad for n, p in mixed.model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    assert {n.split(".")[0] for n in got} >= {"bert", "sentiment", "paraphrase", "similarity"}
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7, msg=name)
    for task in ("sst", "qqp", "sts"):
        total, steps = progress.grad_norms[task]
        assert steps == 1 and total.item() == pytest.approx(own_norms[task].item(), rel=1e-4), task
    weight = mixed.model.bert.encoder.layer[0].attention.self.query.weight
    assert mixed.optimizers["sst"].state[weight]["step"] == 1  # one update for the three batches


# ---- a run -------------------------------------------------------------------------------------


def test_a_mixed_run_trains_each_task_s_planned_batches_in_fewer_updates(tiny_setup, tmp_path):
    config = tiny_config(tiny_setup, tmp_path / "run", mix_tasks=True, epochs=2, batches_per_epoch=30,
                         lr_schedule="linear", warmup=0.1)
    trainer = training.Trainer(config, log=lambda m: None)
    plans = [epoch_plan(config.sampler, trainer.task_sizes, e, 2, 30, config.seed) for e in (1, 2)]
    updates = [max(Counter(plan).values()) for plan in plans]
    assert trainer.steps_before(2) == updates[0] and trainer.steps_before(3) == sum(updates) < 60
    last = sum(updates) - 1  # the schedule runs over the mixed steps: its last one is near 0
    trainer.set_learning_rate("sst", last, training.EpochProgress(2))
    lr = trainer.optimizers["sst"].param_groups[0]["lr"] / trainer.optimizers["sst"].param_groups[0]["lr_mult"]
    assert lr == pytest.approx(training.scheduled_lr(config, last, sum(updates))) and lr < config.lr / 10
    assert updates[0] != updates[1]  # (so an epoch's steps cannot be told from the other's length)
    scheduled, set_learning_rate = [], trainer.set_learning_rate
    trainer.set_learning_rate = lambda task, step, progress: (scheduled.append(step),
                                                               set_learning_rate(task, step, progress))
    trainer.run()
    assert scheduled == list(range(sum(updates)))  # each step's place in the whole run's schedule
    records = read_metrics(tmp_path / "run")
    for record, plan in zip(records, plans):
        assert {t: record[f"batches_{t}"] for t in TASKS} == Counter(plan)  # the plan's batches, each trained
        assert all(record[f"grad_norm_{t}"] > 0 for t in TASKS)
    weight = trainer.model.bert.encoder.layer[0].attention.self.query.weight
    assert trainer.optimizers["sst"].state[weight]["step"] == sum(updates)


def test_a_mixed_run_resumed_mid_epoch_ends_as_an_uninterrupted_one(tiny_setup, tmp_path, monkeypatch):
    values = dict(mix_tasks=True, epochs=2, batches_per_epoch=30, save_every=4)
    reference = training.train(tiny_config(tiny_setup, tmp_path / "reference", **values), log=lambda m: None)
    original, calls = training.Trainer.train_step, {"n": 0}

    def crash_in_epoch_two(self, tasks, use_mnr, progress):
        calls["n"] += 1
        if progress.epoch == 2 and progress.step == 6:  # after the checkpoint at step 4
            raise KeyboardInterrupt
        return original(self, tasks, use_mnr, progress)

    monkeypatch.setattr(training.Trainer, "train_step", crash_in_epoch_two)
    config = tiny_config(tiny_setup, tmp_path / "crashed", **values)
    with pytest.raises(KeyboardInterrupt):
        training.train(config, log=lambda m: None)
    monkeypatch.setattr(training.Trainer, "train_step", original)
    resumed = training.train(config, log=lambda m: None, resume=tmp_path / "crashed")
    assert resumed == reference
    assert without_timings(read_metrics(tmp_path / "crashed")) == without_timings(read_metrics(tmp_path / "reference"))


def test_a_non_finite_loss_skips_the_whole_mixed_step(tiny_setup, tmp_path, monkeypatch):
    inject_nan(monkeypatch, "qqp", at_call=2)
    config = tiny_config(tiny_setup, tmp_path, mix_tasks=True, epochs=1, batches_per_epoch=30, skip_nonfinite=True)
    final = training.train(config, log=lambda m: None)
    (record,) = read_metrics(tmp_path)
    assert record["skipped_nonfinite"] == 1
    assert all(v == v for v in final.values())  # no NaN reached the weights


# ---- what it cannot go with --------------------------------------------------------------------


@pytest.mark.parametrize("flags, named", [
    (dict(task_moments=True), "--task-moments"), (dict(task_schedules=True), "--task-schedules"),
    (dict(project_conflicts=True), "--project-conflicts"), (dict(balance="equal-norm"), "--balance equal-norm"),
    (dict(cuda_graphs=True), "--cuda-graphs")])
def test_flags_that_work_on_one_task_s_step_are_refused(tiny_setup, tmp_path, flags, named):
    with pytest.raises(ValueError, match=f"--mix-tasks .* {named} "):
        tiny_config(tiny_setup, tmp_path, mix_tasks=True, **flags).validate()
    tiny_config(tiny_setup, tmp_path, **flags).validate()  # alone, each is fine
