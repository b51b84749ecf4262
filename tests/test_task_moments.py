"""--task-moments (multitask/training.py, make_optimizers): one AdamW per task over the shared
encoder, so that a task's step is normalised by its own moments alone."""

import pytest
import torch

from multitask import checkpoint, training

from test_training import tiny_config

BETA1, BETA2, EPS = 0.9, 0.999, 1e-6  # bert.AdamW's defaults, which the trainer keeps


def encoder_weight(trainer) -> torch.nn.Parameter:
    return trainer.model.bert.encoder.layer[0].attention.self.query.weight


def test_each_task_steps_the_encoder_with_its_own_moments(tiny_setup, tmp_path):  # noqa: F811
    """sst, qqp, sst: the second SST step moves the shared weight by the AdamW formula applied to
    SST's two gradients only (QQP's gradient in between enters neither SST's m nor its v), with
    SST's own step count 2 in the bias correction."""
    config = tiny_config(tiny_setup, tmp_path, task_moments=True, pooling="mean")
    trainer = training.Trainer(config, log=lambda m: None)
    assert len(training.distinct(trainer.optimizers)) == 3
    weight, progress = encoder_weight(trainer), training.EpochProgress(1)
    grads, before = [], None
    for task in ("sst", "qqp", "sst"):
        before = weight.detach().clone()
        trainer.train_step((task,), False, progress)
        grads.append(weight.grad.double().clone())  # (kept until the next step's zero_grad)
    g1, g2, g3 = grads
    assert not torch.allclose(g2, g1) and not torch.allclose(g2, g3)  # QQP's step had its own gradient
    m = (1 - BETA1) * (BETA1 * g1 + g3)  # m after SST's two steps
    v = (1 - BETA2) * (BETA2 * g1 * g1 + g3 * g3)
    step_size = config.lr * (1 - BETA2**2) ** 0.5 / (1 - BETA1**2)
    expected = before.double() - step_size * m / (v.sqrt() + EPS)
    torch.testing.assert_close(weight.detach().double(), expected, rtol=1e-5, atol=1e-7)
    assert [trainer.optimizers[task].state[weight]["step"] for task in ("sst", "qqp")] == [2, 1]
    assert weight not in trainer.optimizers["sts"].state  # no step of sts: no moments


def test_without_the_flag_the_tasks_share_one_adamw_and_with_one_task_it_changes_nothing(tiny_setup, tmp_path):  # noqa: F811
    shared = training.Trainer(tiny_config(tiny_setup, tmp_path / "a"), log=lambda m: None)
    assert len(training.distinct(shared.optimizers)) == 1 and set(shared.optimizers) == {"sst", "qqp", "sts"}
    weights = []
    for moments in (False, True):  # a single-task run: the flag has nothing to separate
        config = tiny_config(tiny_setup, tmp_path / f"single-{moments}", tasks="sst", task_moments=moments, seed=3)
        trainer = training.Trainer(config, log=lambda m: None)
        progress = training.EpochProgress(1)
        for _ in range(3):
            trainer.train_step(("sst",), False, progress)
        weights.append(encoder_weight(trainer).detach().clone())
    assert torch.equal(weights[0], weights[1])


def test_the_schedule_reaches_every_task_adamw_and_a_resume_restores_each(tiny_setup, tmp_path):  # noqa: F811
    config = tiny_config(tiny_setup, tmp_path / "run", task_moments=True, lr_schedule="linear", warmup=0.5,
                         head_lr_mult=4.0)
    trainer = training.Trainer(config, log=lambda m: None)
    trainer.set_learning_rate("sst", 0, training.EpochProgress(1))  # the first warmup step: lr / (warmup steps)
    expected = config.lr / (0.5 * config.epochs * config.batches_per_epoch)
    for optimizer in trainer.optimizers.values():
        assert sorted(group["lr"] for group in optimizer.param_groups) == [
            expected * 1.0, expected * 4.0], optimizer.param_groups
    progress = training.EpochProgress(1)
    for task in ("sst", "qqp", "qqp", "sts"):
        trainer.train_step((task,), False, progress)
    checkpoint.save_training_state(trainer, next_epoch=2)  # (as between epochs)
    again = training.Trainer(config, log=lambda m: None)
    checkpoint.resume_training(again, checkpoint.training_state_path(config.out_dir))
    weight, weight_again = encoder_weight(trainer), encoder_weight(again)
    for task in ("sst", "qqp", "sts"):
        state, restored = trainer.optimizers[task].state[weight], again.optimizers[task].state[weight_again]
        assert restored["step"] == state["step"] == {"sst": 1, "qqp": 2, "sts": 1}[task]
        assert torch.equal(restored["exp_avg"], state["exp_avg"]) and torch.equal(restored["exp_avg_sq"], state["exp_avg_sq"])
    assert not torch.equal(trainer.optimizers["qqp"].state[weight]["exp_avg"],
                           trainer.optimizers["sst"].state[weight]["exp_avg"])


def test_task_schedules_give_each_task_its_single_task_schedule_over_its_own_steps(tiny_setup, tmp_path):  # noqa: F811
    """Over two epochs of the annealed plan, the k-th step of a task with n steps in all gets
    scheduled_lr(k, n): what a single-task run of n steps would give it; without the flag, every
    step gets the run's schedule at its global position."""
    lrs = {}
    for own in (True, False):
        config = tiny_config(tiny_setup, tmp_path / f"{own}", task_schedules=own, lr_schedule="linear",
                             warmup=0.2, epochs=2, batches_per_epoch=30, sampler="annealed")
        trainer = training.Trainer(config, log=lambda m: None)
        seen = {task: [] for task in ("sst", "qqp", "sts")}
        for epoch in (1, 2):
            plan, progress = trainer.epoch_plan(epoch), training.EpochProgress(epoch)
            for step, (task,) in enumerate(plan):  # (one task a step)
                trainer.set_learning_rate(task, (epoch - 1) * len(plan) + step, progress)
                group = trainer.optimizers[task].param_groups[0]
                seen[task].append(group["lr"] / group["lr_mult"])  # (the heads' group: times --head-lr-mult)
                progress.counts[task] += 1
        lrs[own] = seen
        config_plans = [[task for (task,) in trainer.epoch_plan(e)] for e in (1, 2)]
    for task, values in lrs[True].items():
        n = len(values)
        assert n == sum(plan.count(task) for plan in config_plans) and n > 5, task
        assert values == pytest.approx([training.scheduled_lr(config, k, n) for k in range(n)]), task
    everything = [task for plan in config_plans for task in plan]
    for task, values in lrs[False].items():
        positions = [i for i, t in enumerate(everything) if t == task]
        assert values == pytest.approx([training.scheduled_lr(config, i, len(everything)) for i in positions]), task
    assert lrs[True]["qqp"] != pytest.approx(lrs[False]["qqp"])
