"""run_ablation.sh (issue 15's ablation) end to end on a tiny model, and its table."""

import errno
import json
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from multitask import ablation, training
from multitask.config import TASKS, TrainConfig, config_from_args
from multitask.data import dataset_paths, load_quora, load_sst, load_sts
from multitask.samplers import epoch_plan

from multitask_classifier import build_parser
from synthetic import write_dataset, write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_final(folder: Path, **metrics) -> None:
    folder.mkdir(parents=True)
    (folder / "final_metrics.json").write_text(json.dumps(metrics))


def write_single_row(row_dir: Path, sst: float, seeds: Iterable[int] = (0,)) -> None:
    """A finished single-task row, of seed 0 or `seeds`: SST at `sst`, QQP and STS at 0.7."""
    for seed in seeds:
        for task, metric in (("sst", "sst_acc"), ("qqp", "qqp_acc"), ("sts", "sts_corr")):
            write_final(row_dir / f"seed{seed}" / task, **{metric: sst if task == "sst" else 0.7})


def script_env(**settings: str) -> dict[str, str]:
    """This process's environment without run_ablation.sh's own settings, plus `settings`."""
    own = ("ROWS", "SEEDS", "SINGLE_RUNS", "LIST_ROWS", "RUNS_DIR", "BATCHES")
    return {**{k: v for k, v in os.environ.items() if k not in own}, **settings}


def run_script(**settings: str) -> subprocess.CompletedProcess:
    """run_ablation.sh with `settings` in its environment, for the checks that stop before training."""
    return subprocess.run(["bash", str(REPO_ROOT / "run_ablation.sh")], env=script_env(**settings),
                          capture_output=True, text=True, timeout=60)


def test_every_multitask_row_has_flags_the_command_line_accepts():
    """A row whose flags the trainer refuses would stop a queue of rows hours in."""
    listing = run_script(LIST_ROWS="1")
    assert listing.returncode == 0, listing.stderr
    rows = {row: flags for row, flags in (line.split("\t") for line in listing.stdout.splitlines())
            if not row.startswith("single-")}  # (the single-task rows: the next test)
    assert len(rows) >= 40 and rows["multi-tuned-concat"] == "--recipe tuned --sts-head concat --no-spread-tasks"
    parser = build_parser()
    for row, flags in rows.items():
        config = config_from_args(parser.parse_args(shlex.split(flags) + ["--batches-per-epoch", "600"]))
        config.validate()  # raises ValueError naming the flag
        # what the name says: the STS head, private layers, the balance, the spread plan (the rows
        # ran before the tuned recipe spread each task's batches: only the -spread rows spread)
        head = "mnr" if "mnr" in row else "cosine" if re.search("cosine|cosent", row) else "concat"
        private = re.search(r"private(\d)", row)
        assert (config.sts_head, config.private_layers, config.balance == "equal-norm", config.spread_tasks) == (
            head, int(private.group(1)) if private else 0, "equal-norm" in row, "-spread" in row), row


def test_every_single_task_row_has_its_recipe_and_lever():
    """A single-task row gives each of its runs its recipe and its one lever, the lever of the
    multitask rows it is the baseline of (their tables pair them by name)."""
    levers = {"": {}, "-head10": {"head_lr_mult": 10.0}, "-ls": {"label_smoothing": 0.1},
              "-lld": {"layer_lr_decay": 0.8}, "-lld0.9": {"layer_lr_decay": 0.9},
              "-avg10": {"average_last": 0.1}, "-drop0.1": {"dropout": 0.1}}
    names = [f"single-{recipe}{lever}{bam}" for recipe in ("tuned", "paper") for lever in levers
             for bam in ("", "-bam")]
    listing = run_script(LIST_ROWS="1", ROWS=" ".join(names))
    assert listing.returncode == 0, listing.stderr
    rows = dict(line.split("\t") for line in listing.stdout.splitlines())
    assert list(rows) == names
    parser = build_parser()
    plain = {recipe: config_from_args(parser.parse_args(["--recipe", recipe])) for recipe in ("tuned", "paper")}
    for row, flags in rows.items():
        recipe, lever = re.fullmatch(r"single-(tuned|paper)(.*?)(-bam)?", row).group(1, 2)
        config = config_from_args(parser.parse_args(shlex.split(flags)))
        config.validate()
        changed = {k: v for k, v in config.to_dict().items() if v != getattr(plain[recipe], k)}
        assert config.recipe == recipe and changed == levers[lever], row
    default = run_script(LIST_ROWS="1").stdout  # the default rows include every single-task baseline
    assert {"single-tuned", "single-paper", "single-tuned-head10", "single-tuned-lld"} <= {
        line.split("\t")[0] for line in default.splitlines()}


