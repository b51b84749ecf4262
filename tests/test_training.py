"""End to end: a tiny random BERT trained on a synthetic dataset through the real pipeline."""

import csv
import functools
import json
import random
import shutil
import weakref

import pytest
import torch

import multitask_classifier
from multitask import checkpoint, training
from multitask.config import TrainConfig
from multitask.distributed import Distributed
from multitask.download import ensure_files
from multitask.evaluation import evaluate, prediction_path
from multitask.heads import TASKS

from synthetic import NUMBERS, WORDS

METRIC_KEYS = {"epoch", "sst_acc", "qqp_acc", "sts_corr", "overall", "train_loss_sst",
               "train_loss_qqp", "train_loss_sts", "epoch_seconds", "train_seconds", "best"}


def tiny_config(tiny_setup, out_dir, **overrides) -> TrainConfig:
    model_dir, data_dir = tiny_setup
    values = dict(model=str(model_dir), data_dir=str(data_dir), out_dir=str(out_dir), epochs=3,
                  batches_per_epoch=40, batch_size=16, lr=3e-3, dropout=0.0, eval_batch_size=32,
                  device="cpu", precision="fp32", progress=False)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def concat_run(tiny_setup, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("run-concat")
    config = tiny_config(tiny_setup, out_dir)
    final = training.train(config, log=lambda message: None)
    return config, out_dir, final


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_metrics_are_logged(concat_run):
    _, out_dir, _ = concat_run
    records = read_metrics(out_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert METRIC_KEYS <= set(record), METRIC_KEYS - set(record)
        assert 0 <= record["sst_acc"] <= 1 and 0 <= record["qqp_acc"] <= 1
        assert record["overall"] == pytest.approx(
            (record["sst_acc"] + record["qqp_acc"] + (record["sts_corr"] + 1) / 2) / 3)
        assert sum(record[f"batches_{t}"] for t in TASKS) == 40
    for task in TASKS:
        assert records[-1][f"train_loss_{task}"] < records[0][f"train_loss_{task}"], task
    assert records[-1]["overall"] > 0.6  # learnt the synthetic rules (chance is about 0.4)


def test_best_checkpoint_reloads_and_reproduces_its_scores(concat_run):
    config, out_dir, final = concat_run
    records = read_metrics(out_dir)
    best = max(records, key=lambda r: r["overall"])
    assert [r["epoch"] for r in records if r["best"]][-1] == best["epoch"]
    model, tokenizer, saved_config, saved_metrics = checkpoint.load(out_dir / "best")
    assert saved_config.sts_head == "concat" and saved_metrics["epoch"] == best["epoch"]
    trainer_data = training.prepare_data(saved_config, tokenizer, log=lambda message: None)
    metrics, _ = evaluate(model, {t: trainer_data[t].dev for t in TASKS}, 32,
                          tokenizer.pad_token_id, torch.device("cpu"), "fp32")
    for key in ("sst_acc", "qqp_acc", "sts_corr", "overall"):
        assert metrics[key] == pytest.approx(best[key], abs=1e-6), key
        assert final[key] == pytest.approx(best[key], abs=1e-6), key
    assert json.loads((out_dir / "final_metrics.json").read_text()) == pytest.approx(final)


@pytest.mark.parametrize("qqp_eval_examples, passes", [(None, 1), (48, 1), (20, 2)])  # 48: all of QQP dev
def test_the_best_epoch_s_full_evaluation_is_not_computed_again(tiny_setup, tmp_path, monkeypatch,
                                                                 qqp_eval_examples, passes):
    """The report at the end is the best weights on the whole dev sets. When the best epoch's own
    evaluation read all of them, it is that report: one pass over dev, not two. With QQP's dev cut
    for the per-epoch check (--qqp-eval-examples), the best weights are evaluated again in full."""
    calls = []
    evaluate_once = training.Trainer.evaluate

    def counted(trainer, qqp_limit=None):
        calls.append(qqp_limit)
        return evaluate_once(trainer, qqp_limit)

    monkeypatch.setattr(training.Trainer, "evaluate", counted)
    config = tiny_config(tiny_setup, tmp_path, epochs=1, batches_per_epoch=6, qqp_eval_examples=qqp_eval_examples)
    final = training.train(config, log=lambda message: None)
    assert calls == [qqp_eval_examples, None][:passes]
    (record,) = read_metrics(tmp_path)
    qqp_rows = prediction_path(tmp_path, "qqp", "dev").read_text().splitlines()[1:]
    assert len(qqp_rows) == 48  # every QQP dev pair, also when the epoch's check read 20
    model, tokenizer, saved_config, _ = checkpoint.load(tmp_path / "best")
    data = training.prepare_data(saved_config, tokenizer, log=lambda message: None)
    metrics, _ = evaluate(model, {t: data[t].dev for t in TASKS}, 32, tokenizer.pad_token_id,
                          torch.device("cpu"), "fp32")
    assert final == pytest.approx(metrics, abs=1e-6)  # the saved best weights, evaluated afresh
    if passes == 1:
        assert {k: record[k] for k in final} == final


def test_prediction_files_have_one_row_per_id(concat_run, tiny_setup):
    _, out_dir, _ = concat_run
    headers = {"sst": "Predicted_Sentiment", "qqp": "Predicted_Is_Paraphrase", "sts": "Predicted_Similiarity"}
    for task in TASKS:
        for split, count in (("dev", 48), ("test", 24)):
            lines = prediction_path(out_dir, task, split).read_text().splitlines()
            assert lines[0] == f"id \t {headers[task]} "
            ids = [line.split(" , ")[0] for line in lines[1:]]
            assert len(ids) == count and len(set(ids)) == count
            values = [line.split(" , ")[1].strip() for line in lines[1:]]
            if task == "sst":
                assert set(values) <= {"0", "1", "2", "3", "4"}
            elif task == "qqp":
                assert set(values) <= {"0", "1"}
            else:
                assert all(0.0 <= float(v) <= 5.0 for v in values)


@pytest.fixture(scope="module")
def paired_sts_setup(tiny_setup, tmp_path_factory):
    """The tiny setup with STS pairs whose second sentence repeats the first one's words (in
    another order) after the number word that gives the label. The label rule is unchanged, but
    a pair's two sentences now share their content, as real paraphrases do: the MNR head, which
    must pick each sentence's partner out of the batch, has something to learn (on the plain
    synthetic pairs the partners are unrelated word draws and its loss stays at chance, ln 16)."""
    model_dir, data_dir = tiny_setup
    paired_dir = tmp_path_factory.mktemp("paired-sts")
    shutil.copytree(data_dir, paired_dir, dirs_exist_ok=True)
    rng = random.Random(1)
    for part, count in (("train", 160), ("dev", 48)):
        with open(paired_dir / f"sts-{part}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t")
            writer.writerow(["", "id", "sentence1", "sentence2", "similarity"])
            for i in range(count):
                label, words = rng.randrange(6), rng.sample(WORDS, 4)
                second = " ".join([NUMBERS[label]] + rng.sample(words, 4))
                writer.writerow([i, f"sts{i:05d}", " ".join(words), second, float(label)])
    return model_dir, paired_dir


HEAD_EPOCHS = 3  # MNR trains its ranking loss in epochs 1-2 (mnr_epochs(3) = 2), then cosine
HEAD_LOSS_RATIO = 0.85  # the STS loss must fall by at least 15% from its first epoch to its last


@pytest.mark.parametrize("sampler,sts_head,paraphrase_head", [
    ("round-robin", "dot", "joint"), ("equitable", "cosine", "siamese"), ("annealed", "mnr", "joint"),
    ("round-robin", "concat", "joint")])
def test_other_samplers_and_heads_train(paired_sts_setup, tmp_path, sampler, sts_head, paraphrase_head):
    """Each STS head, under each sampler, learns: its mean training loss falls by a clear margin
    from the first epoch to the last (for MNR: over its ranking epochs, whose loss is not
    comparable with the cosine loss that follows), and the SST and QQP losses fall below their
    first epoch's. (Switching from MNR to the cosine loss can lift the other tasks' losses for
    an epoch, so theirs are compared with the best later epoch.) The cosine head's run reads the
    paraphrase pairs with the siamese head."""
    config = tiny_config(paired_sts_setup, tmp_path, sampler=sampler, sts_head=sts_head,
                         paraphrase_head=paraphrase_head, epochs=HEAD_EPOCHS, batches_per_epoch=24)
    final = training.train(config, log=lambda message: None)
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == list(range(1, HEAD_EPOCHS + 1))
    assert all(torch.isfinite(torch.tensor(r["overall"])) for r in records)
    if sampler == "round-robin":  # one pass over the smallest dataset: 3 tasks x ceil(160 / 16)
        assert all(sum(r[f"batches_{t}"] for t in TASKS) == 30 for r in records)
    else:
        assert all(sum(r[f"batches_{t}"] for t in TASKS) == 24 for r in records)
    objectives = [r["sts_objective"] for r in records]
    if sts_head == "mnr":
        assert objectives == ["mnr", "mnr", "cosine"]
    else:
        assert objectives == [sts_head] * HEAD_EPOCHS
    first = records[0]
    for task in ("sst", "qqp"):  # falling at all is enough for these
        later = min(r[f"train_loss_{task}"] for r in records[1:])
        assert later < first[f"train_loss_{task}"], (task, [r[f"train_loss_{task}"] for r in records])
    sts_losses = [r["train_loss_sts"] for r in records if r["sts_objective"] == objectives[0]]
    assert sts_losses[-1] < HEAD_LOSS_RATIO * sts_losses[0], (sts_head, sts_losses)
    assert set(final) == {"sst_acc", "qqp_acc", "sts_corr", "overall"}


def test_same_seed_same_metrics(tiny_setup, tmp_path):
    runs = []
    for name in ("a", "b"):
        config = tiny_config(tiny_setup, tmp_path / name, epochs=1, batches_per_epoch=10)
        training.train(config, log=lambda message: None)
        runs.append([{k: v for k, v in r.items() if "seconds" not in k and "per_second" not in k}
                     for r in read_metrics(tmp_path / name)])
    assert runs[0] == runs[1]


def test_trainer_is_freed_before_the_process_group_is_left(tiny_setup, tmp_path, monkeypatch):
    """Under torchrun the trainer's DDP wrapper holds the process group and gloo's threads; freed
    after destroy_process_group (at the interpreter's exit) it could abort a finished run. So
    `train` must drop the trainer, cycles included, before it calls `shutdown`."""
    trainers = []

    class TrackedTrainer(training.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(weakref.ref(self))

    alive_at_shutdown = []

    class RecordingDistributed(Distributed):
        def shutdown(self):
            alive_at_shutdown.append([ref() is not None for ref in trainers])
            super().shutdown()

    monkeypatch.setattr(training, "Trainer", TrackedTrainer)
    monkeypatch.setattr(training, "from_environment", lambda device: RecordingDistributed())
    config = tiny_config(tiny_setup, tmp_path / "run", epochs=1, batches_per_epoch=3)
    training.train(config, log=lambda message: None)
    assert alive_at_shutdown == [[False]]


@pytest.mark.parametrize("root", ["/", "/tmp/.."])
def test_the_file_system_root_is_no_out_dir(root, capsys):
    # (as root it is writable, and --overwrite would delete any predictions/ or best/ found there;
    # not given here, so that a broken check deletes nothing)
    with pytest.raises(SystemExit) as info:
        multitask_classifier.main(["--out-dir", root])
    assert info.value.code == 2
    assert f"--out-dir {root} is the root of the file system" in capsys.readouterr().err


def test_cli_runs_and_reports_user_errors(tiny_setup, tmp_path, capsys, monkeypatch):
    model_dir, data_dir = tiny_setup
    common = ["--model", str(model_dir), "--epochs", "1", "--batches-per-epoch", "5",
              "--batch-size", "8", "--device", "cpu", "--precision", "fp32", "--no-progress"]
    assert multitask_classifier.main(common + ["--data-dir", str(data_dir), "--out-dir", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "best" / "model.safetensors").is_file()

    # Missing data and no way to download it: one message naming the files, exit code 1.
    monkeypatch.setattr(training, "ensure_files", functools.partial(ensure_files, base_url="http://127.0.0.1:9/"))
    assert multitask_classifier.main(common + ["--data-dir", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "x")]) == 1
    error = capsys.readouterr().err
    assert "ids-sst-train.csv" in error and "--data-dir" in error
    assert not any((tmp_path / "empty").glob("*.part-*"))

    # A checkpoint that does not exist.
    assert multitask_classifier.main(["--model", str(tmp_path / "nowhere"), "--data-dir", str(data_dir),
                                      "--out-dir", str(tmp_path / "y"), "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err

    # Bad values are usage errors (exit code 2) that name the flag.
    with pytest.raises(SystemExit) as exit_info:
        multitask_classifier.main(["--dropout", "1.5"])
    assert exit_info.value.code == 2 and "dropout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        multitask_classifier.main(["--sts-head", "euclid"])
    assert "invalid choice" in capsys.readouterr().err


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    from multitask import runtime

    def broken_compile(module, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("no C++ compiler found\nlong backtrace")
        return compiled

    monkeypatch.setattr(runtime.torch, "compile", broken_compile)
    eager = torch.nn.Linear(3, 2)
    wrapped = runtime.CompiledOrEager(eager)
    x = torch.randn(4, 3)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler found.*running without"):
        out = wrapped(x)
    torch.testing.assert_close(out, eager(x))
    torch.testing.assert_close(wrapped(x), eager(x))  # stays eager, warns once


def test_out_of_memory_is_one_message_with_a_hint(tiny_setup, tmp_path, monkeypatch, capsys):
    def out_of_memory(config, resume=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training, "train", out_of_memory)
    model_dir, data_dir = tiny_setup
    code = multitask_classifier.main(["--model", str(model_dir), "--data-dir", str(data_dir),
                                      "--out-dir", str(tmp_path), "--no-progress"])
    assert code == 1
    error = capsys.readouterr().err
    assert error.startswith("error: out of memory") and "--batch-size" in error and "--resume" in error


def test_unavailable_device_is_a_clear_error(tiny_setup, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    model_dir, data_dir = tiny_setup
    code = multitask_classifier.main(["--model", str(model_dir), "--data-dir", str(data_dir),
                                      "--out-dir", str(tmp_path), "--device", "cuda", "--no-progress"])
    assert code == 1 and "no CUDA GPU" in capsys.readouterr().err
