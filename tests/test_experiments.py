"""The experiments and reporting tools: run_experiments.sh, results, analysis, predict, export.

One smoke-profile run of run_experiments.sh (a tiny random BERT, synthetic data) trains the seven
configurations once for the whole module; the other tools are tested on its checkpoints.
"""

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bert import BertModel
from multitask import analysis, export, predict, results
from multitask.data import dataset_paths, load_sst, load_sts

from synthetic import write_dataset, write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGURATIONS = ["annealed-concat", "annealed-cosine", "annealed-mnr", "equitable-concat",
                  "equitable-cosine", "equitable-mnr", "round-robin-dot"]
PAPER_NAMES = ["Ann + Concat", "Ann + CoSim", "Ann + CoSim + MNR", "Equit + Concat",
               "Equit + CoSim", "Equit + CoSim + MNR", "Baseline"]
SMOKE_ARGS = ["--no-progress", "--device", "cpu", "--precision", "fp32"]


def run_script(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO_ROOT / "run_experiments.sh"), *args], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, minilm_dir):
    """The smoke profile run once: (runs folder, data folder, environment, finished process)."""
    root = tmp_path_factory.mktemp("experiments")
    model_dir = write_tiny_checkpoint(root / "model", minilm_dir)
    data_dir = write_dataset(root / "data", train=96, dev=40, test=16)
    runs_dir = root / "runs"
    env = {**os.environ, "MODEL": str(model_dir), "DATA_DIR": str(data_dir),
           "RUNS_DIR": str(runs_dir), "PYTHON": sys.executable,
           # A 2-layer model gains nothing from a second thread, and on a busy machine the
           # threads' hand-offs cost more than the arithmetic.
           "OMP_NUM_THREADS": "1"}
    env.pop("PROFILE", None)
    process = run_script(env, "smoke", *SMOKE_ARGS)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return runs_dir, data_dir, env, process


# --------------------------------------------------------------------------------------------
# run_experiments.sh and the results table
# --------------------------------------------------------------------------------------------