def test_an_unknown_row_stops_the_script_before_any_run(tmp_path):
    runs = tmp_path / "runs"
    process = run_script(RUNS_DIR=str(runs), PYTHON="false",
                         ROWS="multi-tuned-concat multi-tuned-concta single-tuned-lld-bam")
    assert process.returncode == 2
    assert "unknown row 'multi-tuned-concta'" in process.stderr and not runs.exists()
    misspelt = run_script(RUNS_DIR=str(runs), PYTHON="false", ROWS="single-tuned", SINGLE_RUNS="sst sts-cosine-pairde")
    assert misspelt.returncode == 2 and "unknown run 'sts-cosine-pairde'" in misspelt.stderr and not runs.exists()
    for good in ("single-tuned-lld-bam", "single-paper-head10", "multi-tuned-cosine-siamese-bam", "pair-qqp-sts",
                 "multi-tuned-concat-bam-sts-sst"):
        listed = run_script(ROWS=good, LIST_ROWS="1")  # recipes, levers, suffixes and pairs known
        assert listed.returncode == 0, listed.stderr
    for bad in ("single-tunde", "single-tuned-lls", "single-tuned-head10-ls", "pair-sst-sst", "multi-tuned-concat-bam-",
                "multi-tuned-concat-bam-qqp-qqp", "multi-tuned-concat-bam-sst-stss", "multi-tuned-concat-bamm"):
        # a misspelt recipe or lever, two levers at once, teachers for no task, a task twice or misspelt
        refused = run_script(ROWS=bad, LIST_ROWS="1")
        assert refused.returncode == 2 and f"unknown row '{bad}'" in refused.stderr, (bad, refused.stderr)


def test_the_closing_table_leaves_a_row_whose_own_baseline_is_missing_with_the_default(tmp_path):
    # Finished runs are skipped, so this runs only the table at the script's end, which once
    # stopped with a usage error when multi-paper-concat had no single-paper row beside it.
    runs = tmp_path / "runs"
    write_final(runs / "multi-paper-concat" / "seed0", sst_acc=0.3, qqp_acc=0.7, sts_corr=0.8, overall=0.6)
    write_single_row(runs / "single-tuned", 0.4)
    alone = run_script(RUNS_DIR=str(runs), SEEDS="0", ROWS="multi-paper-concat", PYTHON=sys.executable)
    assert alone.returncode == 0, alone.stderr
    assert "has no single-paper row, so the table compares multi-paper-concat with single-tuned" in alone.stderr
    assert "| multi-paper-concat | -0.100 (-0.100) |" in (runs / "ablation.md").read_text()
    write_single_row(runs / "single-paper", 0.2)
    both = run_script(RUNS_DIR=str(runs), SEEDS="0", ROWS="multi-paper-concat", PYTHON=sys.executable)
    assert both.returncode == 0 and "has no" not in both.stderr, both.stderr
    assert "| multi-paper-concat, minus single-paper | +0.100 (+0.100) |" in (runs / "ablation.md").read_text()


def test_the_table_averages_seeds_and_joins_single_task_runs(tmp_path):
    write_final(tmp_path / "multi" / "seed0", sst_acc=0.4, qqp_acc=0.8, sts_corr=0.8, overall=0.7)
    write_final(tmp_path / "multi" / "seed1", sst_acc=0.5, qqp_acc=0.7, sts_corr=0.6, overall=0.65)
    for task, metric, value in (("sst", "sst_acc", 0.45), ("qqp", "qqp_acc", 0.75), ("sts", "sts_corr", 0.9)):
        write_final(tmp_path / "single" / "seed0" / task, **{metric: value, "overall": 0.0})
    write_final(tmp_path / "single" / "seed0" / "sts-cosine", sts_corr=0.85, overall=0.0)
    rows = ablation.collect(tmp_path)
    assert rows["multi"]["sst_acc"] == [0.4, 0.5]
    assert rows["single"]["sts_corr"] == [0.9] and rows["single"]["sts_corr_cosine"] == [0.85]
    assert rows["single"]["overall"] == [pytest.approx((0.45 + 0.75 + 0.95) / 3)]  # (r + 1) / 2
    table = ablation.table(rows)
    assert "| multi | 0.450 ± 0.071 (n=2) |" in table  # mean and sample standard deviation
    assert "0.900 (n=1)" in table


def test_seeds_are_listed_in_numeric_order(tmp_path):
    for seed in (10, 2, 9):
        write_final(tmp_path / "multi" / f"seed{seed}", sst_acc=seed / 100, qqp_acc=0.8, sts_corr=0.8, overall=0.7)
    assert ablation.collect(tmp_path)["multi"]["sst_acc"] == [0.02, 0.09, 0.10]  # not seed10 before seed2


