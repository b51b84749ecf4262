"""Issue 16: every bad input, run as a user would run it, ends in a short message and exit 1 or 2.

One row per case of the issue. Each row starts the real command in a subprocess (the trainer,
multitask.predict, multitask.analysis or multitask.export) on a tiny random BERT and a tiny
synthetic dataset (tests/synthetic.py), then checks the exit status, a key phrase of the message
and that no Python traceback was printed; some rows also check what must not have happened
(an input replaced, a training run started, a folder created).

The predict, analysis and export rows share one finished tiny run (trained once, in this process).
Every subprocess imports torch (2 to 3 s), so each row starts exactly one.
"""

from __future__ import annotations

import csv
import hashlib
import os
import pickle
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from multitask import training
from multitask.config import TrainConfig
from multitask.predict import open_checkpoint, truncation_warnings

from synthetic import write_dataset, write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]

# 100,000 characters of words the tiny vocabulary knows: 4 tokens per 20 characters, so the
# sentence is 20,000 tokens plus [CLS] and [SEP]; the tiny checkpoint reads at most 64.
LONG_SENTENCE = "the movie was great " * 5_000
LIMIT = 64


@dataclass
class World:
    """What the rows share: the tiny checkpoint, the synthetic data, one finished run."""

    model: Path
    data: Path
    run: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("bad-input")
    model = write_tiny_checkpoint(root / "model", None)  # its own small vocabulary: no MiniLM
    data = write_dataset(root / "data", train=40, dev=16, test=8)
    run = root / "run"
    config = TrainConfig(model=str(model), data_dir=str(data), out_dir=str(run), epochs=1,
                         batches_per_epoch=3, batch_size=4, eval_batch_size=64, device="cpu",
                         precision="fp32", progress=False)
    training.train(config, log=lambda message: None)
    return World(model, data, run)


def run_command(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               # Offline for sure: any download goes to a closed local port and fails at once.
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        env.pop(name, None)
    return subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


# --------------------------------------------------------------------------------------------
# Building the bad inputs
# --------------------------------------------------------------------------------------------


def trainer(world: World, out_dir: Path, *extra: str, data: Path | None = None,
            model: Path | None = None) -> list[str]:
    """The trainer's command line for a run of a few seconds (the issue's T, made tiny)."""
    return ["multitask_classifier.py", "--model", str(model or world.model),
            "--data-dir", str(data or world.data), "--out-dir", str(out_dir), "--epochs", "1",
            "--batches-per-epoch", "2", "--batch-size", "4", "--max-train-examples", "8",
            "--eval-batch-size", "64", "--device", "cpu", "--precision", "fp32", "--no-progress",
            *extra]


def data_copy(world: World, tmp: Path, name: str, edit: Callable[[list[list[str]]], list[list[str]]]) -> Path:
    """A copy of the synthetic data whose file `name` has its rows (after the header) edited."""
    folder = shutil.copytree(world.data, tmp / "data")
    path = folder / name
    with open(path, newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle, delimiter="\t"))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter="\t").writerows([header, *edit(rows)])
    return folder


def invalid_labels(rows):
    return [row[:-1] + ["not a number"] for row in rows]


def nine_duplicate_ids(rows):
    return rows[:3] + [row[:1] + [rows[0][1]] + row[2:] for row in rows[3:12]] + rows[12:]


def edited_copy(source: Path, target: Path, edit_config: Callable[[str], str]) -> Path:
    """A copy of the checkpoint folder `source` with the text of its config.json edited."""
    folder = Path(shutil.copytree(source, target))
    config = folder / "config.json"
    config.write_text(edit_config(config.read_text()))
    return folder


def set_vocab_size(value: int) -> Callable[[str], str]:
    return lambda text: re.sub(r'"vocab_size": -?\d+', f'"vocab_size": {value}', text)


def unwritable(tmp: Path) -> Path:
    """A folder path this process cannot create: a read-only folder (as root, where permissions
    do not bind, a path under /sys, which even root cannot write)."""
    if os.geteuid() != 0:
        locked = tmp / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked / "out"
    target = Path("/sys/multibert-test-out")
    try:
        target.mkdir()
    except OSError:
        return target
    target.rmdir()
    pytest.skip("found no folder this process cannot write to")


