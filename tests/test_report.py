"""multitask.report: the TensorBoard reporter's scalars, read back from its event file."""

import sys

import pytest

from multitask import report
from multitask.runtime import RuntimeSetupError


def read_scalars(folder):
    """{tag: [(step, value), ...]} from the event files in `folder`, as TensorBoard reads them."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_scalars_are_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    reporter = report.make_reporter("tensorboard", tmp_path)
    reporter.scalars(1, {"sst": 1.5, "qqp": 0.625, "sts": None}, prefix="train/loss")
    reporter.scalars(2, {"sst": 1.25, "qqp": 0.5, "sts": 2.0}, prefix="train/loss")
    reporter.scalars(2, {"lr": 3e-5}, prefix="")
    reporter.scalars(1, {"overall": 0.642}, prefix="dev")
    reporter.close()

    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    scalars = read_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {"train/loss/sst", "train/loss/qqp", "train/loss/sts", "lr", "dev/overall"}
    assert scalars["train/loss/sst"] == [(1, 1.5), (2, 1.25)]
    assert scalars["train/loss/qqp"] == [(1, 0.625), (2, 0.5)]
    assert scalars["train/loss/sts"] == [(2, 2.0)]  # None: not reported at step 1
    [(step, value)] = scalars["lr"]
    assert step == 2 and value == pytest.approx(3e-5, rel=1e-6)  # stored as float32
    [(step, value)] = scalars["dev/overall"]
    assert step == 1 and value == pytest.approx(0.642, rel=1e-6)


def test_no_reporter_writes_nothing(tmp_path):
    reporter = report.make_reporter(None, tmp_path)
    reporter.scalars(1, {"sst": 1.0}, prefix="train/loss")
    reporter.close()
    assert list(tmp_path.iterdir()) == []


def test_without_tensorboard_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if absent
    with pytest.raises(report.ReporterUnavailable) as caught:
        report.make_reporter("tensorboard", tmp_path)
    assert isinstance(caught.value, RuntimeSetupError)
    assert "pip install -e '.[tensorboard]'" in str(caught.value)
    assert not (tmp_path / "tensorboard").exists()
    with pytest.raises(ValueError, match="unknown reporter 'wandb'"):
        report.make_reporter("wandb", tmp_path)
