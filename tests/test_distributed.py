"""Distributed training (torchrun + DistributedDataParallel, gloo on CPU) and gradient accumulation.

What must hold (issue #6): two processes training on shares of each global batch end with the
weights of one process training on whole batches; both ranks draw the same task sequence; the
sharded evaluation gives exactly the single-process metrics; 4 micro-batches of 8 make the step
one batch of 32 makes; micro-steps before the last skip the gradient all-reduce; only rank 0
writes; a torchrun run resumes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from multitask import training
from multitask.config import TrainConfig
from multitask.distributed import shard_rows
from multitask.heads import TASKS

from synthetic import write_dataset, write_tiny_checkpoint
from test_reliability import checkpoint_position, without_timings
from test_training import read_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, minilm_dir):
    """A dropout-free tiny BERT, and 22 training examples per task: with batches of 7 a pass is
    7, 7, 7 and 1 rows, so shares are uneven and one rank's share of the last batch is empty."""
    root = tmp_path_factory.mktemp("distributed")
    return (write_tiny_checkpoint(root / "model", minilm_dir, dropout=0.0),
            write_dataset(root / "data", train=22, dev=30, test=6))


def config_values(tiny_setup, out_dir, **overrides) -> dict:
    model_dir, data_dir = tiny_setup
    values = dict(model=str(model_dir), data_dir=str(data_dir), out_dir=str(out_dir), epochs=1,
                  batches_per_epoch=18, batch_size=7, lr=3e-3, dropout=0.0, eval_batch_size=8,
                  device="cpu", precision="fp32", progress=False, save_every=None)
    values.update(overrides)
    return values