class Pickled:
    """A pickle that opens (creates) a file when unpickled: code a checkpoint must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# The rows: (case, command, exit status, phrases the output must hold, further checks)
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    setup: Callable[[World, Path], list[str]]  # builds the inputs, returns the command line
    status: int | tuple[int, ...]
    phrases: tuple[str, ...]  # regular expressions, searched in stdout + stderr
    check: Callable[[World, Path, subprocess.CompletedProcess], None] | None = None


def no_training_started(world, tmp, result):
    """The run stopped before it started: it wrote none of its files (train_config.json is the
    first, written as training begins)."""
    for name in ("train_config.json", "metrics.jsonl", "checkpoint.pt"):
        assert not list(tmp.rglob(name)), f"the run started ({name} written) before stopping"


# Case 1: a finished run in --out-dir.
def setup_rerun(world, tmp):
    shutil.copytree(world.run, tmp / "run")
    (tmp / "before.txt").write_text(repr(digests(tmp / "run")))
    return trainer(world, tmp / "run")


def check_rerun(world, tmp, result):
    assert repr(digests(tmp / "run")) == (tmp / "before.txt").read_text(), "the old run was changed"


# Case 2: inputs longer than the model reads.
def check_sentence_answer(world, tmp, result):
    assert "sentiment:" in result.stdout


def check_pair_answer(world, tmp, result):
    assert "paraphrase probability:" in result.stdout and "similarity" in result.stdout


# Case 8.
def setup_out_dir_is_a_file(world, tmp):
    (tmp / "a-file").write_text("keep me")
    return trainer(world, tmp / "a-file")


def check_file_kept(world, tmp, result):
    assert (tmp / "a-file").read_text() == "keep me"


# Case 11.
def setup_pickled_weights(world, tmp):
    folder = Path(shutil.copytree(world.model, tmp / "model"))
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"embeddings.word_embeddings.weight": Pickled(tmp / "pwned")}, handle, protocol=2)
    return trainer(world, tmp / "out", model=folder)


def setup_pickled_training_state(world, tmp):
    # torch.save's zip format, as a real checkpoint.pt, so that the refusal comes from torch's
    # unpickler (whose message carries the colour codes), not from an earlier format check.
    torch.save({"format": 1, "config": Pickled(tmp / "pwned")}, tmp / "checkpoint.pt")
    return trainer(world, tmp / "out", "--resume", str(tmp / "checkpoint.pt"))


def check_no_colour_and_not_run(world, tmp, result):
    assert "\x1b" not in result.stderr, "terminal escape codes in a message written to a pipe"
    assert not (tmp / "pwned").exists(), "pickled code ran"


# Case 12.
def setup_export_to_file(world, tmp):
    (tmp / "a-file").write_text("keep me")
    return ["-m", "multitask.export", str(world.run), str(tmp / "a-file")]


# The leftover temporary checkpoint of a killed write.
def setup_leftover_tmp(world, tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "checkpoint.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    return trainer(world, tmp / "out")


def check_tmp_removed(world, tmp, result):
    assert not list((tmp / "out").glob("*.tmp")), "the leftover temporary checkpoint is still there"


def check_no_data_folder(world, tmp, result):
    assert not (tmp / "no-such-data").exists(), "an empty data folder was left behind"


# The message must blame the value of --lr (the old one blamed a NaN loss, then suggested "a
# lower --lr ... or --skip-nonfinite", which must not match).
NAN_LR = r"(?i)--lr\b[^\n]*\b(nan|not a number|finite|positive)\b"
CASES = [
    Case("1-out-dir-holds-a-finished-run", setup_rerun, (1, 2), (r"--resume", r"--overwrite"),
         check_rerun),
    Case("2-predict-sentence-too-long",
         lambda w, t: ["-m", "multitask.predict", str(w.run), "--sentence", LONG_SENTENCE], 0,
         (r"warning: the sentence is 20,002 tokens long but the model reads at most 64 "
          r"\(the checkpoint's maximum\): 19,938 tokens were cut off",), check_sentence_answer),
    Case("2-predict-pair-too-long",
         lambda w, t: ["-m", "multitask.predict", str(w.run), "--pair", LONG_SENTENCE, "what is the cat ?"], 0,
         (r"warning: the pair \(read together\) is 20,008 tokens long but the model reads at most "
          r"64 \(the checkpoint's maximum\): 19,944 tokens were cut off",), check_pair_answer),
    Case("3-analysis-every-sts-dev-label-invalid",
         lambda w, t: ["-m", "multitask.analysis", str(w.run), "--data-dir",
                       str(data_copy(w, t, "sts-dev.csv", invalid_labels))], 1,
         (r"^error: \S*sts-dev\.csv: no usable examples \(every row was skipped: sts-dev.csv: "
          r"skipped 16 rows with a missing or invalid label",)),
    Case("3-analysis-reports-duplicate-ids",
         lambda w, t: ["-m", "multitask.analysis", str(w.run), "--data-dir",
                       str(data_copy(w, t, "sts-dev.csv", nine_duplicate_ids))], 0,
         (r"note: sts-dev\.csv: skipped 9 rows with a duplicate id \(sts-dev\.csv:5 duplicate id "
          r"'sts00000' \(first on line 2\)", r"\(a\) The 7 STS dev pairs")),  # 16 rows, 9 dropped
    Case("4-lr-nan", lambda w, t: trainer(w, t / "out", "--lr", "nan"), (1, 2), (NAN_LR,),
         no_training_started),
    Case("5-sts-train-header-only",
         lambda w, t: trainer(w, t / "out", data=data_copy(w, t, "sts-train.csv", lambda rows: [])), 1,
         (r"^error: \S*sts-train\.csv: no usable examples \(it has a header line but no rows\)",),
         no_training_started),
    Case("6-every-sts-dev-label-invalid",
         lambda w, t: trainer(w, t / "out", data=data_copy(w, t, "sts-dev.csv", invalid_labels)), 1,
         (r"^error: \S*sts-dev\.csv: no usable examples \(every row was skipped",),
         no_training_started),
    Case("7-data-dir-is-a-file",
         lambda w, t: trainer(w, t / "out", data=w.data / "sts-dev.csv"), 1,
         (r"^error: \S*sts-dev\.csv: the data folder is a file, not a folder\. Point --data-dir",)),
    Case("7-offline-missing-data-dir-is-not-created",
         lambda w, t: trainer(w, t / "out", data=t / "no-such-data"), 1,
         (r"^error: Could not download ids-sst-train\.csv", r"--data-dir"),
         check_no_data_folder),
    Case("8-out-dir-is-a-file", setup_out_dir_is_a_file, (1, 2), (r"a-file|--out-dir",),
         check_file_kept),
    Case("8-out-dir-not-writable", lambda w, t: trainer(w, unwritable(t)), (1, 2),
         (r"multibert-test-out|locked|--out-dir",)),
    Case("9-max-length-1", lambda w, t: trainer(w, t / "out", "--max-length", "1"), (1, 2),
         (r"--max-length",), no_training_started),
    Case("9-max-length-100000", lambda w, t: trainer(w, t / "out", "--max-length", "100000"), (1, 2),
         (r"--max-length",), no_training_started),
    Case("10-lr-nan-skip-nonfinite", lambda w, t: trainer(w, t / "out", "--lr", "nan", "--skip-nonfinite"),
         (1, 2), (NAN_LR,), no_training_started),
    Case("11-config-vocab-size-0",
         lambda w, t: trainer(w, t / "out", model=edited_copy(w.model, t / "model", set_vocab_size(0))), 1,
         (r"^error: \S*config\.json: vocab_size is 0; it must be a whole number",)),
    Case("11-config-vocab-size-minus-5-in-predict",
         lambda w, t: ["-m", "multitask.predict", str(edited_copy(w.run / "best", t / "best", set_vocab_size(-5))),
                       "--sentence", "a fine film"], 1,
         (r"^error: \S*config\.json: vocab_size is -5; it must be a whole number",)),
    Case("11-config-cut-off",
         lambda w, t: trainer(w, t / "out", model=edited_copy(w.model, t / "model", lambda text: text[: len(text) // 2])), 1,
         (r"^error: \S*config\.json: not valid JSON",)),
    Case("11-pickled-weights-refused-without-colour-codes", setup_pickled_weights, 1,
         (r"^error: \S*pytorch_model\.bin: cannot read the weights .*GLOBAL io\.open",
          r"pickled code is refused"), check_no_colour_and_not_run),
    Case("11-pickled-training-state-refused-without-colour-codes", setup_pickled_training_state, 1,
         (r"^error: \S*checkpoint\.pt: cannot read the training checkpoint",), check_no_colour_and_not_run),
    Case("12-export-target-is-a-file", setup_export_to_file, 1,
         (r"^error: \S*a-file: OUT_DIR is an existing file",), check_file_kept),
    Case("12-export-target-not-writable",
         lambda w, t: ["-m", "multitask.export", str(w.run), str(unwritable(t))], 1,
         (r"^error: \S+: cannot write in \S+ \(.+\); choose an OUT_DIR you can write to",)),
    Case("minor-leftover-tmp-checkpoint-removed", setup_leftover_tmp, 0, (), check_tmp_removed),
]


# The rows' commands run a few at a time: most of each one's time is the torch import, which
# overlaps well even on two cores.
WORKERS = int(os.environ.get("MULTIBERT_TEST_WORKERS", "2"))


@pytest.fixture(scope="module")
def outcomes(world, tmp_path_factory, request) -> dict[str, tuple[Path, object]]:
    """Every selected row's (folder, finished process), or (folder, the Skipped its setup raised)."""
    selected = {item.callspec.params["case"].name for item in request.session.items
                if item.originalname == "test_bad_input"}
    results, commands = {}, {}
    for case in CASES:
        if case.name not in selected:
            continue
        tmp = tmp_path_factory.mktemp(case.name)
        try:
            commands[case.name] = case.setup(world, tmp)
        except pytest.skip.Exception as skipped:
            results[case.name] = (tmp, skipped)
            continue
        results[case.name] = (tmp, None)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        running = {name: pool.submit(run_command, argv) for name, argv in commands.items()}
        for name, future in running.items():
            results[name] = (results[name][0], future.result())
    return results


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in CASES])
def test_bad_input(world, outcomes, case):
    tmp, result = outcomes[case.name]
    if isinstance(result, pytest.skip.Exception):
        raise result
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    allowed = case.status if isinstance(case.status, tuple) else (case.status,)
    assert result.returncode in allowed, f"exit {result.returncode}, expected {case.status}\n{output[-3000:]}"
    for phrase in case.phrases:
        assert re.search(phrase, output, re.MULTILINE), f"{phrase!r} not in:\n{output[-3000:]}"
    if case.check is not None:
        case.check(world, tmp, result)


def test_truncation_warnings_follow_the_pair_heads_layouts(world):
    """For a head that reads each sentence of a pair on its own, each one too long is named; the
    pair read together only where a head reads it so."""
    trained = open_checkpoint(world.run)
    assert truncation_warnings(trained, "a short one") == []
    assert len(truncation_warnings(trained, LONG_SENTENCE, "a short one")) == 1  # concat: joint only
    trained.config.sts_head = "cosine"
    warnings = truncation_warnings(trained, LONG_SENTENCE, "a short one")
    assert [w.split(" is ")[0] for w in warnings] == ["warning: the pair (read together)",
                                                       "warning: the first sentence"]
    assert "20,002 tokens long" in warnings[1] and f"at most {LIMIT}" in warnings[1]
    trained.config.paraphrase_head = "siamese"  # now no head reads the pair as one input
    assert [w.split(" is ")[0] for w in truncation_warnings(trained, "a short one", LONG_SENTENCE)] == [
        "warning: the second sentence"]
    trained.config.max_length = 16
    assert "at most 16 (the --max-length it was trained with): 19,986 tokens were cut off" in \
        truncation_warnings(trained, LONG_SENTENCE)[0]
