"""multitask.calibration: the paraphrase head's AUC and its decision bias fitted on the Quora
training pairs a run never trained on."""

import itertools

import numpy as np
import pytest

from bert import BertTokenizer
from multitask import batching, calibration, training

from test_training import tiny_config


def test_roc_auc_counts_the_pairs_a_positive_wins_ties_half():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=40).astype(float)  # many ties
    labels = rng.integers(0, 2, size=40)
    wins = [1.0 if p > n else 0.5 if p == n else 0.0
            for p, n in itertools.product(scores[labels == 1], scores[labels == 0])]
    assert calibration.roc_auc(scores, labels) == pytest.approx(np.mean(wins), abs=1e-12)
    assert calibration.roc_auc(np.array([0.1, 0.9, 0.2]), np.array([0, 1, 0])) == 1.0


def test_the_fitted_bias_minimises_the_cross_entropy():
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1])
    # one logit for every pair: the best bias makes sigmoid(z + b) the share of positives
    b = calibration.fit_logit_bias(np.full(8, 0.7), labels)
    assert 0.7 + b == pytest.approx(np.log(3 / 5), abs=1e-9)
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=200), rng.integers(0, 2, size=200)
    b = calibration.fit_logit_bias(logits, labels)
    loss = lambda c: np.mean(np.logaddexp(0, logits + c) - labels * (logits + c))  # noqa: E731
    assert loss(b) < loss(b - 1e-3) and loss(b) < loss(b + 1e-3)


def test_the_unseen_pairs_are_the_first_pass_s_rows_the_run_never_drew(tiny_setup, tmp_path, monkeypatch, capsys):
    drawn = []
    next_rows = batching.BatchStream.next_rows

    def recording(stream):
        rows = next_rows(stream)
        if stream.split.task == "qqp":
            drawn.append(rows)
        return rows

    monkeypatch.setattr(batching.BatchStream, "next_rows", recording)
    config = tiny_config(tiny_setup, tmp_path / "run", tasks="qqp", epochs=1, batches_per_epoch=4)
    final = training.train(config, log=lambda message: None)
    monkeypatch.undo()
    seen = np.concatenate(drawn)
    tokenizer = BertTokenizer.from_pretrained(config.model)
    data = training.prepare_data(config, tokenizer, log=lambda message: None)
    unseen = calibration.unseen_rows(tmp_path / "run", data, config, tokenizer.pad_token_id)
    assert len(drawn) == 4 and not set(seen) & set(unseen)
    assert sorted([*seen, *unseen]) == list(range(len(data["qqp"].train)))  # one pass: every row once

    result = calibration.paraphrase_calibration(tmp_path / "run")
    assert result["unseen_train_pairs"] == len(unseen)
    assert result["dev_acc"] == pytest.approx(final["qqp_acc"])  # the run's own dev accuracy
    assert 0.0 <= result["dev_auc"] <= 1.0 and np.isfinite(result["bias"])

    assert calibration.main([str(tmp_path / "run")]) == 0
    assert f"| {tmp_path / 'run'} | {len(unseen)} |" in capsys.readouterr().out
    # A bad folder after a good one is named before the good one is scored: nothing printed.
    assert calibration.main([str(tmp_path / "run"), str(tmp_path / "nowhere")]) == 1
    printed = capsys.readouterr()
    assert printed.out == "" and f"{tmp_path / 'nowhere'}: no metrics.jsonl" in printed.err


def test_a_run_past_its_first_pass_is_refused_with_a_reason(tiny_setup, tmp_path, capsys):
    # 160 training pairs in batches of 16: 10 batches are exactly one pass, nothing left unseen
    config = tiny_config(tiny_setup, tmp_path / "run", tasks="qqp", epochs=2, batches_per_epoch=5)
    training.train(config, log=lambda message: None)
    assert calibration.main([str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "no training pair is unseen" in err and "Traceback" not in err
    assert calibration.main([str(tmp_path / "nowhere")]) == 1
    assert "no metrics.jsonl" in capsys.readouterr().err
