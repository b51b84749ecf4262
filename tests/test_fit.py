"""multitask.fit: each task's score on the training rows a run trained on, beside its dev score."""

import shutil

import numpy as np
import pytest
import torch

from bert import BertTokenizer
from multitask import batching, calibration, fit, training
from multitask.batching import collate
from multitask.metrics import METRIC_NAMES
from multitask.predict import open_checkpoint

from test_training import tiny_config


def train_recording_draws(config, monkeypatch) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """Train `config`, recording the rows of every training batch drawn, per task."""
    drawn = {}
    next_rows = batching.BatchStream.next_rows

    def recording(stream):
        rows = next_rows(stream)
        drawn.setdefault(stream.split.task, []).append(rows)
        return rows

    monkeypatch.setattr(batching.BatchStream, "next_rows", recording)
    final = training.train(config, log=lambda message: None)
    monkeypatch.undo()
    return final, drawn


def test_the_rows_trained_are_the_rows_the_run_drew(tiny_setup, tmp_path, monkeypatch):
    # 160 training rows per task in batches of 16: 10 batches a pass; 12 batches over three tasks
    # leave every task inside its first pass
    config = tiny_config(tiny_setup, tmp_path / "run", epochs=1, batches_per_epoch=12)
    _, drawn = train_recording_draws(config, monkeypatch)
    tokenizer = BertTokenizer.from_pretrained(config.model)
    data = training.prepare_data(config, tokenizer, log=lambda message: None)
    for task in ("sst", "qqp", "sts"):
        trained, untouched = fit.rows_trained(tmp_path / "run", data, config, tokenizer.pad_token_id, task)
        assert fit.batches_taken(tmp_path / "run", task) == len(drawn[task]) > 0
        assert trained.tolist() == np.unique(np.concatenate(drawn[task])).tolist()
        assert sorted([*trained, *untouched]) == list(range(len(data[task].train)))  # one pass: every row once


def test_a_run_past_its_first_pass_trained_on_every_row(tiny_setup, tmp_path):
    config = tiny_config(tiny_setup, tmp_path / "run", tasks="sst", epochs=2, batches_per_epoch=8)  # 16 > 10
    training.train(config, log=lambda message: None)
    tokenizer = BertTokenizer.from_pretrained(config.model)
    data = training.prepare_data(config, tokenizer, log=lambda message: None)
    trained, untouched = fit.rows_trained(tmp_path / "run", data, config, tokenizer.pad_token_id, "sst")
    assert trained.tolist() == list(range(len(data["sst"].train))) and len(untouched) == 0


