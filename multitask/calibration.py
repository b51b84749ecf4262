"""Is a paraphrase head worse at ranking pairs, or only at where it draws the line?

Accuracy counts a pair as a paraphrase when the head's probability is over 0.5. Two models can
rank the dev pairs equally well (the same ROC AUC) and still differ in accuracy, because one's
probabilities sit a little higher: it draws the line in the wrong place. This tool separates the
two for trained runs:

- `auc`: the dev ROC AUC, the chance that a random paraphrase outscores a random non-paraphrase
  (Mann-Whitney U / (n1 n0), ties counted half); it ignores the threshold altogether;
- `bias`: the shift of the head's logit that minimises the binary cross-entropy on Quora training
  pairs the run never trained on, and dev accuracy with it: the decision line recalibrated
  without looking at the dev labels.

Which training pairs a run never saw is known exactly: its batches come from a seeded stream
(`training.make_streams`), so a run whose Quora batches all fall in the stream's first pass
over the file left the rest of that pass untouched; 600 annealed batches of 32 train on about
10,000 of the 15,000 pairs, so about 5,000 remain. A run that went past one pass has none, and
is refused.

    python -m multitask.calibration runs/ablation/single-tuned/seed0/qqp runs/ablation/multi-tuned-concat/seed0
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from bert import CheckpointError
from multitask import training
from multitask.commands import program_name
from multitask.config import DEVICES
from multitask.data import DataError
from multitask.evaluation import predict_split
from multitask.fit import batches_taken, first_bad_run, rows_trained
from multitask.predict import open_checkpoint
from multitask.runtime import RuntimeSetupError


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting 1/2: the Mann-Whitney U
    statistic over n1 * n0, from the scores' ranks (tied scores share their mean rank)."""
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # 1-based mean rank of each tie group
    positive = labels == 1
    n1, n0 = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def fit_logit_bias(logits: np.ndarray, labels: np.ndarray, steps: int = 50) -> float:
    """The b minimising mean BCE(sigmoid(logits + b), labels), by Newton's method: the loss is
    convex in b, its derivative mean(p - y) and second derivative mean(p (1 - p))."""
    b = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(logits + b)))
        b -= np.mean(p - labels) / max(float(np.mean(p * (1.0 - p))), 1e-12)
    return float(b)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1.0 - 1e-7)
    return np.log(p) - np.log1p(-p)


def unseen_rows(run: Path, data: dict, config, pad_id: int) -> np.ndarray:
    """The Quora training rows the run never trained on: its stream's first pass, after the
    batches it took (all epochs' batches_qqp in metrics.jsonl; `multitask.fit.rows_trained`)."""
    _, untouched = rows_trained(run, data, config, pad_id, "qqp")
    if len(untouched) == 0:
        raise ValueError(f"{run}: it trained {batches_taken(run, 'qqp')} Quora batches, at least one whole pass "
                         f"over the training file, so no training pair is unseen; this tool needs a run that "
                         f"stopped within its first pass")
    return untouched


def paraphrase_calibration(run: str | Path, device: str = "cpu", data_dir: str | None = None) -> dict[str, float]:
    """The paraphrase head's dev AUC, accuracy and positive rate, and its dev accuracy with the
    logit bias fitted on the run's unseen Quora training pairs (`data_dir`: the run's by default)."""
    run = Path(run)
    if not (run / "metrics.jsonl").is_file():
        raise CheckpointError(f"{run}: no metrics.jsonl; give a training run's --out-dir")
    trained = open_checkpoint(run, device)
    if "qqp" not in trained.config.task_names:
        raise CheckpointError(f"{run}: the run did not train the paraphrase task (--tasks {trained.config.tasks})")
    config = dataclasses.replace(trained.config, tasks="qqp", data_dir=data_dir or trained.config.data_dir)
    data = training.prepare_data(config, trained.tokenizer, log=lambda message: None, with_test=False)
    pad_id = trained.tokenizer.pad_token_id
    held = data["qqp"].train.subset(unseen_rows(run, data, config, pad_id))
    p_held, p_dev = (predict_split(trained.model, split, config.eval_batch_size, pad_id, trained.device, "fp32")
                     for split in (held, data["qqp"].dev))
    y_held, y_dev = held.labels.numpy(), data["qqp"].dev.labels.numpy()
    bias = fit_logit_bias(logit(p_held), y_held)
    return {"unseen_train_pairs": len(held), "dev_auc": roc_auc(p_dev, y_dev),
            "dev_acc": float(((p_dev > 0.5) == (y_dev == 1)).mean()),
            "dev_positive_rate": float((p_dev > 0.5).mean()), "bias": bias,
            "dev_acc_calibrated": float(((logit(p_dev) + bias > 0) == (y_dev == 1)).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program_name("multitask.calibration"),
        description="For each training run: the paraphrase head's dev ROC AUC, its dev accuracy, and its dev "
                    "accuracy with the logit bias fitted on the Quora training pairs the run never trained on.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training runs' --out-dir folders")
    parser.add_argument("--data-dir", default=None,
                        help="folder with quora-train.csv and quora-dev.csv (default: each run's own)")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    args = parser.parse_args(argv)
    if error := first_bad_run(args.runs, "qqp"):  # a misspelt last folder named before minutes of scoring
        print(f"error: {error}", file=sys.stderr)
        return 1
    columns = ["unseen_train_pairs", "dev_auc", "dev_acc", "dev_positive_rate", "bias", "dev_acc_calibrated"]
    print("| run | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 1) + "|")
    for run in args.runs:
        try:
            result = paraphrase_calibration(run, args.device, args.data_dir)
        except (CheckpointError, DataError, RuntimeSetupError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"| {run} | " + " | ".join(f"{result[c]:.4f}" if isinstance(result[c], float) else str(result[c])
                                        for c in columns) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
