"""Born-again distillation (--teachers, multitask/distill.py): the annealed targets, the step that
trains on them, and the teachers that cannot serve, refused before any training."""

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F

import multitask_classifier
from multitask import training
from multitask.batching import collate
from multitask.distill import mix_targets

from synthetic import write_tiny_checkpoint
from test_training import tiny_config


@pytest.fixture(scope="module")
def teacher_runs(tiny_setup, tmp_path_factory):
    """Four short runs to serve as teachers: all three tasks with the concat head, STS alone with
    the cosine head, QQP alone with the siamese paraphrase head, and STS alone with the dot head."""
    runs = {}
    for name, overrides in {"concat": {}, "cosine": {"tasks": "sts", "sts_head": "cosine"},
                            "siamese": {"tasks": "qqp", "paraphrase_head": "siamese"},
                            "dot": {"tasks": "sts", "sts_head": "dot"}}.items():
        out_dir = tmp_path_factory.mktemp(f"teacher-{name}")
        training.train(tiny_config(tiny_setup, out_dir, epochs=1, batches_per_epoch=12, **overrides),
                       log=lambda message: None)
        runs[name] = out_dir
    return runs


# ---- the targets ---------------------------------------------------------------------------


def test_targets_move_from_the_teacher_to_the_gold_labels():
    sst_gold, sst_teacher = torch.tensor([0, 3]), torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.2], [0.5, 0.0, 0.0, 0.25, 0.25]])
    one_hot = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0]])
    qqp_gold, qqp_teacher = torch.tensor([1.0, 0.0]), torch.tensor([0.7, 0.4])
    sts_gold, sts_teacher = torch.tensor([4.6, 0.2]), torch.tensor([3.0, 1.0])
    for gold, teacher, gold_target in ((sst_gold, sst_teacher, one_hot), (qqp_gold, qqp_teacher, qqp_gold),
                                       (sts_gold, sts_teacher, sts_gold)):
        torch.testing.assert_close(mix_targets(gold, teacher, 0.0), teacher)  # the first step: the teacher alone
        torch.testing.assert_close(mix_targets(gold, teacher, 1.0), gold_target)  # the end: the gold labels
        torch.testing.assert_close(mix_targets(gold, teacher, 0.25), 0.25 * gold_target + 0.75 * teacher)
    assert mix_targets(sst_gold, sst_teacher, 0.4).sum(dim=1).tolist() == pytest.approx([1.0, 1.0])  # still distributions


def test_the_share_counts_every_step_of_the_run(tiny_setup, tmp_path):
    trainer = training.Trainer(tiny_config(tiny_setup, tmp_path, epochs=3, batches_per_epoch=40), log=lambda m: None)
    assert trainer.trained_share(training.EpochProgress(1)) == 0.0
    assert trainer.trained_share(training.EpochProgress(2, step=5)) == pytest.approx(45 / 120)
    assert trainer.trained_share(training.EpochProgress(3, step=39)) == pytest.approx(119 / 120)


