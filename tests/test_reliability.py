"""Reliability: a killed run resumes exactly, checkpoints survive a crash mid-write, a full disk
stops a run with one line and the run resumes from its last checkpoint, loading never runs
pickled code, and a NaN loss stops the run (or is skipped) as documented."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import multitask_classifier
from bert import CheckpointError, files
from bert.files import WriteError
from multitask import checkpoint, training
from multitask.config import TrainConfig
from multitask.heads import MultitaskBert

from synthetic import write_dataset, write_tiny_checkpoint
from test_training import read_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]

TIMING_KEYS = ("train_seconds", "eval_seconds", "epoch_seconds", "train_tokens_per_second")


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("reliability")
    return write_tiny_checkpoint(root / "model", minilm_dir), write_dataset(root / "data", train=96, dev=24, test=8)


def cli_args(tiny_setup, out_dir, *extra) -> list[str]:
    model_dir, data_dir = tiny_setup
    return ["--model", str(model_dir), "--data-dir", str(data_dir), "--out-dir", str(out_dir),
            "--epochs", "2", "--batches-per-epoch", "40", "--batch-size", "8", "--lr", "3e-3",
            "--device", "cpu", "--precision", "fp32", "--no-progress", "--save-every", "3", *extra]


def run_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "multitask_classifier.py"), *args],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def without_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def checkpoint_position(path) -> tuple[int, int] | None:
    """(epoch, step) of a training checkpoint, or None if there is none yet."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return state["epoch"], (state["progress"] or {}).get("step", 0)


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_setup, tmp_path):
    reference = run_cli(cli_args(tiny_setup, tmp_path / "reference"))
    assert reference.wait(timeout=600) == 0, reference.stdout.read()

    killed_dir = tmp_path / "killed"
    victim = run_cli(cli_args(tiny_setup, killed_dir))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and victim.poll() is None:
        position = checkpoint_position(killed_dir / "checkpoint.pt")
        if position and position[0] == 2 and position[1] > 0:  # in the middle of epoch 2
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed_dir / "final_metrics.json").exists()

    resumed = run_cli(["--resume", str(killed_dir), "--no-progress"])
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "resuming from" in output and "epoch 2, step" in output

    assert without_timings(read_metrics(killed_dir)) == without_timings(read_metrics(tmp_path / "reference"))
    final = torch.load(killed_dir / "checkpoint.pt", weights_only=True)["model"]
    expected = torch.load(tmp_path / "reference" / "checkpoint.pt", weights_only=True)["model"]
    assert final.keys() == expected.keys()
    for name in final:
        assert torch.equal(final[name], expected[name]), name
    assert (json.loads((killed_dir / "final_metrics.json").read_text())
            == json.loads((tmp_path / "reference" / "final_metrics.json").read_text()))


def small_config(tiny_setup, out_dir, **overrides) -> TrainConfig:
    model_dir, data_dir = tiny_setup
    values = dict(model=str(model_dir), data_dir=str(data_dir), out_dir=str(out_dir), epochs=1,
                  batches_per_epoch=12, batch_size=8, lr=3e-3, device="cpu", precision="fp32",
                  progress=False, save_every=4)
    values.update(overrides)
    return TrainConfig(**values)


def test_crash_during_checkpoint_write_keeps_the_previous_one(tiny_setup, tmp_path, monkeypatch):
    trainer = training.Trainer(small_config(tiny_setup, tmp_path), log=lambda m: None)
    state_path = checkpoint.training_state_path(tmp_path)
    checkpoint.save_training_state(trainer, next_epoch=1)
    before = checkpoint.load_training_state(state_path)

    def crash_half_way(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process dies here, between write and rename

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_training_state(trainer, next_epoch=2)
    monkeypatch.undo()
    after = checkpoint.load_training_state(state_path)
    assert after["epoch"] == before["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint.pt.")] == []

    # A SIGKILL would leave the temporary file behind: it is never mistaken for the checkpoint.
    (tmp_path / "checkpoint.pt.abc.tmp").write_bytes(b"truncated")
    assert checkpoint.load_training_state(state_path)["epoch"] == 1