@pytest.mark.parametrize("damaged, text, named", [
    ("multi/seed1/final_metrics.json", '{"sst_acc": 0.4, "qqp', "not readable as JSON"),  # cut short
    ("single/seed0/qqp/final_metrics.json", '{"qqp_acc": "0.8"}', "qqp_acc is missing or not a number"),
    ("multi/seed0/metrics.jsonl", '{"epoch": 1}\n{oops\n', "line 2: not JSON"),
    ("multi/seed0/train_config.json", '["not", "a", "dict"]', "not a run's settings (a JSON object)"),
    # NaN and Infinity are no scores (json reads them; only a hand-edited file holds one)
    ("multi/seed1/final_metrics.json", '{"sst_acc": NaN, "qqp_acc": 0.8, "sts_corr": 0.8, "overall": 0.7}',
     "sst_acc is missing or not a number"),
    ("single/seed0/sts/final_metrics.json", '{"sts_corr": -Infinity}', "sts_corr is missing or not a number"),
])
def test_a_damaged_run_file_is_named_and_no_table_is_written(tmp_path, capsys, damaged, text, named):
    """Any file the tables read that is damaged, or not a run's, stops the command with the file's
    name (and line) and what to do, never a traceback, and leaves the runs folder as it was."""
    for seed in (0, 1):
        write_final(tmp_path / "multi" / f"seed{seed}", sst_acc=0.4, qqp_acc=0.8, sts_corr=0.8, overall=0.7)
    write_single_row(tmp_path / "single", 0.45)
    (tmp_path / damaged).write_text(text)
    assert ablation.main([str(tmp_path), "--baseline", "single"]) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / damaged}" in err and named in err and "train the run again" in err
    assert "Traceback" not in err
    assert not (tmp_path / "ablation.md").exists() and not (tmp_path / "ablation.csv").exists()


def test_plan_counts_are_the_multitask_plans_share_of_each_task(tmp_path, minilm_dir):
    data_dir = write_dataset(tmp_path / "data", train=96, dev=40, test=16)
    counts = ablation.plan_counts(str(data_dir), 50, seed=3)
    paths = dataset_paths(data_dir)
    sizes = {"sst": len(load_sst(paths["sst-train"]).examples), "qqp": len(load_quora(paths["quora-train"]).examples),
             "sts": len(load_sts(paths["sts-train"]).examples)}
    plan = epoch_plan("annealed", sizes, 1, 1, 50, 3)
    assert counts == {t: plan.count(t) for t in TASKS} and sum(counts.values()) == 50


@pytest.mark.parametrize("flags, named", [
    (["--seed", "-1"], "argument --seed: must be from 0 to 4294967295, got -1"),
    # the trainer's range: 0 <= seed < 2**32
    (["--seed", "4294967296"], "argument --seed: must be from 0 to 4294967295, got 4294967296"),
    (["--batches", "-5"], "argument --batches: must be at least 1, got -5"),
    (["--batches", "0"], "argument --batches: must be at least 1, got 0"),  # no run trains 0 batches
])
def test_plan_counts_refuse_numbers_no_run_could_have(tmp_path, capsys, flags, named):
    data_dir = write_dataset(tmp_path / "data", train=8, dev=4, test=4)
    with pytest.raises(SystemExit) as refused:
        ablation.main(["--plan-counts", "--data-dir", str(data_dir), *flags])
    assert refused.value.code == 2 and named in capsys.readouterr().err


def test_plan_counts_name_a_missing_or_unreadable_training_file(tmp_path, capsys):
    assert ablation.main(["--plan-counts", "--data-dir", str(tmp_path / "none")]) == 1
    captured = capsys.readouterr()
    assert f"error: {tmp_path / 'none' / 'ids-sst-train.csv'}: dataset file not found" in captured.err
    assert captured.out == "" and "Traceback" not in captured.err
    data_dir = write_dataset(tmp_path / "data", train=8, dev=4, test=4)
    largest = str(2 ** 32 - 1)
    assert ablation.main(["--plan-counts", "--data-dir", str(data_dir), "--seed", largest, "--batches", "1"]) == 0
    assert sorted(capsys.readouterr().out.split()) == ["0", "0", "1"]  # (the largest seed works)
    dataset_paths(data_dir)["sts-train"].write_bytes(b"\xff\xfe not UTF-8\n")
    assert ablation.main(["--plan-counts", "--data-dir", str(data_dir)]) == 1
    assert "sts-train.csv" in capsys.readouterr().err


def uneven_dataset(folder: Path) -> Path:
    """The synthetic files with SST's training file cut to 30 rows (QQP and STS keep 96), so that
    a cap of 40 changes the tasks' shares of an annealed plan."""
    data_dir = write_dataset(folder, train=96, dev=40, test=16)
    sst_train = dataset_paths(data_dir)["sst-train"]
    lines = sst_train.read_text().splitlines(keepends=True)
    sst_train.write_text("".join(lines[:31]))  # the header and 30 rows
    return data_dir


def test_plan_counts_of_capped_tasks_are_the_capped_runs_counts(tmp_path, minilm_dir):
    """--max-train-examples caps each task's training rows, and so the annealed plan's shares: the
    counts the single-task runs train are those the capped multitask run draws."""
    data_dir = uneven_dataset(tmp_path / "data")
    model_dir = write_tiny_checkpoint(tmp_path / "model", minilm_dir)
    config = TrainConfig(model=str(model_dir), data_dir=str(data_dir), out_dir=str(tmp_path / "run"), epochs=1,
                         batches_per_epoch=300, seed=5, max_train_examples=40, device="cpu", progress=False)
    trainer = training.Trainer(config, log=lambda m: None)
    assert trainer.task_sizes == {"sst": 30, "qqp": 40, "sts": 40}
    drawn = Counter(task for (task,) in trainer.epoch_plan(1))
    counts = ablation.plan_counts(str(data_dir), 300, seed=5, max_train_examples=40)
    assert counts == {task: drawn[task] for task in TASKS}
    assert counts != ablation.plan_counts(str(data_dir), 300, seed=5)  # (the cap does change them)


