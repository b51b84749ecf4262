"""Tests for multitask/evaluation.py and metrics.py: how predictions become labels, metrics and files.

The paraphrase decision is "probability > 0.5", i.e. a positive logit: pinned here by behaviour
(logits just either side of 0, probabilities either side of 0.5), so that moving the threshold
to 0.6, or to ">=", fails a test. A stand-in model (no encoder) makes the evaluation loop's
bookkeeping checkable exactly: its predictions are known functions of the input tokens.
"""

import math

import numpy as np
import pytest
import torch

from bert import Encoded
from multitask.batching import TokenizedSplit
from multitask.evaluation import evaluate, predict_split, prediction_path, write_predictions
from multitask.metrics import METRIC_NAMES, decide, overall_score, pearson, task_metric

PAD = 0


# ---------------------------------------------------------------------------- the QQP threshold


def test_a_logit_just_above_zero_is_a_paraphrase_and_just_below_is_not():
    logits = torch.tensor([-1e-3, 1e-3, -0.05, 0.05, -3.0, 3.0])
    probabilities = torch.sigmoid(logits).numpy()
    assert decide("qqp", probabilities).tolist() == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("probability, label", [
    (0.55, 1), (0.51, 1), (0.59, 1), (0.6, 1), (0.75, 1), (1.0, 1),
    (0.49, 0), (0.45, 0), (0.0, 0),
    (0.5, 0),  # exactly 0.5 (a logit of exactly 0) is not a paraphrase: "> 0.5"
])
def test_paraphrase_probabilities_map_to_labels_at_one_half(probability, label):
    decided = decide("qqp", np.array([probability], dtype=np.float32))
    assert decided.tolist() == [label]
    assert decided.dtype == np.int64


def test_paraphrase_accuracy_counts_probabilities_over_one_half_as_paraphrases():
    probabilities = np.array([0.55, 0.58, 0.45, 0.3, 0.52], dtype=np.float32)
    gold = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    # decided 1, 1, 0, 0, 1: the first three right, the last two wrong
    assert task_metric("qqp", probabilities, gold) == pytest.approx(3 / 5)


# ---------------------------------------------------------------------------- SST, STS, overall


def test_sentiment_label_is_the_most_probable_class():
    probabilities = np.array([[0.1, 0.2, 0.4, 0.2, 0.1],
                              [0.5, 0.1, 0.1, 0.1, 0.2],
                              [0.0, 0.0, 0.0, 0.1, 0.9]], dtype=np.float32)
    assert decide("sst", probabilities).tolist() == [2, 0, 4]
    assert task_metric("sst", probabilities, torch.tensor([2, 1, 4])) == pytest.approx(2 / 3)


def test_similarity_scores_are_kept_as_they_are():
    scores = np.array([0.0, 2.5, 4.75], dtype=np.float32)
    assert decide("sts", scores) is scores


def test_similarity_metric_is_pearsons_r():
    scores = np.array([1.0, 2.0, 3.0, 5.0])
    assert task_metric("sts", scores, torch.tensor([2.0, 4.0, 6.0, 10.0])) == pytest.approx(1.0)
    assert task_metric("sts", scores, torch.tensor([10.0, 8.0, 6.0, 2.0])) == pytest.approx(-1.0)
    # r of (1, 2, 3) with (1, 3, 2): covariance 0.5 over variances 1 and 1, so r = 0.5
    assert task_metric("sts", np.array([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0])) == pytest.approx(0.5)


def test_pearson_matches_numpy_and_is_zero_where_undefined():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert isinstance(pearson(x, y), float)
    assert pearson(np.ones(5), np.arange(5.0)) == 0.0  # constant predictions
    assert pearson(np.arange(5.0), np.ones(5)) == 0.0  # constant gold scores
    assert pearson(np.array([1.0]), np.array([2.0])) == 0.0  # one pair
    assert pearson(np.array([1.0, 2.0]), np.array([3.0, 5.0])) == pytest.approx(1.0)  # two pairs suffice


def test_pearson_sees_constant_float32_scores_as_constant():
    """Predictions and labels arrive as float32. The mean of seven float32 copies of 0.1, taken
    in float32, is not exactly 0.1, so their float32 std is not 0; in float64 the sum is exact
    and the std is 0, as it must be for r to be reported as 0 rather than NaN."""
    constant = np.full(7, 0.1, dtype=np.float32)
    varying = np.arange(7, dtype=np.float32)
    assert pearson(constant, varying) == 0.0
    assert pearson(varying, np.full(7, 2.7, dtype=np.float32)) == 0.0