# ---- a distilled step ------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["sst", "qqp", "sts"])
def test_the_first_step_trains_on_the_teacher_s_predictions(tiny_setup, teacher_runs, tmp_path, task):
    teachers = f"sst={teacher_runs['concat']},qqp={teacher_runs['concat']},sts={teacher_runs['concat']}"
    trainer = training.Trainer(tiny_config(tiny_setup, tmp_path, teachers=teachers), log=lambda m: None)
    trainer.model.eval()  # no dropout: the step's loss is a function of the weights and the batch
    before = copy.deepcopy(trainer.model)
    [(loss, ids)] = trainer.train_step((task,), False, training.EpochProgress(1))  # share 0: the teacher's targets
    split = trainer.data[task].train
    batch = collate(split, [split.ids.index(i) for i in ids], trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        predicted = trainer.teachers.models[task].predict(batch)
        if task == "sst":
            expected = F.cross_entropy(before.sentiment_logits(batch), predicted)
        elif task == "qqp":
            expected = F.binary_cross_entropy_with_logits(before.paraphrase_logit(batch), predicted)
        else:  # the concat head's squared error on the [-1, 1] scale of the tuned recipe
            expected = F.mse_loss(before.similarity_score(batch), predicted) * 0.16
        gold = before.loss(batch)  # what the step would have been without a teacher
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert abs(loss.item() - gold.item()) > 1e-3  # (the teacher's targets are not the labels)
    teacher = trainer.teachers.models[task]  # targets only: no dropout, and no gradient kept for it
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_a_siamese_student_trains_on_its_siamese_teacher_s_probabilities(tiny_setup, teacher_runs, tmp_path):
    config = tiny_config(tiny_setup, tmp_path, sts_head="cosine", paraphrase_head="siamese",
                         teachers=f"qqp={teacher_runs['siamese']}")
    trainer = training.Trainer(config, log=lambda m: None)
    trainer.model.eval()
    before = copy.deepcopy(trainer.model)
    [(loss, ids)] = trainer.train_step(("qqp",), False, training.EpochProgress(1))
    split = trainer.data["qqp"].train
    assert split.layout == "separate"
    batch = collate(split, [split.ids.index(i) for i in ids], trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        predicted = trainer.teachers.models["qqp"].predict(batch)  # (B,) from the questions read alone
        expected = F.binary_cross_entropy_with_logits(before.paraphrase_logit(batch), predicted)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_a_distilled_run_trains_the_cosine_head_from_a_cosine_teacher(tiny_setup, teacher_runs, tmp_path):
    config = tiny_config(tiny_setup, tmp_path, epochs=1, batches_per_epoch=6, sts_head="cosine",
                         teachers=f"sts={teacher_runs['cosine']}")
    final = training.train(config, log=lambda message: None)
    assert 0.0 <= final["sst_acc"] <= 1.0 and -1.0 <= final["sts_corr"] <= 1.0


# ---- teachers that cannot serve ---------------------------------------------------------------


def run_cli(tiny_setup, tmp_path, *flags) -> list[str]:
    model_dir, data_dir = tiny_setup
    return ["--model", str(model_dir), "--data-dir", str(data_dir), "--device", "cpu", "--no-progress",
            "--epochs", "1", "--batches-per-epoch", "2", "--batch-size", "8", "--out-dir", str(tmp_path / "run"),
            *flags]


@pytest.mark.parametrize("flags, message", [
    (["--teachers", "sst"], "'sst' is not task=folder"),
    (["--teachers", "sst=a,sst=b"], "'sst=b' is not task=folder"),
    (["--teachers", ","], "--teachers names no teacher"),
    (["--teachers", ""], "--teachers names no teacher"),
    (["--tasks", "sst,sts", "--teachers", "qqp=a"], "names qqp, which this run does not train"),
    (["--sts-head", "dot", "--teachers", "sts=a"], "the dot head's raw product"),
])
def test_bad_teacher_flags_are_usage_errors(tiny_setup, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        multitask_classifier.main(run_cli(tiny_setup, tmp_path, *flags))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and message in err


@pytest.mark.parametrize("teacher, flags, message", [
    ("missing", [], "does not exist"),
    ("cosine", [], "did not train sst"),  # an STS-only run cannot teach SST
    ("concat", ["--sts-head", "cosine"], "its STS head is concat, which reads a pair as one input, but the "
                                         "student's STS head is cosine"),  # pairs laid out otherwise
    ("concat", ["--paraphrase-head", "siamese"], "its paraphrase head is joint, which reads a pair as one input, "
                                                 "but the student's paraphrase head is siamese"),
    ("siamese", [], "its paraphrase head is siamese, which reads each sentence of a pair alone, but the "
                    "student's paraphrase head is joint"),
    ("dot", ["--sts-head", "cosine"], "its STS head is dot; a teacher's STS score must be on the 0-5 scale, "
                                      "which the dot head's raw product is not"),  # (laid out as the cosine head's)
])
def test_unusable_teachers_stop_the_run_before_training(tiny_setup, teacher_runs, tmp_path, capsys, teacher,
                                                         flags, message):
    folder = teacher_runs.get(teacher, tmp_path / "nowhere")
    task = "sts" if "--sts-head" in flags else "qqp" if "--paraphrase-head" in flags or teacher == "siamese" else "sst"
    code = multitask_classifier.main(run_cli(tiny_setup, tmp_path, "--teachers", f"{task}={folder}", *flags))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and message in err and str(folder) in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    if teacher == "missing":  # refused at the command line, before the run's folder is made
        assert f"--teachers sst={folder}: " in err and not (tmp_path / "run").exists()


def test_a_teacher_with_another_vocabulary_is_refused(tiny_setup, teacher_runs, tmp_path, capsys):
    other = write_tiny_checkpoint(tmp_path / "other-model", None)  # the small test vocabulary
    _, data_dir = tiny_setup
    code = multitask_classifier.main(run_cli((other, data_dir), tmp_path, "--teachers", f"qqp={teacher_runs['concat']}"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "its tokenizer differs from the student's" in err


def test_an_unusable_teacher_is_refused_before_the_data_is_read(tiny_setup, teacher_runs, tmp_path, capsys):
    """The teachers are loaded before the data: with a training file that would fail to load, the
    teacher's own fault (an STS-only run named as SST's teacher) is what the user hears, without
    waiting for the data to be read."""
    model_dir, data_dir = tiny_setup
    broken = tmp_path / "data"
    shutil.copytree(data_dir, broken)
    (broken / "ids-sst-train.csv").write_text("")  # empty: refused when the data is read
    code = multitask_classifier.main(run_cli((model_dir, broken), tmp_path, "--teachers", f"sst={teacher_runs['cosine']}"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "did not train sst" in err and "ids-sst-train" not in err