def test_arguments_that_fix_a_run_s_steps_are_refused_and_the_cap_reaches_the_plan(tmp_path, minilm_dir):
    """The script sets each run's epochs, sampler, batches, seed and tasks itself: given as
    arguments, a multitask run would take them and its single-task partners would not. A cap on
    the training rows goes to every run and to the plan the single-task runs' steps come from."""
    runs = tmp_path / "runs"
    for flag in ("--epochs", "--sampler", "--batches-per-epoch", "--seed", "--tasks"):
        refused = subprocess.run(["bash", str(REPO_ROOT / "run_ablation.sh"), f"{flag}=2"],
                                 env=script_env(RUNS_DIR=str(runs), PYTHON="false", ROWS="single-tuned"),
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and f"sets {flag} itself" in refused.stderr, (flag, refused.stderr)
    assert not runs.exists()
    data_dir = uneven_dataset(tmp_path / "data")
    env = script_env(MODEL=str(write_tiny_checkpoint(tmp_path / "model", minilm_dir)), DATA_DIR=str(data_dir),
                     RUNS_DIR=str(runs), PYTHON=sys.executable, OMP_NUM_THREADS="1", SEEDS="5", BATCHES="12",
                     ROWS="single-tuned", SINGLE_RUNS="sst")
    process = subprocess.run(["bash", str(REPO_ROOT / "run_ablation.sh"), "--max-train-examples", "40",
                              "--batch-size", "8", "--eval-batch-size", "64"],
                             env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    (record,) = [json.loads(line) for line in (runs / "single-tuned" / "seed5" / "sst" / "metrics.jsonl").open()]
    capped = ablation.plan_counts(str(data_dir), 12, seed=5, max_train_examples=40)
    assert capped != ablation.plan_counts(str(data_dir), 12, seed=5)  # (a test of the cap, not of the plan)
    assert record["batches_sst"] == capped["sst"]


@pytest.mark.parametrize("row, baseline", [
    ("multi-tuned-concat", None), ("multi-tuned-cosine-paired-private3-sts-equal-norm", None),
    ("multi-tuned-concat-bam", None), ("multi-paper-concat", "single-paper"),
    ("multi-tuned-concat-head10", "single-tuned-head10"), ("multi-tuned-concat-head10-bam", "single-tuned-head10"),
    ("multi-tuned-cosine-paired-private3-sts-equal-norm-head10", "single-tuned-head10"),
    ("multi-tuned-concat-ls", "single-tuned-ls"), ("multi-tuned-cosine-paired-private1-equal-norm-lld", "single-tuned-lld"),
    ("multi-tuned-concat-avg10", "single-tuned-avg10"), ("multi-tuned-concat-lld0.9", "single-tuned-lld0.9"),
    ("multi-tuned-concat-drop0.1", "single-tuned-drop0.1"), ("multi-tuned-concat-bam-qqp", None),
    ("multi-tuned-concat-head10-bam-sst-qqp", "single-tuned-head10"),
    ("single-tuned-head10", None), ("pair-qqp-sts", None), ("lever-lr-1e-4", None)])
def test_a_row_of_another_recipe_or_lever_has_its_own_baseline(row, baseline):
    assert ablation.own_baseline(row) == baseline


def test_rows_are_compared_with_their_own_single_task_row_where_there_is_one(tmp_path, capsys):
    write_single_row(tmp_path / "single-tuned", 0.40)
    write_single_row(tmp_path / "single-tuned-head10", 0.50)
    for row, sst in (("multi-tuned-concat", 0.45), ("multi-tuned-concat-head10", 0.55), ("multi-tuned-concat-ls", 0.47)):
        write_final(tmp_path / row / "seed0", sst_acc=sst, qqp_acc=0.7, sts_corr=0.7, overall=0.6)
    assert ablation.main([str(tmp_path)]) == 0
    table, notes = capsys.readouterr()
    assert "| multi-tuned-concat | +0.050 (+0.050) |" in table
    assert "| multi-tuned-concat-head10, minus single-tuned-head10 | +0.050 (+0.050) |" in table
    assert "| multi-tuned-concat-ls | +0.070 (+0.070) |" in table  # its own is missing: the default, said so
    assert "has no single-tuned-ls row, so the table compares multi-tuned-concat-ls with single-tuned" in notes
    assert ablation.main([str(tmp_path), "--against", "multi-tuned-concat-head10=single-tuned"]) == 0
    assert "| multi-tuned-concat-head10, minus single-tuned | +0.150 (+0.150) |" in capsys.readouterr().out
    assert ablation.main(["--own-baseline", "multi-tuned-concat-head10-bam"]) == 0  # what run_ablation.sh asks
    assert capsys.readouterr().out == "single-tuned-head10\n"
    assert ablation.main(["--own-baseline", "multi-tuned-concat-bam"]) == 0
    assert capsys.readouterr().out == "single-tuned\n"


@pytest.mark.parametrize("flags, runs", [
    ("--recipe tuned --sts-head concat", "sst=sst qqp=qqp sts=sts"),
    ("--recipe paper --sts-head dot", "sst=sst qqp=qqp sts=sts"),
    ("--recipe tuned --sts-head cosine", "sst=sst qqp=qqp sts=sts-cosine-paired"),  # the recipe pairs the dropout
    ("--recipe paper --sts-head cosine", "sst=sst qqp=qqp sts=sts-cosine"),  # the paper's does not
    ("--recipe tuned --sts-head cosine --no-paired-dropout", "sst=sst qqp=qqp sts=sts-cosine"),
    ("--recipe tuned --sts-head cosine --sts-loss cosent --no-paired-dropout", "sst=sst qqp=qqp sts=sts-cosent"),
    ("--recipe tuned --sts-head mnr", "sst=sst qqp=qqp sts=sts-mnr-paired"),
    ("--recipe tuned --sts-head mnr --no-paired-dropout --sts-loss cosent", "sst=sst qqp=qqp sts=sts-mnr"),
    ("--recipe tuned --sts-head concat --paraphrase-head siamese", "sst=sst qqp=qqp-siamese sts=sts")])
def test_each_task_is_compared_with_and_taught_by_the_single_task_run_of_its_head(flags, runs, capsys):
    assert ablation.main([f"--baseline-runs={flags}"]) == 0  # what run_ablation.sh asks for a -bam row's teachers
    assert capsys.readouterr().out == runs + "\n"


def test_run_ablation_trains_single_and_multitask_rows_then_tabulates(tmp_path, minilm_dir):
    model_dir = write_tiny_checkpoint(tmp_path / "model", minilm_dir)
    data_dir = write_dataset(tmp_path / "data", train=96, dev=40, test=16)
    runs = tmp_path / "runs"
    env = script_env(MODEL=str(model_dir), DATA_DIR=str(data_dir), RUNS_DIR=str(runs), PYTHON=sys.executable,
                     OMP_NUM_THREADS="1", SEEDS="0", BATCHES="6",
                     ROWS="single-tuned multi-tuned-cosine-siamese-bam single-tuned-bam pair-qqp-sts")
    command = ["bash", str(REPO_ROOT / "run_experiments.sh"), "ablation", "--batch-size", "8",
               "--eval-batch-size", "64"]  # (fp32 is the script's own choice, checked below)
    # A distilled row without its teachers stops at once, saying which run to make first.
    early = subprocess.run(command, env={**env, "ROWS": "multi-tuned-cosine-siamese-bam"}, cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=600)
    assert early.returncode == 1 and "run the single-tuned row first" in early.stderr
    assert not (runs / "multi-tuned-cosine-siamese-bam" / "seed0").exists()
    process = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    counts = ablation.plan_counts(str(data_dir), 6, seed=0)
    for task in TASKS:
        (record,) = [json.loads(line) for line in (runs / "single-tuned" / "seed0" / task / "metrics.jsonl").open()]
        assert record[f"batches_{task}"] == counts[task]  # the multitask run's steps of that task
    distilled = runs / "multi-tuned-cosine-siamese-bam" / "seed0"
    (multi,) = [json.loads(line) for line in (distilled / "metrics.jsonl").open()]
    assert [multi[f"batches_{t}"] for t in TASKS] == [counts[t] for t in TASKS]
    # its teachers: that seed's single-task runs of the same heads (siamese paraphrase, cosine STS)
    single = runs / "single-tuned" / "seed0"
    teachers = json.loads((distilled / "train_config.json").read_text())["teachers"]
    assert teachers == f"sst={single / 'sst'},qqp={single / 'qqp-siamese'},sts={single / 'sts-cosine'}"
    # teachers for the tasks a row names only (the joint paraphrase head's QQP run, no STS teacher)
    some = subprocess.run(command, env={**env, "ROWS": "multi-tuned-concat-bam-qqp-sst"}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert some.returncode == 0, some.stdout[-3000:] + some.stderr[-3000:]
    assert json.loads((runs / "multi-tuned-concat-bam-qqp-sst" / "seed0" / "train_config.json").read_text())[
        "teachers"] == f"qqp={single / 'qqp'},sst={single / 'sst'}"
    for run in ("sst", "qqp", "sts", "sts-cosine-paired"):  # born again: each single-task run its own teacher
        reborn = json.loads((runs / "single-tuned-bam" / "seed0" / run / "train_config.json").read_text())
        assert (reborn["tasks"], reborn["teachers"]) == (run[:3], f"{run[:3]}={single / run}")
    # fp32 on any CPU, also one where --precision auto would pick bf16
    assert json.loads((single / "sst" / "train_config.json").read_text())["precision"] == "fp32"
    cosent = json.loads((single / "sts-cosent" / "train_config.json").read_text())  # the CoSENT baseline
    assert (cosent["tasks"], cosent["sts_head"], cosent["sts_loss"]) == ("sts", "cosine", "cosent")
    for run, paired in (("sts-mnr", False), ("sts-mnr-paired", True)):  # the MNR rows' baselines
        mnr = json.loads((single / run / "train_config.json").read_text())
        assert (mnr["tasks"], mnr["sts_head"], mnr["paired_dropout"]) == ("sts", "mnr", paired)
    (pair,) = [json.loads(line) for line in (runs / "pair-qqp-sts" / "seed0" / "metrics.jsonl").open()]
    assert pair["batches_sst"] == 0 and pair["batches_qqp"] + pair["batches_sts"] == counts["qqp"] + counts["sts"]
    table = (runs / "ablation.md").read_text()
    assert "| multi-tuned-cosine-siamese-bam |" in table and "| single-tuned |" in table
    # SINGLE_RUNS: a single-task row trains only the runs named, each with the row's lever (the
    # lever of every single-task row: test_every_single_task_row_has_its_recipe_and_lever)
    part = subprocess.run(command, env={**env, "SINGLE_RUNS": "sts", "ROWS": "single-tuned-lld0.9"},
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert part.returncode == 0, part.stdout[-3000:] + part.stderr[-3000:]
    assert sorted(p.name for p in (runs / "single-tuned-lld0.9" / "seed0").iterdir()) == ["sts"]
    assert json.loads((runs / "single-tuned-lld0.9" / "seed0" / "sts" / "train_config.json").read_text())[
        "layer_lr_decay"] == 0.9  # its lever


def test_multitask_rows_are_compared_seed_by_seed_with_the_same_kind_of_sts_head(tmp_path, capsys):
    def multi(row, seed, head, sst, qqp, sts, sts_loss="mse", paraphrase_head="joint", paired=False):
        folder = tmp_path / row / f"seed{seed}"
        write_final(folder, sst_acc=sst, qqp_acc=qqp, sts_corr=sts, overall=(sst + qqp + (sts + 1) / 2) / 3)
        (folder / "train_config.json").write_text(json.dumps({"sts_head": head, "sts_loss": sts_loss,
                                                              "paraphrase_head": paraphrase_head,
                                                              "paired_dropout": paired}))

    for seed, (sst, qqp, sts, cosine, cosent, siamese, paired, mnr, mnr_paired) in enumerate([
            (0.45, 0.80, 0.82, 0.84, 0.85, 0.77, 0.87, 0.81, 0.89),
            (0.43, 0.82, 0.80, 0.83, 0.86, 0.78, 0.88, 0.79, 0.85)]):
        for task, metric, value in (("sst", "sst_acc", sst), ("qqp", "qqp_acc", qqp), ("sts", "sts_corr", sts),
                                    ("sts-cosine", "sts_corr", cosine), ("sts-cosent", "sts_corr", cosent),
                                    ("qqp-siamese", "qqp_acc", siamese), ("sts-cosine-paired", "sts_corr", paired),
                                    ("sts-mnr", "sts_corr", mnr), ("sts-mnr-paired", "sts_corr", mnr_paired)):
            write_final(tmp_path / "single-tuned" / f"seed{seed}" / task, **{metric: value, "overall": 0.0})
    multi("concat", 0, "concat", 0.46, 0.79, 0.83)
    multi("concat", 1, "concat", 0.45, 0.82, 0.80)
    multi("cosine", 0, "cosine", 0.44, 0.80, 0.80)
    multi("cosine", 2, "cosine", 0.50, 0.90, 0.90)  # no single-task seed 2: left out
    multi("cosent", 1, "cosine", 0.44, 0.80, 0.84, sts_loss="cosent")  # against the CoSENT single-task run
    multi("siamese", 1, "cosine", 0.44, 0.79, 0.84, paraphrase_head="siamese")  # QQP against qqp-siamese
    multi("paired", 0, "cosine", 0.44, 0.80, 0.86, paired=True)  # STS against sts-cosine-paired
    multi("mnr", 1, "mnr", 0.44, 0.80, 0.82)  # the MNR head: against sts-mnr, not a cosine run
    multi("mnr-paired", 0, "mnr", 0.44, 0.80, 0.86, paired=True)  # against sts-mnr-paired
    multi("concat-head10", 0, "concat", 0.47, 0.82, 0.83)  # another recipe, against its own single-task runs
    for task, metric, value in (("sst", "sst_acc", 0.46), ("qqp", "qqp_acc", 0.83), ("sts", "sts_corr", 0.81)):
        write_final(tmp_path / "single-head10" / "seed0" / task, **{metric: value, "overall": 0.0})
    pair = tmp_path / "pair-qqp-sts" / "seed0"  # two tasks: its "overall" is theirs alone
    write_final(pair, qqp_acc=0.81, sts_corr=0.83, overall=0.8)
    (pair / "train_config.json").write_text(json.dumps({"sts_head": "concat"}))
    differences = ablation.paired_differences(tmp_path, "single-tuned", {"concat-head10": "single-head10"})
    assert differences["concat-head10"]["qqp_acc"] == [pytest.approx(-0.01)]  # 0.82 - 0.83, not - 0.80
    assert differences["concat-head10"]["sts_corr"] == [pytest.approx(0.02)]
    assert differences["pair-qqp-sts"] == {"qqp_acc": [pytest.approx(0.01)], "sts_corr": [pytest.approx(0.01)]}
    assert "overall" not in ablation.collect(tmp_path)["pair-qqp-sts"]
    assert differences["concat"]["sst_acc"] == [pytest.approx(0.01), pytest.approx(0.02)]
    assert differences["concat"]["qqp_acc"] == [pytest.approx(-0.01), pytest.approx(0.0, abs=1e-12)]
    assert differences["cosine"]["sts_corr"] == [pytest.approx(0.80 - 0.84)]  # the cosine single-task run
    assert differences["cosent"]["sts_corr"] == [pytest.approx(0.84 - 0.86)]
    assert ablation.collect(tmp_path)["single-tuned"]["sts_corr_cosent"] == [0.85, 0.86]
    assert differences["siamese"]["qqp_acc"] == [pytest.approx(0.79 - 0.78)]  # not - 0.82 (the joint head)
    assert differences["siamese"]["sts_corr"] == [pytest.approx(0.84 - 0.83)]
    assert differences["siamese"]["overall"] == [pytest.approx(((0.44 - 0.43) + (0.79 - 0.78) + (0.84 - 0.83) / 2) / 3)]
    assert ablation.collect(tmp_path)["single-tuned"]["qqp_acc_siamese"] == [0.77, 0.78]
    assert differences["paired"]["sts_corr"] == [pytest.approx(0.86 - 0.87)]
    assert differences["mnr"]["sts_corr"] == [pytest.approx(0.82 - 0.79)]
    assert differences["mnr-paired"]["sts_corr"] == [pytest.approx(0.86 - 0.89)]
    assert ablation.collect(tmp_path)["single-tuned"]["sts_corr_mnr_paired"] == [0.89, 0.85]
    overall = differences["cosine"]["overall"][0]
    assert overall == pytest.approx(((0.44 - 0.45) + (0.80 - 0.80) + (0.80 - 0.84) / 2) / 3)
    assert "single-tuned" not in differences
    text = ablation.difference_table(differences, "single-tuned", {"concat-head10": "single-head10"})
    # Two seeds: mean 0.015 +- t(0.975, 1 degree of freedom) = 12.706 times s / sqrt(2) = 0.005.
    assert "| concat | +0.015 [-0.049, +0.079] (+0.010 / +0.020) |" in text
    assert "| concat-head10, minus single-head10 | +0.010 (+0.010) | -0.010 (-0.010) |" in text

    for typo in ("concat-haed10=single-head10", "concat-head10=single-haed10"):  # refused, not compared wrongly
        with pytest.raises(SystemExit) as refused:
            ablation.main([str(tmp_path), "--against", typo])
        assert refused.value.code == 2 and "haed10 does not exist" in capsys.readouterr().err
    assert ablation.main([str(tmp_path), "--against", "concat-head10=single-head10"]) == 0
    written = (tmp_path / "ablation.md").read_text()
    assert "minus single-tuned (paired by seed): mean [95% CI] (each seed)" in written and "| concat-head10, minus single-head10 |" in written
    pytest.importorskip("matplotlib")
    assert (tmp_path / "ablation.png").stat().st_size > 0


def test_without_matplotlib_the_tables_are_written_and_the_output_says_why_there_is_no_plot(
        tmp_path, capsys, monkeypatch):
    write_final(tmp_path / "multi" / "seed0", sst_acc=0.4, qqp_acc=0.8, sts_corr=0.8, overall=0.7)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert ablation.main([str(tmp_path)]) == 0
    assert "matplotlib is not installed, so ablation.png could not be drawn (pip install -e '.[plots]')" in capsys.readouterr().err
    assert (tmp_path / "ablation.md").is_file() and not (tmp_path / "ablation.png").exists()


def test_gradient_diagnostics_are_the_last_epochs_averaged_over_seeds(tmp_path):
    for seed, (norm, cosine) in enumerate([(2.0, 0.1), (4.0, -0.3)]):
        folder = tmp_path / "multi" / f"seed{seed}"
        write_final(folder, sst_acc=0.4, qqp_acc=0.8, sts_corr=0.8, overall=0.7)
        epochs = [{"epoch": 1, "grad_norm_sts": 99.0}, {"epoch": 2, "grad_norm_sts": norm, "grad_cosine_qqp_sts": cosine}]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    write_final(tmp_path / "single" / "seed0" / "sst", sst_acc=0.45, overall=0.0)  # no diagnostics
    rows = ablation.diagnostics(tmp_path)
    assert rows == {"multi": {"grad_norm_sts": [2.0, 4.0], "grad_cosine_qqp_sts": [0.1, -0.3]}}
    assert "| multi |  |  | 3.00 |  |  | -0.100 |" in ablation.diagnostics_table(rows)


def test_update_replaces_only_the_generated_tables_of_a_markdown_file(tmp_path):
    generated = ("| row | sst_acc | overall |\n|---|---|---|\n| a | 0.500 (n=1) | 0.7 (n=1) |\n\n"
                 "| row, minus b (paired by seed) | sst_acc |\n|---|---|\n| a | +0.010 (+0.010) |\n")
    readme = ("# Results\n\nProse before.\n\n"
              "| row | sst_acc | overall |\n|---|---|---|\n| a | 0.400 (n=1) | 0.6 (n=1) |\n| gone | 1 | 1 |\n\n"
              "Between.\n\n| row | what it is |\n|---|---|\n| a | kept |\n\n"
              "| row, minus b (paired by seed) | sst_acc |\n|---|---|\n| a | -0.1 |\nAfter.\n")
    updated, replaced = ablation.update_tables(readme, generated)
    assert replaced == 2
    assert updated == ("# Results\n\nProse before.\n\n"
                       "| row | sst_acc | overall |\n|---|---|---|\n| a | 0.500 (n=1) | 0.7 (n=1) |\n\n"
                       "Between.\n\n| row | what it is |\n|---|---|\n| a | kept |\n\n"
                       "| row, minus b (paired by seed) | sst_acc |\n|---|---|\n| a | +0.010 (+0.010) |\nAfter.\n")
    write_final(tmp_path / "runs" / "a" / "seed0", sst_acc=0.5, qqp_acc=0.8, sts_corr=0.8, overall=0.7)
    page = tmp_path / "page.md"
    page.write_text("text\n\n| row | sst_acc |\n|---|---|\n| old | 0 |\n")
    assert ablation.main([str(tmp_path / "runs"), "--update", str(page)]) == 0
    assert "| a | 0.500 (n=1) |" in page.read_text() and "| old |" not in page.read_text()
    with pytest.raises(SystemExit):
        ablation.main([str(tmp_path / "runs"), "--update", str(tmp_path / "missing.md")])


def test_block_shares_count_the_three_seed_blocks_at_or_above_single_task():
    differences = {"sst_acc": [0.03, -0.01, -0.01, -0.04],  # blocks (0,1,2) (0,1,3) (0,2,3) (1,2,3)
                   "qqp_acc": [0.01, 0.01, 0.01, -0.05],    # means +0.003 -0.007 -0.007 -0.020 on SST
                   "sts_corr": [0.02, 0.02, 0.02, 0.02]}
    shares = ablation.block_shares(differences)
    assert shares == {"sst_acc": (1, 4), "qqp_acc": (1, 4), "sts_corr": (4, 4), "every": (1, 4)}
    assert ablation.block_shares(differences, size=2)["sst_acc"] == (2, 6)  # seed 0 with seed 1 or 2: +0.010
    # "every" asks all three tasks of the same block: SST's and QQP's one good block differ here.
    apart = {**differences, "qqp_acc": [-0.05, 0.01, 0.01, 0.01]}
    assert ablation.block_shares(apart)["qqp_acc"] == (1, 4) and ablation.block_shares(apart)["every"] == (0, 4)


def test_an_exact_tie_counts_as_at_single_task():
    tie = [0.3, -0.1, -0.2]  # sums to -2.8e-17 in floating point: a tie, not a loss
    assert sum(tie) < 0
    shares = ablation.block_shares({"sst_acc": tie, "qqp_acc": tie, "sts_corr": [-0.001] * 3})
    assert shares["sst_acc"] == (1, 1) and shares["sts_corr"] == (0, 1) and shares["every"] == (0, 1)


def test_the_table_gives_block_shares_for_rows_of_more_than_three_seeds(tmp_path, capsys):
    write_single_row(tmp_path / "single-tuned", 0.40, seeds=range(4))
    for seed, sst in enumerate((0.45, 0.35, 0.42, 0.41)):  # SST against 0.40: +0.05 -0.05 +0.02 +0.01
        write_final(tmp_path / "multi-tuned-concat" / f"seed{seed}", sst_acc=sst, qqp_acc=0.7, sts_corr=0.7, overall=0.6)
        if seed < 3:
            write_final(tmp_path / "multi-tuned-shared" / f"seed{seed}", sst_acc=sst, qqp_acc=0.7, sts_corr=0.7,
                        overall=0.6)
    assert ablation.main([str(tmp_path)]) == 0
    blocks = capsys.readouterr().out.split("blocks of 3 seeds")[1]
    # Block means on SST: (0,1,2) +0.007, (0,1,3) +0.003, (0,2,3) +0.027, (1,2,3) -0.007.
    assert "| multi-tuned-concat | 0.75 (3 of 4) | 0.75 (3 of 4) | 1.00 (4 of 4) | 1.00 (4 of 4) |" in blocks
    assert "multi-tuned-shared" not in blocks  # three seeds: one block, the mean of the table above
    assert (tmp_path / "ablation.md").read_text().count("blocks of 3 seeds") == 1


def test_a_full_disk_leaves_an_updated_page_as_it_was(tmp_path, monkeypatch, capsys):
    write_final(tmp_path / "runs" / "a" / "seed0", sst_acc=0.5, qqp_acc=0.8, sts_corr=0.8, overall=0.7)
    page = tmp_path / "page.md"
    before = "hand-written prose\n\n| row | sst_acc |\n|---|---|\n| old | 0 |\n\nmore prose\n"
    page.write_text(before)
    real = Path.write_text
    def fill_the_disk_writing_the_page(self, data, *args, **kwargs):
        if self.name.startswith("page.md."):  # atomic_write's temporary copy of the page
            real(self, data[:10], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fill_the_disk_writing_the_page)
    assert ablation.main([str(tmp_path / "runs"), "--update", str(page)]) == 1
    assert f"error: cannot write {page}: no space left in {tmp_path}" in capsys.readouterr().err
    assert page.read_text() == before  # not cut short
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.md", "runs"]