def test_overall_puts_the_correlation_on_the_accuracies_scale():
    assert overall_score(0.5, 0.8, 0.6) == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    assert overall_score(1.0, 1.0, 1.0) == pytest.approx(1.0)
    assert overall_score(0.0, 0.0, -1.0) == pytest.approx(0.0)
    assert overall_score(0.3, 0.6, 0.0) == pytest.approx((0.3 + 0.6 + 0.5) / 3)


# ---------------------------------------------------------------------------- the evaluation loop


class StandInModel(torch.nn.Module):
    """Predicts from the first real token alone (id k): SST one-hot on class k % 5, paraphrase
    probability k / 100, similarity k / 10. Records eval() and the batches it is shown."""

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def predict(self, batch):
        assert not self.training, "predict_split must put the model in eval mode"
        first = batch.inputs["input_ids"][:, 1].float()
        self.batch_sizes.append(len(first))
        if batch.task == "sst":
            return torch.nn.functional.one_hot(first.long() % 5, 5).float()
        if batch.task == "qqp":
            return first / 100
        return first / 10


def make_split(task: str, tokens: list[int], labels: list[float] | None) -> TokenizedSplit:
    """One example per token k: [CLS] k, then k % 4 filler tokens, so lengths differ and the
    length-sorted evaluation order is not the file order."""
    first = [Encoded([101, k] + [7] * (k % 4), [0] * (2 + k % 4)) for k in tokens]
    label_dtype = torch.long if task == "sst" else torch.float
    return TokenizedSplit(task, f"{task}-dev", "single" if task == "sst" else "joint",
                          [f"id{k}" for k in tokens], first, None,
                          None if labels is None else torch.tensor(labels, dtype=label_dtype))


def test_predict_split_returns_every_prediction_in_file_order():
    tokens = [13, 2, 57, 40, 9, 31, 64, 5, 22]
    model = StandInModel().train()
    predictions = predict_split(model, make_split("qqp", tokens, None), batch_size=4, pad_id=PAD,
                                device=torch.device("cpu"), precision="fp32")
    assert predictions.dtype == np.float32
    np.testing.assert_allclose(predictions, np.array(tokens) / 100, rtol=1e-6)
    assert sorted(model.batch_sizes) == [1, 4, 4]
    assert not model.training


def test_predict_split_keeps_the_class_axis_and_handles_an_empty_split():
    tokens = [3, 8, 1]
    predictions = predict_split(StandInModel(), make_split("sst", tokens, None), 2, PAD,
                                torch.device("cpu"), "fp32")
    assert predictions.shape == (3, 5)
    assert predictions.argmax(axis=1).tolist() == [3, 3, 1]
    empty = predict_split(StandInModel(), make_split("qqp", [], None), 2, PAD, torch.device("cpu"), "fp32")
    assert empty.shape == (0,) and empty.dtype == np.float32


class TwoRanks:
    """Rank `rank` of a two-process run, as evaluation sees multitask.distributed.Distributed:
    `gather` hands back both ranks' (rows, outputs), the other rank's given as `theirs`."""

    def __init__(self, rank: int, theirs):
        self.rank, self.world_size, self.theirs, self.shared = rank, 2, theirs, []

    def gather(self, value):
        self.shared.append(value)  # this rank's (rows, outputs)
        return [value, self.theirs] if self.rank == 0 else [self.theirs, value]


def test_under_torchrun_each_rank_predicts_every_other_batch_and_all_get_every_prediction():
    tokens = [13, 2, 57, 40, 9, 31, 64, 5, 22]  # batches of 2 in length order: 5 batches
    split = make_split("qqp", tokens, [1.0] * 9)
    order = np.argsort(split.lengths(), kind="stable")
    batches = [order[i:i + 2].tolist() for i in range(0, 9, 2)]
    for rank in (0, 1):
        theirs = batches[1 - rank::2]  # the other rank's batches, predicted as the stand-in would
        distributed = TwoRanks(rank, ([np.array(b) for b in theirs], [np.array(tokens)[b] / 100 for b in theirs]))
        metrics, predictions = evaluate(StandInModel(), {"qqp": split}, 2, PAD, torch.device("cpu"), "fp32",
                                        distributed)
        [(rows, _)] = distributed.shared
        assert [r.tolist() for r in rows] == batches[rank::2]  # batches rank, rank + 2, ...
        np.testing.assert_allclose(predictions["qqp"], np.array(tokens) / 100, rtol=1e-6)  # all of them
        assert metrics["qqp_acc"] == pytest.approx(2 / 9)  # 57 and 64 over 1/2


