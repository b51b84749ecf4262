"""Does a model generalise better, or fit its training examples better? Each task's score on the
training examples a run trained on, beside its dev score.

When a multitask model beats a single-task one on a task's dev set, there are two readings:

- transfer: the other tasks teach the shared encoder something this task uses, so the model
  also fits the task's own training examples better (its training score is higher too);
- regularisation: the other tasks' steps keep the encoder from fitting this task's training
  examples as closely, and that is what helps on dev (its training score is lower, and the gap
  between training and dev scores smaller).

The tool measures both scores with the run's final weights, dropout off, on the examples the run
actually trained on: its seeded batch stream (`training.make_streams`) replayed for the batches
it took of each task (`batches_<task>` in metrics.jsonl). A run that went past one pass over a
training file trained on every row of it. `multitask.calibration` uses the same replay for the
Quora pairs a run never reached.

    python -m multitask.fit runs/ablation-1200/single-tuned/seed4/sst runs/ablation-1200/multi-tuned-concat/seed4
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from bert import CheckpointError
from bert.files import read_json_records
from multitask import checkpoint, training
from multitask.commands import program_name
from multitask.config import DEVICES
from multitask.data import DataError
from multitask.evaluation import predict_split
from multitask.metrics import METRIC_NAMES, task_metric
from multitask.predict import open_checkpoint
from multitask.runtime import RuntimeSetupError


def batches_taken(run: Path, task: str) -> int:
    """How many batches of `task` the run trained on, over all its epochs (metrics.jsonl)."""
    if not (run / "metrics.jsonl").is_file():
        raise CheckpointError(f"{run}: no metrics.jsonl; give a training run's --out-dir")
    return sum(record.get(f"batches_{task}") or 0 for record in read_json_records(run / "metrics.jsonl"))


def first_bad_run(runs: list[str], task: str) -> str | None:
    """What is wrong with the first of `runs` whose metrics.jsonl is missing or damaged (None if
    none is): the tools check every folder before they score the first, which takes minutes."""
    try:
        for run in runs:
            batches_taken(Path(run), task)
    except CheckpointError as err:
        return str(err)
    return None


def same_examples(run: Path, stream, task: str) -> None:
    """DataError if the run's training state (checkpoint.pt) says its `task` stream drew from other
    examples than `stream`'s: a --data-dir of other files would replay other rows and call them
    trained. A run kept without its checkpoint.pt (as under docs/) cannot be checked."""
    state_path = checkpoint.training_state_path(run)
    if not state_path.is_file():
        return
    saved = checkpoint.load_stream_states(state_path).get(task)
    try:
        stream.check_examples(saved or {})
    except ValueError as err:
        raise DataError(f"{run}: the training data read are not the run's ({err}); give the --data-dir "
                        f"it trained on, or leave --data-dir out to read its own") from None


def rows_trained(run: Path, data: dict, config, pad_id: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `task`'s training file that the run trained on (sorted, each once), and the
    rows of its stream's first pass that it never reached (empty once it took a whole pass)."""
    taken = batches_taken(run, task)
    stream = training.make_streams(data, config, pad_id)[task]  # the run's own stream, from its start
    same_examples(run, stream, task)  # (its seed replays the run's rows only over the run's files)
    batches = [stream.next_rows() for _ in range(len(stream))]  # its first pass: every row once
    none = np.zeros(0, dtype=np.int64)
    trained = np.unique(np.concatenate(batches[:taken])) if taken else none  # (past one pass: every row)
    untouched = np.sort(np.concatenate(batches[taken:len(stream)])) if taken < len(stream) else none
    return trained, untouched


def fit_scores(run: str | Path, device: str = "cpu", data_dir: str | None = None) -> dict[str, dict[str, float]]:
    """For each task the run trained: how many training rows it trained on, its score on them
    (SST and QQP accuracy, STS Pearson r), its dev score, and training minus dev (the gap)."""
    run = Path(run)
    batches_taken(run, "sst")  # (a folder that is no training run: refused before loading anything)
    trained = open_checkpoint(run, device)
    config = dataclasses.replace(trained.config, data_dir=data_dir or trained.config.data_dir)
    data = training.prepare_data(config, trained.tokenizer, log=lambda message: None, with_test=False)
    pad_id = trained.tokenizer.pad_token_id
    scores = {}
    for task in config.task_names:
        rows, _ = rows_trained(run, data, config, pad_id, task)
        if len(rows) == 0:  # (a task of the run whose plan gave it no batch)
            continue
        seen = data[task].train.subset(rows)
        train_score, dev_score = (
            task_metric(task, predict_split(trained.model, split, config.eval_batch_size, pad_id,
                                            trained.device, "fp32"), split.labels)
            for split in (seen, data[task].dev))
        scores[task] = {"train_rows": len(rows), "train": train_score, "dev": dev_score,
                        "gap": train_score - dev_score}
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program_name("multitask.fit"),
        description="For each training run and task: the score on the training examples the run trained on, "
                    "the dev score, and the gap between them (training minus dev).")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training runs' --out-dir folders")
    parser.add_argument("--data-dir", default=None, help="folder with the CS224N files (default: each run's own; "
                        "checked against the examples a run's checkpoint.pt recorded)")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    args = parser.parse_args(argv)
    if error := first_bad_run(args.runs, "sst"):  # a misspelt last folder named before minutes of scoring
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("| run | score | trained rows | training | dev | gap |\n|---|---|---|---|---|---|")
    for run in args.runs:
        try:
            scores = fit_scores(run, args.device, args.data_dir)
        except (CheckpointError, DataError, RuntimeSetupError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        for task, s in scores.items():
            print(f"| {run} | {METRIC_NAMES[task]} | {s['train_rows']} | {s['train']:.4f} | {s['dev']:.4f} "
                  f"| {s['gap']:+.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