def test_truncated_or_foreign_checkpoint_is_named(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "weights": torch.ones(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    cut_short = r"checkpoint.pt: cannot read the training checkpoint \(not a whole torch.save archive: cut short"
    for read in (checkpoint.load_training_state, checkpoint.load_training_config):  # (--resume reads the config first)
        with pytest.raises(CheckpointError, match=cut_short):
            read(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"\(the file is empty\)"):
        checkpoint.load_training_config(path)
    torch.save({"something": "else"}, path)
    with pytest.raises(CheckpointError, match="not a multibert training checkpoint"):
        checkpoint.load_training_state(path)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        checkpoint.load_training_state(tmp_path / "missing.pt")


def test_checkpoint_crafted_to_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as handle:
        import pickle

        pickle.dump({"format": 1, "model": Payload()}, handle, protocol=2)
    with pytest.raises(CheckpointError, match="pickled code is never run"):
        checkpoint.load_training_state(path)
    assert not marker.exists()


def inject_nan(monkeypatch, task: str, at_call: int) -> None:
    """Make the `at_call`-th loss of `task` NaN (counting from 1)."""
    original = MultitaskBert.loss
    calls = {"n": 0}

    def loss(self, batch, use_mnr=False, gather_rows=None):
        value = original(self, batch, use_mnr, gather_rows)
        if batch.task == task:
            calls["n"] += 1
            if calls["n"] == at_call:
                return value * float("nan")
        return value

    monkeypatch.setattr(MultitaskBert, "loss", loss)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_setup, tmp_path, monkeypatch):
    inject_nan(monkeypatch, "sst", at_call=3)
    trainer = training.Trainer(small_config(tiny_setup, tmp_path), log=lambda m: None)
    plan = trainer.epoch_plan(1)
    nan_step = [i for i, tasks in enumerate(plan) if tasks == ("sst",)][2] + 1
    with pytest.raises(training.NonFiniteLossError) as info:
        trainer.run()
    message = str(info.value)
    assert f"the sst loss is nan at epoch 1, step {nan_step}" in message
    assert "batch ids: sst" in message and "--skip-nonfinite" in message
    if nan_step > 4:  # a checkpoint was written before the NaN: it must hold finite weights
        state = checkpoint.load_training_state(tmp_path / "checkpoint.pt")
        assert state["progress"]["step"] < nan_step
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not (tmp_path / "final_metrics.json").exists()


def test_skip_nonfinite_skips_and_counts(tiny_setup, tmp_path, monkeypatch):
    inject_nan(monkeypatch, "qqp", at_call=2)
    final = training.train(small_config(tiny_setup, tmp_path, skip_nonfinite=True), log=lambda m: None)
    (record,) = read_metrics(tmp_path)
    assert record["skipped_nonfinite"] == 1
    assert all(v == v for v in final.values())  # no NaN reached the weights


def test_resume_refuses_changed_settings(tiny_setup, tmp_path, capsys):
    training.train(small_config(tiny_setup, tmp_path), log=lambda m: None)
    code = multitask_classifier.main(["--resume", str(tmp_path), "--lr", "0.5", "--no-progress"])
    assert code == 1
    assert "lr=0.003 (now 0.5)" in capsys.readouterr().err
    assert multitask_classifier.main(["--resume", str(tmp_path / "nowhere")]) == 1
    assert "nothing to resume" in capsys.readouterr().err


def test_resume_refuses_training_data_other_than_the_run_s(tiny_setup, tmp_path, capsys):
    run, moved = tmp_path / "run", tmp_path / "moved"
    training.train(small_config(tiny_setup, run), log=lambda m: None)
    shutil.copytree(tiny_setup[1], moved)  # the same files in another folder: data_dir may change
    assert multitask_classifier.main(["--resume", str(run), "--data-dir", str(moved), "--no-progress"]) == 0
    sst = moved / "ids-sst-train.csv"
    lines = sst.read_text().splitlines(keepends=True)
    sst.write_text("".join(lines[:40]))  # the header and 39 rows
    assert multitask_classifier.main(["--resume", str(run), "--data-dir", str(moved), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert (f"the training data differ from the run's (sst-train now has 39 examples; the checkpoint's run "
            f"trained on {len(lines) - 1})") in err and "--overwrite" in err and "Traceback" not in err


def test_training_reports_the_inputs_it_cuts(tiny_setup, tmp_path):
    lines = []
    training.train(small_config(tiny_setup, tmp_path, batches_per_epoch=2, max_length=8), log=lines.append)
    cut = [line for line in lines if "were cut" in line]
    assert any(line.startswith("note: quora-train: ") for line in cut), lines
    assert all("longer than 8 tokens" in line for line in cut)
    count = int(cut[0].split(": ")[2].split()[0])
    assert count > 0


# --------------------------------------------------------------------------------------------
# A full disk: each library reports it its own way; every write names the file and keeps the old
# --------------------------------------------------------------------------------------------

def fill_disk_then(error: Exception):
    """A writer that puts part of a file down, as a write does before the disk runs out, then fails."""
    def write(temp):
        Path(temp).write_bytes(b"part of a file")
        raise error
    return write


NO_ROOM = shutil.disk_usage(".")._replace(free=4096)  # what the disk reports once a write filled it


@pytest.mark.parametrize("error, free", [
    (OSError(errno.ENOSPC, "No space left on device"), None),  # Python's own writes
    (OSError(errno.EDQUOT, "Disk quota exceeded"), None),
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), None),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 640 vs 534"), NO_ROOM),  # torch.save
], ids=["oserror", "quota", "safetensors", "torch-save"])
def test_a_full_disk_is_named_and_the_file_it_would_replace_is_kept(tmp_path, monkeypatch, error, free):
    if free is not None:
        monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: free)
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the last good checkpoint")
    with pytest.raises(WriteError) as info:
        files.atomic_write(target, fill_disk_then(error))
    detail = "the disk quota is used up" if error.args[0] == errno.EDQUOT else "MiB free on its disk"
    assert str(info.value).startswith(f"cannot write {target}: no space left in {tmp_path} (")
    assert f"{detail}); free some space or write elsewhere" in str(info.value)
    assert isinstance(info.value, CheckpointError)  # every command that reports one reports this
    assert target.read_bytes() == b"the last good checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no partial file left