def test_evaluate_reports_each_metric_and_the_overall_score():
    sst = make_split("sst", [1, 2, 3, 4, 6], [1, 2, 0, 4, 0])  # predicted 1, 2, 3, 4, 1: 3 of 5
    qqp = make_split("qqp", [20, 49, 50, 51, 90], [0.0, 0.0, 1.0, 1.0, 1.0])  # 0, 0, 0, 1, 1: 4 of 5
    sts = make_split("sts", [10, 20, 30, 40], [1.0, 2.0, 3.0, 4.0])  # exactly linear: r = 1
    metrics, predictions = evaluate(StandInModel(), {"sst": sst, "qqp": qqp, "sts": sts}, 2, PAD,
                                    torch.device("cpu"), "fp32")
    assert set(metrics) == {"sst_acc", "qqp_acc", "sts_corr", "overall"}
    assert metrics["sst_acc"] == pytest.approx(3 / 5)
    assert metrics["qqp_acc"] == pytest.approx(4 / 5)
    assert metrics["sts_corr"] == pytest.approx(1.0)
    assert metrics["overall"] == pytest.approx((0.6 + 0.8 + 1.0) / 3)
    np.testing.assert_allclose(predictions["sts"], [1.0, 2.0, 3.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("precision, autocast_on", [("fp32", False), ("bf16", True)])
def test_predictions_run_under_the_runs_precision(precision, autocast_on):
    class RecordingModel(StandInModel):
        def predict(self, batch):
            self.autocast = torch.is_autocast_enabled("cpu")
            return super().predict(batch)

    model = RecordingModel()
    predict_split(model, make_split("qqp", [1, 2, 3], None), 2, PAD, torch.device("cpu"), precision)
    assert model.autocast is autocast_on


@pytest.mark.parametrize("tasks, expected", [
    (("sst",), 0.6),
    (("sts",), (0.5 + 1.0) / 2),
    (("sst", "qqp"), (0.6 + 0.8) / 2),
    (("sst", "sts"), (0.6 + 0.75) / 2),
])
def test_a_run_on_fewer_tasks_scores_the_mean_of_their_terms(tasks, expected):
    """A --tasks run evaluates only its tasks; overall is the mean of the same terms over those
    (accuracies as they are, the correlation moved to (r + 1) / 2)."""
    splits = {"sst": make_split("sst", [1, 2, 3, 4, 6], [1, 2, 0, 4, 0]),  # accuracy 3 / 5
              "qqp": make_split("qqp", [20, 49, 50, 51, 90], [0.0, 0.0, 1.0, 1.0, 1.0]),  # 4 / 5
              "sts": make_split("sts", [10, 20, 30], [1.0, 3.0, 2.0])}  # r = 0.5
    metrics, _ = evaluate(StandInModel(), {t: splits[t] for t in tasks}, 2, PAD, torch.device("cpu"), "fp32")
    assert set(metrics) == {METRIC_NAMES[t] for t in tasks} | {"overall"}
    assert metrics["overall"] == pytest.approx(expected)


def test_evaluate_refuses_non_finite_outputs():
    class NaNModel(StandInModel):
        def predict(self, batch):
            out = super().predict(batch)
            return out * math.nan if batch.task == "sts" else out

    dev = {"sst": make_split("sst", [1, 2], [1, 2]), "qqp": make_split("qqp", [60, 70], [1.0, 1.0]),
           "sts": make_split("sts", [10, 20, 30], [1.0, 2.0, 4.0])}
    with pytest.raises(FloatingPointError, match="NaN"):
        evaluate(NaNModel(), dev, 2, PAD, torch.device("cpu"), "fp32")


# ---------------------------------------------------------------------------- prediction files


def test_prediction_files_hold_decided_labels_in_the_course_format(tmp_path):
    out_dir = tmp_path / "runs" / "new"  # does not exist yet: written with its parents
    path = prediction_path(out_dir, "qqp", "dev")
    assert path == out_dir / "predictions" / "para-dev-output.csv"
    write_predictions(path, "qqp", ["a", "b", "c"], np.array([0.5, 0.55, 0.2], dtype=np.float32))
    assert path.read_text().splitlines() == [
        "id \t Predicted_Is_Paraphrase ", "a , 0 ", "b , 1 ", "c , 0 "]
    sst = prediction_path(tmp_path, "sst", "test")
    write_predictions(sst, "sst", ["x"], np.array([[0.1, 0.1, 0.1, 0.6, 0.1]]))
    assert sst.name == "sst-test-output.csv"
    assert sst.read_text().splitlines() == ["id \t Predicted_Sentiment ", "x , 3 "]
    sts = prediction_path(tmp_path, "sts", "dev")
    write_predictions(sts, "sts", ["y"], np.array([2.5]))
    assert sts.name == "sts-dev-output.csv"
    assert sts.read_text().splitlines() == ["id \t Predicted_Similiarity ", "y , 2.5 "]
