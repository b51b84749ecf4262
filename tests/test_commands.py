"""The installed commands (setup.py's console_scripts): each runs, and its --help names what it
reads and what it writes. They exist once the project is installed (`pip install -e '.[test]'`,
as .ci/run does)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# command: phrases its --help must hold (its inputs, then its outputs)
COMMANDS = {
    "multibert-train": ["--model", "--data-dir", "CS224N csv files", "--out-dir", "metrics.jsonl"],
    "multibert-predict": ["CHECKPOINT_DIR", "--sentence", "--pair", "--input FILE", "--output OUT_CSV",
                          "printed"],
    "multibert-export": ["CHECKPOINT_DIR", "OUT_DIR", "OUT_DIR/sst", "OUT_DIR/paraphrase", "OUT_DIR/sts"],
    "multibert-results": ["RUNS_DIR", "results.md", "results.csv", "dev_metrics.png"],
    "multibert-analysis": ["CHECKPOINT_DIR", "--data-dir", "standard output"],
}


def installed(command: str) -> str:
    """The command's path: beside this Python (its virtual environment), else on PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which(command, path=search)
    if path is None:
        pytest.fail(f"{command} is not installed; run pip install -e '.[test]' (setup.py's "
                    f"entry points)")
    return path


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_installed_command_help_names_inputs_and_outputs(command):
    process = subprocess.run([installed(command), "--help"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "COLUMNS": "100"})
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith(f"usage: {command} "), process.stdout[:200]  # its own name
    text = " ".join(process.stdout.split())  # argparse wraps lines where it likes
    missing = [phrase for phrase in COMMANDS[command] if phrase not in text]
    assert not missing, f"{command} --help does not mention {missing}"