def test_smoke_profile_trains_all_seven_and_tabulates(smoke):
    runs_dir, _, _, _ = smoke
    for name in CONFIGURATIONS:
        folder = runs_dir / name
        assert (folder / "final_metrics.json").is_file(), name
        assert (folder / "best" / "model.safetensors").is_file(), name
        config = json.loads((folder / "train_config.json").read_text())
        assert (config["epochs"], config["batches_per_epoch"], config["precision"]) == (1, 4, "fp32")
        assert f"{config['sampler']}-{config['sts_head']}" == name
    table = (runs_dir / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == PAPER_NAMES
    assert all(row.endswith("| done |") for row in rows)
    with open(runs_dir / "results.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [r["model"] for r in records] == PAPER_NAMES
    assert all(r["status"] == "done" and r["best_epoch"] == "1" for r in records)
    assert (runs_dir / "dev_metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every run logged its tasks' gradient norms: the interference plot is drawn from them.
    assert (runs_dir / "task_interference.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interference_plot_needs_logged_gradients(tmp_path):
    from multitask.results import RunResult, write_interference_plot

    bare = RunResult("annealed", "concat", tmp_path, "done", history=[{"epoch": 1, "overall": 0.5}])
    assert not write_interference_plot([bare], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_a_plot_that_cannot_be_written_leaves_no_figure_open(tmp_path, monkeypatch):
    """Each command's plots: a failed write (a full disk) raises its WriteError, and the figure is
    closed all the same, so a caller that goes on (a notebook, a loop over runs) leaks nothing."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from bert.files import WriteError
    from multitask import ablation

    def full_disk(path, write):
        raise WriteError(f"cannot write {path}: no space left")

    monkeypatch.setattr(results, "atomic_write", full_disk)
    history = [{"epoch": 1, "sst_acc": 0.4, "qqp_acc": 0.8, "sts_corr": 0.8, "overall": 0.7,
                "grad_norm_sst": 1.0, "grad_norm_qqp": 2.0, "grad_norm_sts": 3.0}]
    run = results.RunResult("annealed", "concat", tmp_path, "done", history=history)
    plots = [lambda path: results.write_plot([run], path),
             lambda path: results.write_interference_plot([run], path),
             lambda path: ablation.plot({"row": {"sst_acc": [0.4], "qqp_acc": [0.8], "sts_corr": [0.8],
                                                 "overall": [0.7]}}, path)]
    plt.close("all")
    for draw in plots:
        with pytest.raises(WriteError, match="no space left"):
            draw(tmp_path / "plot.png")
        assert plt.get_fignums() == []
    assert not (tmp_path / "plot.png").exists()


def test_second_call_skips_finished_runs(smoke):
    runs_dir, _, env, _ = smoke
    watched = [runs_dir / name / f for name in CONFIGURATIONS
               for f in ("final_metrics.json", "metrics.jsonl", "best/model.safetensors")]
    before = {path: path.stat().st_mtime_ns for path in watched}
    process = run_script({**env, "PROFILE": "smoke"}, *SMOKE_ARGS)  # the profile from PROFILE
    assert process.returncode == 0, process.stderr[-3000:]
    skipped = [line for line in process.stdout.splitlines() if line.startswith("skip ")]
    assert [line.split(":")[0].removeprefix("skip ") for line in skipped] == CONFIGURATIONS
    assert "===" not in process.stdout  # nothing trained
    assert {path: path.stat().st_mtime_ns for path in watched} == before
    assert (runs_dir / "results.md").is_file()


def test_script_without_a_profile_is_a_usage_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PROFILE", "MODEL", "DATA_DIR")}
    process = run_script(env)
    assert process.returncode == 2 and "profile" in process.stderr
    process = run_script(env, "smoke")  # smoke needs MODEL and DATA_DIR
    assert process.returncode == 2 and "MODEL and DATA_DIR" in process.stderr


def test_profile_command_lines_and_a_failing_configuration(tmp_path):
    """The profiles' command lines, seen by a stand-in for the Python interpreter."""
    log = tmp_path / "calls.txt"
    fake_python = tmp_path / "fake-python"
    fake_python.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{log}"\n')
    fake_python.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PROFILE", "MODEL", "DATA_DIR")}
    env.update(PYTHON=str(fake_python), RUNS_DIR=str(tmp_path / "runs"))

    assert run_script(env, "gpu", "--lr", "2e-5").returncode == 0
    calls = log.read_text().splitlines()
    assert len(calls) == 8 and calls[-1] == f"-m multitask.results {tmp_path / 'runs'}"
    first = calls[0].split()
    assert first[first.index("--model") + 1] == "bert-base-uncased"
    paper = ("--epochs 10 --batches-per-epoch 3000 --batch-size 32 --lr 1e-5 "
             "--qqp-eval-examples 32000 --device cuda")
    runs = tmp_path / "runs"
    # The extra argument comes after the profile's (so it wins); the script's own come last.
    assert f"{paper} --lr 2e-5 --sampler annealed --sts-head concat --out-dir {runs}/annealed-concat" in calls[0]
    assert calls[6].endswith(f"--sampler round-robin --sts-head dot --out-dir {runs}/round-robin-dot")

    log.unlink()
    assert run_script(env, "cpu").returncode == 0
    first = log.read_text().splitlines()[0].split()
    assert first[first.index("--model") + 1] == "sentence-transformers/all-MiniLM-L6-v2"
    assert first[first.index("--epochs") + 1] == "2"
    assert first[first.index("--batches-per-epoch") + 1] == "120"
    shared = REPO_ROOT / ".." / "shared" / "data"
    assert first[first.index("--data-dir") + 1] == str(shared if shared.is_dir() else REPO_ROOT / "data")
    assert first[first.index("--recipe") + 1] == "paper" and first[first.index("--lr") + 1] == "3e-5"

    # RECIPE=tuned: the same seven with the tuned recipe, whose own learning rate replaces the profile's.
    log.unlink()
    assert run_script({**env, "RECIPE": "tuned"}, "cpu").returncode == 0
    first = log.read_text().splitlines()[0].split()
    assert first[first.index("--recipe") + 1] == "tuned" and "--lr" not in first
    assert first[first.index("--batches-per-epoch") + 1] == "120"
    process = run_script({**env, "RECIPE": "best"}, "cpu")
    assert process.returncode == 2 and "RECIPE must be paper or tuned" in process.stderr

    # A failing configuration does not stop the others; the script reports it and exits 1.
    log.unlink()
    fake_python.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{log}"\n[[ "$*" != *equitable-cosine* ]]\n')
    process = run_script({**env, "MODEL": "m", "DATA_DIR": "d"}, "smoke")
    assert process.returncode == 1 and "equitable-cosine failed" in process.stderr
    assert len(log.read_text().splitlines()) == 8  # all seven tried, then the results step


def write_run(folder: Path, sampler: str, head: str, history: list[dict], final: dict | None,
              epochs: int = 3) -> None:
    folder.mkdir(parents=True)
    config = {"model": "tiny", "sampler": sampler, "sts_head": head, "epochs": epochs,
              "batches_per_epoch": 10, "batch_size": 8, "lr": 1e-5, "precision": "fp32",
              "data_dir": "data"}
    (folder / "train_config.json").write_text(json.dumps(config))
    lines = [json.dumps({"epoch": e, "epoch_seconds": 60.0, **m}) for e, m in enumerate(history, 1)]
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if final is not None:
        (folder / "final_metrics.json").write_text(json.dumps(final))


def metrics(sst, qqp, sts):
    return {"sst_acc": sst, "qqp_acc": qqp, "sts_corr": sts, "overall": (sst + qqp + (sts + 1) / 2) / 3}


def test_results_table_from_hand_written_runs(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    write_run(runs / "annealed-concat", "annealed", "concat",
              [metrics(0.4, 0.7, 0.5), metrics(0.5, 0.8, 0.8), metrics(0.5, 0.8, 0.7)],
              metrics(0.51, 0.81, 0.79))
    write_run(runs / "round-robin-dot", "round-robin", "dot", [metrics(0.3, 0.6, 0.2)],
              metrics(0.3, 0.6, 0.2), epochs=1)
    write_run(runs / "equitable-mnr", "equitable", "mnr", [metrics(0.3, 0.6, 0.1)], None)
    (runs / "equitable-mnr" / "metrics.jsonl").open("a").write('{"epoch": 2, "sst')  # cut short
    write_run(runs / "round-robin-concat", "round-robin", "concat", [metrics(0.2, 0.5, 0.1)],
              metrics(0.2, 0.5, 0.1), epochs=1)  # not one of the paper's seven
    (runs / "notes").mkdir()  # not a run at all

    assert results.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    by_model = {r["model"]: r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert list(by_model) == PAPER_NAMES + ["RR + Concat"]
    ann = by_model["Ann + Concat"]
    assert (ann["status"], ann["sst_acc"], ann["sts_corr"]) == ("done", "0.5100", "0.7900")
    assert ann["best_epoch"] == "2"  # the best per-epoch overall score
    assert (ann["paper_sst_acc"], ann["paper_overall"], ann["train_seconds"]) == ("0.529", "0.784", "180.0")
    assert by_model["Baseline"]["paper_qqp_acc"] == "0.822"
    assert by_model["Equit + CoSim + MNR"]["status"] == "partial (1 of 3 epochs)"
    assert by_model["Equit + CoSim + MNR"]["sst_acc"] == ""
    assert by_model["Ann + CoSim"]["status"] == "missing"
    assert by_model["RR + Concat"]["paper_sst_acc"] == ""

    table = (tmp_path / "out" / "results.md").read_text()
    assert ("| Ann + Concat | 0.510 | 0.529 | 0.810 | 0.889 | 0.790 | 0.866 | 0.738 | 0.784 | 2 | 3.0 min "
            "| done |") in table
    assert "| Ann + CoSim | - | 0.524 | - | 0.900 | - | 0.388 | - | 0.706 | - | - | missing |" in table
    assert (tmp_path / "out" / "dev_metrics.png").is_file()
    out = capsys.readouterr().out
    assert "not finished: Ann + CoSim, Ann + CoSim + MNR" in out
    # These runs logged no gradient norms: the output says that is why there is no interference
    # plot, and does not blame matplotlib, which drew dev_metrics.png.
    assert "no run logged its tasks' gradient norms" in out and "matplotlib" not in out
    assert not (tmp_path / "out" / "task_interference.png").exists()

    # Without matplotlib the tables are still written, and the output says why there is no plot.
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert results.main([str(runs), "--out", str(tmp_path / "bare")]) == 0
    out = capsys.readouterr().out
    assert ("matplotlib is not installed, so the plots could not be drawn (pip install -e '.[plots]'); "
            "the tables are written.") in out and "gradient norms" not in out
    assert (tmp_path / "bare" / "results.md").is_file()
    assert not (tmp_path / "bare" / "dev_metrics.png").exists()
    assert results.main([str(tmp_path / "nowhere")]) == 1
    (tmp_path / "no-runs" / "notes").mkdir(parents=True)  # a folder, but of no run: nothing written
    assert results.main([str(tmp_path / "no-runs")]) == 1
    assert "holds no run folder (such as annealed-concat/)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "no-runs").iterdir()) == ["notes"]

    # A full disk while the table is written: an error naming it, and the last table kept whole.
    before = (tmp_path / "bare" / "results.md").read_text()
    real = Path.write_text
    def fill_the_disk(self, data, *args, **kwargs):
        real(self, data[:10], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", fill_the_disk)
    capsys.readouterr()
    assert results.main([str(runs), "--out", str(tmp_path / "bare")]) == 1
    assert f"error: cannot write {tmp_path / 'bare' / 'results.md'}: no space left" in capsys.readouterr().err
    assert (tmp_path / "bare" / "results.md").read_text() == before
    assert not [p for p in (tmp_path / "bare").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("out", ["a-file", "a-file/results"])
def test_an_out_folder_that_cannot_be_made_is_named_and_nothing_is_written(tmp_path, capsys, out):
    runs = tmp_path / "runs"
    write_run(runs / "annealed-concat", "annealed", "concat", [metrics(0.4, 0.7, 0.5)], metrics(0.4, 0.7, 0.5))
    (tmp_path / "a-file").write_text("not a folder")
    assert results.main([str(runs), "--out", str(tmp_path / out), "--no-plot"]) == 1
    captured = capsys.readouterr()
    assert f"error: --out {tmp_path / out}: cannot create the folder (" in captured.err
    assert "pass --out a folder that can be created and written" in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_other_runs_are_named_by_their_folder_and_what_they_trained(tmp_path, capsys):
    """A run beside the seven that trained one of their configurations (another recipe, fewer
    tasks) is not one of the paper's rows: it is named by its folder and what it trained, has no
    paper numbers, and is done when it has finished; a run of fewer tasks has no overall score."""
    runs = tmp_path / "runs"
    write_run(runs / "annealed-concat", "annealed", "concat", [metrics(0.4, 0.7, 0.5)], metrics(0.4, 0.7, 0.5),
              epochs=1)
    write_run(runs / "annealed-concat-paper", "annealed", "concat", [metrics(0.3, 0.6, 0.4)],
              metrics(0.3, 0.6, 0.4), epochs=1)
    write_run(runs / "my-sst-only", "annealed", "concat", [{"sst_acc": 0.45, "overall": 0.45}],
              {"sst_acc": 0.45, "overall": 0.45}, epochs=1)
    write_run(runs / "equitable-mnr", "equitable", "mnr", [{"qqp_acc": 0.8, "sts_corr": 0.6, "overall": 0.8}],
              {"qqp_acc": 0.8, "sts_corr": 0.6, "overall": 0.8}, epochs=1)  # in one of the seven's folders
    for folder, tasks in (("annealed-concat-paper", "sst,qqp,sts"), ("my-sst-only", "sst"),
                          ("equitable-mnr", "qqp,sts")):
        config = json.loads((runs / folder / "train_config.json").read_text())
        (runs / folder / "train_config.json").write_text(json.dumps({**config, "tasks": tasks}))

    assert results.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    by_model = {r["model"]: r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert list(by_model) == PAPER_NAMES[:5] + ["equitable-mnr (Equit + CoSim + MNR, qqp+sts only)", "Baseline",
                                                "annealed-concat-paper (Ann + Concat)",
                                                "my-sst-only (Ann + Concat, sst only)"]
    assert by_model["Ann + Concat"]["paper_sst_acc"] == "0.529"
    for name in list(by_model)[5:6] + list(by_model)[7:]:
        row = by_model[name]
        assert row["status"] == "done" and row["best_epoch"] == "1" and row["paper_overall"] == "", name
    assert by_model["annealed-concat-paper (Ann + Concat)"]["sst_acc"] == "0.3000"
    sst_only = by_model["my-sst-only (Ann + Concat, sst only)"]
    assert (sst_only["sst_acc"], sst_only["qqp_acc"], sst_only["overall"]) == ("0.4500", "", "")
    out = capsys.readouterr().out
    assert "| my-sst-only (Ann + Concat, sst only) | 0.450 | - | - | - | - | - | - | - | 1 |" in out
    (unfinished,) = [line for line in out.splitlines() if line.startswith("not finished: ")]
    assert unfinished == "not finished: Ann + CoSim, Ann + CoSim + MNR, Equit + Concat, Equit + CoSim, Baseline"
    assert (tmp_path / "out" / "dev_metrics.png").is_file()  # (a run of fewer tasks is left out of some panels)


@pytest.mark.parametrize("damaged, text, named", [
    ("metrics.jsonl", '{"epoch": 1, "overall": "abc"}\n', 'metrics.jsonl line 1: overall is "abc", not a number'),
    ("metrics.jsonl", '{"epoch": "one", "overall": 0.5}\n', 'metrics.jsonl line 1: epoch is "one", not a whole number'),
    ("metrics.jsonl", '{"epoch": 1, "epoch_seconds": "x"}\n',
     'metrics.jsonl line 1: epoch_seconds is "x", not a number'),
    ("metrics.jsonl", '[1, 2]\n{"epoch": 1, "overall": 0.5}\n', "metrics.jsonl line 1: not an epoch's record"),
    ("metrics.jsonl", '{"epoch": 1, "ov\n{"epoch": 2}\n', "metrics.jsonl line 1: not JSON (Unterminated string"),
    ("train_config.json", "[]", "train_config.json: not a run's settings (a JSON object)"),
    ("train_config.json", '{"sampler": ["annealed"], "sts_head": "concat"}',
     'train_config.json: sampler is ["annealed"]'),
    ("final_metrics.json", '{"sst_acc": NaN, "qqp_acc": 0.8, "sts_corr": 0.8, "overall": 0.7}',
     "final_metrics.json: sst_acc is NaN, not a score"),
    ("final_metrics.json", '{"sst_acc": 0.5, "overall": 0.7}', "final_metrics.json: qqp_acc is missing"),
], ids=["overall-text", "epoch-text", "seconds-text", "line-not-an-object", "line-not-json", "settings-a-list",
        "sampler-a-list", "score-nan", "score-missing"])
def test_a_damaged_run_file_is_named_in_its_row_and_the_table_still_written(tmp_path, capsys, damaged, text, named):
    runs = tmp_path / "runs"
    for folder in ("annealed-concat", "round-robin-dot"):
        write_run(runs / folder, *folder.rsplit("-", 1), [metrics(0.4, 0.7, 0.5)], metrics(0.4, 0.7, 0.5), epochs=1)
    (runs / "annealed-concat" / damaged).write_text(text)
    assert results.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    by_model = {r["model"]: r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert by_model["Ann + Concat"]["status"].startswith(f"unreadable: {named}")
    assert by_model["Baseline"]["status"] == "done"
    captured = capsys.readouterr()
    assert f"note: {runs / 'annealed-concat' / named}" in captured.err and "move the file away" in captured.err
    assert "Traceback" not in captured.err
    assert "Ann + Concat" not in captured.out.split("not finished: ")[1]  # damaged, not unfinished


# --------------------------------------------------------------------------------------------
# analysis, predict, export on the smoke runs' checkpoints
# --------------------------------------------------------------------------------------------


def test_error_analysis_parts_have_the_right_counts(smoke, capsys):
    runs_dir, data_dir, _, _ = smoke
    sts_dev = load_sts(dataset_paths(data_dir)["sts-dev"])
    sst_dev = load_sst(dataset_paths(data_dir)["sst-dev"])
    trained = predict.open_checkpoint(runs_dir / "annealed-concat")
    lengths = sorted(len(e.sentence1) + len(e.sentence2) for e in sts_dev.examples)
    threshold = lengths[len(lengths) // 2]  # synthetic pairs are short: split them at the median
    result = analysis.analyse(trained, sts_dev, sst_dev, top=7, long_characters=threshold)

    errors = [abs(pair.error) for pair in result.largest_errors]
    assert len(errors) == 7 and errors == sorted(errors, reverse=True)
    assert result.largest_errors[0].sentence1 in {e.sentence1 for e in sts_dev.examples}
    long, short = result.long_pairs, result.short_pairs
    assert long.count == sum(n >= threshold for n in lengths)
    assert long.count + short.count == len(sts_dev.examples)
    for group in (long, short):
        assert group.over + group.under + group.exact == group.count
    assert result.confusion.shape == (5, 5) and result.confusion.sum() == len(sst_dev.examples)
    gold = np.bincount([e.label for e in sst_dev.examples], minlength=5)
    assert result.confusion.sum(axis=1).tolist() == gold.tolist()  # rows are the gold classes

    assert analysis.main([str(runs_dir / "annealed-concat"), "--data-dir", str(data_dir), "--top", "3"]) == 0
    report = capsys.readouterr().out
    assert "(a) The 3 STS dev pairs" in report and "(b)" in report and "(c) SST dev confusion" in report
    assert f"({len(sst_dev.examples)} sentences" in report
    assert analysis.main([str(runs_dir / "nowhere"), "--data-dir", str(data_dir)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_predict_sentence_and_pair(smoke, capsys):
    runs_dir, _, _, _ = smoke
    trained = predict.open_checkpoint(runs_dir / "annealed-concat" / "best")  # best/ works too
    sentiment = predict.predict_sentiment(trained, "the movie was great and nice")
    assert len(sentiment.probabilities) == 5 and sum(sentiment.probabilities) == pytest.approx(1, abs=1e-5)
    assert sentiment.label == int(np.argmax(sentiment.probabilities))
    pair = predict.predict_pair(trained, "what is the cat dog house ?", "what is the dog cat house ?")
    assert 0.0 <= pair.paraphrase_probability <= 1.0 and 0.0 <= pair.similarity <= 5.0

    assert predict.main([str(runs_dir / "round-robin-dot"), "--pair", "a cat", "a dog"]) == 0
    assert "unscaled dot product" in capsys.readouterr().out
    assert predict.main([str(runs_dir / "equitable-cosine"), "--sentence", "a fine film"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sentiment: ") and "somewhat positive" in out

    assert predict.main([str(runs_dir), "--sentence", "x"]) == 1  # the runs folder, not a run
    assert "not a multitask checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.main([str(runs_dir / "annealed-concat")])  # neither --sentence nor --pair


def test_export_loads_in_transformers_and_ours_with_equal_outputs(smoke, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    runs_dir, _, _, _ = smoke
    out_dir = tmp_path / "exported"
    assert export.main([str(runs_dir / "annealed-concat"), str(out_dir)]) == 0
    assert "wrote" in capsys.readouterr().out
    for name in export.EXPORTED_FILES:
        assert (out_dir / name).is_file(), name

    trained = predict.open_checkpoint(runs_dir / "annealed-concat")
    ours = trained.model.bert.float().eval()
    reference = transformers.BertModel.from_pretrained(out_dir, attn_implementation="eager").eval()
    reloaded = BertModel.from_pretrained(out_dir).eval()
    inputs = trained.tokenizer(["the movie was good", "what is the river ?"], ["a cat", "a dog barks"])
    inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
    with torch.no_grad():
        expected = ours(**inputs)
        theirs = reference(**inputs)
        again = reloaded(**inputs)
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(theirs.last_hidden_state[mask], expected["last_hidden_state"][mask],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs.pooler_output, expected["pooler_output"], atol=1e-5, rtol=0)
    for key in ("last_hidden_state", "pooler_output"):
        assert torch.equal(again[key], expected[key])

    # Exporting into a checkpoint folder would overwrite its multitask weights: refused.
    assert export.main([str(runs_dir / "annealed-concat"), str(runs_dir / "annealed-concat" / "best")]) == 1
    assert "choose another output folder" in capsys.readouterr().err