def test_the_training_scores_are_the_model_s_on_the_rows_it_trained_on(tiny_setup, tmp_path, capsys):
    config = tiny_config(tiny_setup, tmp_path / "run", epochs=1, batches_per_epoch=12)
    final = training.train(config, log=lambda message: None)
    scores = fit.fit_scores(tmp_path / "run")
    assert set(scores) == {"sst", "qqp", "sts"}

    # by hand: the run's weights on its training rows, in one batch each, dropout off
    trained = open_checkpoint(tmp_path / "run")
    data = training.prepare_data(config, trained.tokenizer, log=lambda message: None)
    pad_id = trained.tokenizer.pad_token_id
    for task in ("sst", "qqp", "sts"):
        rows, _ = fit.rows_trained(tmp_path / "run", data, config, pad_id, task)
        split = data[task].train
        with torch.inference_mode():
            predicted = trained.model.eval().predict(collate(split, rows, pad_id)).numpy()
        gold = split.labels[torch.as_tensor(rows)].numpy()
        if task == "sst":
            by_hand = np.mean(predicted.argmax(axis=1) == gold)
        elif task == "qqp":
            by_hand = np.mean((predicted > 0.5) == (gold == 1))
        else:
            by_hand = np.corrcoef(predicted.astype(np.float64), gold.astype(np.float64))[0, 1]
        assert scores[task]["train_rows"] == len(rows)
        assert scores[task]["train"] == pytest.approx(by_hand, abs=1e-6)
        assert scores[task]["dev"] == pytest.approx(final[METRIC_NAMES[task]], abs=1e-6)  # the run's own
        assert scores[task]["gap"] == pytest.approx(scores[task]["train"] - scores[task]["dev"])
    assert scores["sst"]["train"] != scores["sst"]["dev"]  # (two different sets of sentences)

    assert fit.main([str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"| {tmp_path / 'run'} | sst_acc | {scores['sst']['train_rows']} | {scores['sst']['train']:.4f} |" in out
    assert fit.main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "no metrics.jsonl" in err and "Traceback" not in err
    # A bad folder after a good one is named before the good one is scored: nothing printed.
    assert fit.main([str(tmp_path / "run"), str(tmp_path / "nowhere")]) == 1
    printed = capsys.readouterr()
    assert printed.out == "" and f"{tmp_path / 'nowhere'}: no metrics.jsonl" in printed.err


def test_a_damaged_metrics_file_is_named_with_its_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "batches_sst": 3}\n\n{"epoch": 2, "batch\n')
    assert fit.main([str(run)]) == 1  # refused before the checkpoint is opened
    assert f"error: {run / 'metrics.jsonl'}, line 3: not JSON" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text('{"epoch": 1, "batches_sst": 3}\n[4]\n')
    assert fit.main([str(run)]) == 1
    assert f"error: {run / 'metrics.jsonl'}, line 2: not a record (a JSON object)" in capsys.readouterr().err


@pytest.mark.parametrize("tool", [fit.fit_scores, calibration.paraphrase_calibration])
def test_the_tools_neither_read_nor_fetch_the_test_files(tool, tiny_setup, tmp_path, monkeypatch, capsys):
    """Scoring a finished run needs its training and dev files only: a data folder without the test
    files (as offline copies often are) brings no download attempt and no note about one."""
    config = tiny_config(tiny_setup, tmp_path / "run", epochs=1, batches_per_epoch=12)
    training.train(config, log=lambda message: None)
    data_dir = shutil.copytree(config.data_dir, tmp_path / "no-test-files")
    for test_file in data_dir.glob("*test*"):
        test_file.unlink()
    asked = []
    ensure_files = training.ensure_files
    monkeypatch.setattr(training, "ensure_files", lambda folder, names, **kw: (asked.extend(names),
                                                                               ensure_files(folder, names, **kw)))
    capsys.readouterr()
    assert tool(tmp_path / "run", data_dir=str(data_dir))  # (the scores, made from the files asked for)
    assert asked and not [name for name in asked if "test" in name]
    assert "download" not in capsys.readouterr().err


@pytest.mark.parametrize("change, said", [
    (lambda lines: lines[:-1], "now has 159 examples; the checkpoint's run trained on 160"),
    (lambda lines: [lines[0], " indeed\t".join(lines[1].rsplit("\t", 1)), *lines[2:]],  # a word more, one row
     "now holds other examples than the checkpoint's run trained on (as many, 160, but other ids or texts)"),
])
def test_a_data_dir_of_other_files_is_refused_where_the_run_kept_its_state(change, said, tiny_setup, tmp_path,
                                                                           capsys):
    """The seed replays the run's rows only over the run's own files: `--data-dir` with other
    training examples would score other rows as "trained", so the tools compare the examples with
    the ones the run's checkpoint.pt recorded."""
    config = tiny_config(tiny_setup, tmp_path / "run", epochs=1, batches_per_epoch=12)
    training.train(config, log=lambda message: None)
    other = shutil.copytree(config.data_dir, tmp_path / "other")
    for name in ("ids-sst-train.csv", "quora-train.csv"):  # (fit reads SST first; calibration QQP alone)
        changed = "".join(change((other / name).read_text().splitlines(keepends=True)))
        assert changed != (other / name).read_text()
        (other / name).write_text(changed)
    for tool, split in ((fit.main, "sst-train"), (calibration.main, "quora-train")):
        assert tool([str(tmp_path / "run"), "--data-dir", str(other)]) == 1
        err = capsys.readouterr().err
        assert f"error: {tmp_path / 'run'}: the training data read are not the run's ({split} {said})" in err, err
        assert "Traceback" not in err
    # the same files in another folder are the run's data; a run kept without checkpoint.pt is trusted
    assert fit.fit_scores(tmp_path / "run", data_dir=str(shutil.copytree(config.data_dir, tmp_path / "moved")))
    (tmp_path / "run" / "checkpoint.pt").unlink()
    assert fit.fit_scores(tmp_path / "run", data_dir=str(other))
