"""--project-conflicts (multitask/surgery.py): PCGrad's projection against each other task's
running average gradient, checked against the formula in float64."""

import torch

from multitask import checkpoint, training
from multitask.surgery import ConflictProjection

from test_training import tiny_config

TASKS = ("sst", "qqp", "sts")


def parameters_with(grads: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten().double() for t in tensors])


def random_lists(generator, count=2):
    return [[torch.randn(3, 4, generator=generator), torch.randn(5, generator=generator)] for _ in range(count)]


def test_a_conflicting_gradient_loses_its_component_against_the_other_task():
    generator = torch.Generator().manual_seed(0)
    g, m = random_lists(generator)
    g = [g[0], g[1]]
    if flat(g) @ flat(m) > 0:  # make them conflict
        m = [-t for t in m]
    params = parameters_with(g)
    surgery = ConflictProjection(TASKS, params)
    surgery.averages["qqp"] = [t.clone() for t in m]
    surgery.project("sst")
    got = flat(p.grad for p in params)
    gv, mv = flat(g), flat(m)
    expected = gv - (gv @ mv) / (mv @ mv) * mv  # PCGrad: onto the normal plane of m
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert abs(got @ mv) < 1e-4 * gv.norm() * mv.norm()  # no component against qqp left


def test_an_agreeing_gradient_or_an_unseen_task_changes_nothing():
    generator = torch.Generator().manual_seed(1)
    g, m = random_lists(generator)
    if flat(g) @ flat(m) < 0:  # make them agree
        m = [-t for t in m]
    params = parameters_with(g)
    surgery = ConflictProjection(TASKS, params)
    surgery.averages["qqp"] = [t.clone() for t in m]  # agrees; sts: never seen (zeros)
    surgery.project("sst")
    for p, original in zip(params, g):
        assert torch.equal(p.grad, original)


def test_projection_against_two_tasks_in_order_and_the_average_takes_the_raw_gradient():
    generator = torch.Generator().manual_seed(2)
    g, m_qqp, m_sts = random_lists(generator, 3)
    gv = flat(g)
    if gv @ flat(m_qqp) > 0:
        m_qqp = [-t for t in m_qqp]
    if gv @ flat(m_sts) > 0:
        m_sts = [-t for t in m_sts]
    params = parameters_with(g)
    surgery = ConflictProjection(TASKS, params)  # the default decay, 0.9: what the trainer uses
    surgery.averages["sst"] = [torch.ones_like(t) for t in g]
    surgery.averages["qqp"], surgery.averages["sts"] = [t.clone() for t in m_qqp], [t.clone() for t in m_sts]
    surgery.project("sst")
    expected = gv.clone()
    for m in (flat(m_qqp), flat(m_sts)):  # qqp first, then sts, each only if still conflicting
        dot = expected @ m
        if dot < 0:
            expected = expected - dot / (m @ m) * m
    torch.testing.assert_close(flat(p.grad for p in params), expected, atol=1e-5, rtol=1e-5)
    # sst's running average: 0.9 * ones + 0.1 * the gradient before the projection
    torch.testing.assert_close(flat(surgery.averages["sst"]), 0.9 + 0.1 * gv, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(flat(surgery.averages["qqp"]), flat(m_qqp))  # the others' untouched


def test_a_weight_the_step_did_not_reach_counts_as_a_zero_gradient():
    # (a trainable weight that no part of this step's loss reached has no .grad at all)
    generator = torch.Generator().manual_seed(3)
    g, m = random_lists(generator)
    if flat(g) @ flat(m) > 0:  # make them conflict
        m = [-t for t in m]
    params = parameters_with(g)
    params[1].grad = None  # the step left the second weight alone
    surgery = ConflictProjection(TASKS, params)
    surgery.averages["qqp"] = [t.clone() for t in m]
    surgery.project("sst")
    gv, mv = torch.cat([g[0].flatten(), torch.zeros(5)]).double(), flat(m)
    torch.testing.assert_close(flat(p.grad for p in params), gv - (gv @ mv) / (mv @ mv) * mv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(surgery.averages["sst"][1], torch.zeros(5))  # 0.9 * 0 + 0.1 * 0


def test_the_trainer_projects_and_a_resumed_run_gets_the_averages_back(tiny_setup, tmp_path):  # noqa: F811
    config = tiny_config(tiny_setup, tmp_path / "run", project_conflicts=True, pooling="mean", save_every=2)
    trainer = training.Trainer(config, log=lambda m: None)
    assert trainer.surgery is not None
    calls = []
    original = trainer.surgery.project
    trainer.surgery.project = lambda task: (calls.append(task), original(task))
    progress = training.EpochProgress(1)
    for task in ("sst", "qqp", "sts"):
        trainer.train_step((task,), False, progress)
    assert calls == ["sst", "qqp", "sts"]
    for task in TASKS:
        assert flat(trainer.surgery.averages[task]).abs().sum() > 0, task
    checkpoint.save_training_state(trainer, next_epoch=2)  # (as between epochs)
    again = training.Trainer(config, log=lambda m: None)
    checkpoint.resume_training(again, checkpoint.training_state_path(config.out_dir))
    for task in TASKS:
        assert torch.equal(flat(again.surgery.averages[task]), flat(trainer.surgery.averages[task])), task
