"""--average-last (multitask/averaging.py): a run evaluates and keeps the mean of its last steps'
weights, trains on from the last step's, and resumes with the same mean."""

import pytest
import torch

from multitask import checkpoint, training
from multitask.averaging import WeightAverage, window_start

from test_training import tiny_config


def trainable(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def record_weights_after_each_step(trainer) -> list[dict[str, torch.Tensor]]:
    """Wrap the trainer's step so that the weights after each step are kept, in order."""
    after, step = [], trainer.train_step

    def recorded(*args, **kwargs):
        result = step(*args, **kwargs)
        after.append(trainable(trainer.model))
        return result
    trainer.train_step = recorded
    return after


def mean_of(weights: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.stack([w[name].double() for w in weights]).mean(0) for name in weights[0]}


@pytest.mark.parametrize("total, share, start", [(600, 0.1, 540), (100, 0.07, 93), (166, 0.1, 149), (12, 1.0, 0),
                                                 (12, 0.0, 12), (12, 0.01, 11)])
def test_the_window_is_the_last_share_of_the_steps_rounded_up(total, share, start):
    assert window_start(total, share) == start  # (0.07 * 100 is 7.000000000000001 in floats: still 7 steps)


def test_the_mean_holds_the_weights_after_each_step_of_the_window_and_nothing_before(tiny_setup, tmp_path):
    config = tiny_config(tiny_setup, tmp_path, epochs=1, batches_per_epoch=10, average_last=0.3)
    trainer = training.Trainer(config, log=lambda m: None)
    assert trainer.average.start == 7
    after = record_weights_after_each_step(trainer)
    trainer.train_epoch(training.EpochProgress(1))
    assert len(after) == 10 and trainer.average.count == 3
    expected = mean_of(after[7:])  # the weights after steps 7, 8 and 9 (0-based)
    names = list(expected)
    for name, mean in zip(names, trainer.average.mean, strict=True):
        torch.testing.assert_close(mean.double(), expected[name], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(trainer.average.mean[0].double(), mean_of(after[6:])[names[0]], rtol=1e-6, atol=1e-7)
    last = trainable(trainer.model)
    with trainer.averaged_weights():  # swapped in for an evaluation ...
        torch.testing.assert_close(trainable(trainer.model)[names[0]].double(), expected[names[0]],
                                   rtol=1e-6, atol=1e-7)
    for name, weights in trainable(trainer.model).items():  # ... and the last step's back after it, exactly
        assert torch.equal(weights, last[name]), name


def test_a_checkpoint_from_before_the_window_resumes_with_no_mean_and_one_from_inside_with_its_mean():
    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, start=2)
    average.update(0)  # before the window: nothing to keep yet
    resumed = WeightAverage(model, start=2)
    resumed.load_state_dict(average.state_dict())
    assert (resumed.count, resumed.mean) == (0, None)
    average.update(2)
    resumed.load_state_dict(average.state_dict())
    assert resumed.count == 1 and all(torch.equal(a, b) for a, b in zip(resumed.mean, average.mean, strict=True))


def test_before_its_window_an_average_changes_nothing(tiny_setup, tmp_path):
    config = tiny_config(tiny_setup, tmp_path, epochs=1, batches_per_epoch=4)
    trainer = training.Trainer(config, log=lambda m: None)
    assert trainer.average is None  # off by default
    average = WeightAverage(trainer.model, start=2)
    average.update(0)
    average.update(1)
    assert average.count == 0 and average.mean is None
    before = trainable(trainer.model)
    with average.swapped_in():
        assert all(torch.equal(w, before[n]) for n, w in trainable(trainer.model).items())


def test_a_run_evaluates_and_keeps_the_mean_and_its_training_state_holds_the_last_step(tiny_setup, tmp_path):
    config = tiny_config(tiny_setup, tmp_path, epochs=1, batches_per_epoch=8, average_last=0.5)
    trainer = training.Trainer(config, log=lambda m: None)
    after = record_weights_after_each_step(trainer)
    final = trainer.run()
    expected, last = mean_of(after[4:]), after[-1]
    best = checkpoint.load(tmp_path / "best")[0]  # the kept model: the mean of steps 4-7
    for name, weights in trainable(best).items():
        torch.testing.assert_close(weights.double(), expected[name], rtol=1e-6, atol=1e-7)
    state = checkpoint.load_training_state(checkpoint.training_state_path(tmp_path))  # resumes from the last step
    for name, weights in last.items():
        assert torch.equal(state["model"][name], weights), name
    assert final == trainer.evaluate()[0]  # (finish() left the best, averaged weights in the model)
    assert not all(torch.equal(weights, last[n]) for n, weights in trainable(best).items())


def test_a_run_killed_inside_the_window_resumes_with_the_same_mean(tiny_setup, tmp_path):
    settings = dict(epochs=1, batches_per_epoch=12, average_last=0.5, save_every=8)  # window: steps 6-11
    whole = training.train(tiny_config(tiny_setup, tmp_path / "whole", **settings), log=lambda m: None)

    config = tiny_config(tiny_setup, tmp_path / "killed", **settings)
    trainer = training.Trainer(config, log=lambda m: None)
    step = trainer.train_step

    def crash_at_step_10(tasks, use_mnr, progress):
        if progress.step == 10:  # after the checkpoint of step 8, inside the window
            raise KeyboardInterrupt
        return step(tasks, use_mnr, progress)
    trainer.train_step = crash_at_step_10
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert checkpoint.load_training_state(checkpoint.training_state_path(config.out_dir))["average"]["count"] == 2
    resumed = training.train(config, log=lambda m: None, resume=config.out_dir)
    assert resumed == whole
    kept = [trainable(checkpoint.load(folder / "best")[0]) for folder in (tmp_path / "whole", tmp_path / "killed")]
    assert all(torch.equal(kept[0][name], kept[1][name]) for name in kept[0])


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_a_share_outside_0_to_1_is_refused_by_name(tiny_setup, tmp_path, share):
    with pytest.raises(ValueError, match="--average-last is a share"):
        tiny_config(tiny_setup, tmp_path, average_last=share).validate()
