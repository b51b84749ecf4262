"""Evaluation on the dev sets and prediction files in the CS224N output format: the model run
over a split (predict_split), its dev metrics (multitask/metrics.py holds their formulas) and the
prediction files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from bert.files import write_text
from multitask.batching import TokenizedSplit, evaluation_batches
from multitask.distributed import SINGLE_PROCESS, Distributed
from multitask.heads import MultitaskBert
from multitask.metrics import METRIC_NAMES, decide, overall_score, task_metric
from multitask.runtime import autocast

# CS224N's prediction files: a header line, then "id , prediction" lines (spelling theirs).
PREDICTION_HEADERS = {"sst": "Predicted_Sentiment", "qqp": "Predicted_Is_Paraphrase",
                      "sts": "Predicted_Similiarity"}
PREDICTION_PREFIXES = {"sst": "sst", "qqp": "para", "sts": "sts"}


def predict_split(model: MultitaskBert, split: TokenizedSplit, batch_size: int, pad_id: int,
                  device: torch.device, precision: str,
                  distributed: Distributed = SINGLE_PROCESS) -> np.ndarray:
    """The model's predictions for every example of `split`, in the split's order.

    Batches are length-sorted for speed; the predictions are put back in file order. In a
    distributed run each rank predicts its share of the batches and every rank gets all of them.
    """
    model.eval()
    rows, outputs = [], []
    with torch.inference_mode():
        for batch in evaluation_batches(split, batch_size, pad_id, distributed.rank, distributed.world_size):
            with autocast(device, precision):
                outputs.append(model.predict(batch.to(device)).float().cpu().numpy())
            rows.append(batch.rows)
    pieces = distributed.gather((rows, outputs))  # [(rows, outputs)] in a single process
    all_rows = [r for piece_rows, _ in pieces for r in piece_rows]
    all_outputs = [o for _, piece_outputs in pieces for o in piece_outputs]
    if not all_outputs:
        return np.zeros((0,), dtype=np.float32)
    predictions = np.zeros((len(split),) + all_outputs[0].shape[1:], dtype=np.float32)
    for batch_rows, predicted in zip(all_rows, all_outputs):
        predictions[batch_rows] = predicted
    return predictions


def evaluate(model: MultitaskBert, dev: dict[str, TokenizedSplit], batch_size: int, pad_id: int,
             device: torch.device, precision: str,
             distributed: Distributed = SINGLE_PROCESS) -> tuple[dict, dict]:
    """Dev metrics of the tasks in `dev` (all three, or those of a --tasks run) and the raw
    predictions they came from (computed over the whole dev sets on every rank of a distributed
    run)."""
    metrics, predictions = {}, {}
    for task, split in dev.items():
        predictions[task] = predict_split(model, split, batch_size, pad_id, device, precision, distributed)
        metrics[METRIC_NAMES[task]] = task_metric(task, predictions[task], split.labels)
    if len(metrics) == len(METRIC_NAMES):
        metrics["overall"] = overall_score(metrics["sst_acc"], metrics["qqp_acc"], metrics["sts_corr"])
    else:  # fewer tasks trained (--tasks): the mean of the same terms over those evaluated
        terms = [(v + 1.0) / 2.0 if name == "sts_corr" else v for name, v in metrics.items()]
        metrics["overall"] = sum(terms) / len(terms)
    if any(math.isnan(v) for v in metrics.values()):
        raise FloatingPointError(f"a dev metric is NaN: {metrics}; the model's outputs are not finite")
    return metrics, predictions


def write_predictions(path: Path, task: str, ids: list[str], predictions: np.ndarray) -> None:
    """One prediction file in CS224N's format: one row per input id, in the input's order."""
    decided = decide(task, predictions)
    rows = "".join(f"{example_id} , {value} \n" for example_id, value in zip(ids, decided))
    write_text(path, f"id \t {PREDICTION_HEADERS[task]} \n" + rows)


def prediction_path(out_dir: Path, task: str, split: str) -> Path:
    """e.g. OUT/predictions/para-dev-output.csv, the course's file names."""
    return Path(out_dir) / "predictions" / f"{PREDICTION_PREFIXES[task]}-{split}-output.csv"
