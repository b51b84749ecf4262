"""The paper's dev metrics: SST-5 accuracy, paraphrase accuracy (probability > 0.5), STS Pearson
correlation, and overall = (acc_sst + acc_qqp + (r + 1) / 2) / 3, which puts the correlation on
the accuracies' [0, 1] scale.

NumPy only: the ablation's tables (multitask/ablation.py) use these formulas without loading
torch; multitask/evaluation.py runs the model and scores it with them.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = {"sst": "sst_acc", "qqp": "qqp_acc", "sts": "sts_corr"}


def decide(task: str, predictions: np.ndarray) -> np.ndarray:
    """Turn raw predictions into the labels written to files: class, 0/1, or the score itself."""
    if task == "sst":
        return predictions.argmax(axis=-1)  # (examples, 5) logits -> the class
    if task == "qqp":
        return (predictions > 0.5).astype(np.int64)  # P(paraphrase) -> 0/1
    return predictions


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r; 0.0 when either side is constant (r is undefined there)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or x.std() == 0.0 or y.std() == 0.0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def task_metric(task: str, predictions: np.ndarray, labels) -> float:
    """`task`'s score of `predictions` against the gold `labels` (a CPU tensor or an array)."""
    gold = np.asarray(labels)
    if task == "sts":
        return pearson(predictions, gold)
    return float((decide(task, predictions) == gold.astype(np.int64)).mean())


def overall_score(sst_acc: float, qqp_acc: float, sts_corr: float) -> float:
    return (sst_acc + qqp_acc + (sts_corr + 1.0) / 2.0) / 3.0
