"""--cuda-graphs where it cannot apply: clear refusals, on any machine (the graphed step itself is
tested in tests/test_gpu.py, which needs a CUDA GPU)."""

import argparse
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from multitask.config import TrainConfig, add_arguments, config_from_args
from multitask.graphs import check_cuda_graphs
from multitask.runtime import RuntimeSetupError

from synthetic import write_dataset, write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
ONE_PROCESS = SimpleNamespace(enabled=False)
CUDA = torch.device("cuda")  # (only compared, never used: these checks run without a GPU)


def test_the_flag_is_off_by_default_and_parsed():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert TrainConfig().cuda_graphs is False
    assert config_from_args(parser.parse_args([])).cuda_graphs is False
    assert config_from_args(parser.parse_args(["--cuda-graphs"])).cuda_graphs is True


def test_nothing_is_checked_when_the_flag_is_off():
    check_cuda_graphs(TrainConfig(), torch.device("cpu"), "fp16", SimpleNamespace(enabled=True))


@pytest.mark.parametrize("device,precision,distributed,overrides,phrase", [
    (torch.device("cpu"), "fp32", ONE_PROCESS, {}, "needs a CUDA GPU; this run is on cpu"),
    (CUDA, "bf16", SimpleNamespace(enabled=True), {}, "one process only"),
    (CUDA, "fp16", ONE_PROCESS, {}, "--precision fp16"),
    (CUDA, "bf16", ONE_PROCESS, {"grad_accum": 2}, "--grad-accum 2"),
    (CUDA, "bf16", ONE_PROCESS, {"skip_nonfinite": True}, "--skip-nonfinite"),
    (CUDA, "bf16", ONE_PROCESS, {"probe_every": 10}, "--probe-every"),
    (CUDA, "bf16", ONE_PROCESS, {"teachers": "sst=runs/sst"}, "--teachers"),
])
def test_refusals_name_the_flag_and_why(device, precision, distributed, overrides, phrase):
    with pytest.raises(RuntimeSetupError, match="--cuda-graphs") as caught:
        check_cuda_graphs(TrainConfig(cuda_graphs=True, **overrides), device, precision, distributed)
    assert phrase in str(caught.value)


def test_accepted_on_a_gpu_in_one_process_with_bf16_or_fp32():
    for precision in ("bf16", "fp32"):
        check_cuda_graphs(TrainConfig(cuda_graphs=True), CUDA, precision, ONE_PROCESS)


def test_a_cpu_run_with_the_flag_stops_with_a_message(tmp_path):
    """As a user runs it: exit 1, the flag and the reason in one line, no traceback, no training."""
    model = write_tiny_checkpoint(tmp_path / "model", None)
    data = write_dataset(tmp_path / "data", train=16, dev=8, test=4)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "multitask_classifier.py"), "--cuda-graphs", "--device", "cpu",
         "--model", str(model), "--data-dir", str(data), "--out-dir", str(tmp_path / "run"), "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "--cuda-graphs" in result.stderr and "needs a CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