def torchrun(processes: int, *args, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node=N ...` on this machine (gloo, CPU)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", *map(str, args)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# ---- sharding ------------------------------------------------------------------------------


@pytest.mark.parametrize("rows, world_size, micro_steps", [(32, 2, 4), (31, 2, 2), (7, 4, 1), (1, 2, 1), (5, 3, 2)])
def test_shards_cover_the_batch_once_in_order(rows, world_size, micro_steps):
    batch = np.arange(100, 100 + rows)
    pieces = [shard_rows(batch, r, world_size, micro_steps) for r in range(world_size)]
    assert all(len(p) == micro_steps for p in pieces)
    flat = np.concatenate([micro for rank_pieces in pieces for micro in rank_pieces])
    assert flat.tolist() == batch.tolist()  # every row once, in order
    shares = [sum(len(m) for m in p) for p in pieces]
    assert max(shares) - min(shares) <= 1


# ---- gradient accumulation (one process) ----------------------------------------------------


def train_steps(values: dict, steps: int) -> tuple[dict, dict, list[float]]:
    """Weights after `steps` steps, the gradients of the last step, and the losses."""
    trainer = training.Trainer(TrainConfig(**values), log=lambda m: None)
    plan = trainer.epoch_plan(1)[:steps]
    progress = training.EpochProgress(1)
    trainer.model.train()
    losses = [float(trainer.train_step(tasks, False, progress)[0][0]) for tasks in plan]
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return trainer.model.state_dict(), grads, losses


def assert_same_gradients(got: dict, expected: dict) -> None:
    """Gradients summed in another order (micro-batches, ranks) agree to float32 rounding, which
    scales with the size of the terms summed, not with each entry: an embedding row summed over
    many tokens can end near zero and still carry the rounding of its large terms (seen on an
    AVX-512 machine: 3.3e-6 in a tensor whose largest entry is 2.2). So the absolute tolerance is
    1e-5 of the tensor's largest entry, and at least 1e-6; a gradient that misses a share of the
    batch is off by a good part of that largest entry."""
    for name, want in expected.items():
        atol = max(1e-6, 1e-5 * want.abs().max().item())
        torch.testing.assert_close(got[name], want, atol=atol, rtol=1e-4, msg=name)


def test_four_micro_batches_of_8_make_one_batch_of_32(tiny_setup, tmp_path):
    values = config_values(tiny_setup, tmp_path, batch_size=32)
    whole, _, whole_losses = train_steps(values, steps=6)
    accumulated, _, accumulated_losses = train_steps({**values, "grad_accum": 4}, steps=6)
    assert accumulated_losses == pytest.approx(whole_losses, abs=1e-5)
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], atol=1e-5, rtol=0, msg=name)
    before = training.Trainer(TrainConfig(**values), log=lambda m: None).model.state_dict()
    assert any(not torch.equal(before[n], whole[n]) for n in whole)  # the steps did change the weights


def test_accumulated_gradients_of_the_stacked_pair_layout_match(tiny_setup, tmp_path):
    """The cosine head (both sentences in one stacked batch), compared on the gradients of an STS
    step. Its projection's bias gets gradients near 1e-6 that cancel between the two sentences;
    AdamW divides by their root mean square, so last-digit differences of those would move the
    *weights* by a good part of the learning rate, while the gradients agree to 1e-7."""
    values = config_values(tiny_setup, tmp_path, batch_size=32, sts_head="cosine")
    plan = training.Trainer(TrainConfig(**values), log=lambda m: None).epoch_plan(1)
    steps = plan.index(("sts",)) + 1
    _, whole, whole_losses = train_steps(values, steps)
    _, accumulated, accumulated_losses = train_steps({**values, "grad_accum": 4}, steps)
    assert accumulated_losses == pytest.approx(whole_losses, abs=1e-5)
    assert whole.keys() == accumulated.keys() and "similarity.weight" in whole
    assert_same_gradients(accumulated, whole)


def test_grad_accum_larger_than_the_batch_is_refused(tiny_setup, tmp_path):
    with pytest.raises(ValueError, match="grad.accum"):
        TrainConfig(**config_values(tiny_setup, tmp_path, batch_size=4, grad_accum=8)).validate()


# ---- two processes against one -------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_runs(tiny_setup, tmp_path_factory):
    """The same 18 steps (the concat head) trained by two processes
    with --grad-accum 2 and by one process on whole batches; then the one process evaluates the
    two-process weights, to compare with their sharded evaluation."""
    root = tmp_path_factory.mktemp("ddp")
    values = config_values(tiny_setup, root / "unused")
    two = root / "two"
    two.mkdir()
    torchrun(2, WORKER, json.dumps({**values, "grad_accum": 2}), 18, two)
    one = root / "one"
    one.mkdir()
    torchrun(1, WORKER, json.dumps(values), 18, one)
    again = root / "one-evaluating-two"
    again.mkdir()
    torch.save(torch.load(two / "rank0.pt", weights_only=True)["model"], root / "weights.pt")
    torchrun(1, WORKER, json.dumps(values), 0, again, root / "weights.pt")
    load = lambda path: torch.load(path, weights_only=True)  # noqa: E731
    return [load(two / "rank0.pt"), load(two / "rank1.pt")], load(one / "rank0.pt"), load(again / "rank0.pt")


def test_both_ranks_draw_the_same_task_sequence(ddp_runs):
    (rank0, rank1), single, _ = ddp_runs
    assert rank0["plan"] == rank1["plan"] == single["plan"]
    assert set(rank0["plan"]) == {(task,) for task in TASKS}  # (one task a step)


def test_two_processes_end_with_the_single_process_weights(ddp_runs):
    (rank0, rank1), single, _ = ddp_runs
    for name in single["model"]:
        assert torch.equal(rank0["model"][name], rank1["model"][name]), name  # replicas stay identical
        torch.testing.assert_close(rank0["model"][name], single["model"][name], atol=1e-5, rtol=0, msg=name)
    assert rank0["losses"] == pytest.approx(single["losses"], abs=1e-5)
    # Each rank saw only its share: together exactly the single process's tokens.
    assert rank0["real_tokens"] + rank1["real_tokens"] == single["real_tokens"]
    assert 0 < rank0["real_tokens"] < single["real_tokens"]


def test_micro_steps_before_the_last_skip_the_all_reduce(ddp_runs):
    (rank0, rank1), _, _ = ddp_runs
    # 18 optimizer steps of 2 micro-steps each: 36 backward passes, 18 of them synchronised.
    assert rank0["synced_backward_passes"] == rank1["synced_backward_passes"] == 18


def test_sharded_evaluation_gives_exactly_the_single_process_metrics(ddp_runs):
    (rank0, rank1), _, single_on_same_weights = ddp_runs
    assert rank0["metrics"] == rank1["metrics"] == single_on_same_weights["metrics"]
    for task in TASKS:
        assert torch.equal(rank0["predictions"][task], single_on_same_weights["predictions"][task]), task


@pytest.mark.parametrize("head, sts_loss", [("mnr", "mse"), ("cosine", "cosent")])
def test_ranking_losses_take_their_rows_from_every_rank(tiny_setup, tmp_path, head, sts_loss):
    """Two processes compute the ranking loss of the whole batch (MNR's negatives, CoSENT's pairs),
    as one process does: the same loss and, at the first STS step, the same gradients (compared
    there, for the reason given in test_accumulated_gradients_of_the_stacked_pair_layout_match)."""
    values = config_values(tiny_setup, tmp_path / "unused", sts_head=head, sts_loss=sts_loss)
    plan = training.Trainer(TrainConfig(**values), log=lambda m: None).epoch_plan(1)
    steps = plan.index(("sts",)) + 1
    for processes in (2, 1):
        (tmp_path / str(processes)).mkdir()
        torchrun(processes, WORKER, json.dumps(values), steps, tmp_path / str(processes))
    two, one = (torch.load(tmp_path / str(n) / "rank0.pt", weights_only=True) for n in (2, 1))
    assert two["plan"][-1] == ("sts",)
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert two["grads"].keys() == one["grads"].keys() and "similarity.weight" in one["grads"]
    assert_same_gradients(two["grads"], one["grads"])


def test_mixed_steps_under_two_processes_match_one(tiny_setup, tmp_path):
    """--mix-tasks: each task's batch is sharded over the ranks and its encoder gradient
    all-reduced before the next task's adds to it, so two processes give one process's losses,
    the same summed gradients at the last step, and each task's norm of its whole batch."""
    values = config_values(tiny_setup, tmp_path / "unused", mix_tasks=True)
    for processes in (2, 1):
        (tmp_path / str(processes)).mkdir()
        torchrun(processes, WORKER, json.dumps(values), 4, tmp_path / str(processes))
    two, one = (torch.load(tmp_path / str(n) / "rank0.pt", weights_only=True) for n in (2, 1))
    assert two["plan"] == one["plan"] and len(two["plan"][-1]) > 1  # (the last step mixes tasks)
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert two["grads"].keys() == one["grads"].keys()
    assert_same_gradients(two["grads"], one["grads"])
    assert two["grad_norms"].keys() == one["grad_norms"].keys() == set(TASKS)
    for task in TASKS:
        torch.testing.assert_close(two["grad_norms"][task], one["grad_norms"][task], rtol=1e-4, atol=0)


def test_pals_under_two_processes_match_one(tiny_setup, tmp_path):
    """--pals: the PALs sit outside the DDP-wrapped encoder and are averaged with the heads, so two
    processes give one process's losses and, at a step whose task has trained before (its V_D no
    longer zero, so every PAL weight gets a gradient), the same gradients, the PALs' included."""
    values = config_values(tiny_setup, tmp_path / "unused", pals=8)
    plan = training.Trainer(TrainConfig(**values), log=lambda m: None).epoch_plan(1)
    steps = next(s for s in range(1, len(plan)) if plan[s] in plan[:s]) + 1  # the first task seen again
    for processes in (2, 1):
        (tmp_path / str(processes)).mkdir()
        torchrun(processes, WORKER, json.dumps(values), steps, tmp_path / str(processes))
    two, one = (torch.load(tmp_path / str(n) / "rank0.pt", weights_only=True) for n in (2, 1))
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    (task,) = one["plan"][-1]
    assert {f"pals.tasks.{task}.down.weight", f"pals.tasks.{task}.attention.1.query.weight"} <= one["grads"].keys()
    assert two["grads"].keys() == one["grads"].keys()
    assert_same_gradients(two["grads"], one["grads"])


def test_the_ablation_levers_under_two_processes_match_one(tiny_setup, tmp_path):
    """The multitask levers of the ablation, all in one run: STS's own top layer (outside the
    DDP-wrapped encoder, averaged with the heads), the paper's shared layer, equal-norm balancing
    (the norm of the all-reduced gradient), one AdamW per task, per-task schedules, layer-wise
    decay and faster heads (parameter groups), label smoothing, paraphrase targets read off STS
    pairs, and a teacher's targets for every task (each rank relabels its own share). Two
    processes give one process's losses, gradients, weights and dev scores."""
    teacher = tmp_path / "teacher"
    training.train(TrainConfig(**config_values(tiny_setup, teacher, batches_per_epoch=6)), log=lambda m: None)
    values = config_values(tiny_setup, tmp_path / "unused", private_layers=1, private_tasks="sts",
                           balance="equal-norm", task_moments=True, task_schedules=True, shared_layer=True,
                           layer_lr_decay=0.8, head_lr_mult=10.0, label_smoothing=0.1, paraphrase_from_sts=1.0,
                           teachers=",".join(f"{task}={teacher}" for task in TASKS))
    for processes in (2, 1):
        (tmp_path / str(processes)).mkdir()
        torchrun(processes, WORKER, json.dumps(values), 12, tmp_path / str(processes))
    two, one = (torch.load(tmp_path / str(n) / "rank0.pt", weights_only=True) for n in (2, 1))
    assert two["plan"] == one["plan"] and {task for (task,) in one["plan"]} == set(TASKS)
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert "private.tasks.sts.0.attention.self.query.weight" in one["model"]
    assert two["grads"].keys() == one["grads"].keys()
    assert_same_gradients(two["grads"], one["grads"])
    for name, weights in one["model"].items():
        torch.testing.assert_close(two["model"][name], weights, atol=1e-5, rtol=0, msg=name)
    assert two["metrics"] == pytest.approx(one["metrics"], abs=1e-6)


# ---- the command line under torchrun ---------------------------------------------------------


def cli_args(tiny_setup, out_dir, *extra) -> list[str]:
    model_dir, data_dir = tiny_setup
    return [REPO_ROOT / "multitask_classifier.py", "--model", model_dir, "--data-dir", data_dir,
            "--out-dir", out_dir, "--epochs", "2", "--batches-per-epoch", "12", "--batch-size", "8",
            "--lr", "3e-3", "--dropout", "0", "--device", "cpu", "--precision", "fp32", "--no-progress",
            "--save-every", "4", *extra]


def test_torchrun_cli_writes_once_and_matches_one_process(tiny_setup, tmp_path):
    ddp = torchrun(2, *cli_args(tiny_setup, tmp_path / "ddp"))
    assert ddp.stdout.count("best checkpoint, full dev evaluation") == 1  # rank 0 alone prints
    assert "x 2 processes" in ddp.stdout
    torchrun(1, *cli_args(tiny_setup, tmp_path / "single"))
    ddp_records, single_records = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "single")
    assert [r["epoch"] for r in ddp_records] == [1, 2]
    for ours, theirs in zip(ddp_records, single_records):
        for key in ("sst_acc", "qqp_acc", "sts_corr", "train_loss_sst", "train_loss_qqp", "train_loss_sts"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-4), key
        assert ours["padding_fraction"] <= theirs["padding_fraction"] + 1e-9  # shares pad less, never more
    for task, prefix in (("sst", "sst"), ("qqp", "para"), ("sts", "sts")):
        for split in ("dev", "test"):
            lines = (tmp_path / "ddp" / "predictions" / f"{prefix}-{split}-output.csv").read_text().splitlines()
            assert len(lines) == 1 + (30 if split == "dev" else 6), (task, split)


def descendants(pid: int) -> list[int]:
    """The processes started by `pid`, and theirs (from /proc: torchrun puts its workers in
    sessions of their own, so killing its process group would not reach them)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_torchrun_run_killed_mid_epoch_resumes_exactly(tiny_setup, tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    longer = ("--batches-per-epoch", "60", "--save-every", "3")  # time to catch it mid-epoch
    torchrun(2, *cli_args(tiny_setup, reference_dir, *longer))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    victim = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               *map(str, cli_args(tiny_setup, killed_dir, *longer))],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and victim.poll() is None:
        position = checkpoint_position(killed_dir / "checkpoint.pt")
        if position and position[0] == 2 and position[1] > 0:  # in the middle of epoch 2
            for pid in [*descendants(victim.pid), victim.pid]:  # both workers, then torchrun
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    victim.wait(timeout=60)
    assert not (killed_dir / "final_metrics.json").exists(), "the run ended before it could be killed"
    resumed = torchrun(2, REPO_ROOT / "multitask_classifier.py", "--resume", killed_dir, "--no-progress")
    assert "resuming from" in resumed.stdout and "epoch 2, step" in resumed.stdout
    assert without_timings(read_metrics(killed_dir)) == without_timings(read_metrics(reference_dir))
    final = torch.load(killed_dir / "checkpoint.pt", weights_only=True)["model"]
    expected = torch.load(reference_dir / "checkpoint.pt", weights_only=True)["model"]
    for name in expected:
        assert torch.equal(final[name], expected[name]), name


def test_ranks_that_disagree_stop_with_a_clear_error(tiny_setup, tmp_path):
    """A node with other data would draw another plan and hang in the all-reduce: refused."""
    model_dir, data_dir = tiny_setup
    other = write_dataset(tmp_path / "other-data", train=23, dev=30, test=6)
    script = tmp_path / "launch.py"
    script.write_text(
        "import os, sys, runpy\n"
        f"sys.argv = sys.argv[:1] + sys.argv[1:]\n"
        f"if os.environ['RANK'] == '1':\n"
        f"    sys.argv[sys.argv.index('--data-dir') + 1] = {str(other)!r}\n"
        f"runpy.run_path({str(REPO_ROOT / 'multitask_classifier.py')!r}, run_name='__main__')\n")
    args = cli_args(tiny_setup, tmp_path / "out")
    result = torchrun(2, script, *args[1:], check=False)
    assert result.returncode != 0
    assert "the ranks disagree on the dataset sizes" in result.stderr + result.stdout