def test_a_write_refused_by_the_file_system_is_named(tmp_path):
    with pytest.raises(WriteError, match=r"cannot write .*metrics\.jsonl: Permission denied$"):
        files.atomic_write(tmp_path / "metrics.jsonl", fill_disk_then(PermissionError(errno.EACCES, "Permission denied")))
    assert list(tmp_path.iterdir()) == []


def test_a_refusal_with_its_own_reason_is_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    # A folder of /proc reports no free space; a write refused there is refused, not a full disk.
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: NO_ROOM._replace(free=0))
    with pytest.raises(WriteError, match=r"cannot write .*x\.csv: No such file or directory$"):
        files.atomic_write(tmp_path / "x.csv", fill_disk_then(FileNotFoundError(errno.ENOENT, "No such file or directory")))


def test_a_bug_in_the_writer_is_not_mistaken_for_a_full_disk(tmp_path):
    # With room on the disk, an error that is not the file system's passes through as it is.
    with pytest.raises(TypeError, match="a bug"):
        files.atomic_write(tmp_path / "x.json", fill_disk_then(TypeError("a bug")))
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_fills_the_disk_stops_with_one_line_and_resumes_to_the_same_end(tiny_setup, tmp_path,
                                                                                   monkeypatch, capsys):
    reference = tmp_path / "reference"
    assert multitask_classifier.main(cli_args(tiny_setup, reference)) == 0

    real_save, saves = torch.save, []
    def save_until_the_disk_fills(obj, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 5:  # the fifth training checkpoint, in epoch 1 (40 steps, one every 3)
            monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: NO_ROOM)
            fill_disk_then(RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 64 vs 0"))(path)
        real_save(obj, path, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    capsys.readouterr()
    assert multitask_classifier.main(cli_args(tiny_setup, run)) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert err.endswith(f"error: cannot write {run / 'checkpoint.pt'}: no space left in {run} (0.0 MiB "
                        f"free on its disk); free some space or write elsewhere; then --resume {run} "
                        f"continues from the last checkpoint\n"), err
    assert "Traceback" not in err
    assert checkpoint_position(run / "checkpoint.pt") == (1, 12)  # the fourth checkpoint, whole
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]

    assert multitask_classifier.main(["--resume", str(run), "--no-progress"]) == 0
    assert (json.loads((run / "final_metrics.json").read_text())
            == json.loads((reference / "final_metrics.json").read_text()))
    assert without_timings(read_metrics(run)) == without_timings(read_metrics(reference))


def test_a_run_says_at_the_start_when_its_checkpoints_will_not_fit(tiny_setup, tmp_path, monkeypatch):
    messages = []
    trainer = training.Trainer(small_config(tiny_setup, tmp_path / "short"), log=messages.append)
    need = checkpoint.bytes_needed(trainer)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: NO_ROOM._replace(free=need - 1))
    trainer.run()
    warnings = [i for i, message in enumerate(messages) if message.startswith("warning:")]
    assert warnings == [0], messages  # before the first step
    assert f"short has {(need - 1) / 2**20:,.0f} MiB free" in messages[0]
    assert f"need about {need / 2**20:,.0f} MiB more" in messages[0] and "--resume" in messages[0]
    # The estimate is the files' real size, twice (each beside its old copy while it is written),
    # with room to spare for what checkpoint.pt holds besides tensors.
    written = (tmp_path / "short" / "checkpoint.pt").stat().st_size + (
        tmp_path / "short" / "best" / "model.safetensors").stat().st_size
    assert written <= need / 2 <= written + checkpoint.OTHER_STATE_BYTES

    # Enough room: no warning.
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: NO_ROOM._replace(free=need))
    messages.clear()
    training.Trainer(small_config(tiny_setup, tmp_path / "roomy"), log=messages.append).run()
    assert not [message for message in messages if message.startswith("warning:")], messages
    # A resumed run's files are already on the disk: only the rest is needed.
    for free, warned in [(need - written, False), (need - written - 1, True)]:
        monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: NO_ROOM._replace(free=free))
        messages.clear()
        checkpoint.warn_if_short_of_space(trainer)
        assert bool(messages) == warned, (free, messages)


def test_a_file_written_whole_has_the_permissions_of_a_plain_write(tmp_path):
    # mkstemp makes its file readable by its owner only; the renamed result must not stay so.
    (tmp_path / "plain.json").write_text("{}")
    files.write_text(tmp_path / "whole.json", "{}")
    assert (tmp_path / "whole.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode
