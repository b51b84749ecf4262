"""The benchmark scripts run end to end (tiny settings) and report what they promise.

Their timings are not checked (no timed assertions in tests): what is checked is that each
script finishes, writes its JSON, and that the numbers it derives hold together.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic import write_dataset, write_tiny_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    return write_tiny_checkpoint(root / "model", None), write_dataset(root / "data", train=64, dev=40, test=4)


def run_script(name: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / name), *map(str, args)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_training_benchmark_side_by_side_with_the_reference_and_the_floor(tmp_path, shared_data_dir, minilm_dir):
    """Ours, naive and issue 14's reference (transformers + fused AdamW; eager here, to keep the
    test short), on the real training files (whose sentences differ in length, unlike the
    synthetic ones) with a tiny random model that uses the real vocabulary: each pipeline's
    tokens, padding and seconds per step, and its ratio to the floor estimated from the measured
    peak and bandwidth. (One run for all of it: each run costs the test suite half a minute.)"""
    model_dir = write_tiny_checkpoint(tmp_path / "model", minilm_dir)
    out = tmp_path / "training.json"
    result = run_script("training.py", "--model", model_dir, "--random-init", "--data-dir", shared_data_dir,
                        "--device", "cpu", "--precision", "fp32", "--steps", 6, "--warmup", 3, "--chunk", 3,
                        "--optimizer-steps", 2, "--peak-size", 256, "--peak-repeats", 1, "--bandwidth-mb", 16,
                        "--pipelines", "ours,reference,naive", "--reference-eager", "--out", out)
    assert "ours / naive" in result.stdout and "floor:" in result.stdout
    report = json.loads(out.read_text())
    assert list(report["seconds_per_step"]) == ["ours", "reference", "naive"] and report["gpu"] is None
    ours, naive, reference = (report["results"][name] for name in ("ours", "naive", "reference"))
    for pipeline in (ours, naive):
        assert pipeline["steps"] == 6 and pipeline["real_tokens"] > 0
        assert pipeline["tokens_per_s"] == pytest.approx(pipeline["real_tokens"] / pipeline["seconds"], rel=1e-6)
        assert 0.0 <= pipeline["padding_fraction"] < 1.0
    assert ours["padding_fraction"] < naive["padding_fraction"]  # length grouping at work
    assert report["ours_over_naive_tokens_per_s"] == pytest.approx(ours["tokens_per_s"] / naive["tokens_per_s"], rel=1e-6)
    assert report["peak"]["best"]["fp32"]["flop_per_s"] > 0
    floor = report["floor"]
    assert floor["seconds_per_step"] == pytest.approx(floor["matmul_s"] + floor["optimizer_s"])
    assert floor["bandwidth"]["bytes_per_s"] > 0 and floor["measured_on"] == "ours"
    for name, pipeline in report["results"].items():
        assert pipeline["seconds_per_step"] == report["seconds_per_step"][name] > 0
        assert pipeline["over_floor"] == pytest.approx(pipeline["seconds_per_step"] / floor["seconds_per_step"])
    assert reference["real_tokens"] == ours["real_tokens"]  # the very same batches
    assert reference["mean_loss"] == pytest.approx(ours["mean_loss"], rel=0.1)  # same start, similar training


def test_training_benchmark_refuses_graphed_without_a_gpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "training.py"), "--device", "cpu",
                             "--pipelines", "ours,graphed", "--out", tmp_path / "x.json"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "needs --device cuda" in result.stderr and "Traceback" not in result.stderr


def test_inference_benchmark_pipelines_predict_the_same(tiny_setup, tmp_path):
    model_dir, data_dir = tiny_setup
    out = tmp_path / "inference.json"
    run_script("inference.py", "--model", model_dir, "--random-init", "--data-dir", data_dir,
               "--device", "cpu", "--precision", "fp32", "--batch-size", 16, "--repeats", 1, "--out", out)
    report = json.loads(out.read_text())
    assert [row["task"] for row in report["results"]] == ["sst", "qqp", "sts"]
    for row in report["results"]:
        assert row["examples"] == 40
        assert row["max_abs_difference"] < 1e-4  # both fp32: the same predictions, to rounding
        assert row["ours_examples_per_s"] > 0 and row["naive_examples_per_s"] > 0


def test_padding_benchmark_counts_bucket_padding(tiny_setup, tmp_path):
    model_dir, data_dir = tiny_setup
    out = tmp_path / "padding.json"
    result = run_script("padding.py", "--model", model_dir, "--data-dir", data_dir, "--out", out)
    assert "buckets" in result.stdout
    report = json.loads(out.read_text())
    for case, row in report["results"].items():
        longest, buckets = row["longest"], row["buckets"]
        assert longest["real_tokens"] == buckets["real_tokens"] > 0  # the same batches
        assert buckets["tokens"] >= longest["tokens"]  # buckets only add padding
        assert buckets["distinct_lengths"] <= 8
        assert buckets["tokens_per_real_token"] == pytest.approx(buckets["tokens"] / buckets["real_tokens"])
    assert report["schemes"]["buckets"][-1] == report["cap"] <= 512


def test_profile_step_sums_the_work_by_kind(tiny_setup, tmp_path):
    model_dir, data_dir = tiny_setup
    out = tmp_path / "profile.json"
    result = run_script("profile_step.py", "--model", model_dir, "--random-init", "--data-dir", data_dir,
                        "--device", "cpu", "--precision", "fp32", "--batch-size", 8, "--warmup", 1, "--steps", 3,
                        "--out", out)
    assert "capturable AdamW" in result.stdout
    report = json.loads(out.read_text())
    eager = report["pipelines"]["eager"]
    assert eager["steps"] == 3 and eager["wall_ms_per_step"] > 0 and eager["kernels_per_step"] > 0
    by_kind = eager["ms_per_step_by_kind"]
    assert sum(row["ms_per_step"] for row in eager["top"]) <= sum(by_kind.values()) * (1 + 1e-9)
    assert {"matmul", "elementwise"} <= set(by_kind)  # a training step has both
    adamw = report["capturable_adamw"]
    assert adamw["parameter_tensors"] > 0 and adamw["kernels_per_step"] >= adamw["parameter_tensors"]
    assert "optimizer" in adamw["ms_per_step_by_kind"]  # its _foreach_ operators


def test_profile_step_busy_time_counts_overlaps_once():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import profile_step
    events = [("a", 0.0, 10.0), ("b", 5.0, 15.0), ("c", 20.0, 25.0), ("d", 21.0, 22.0)]
    assert profile_step.busy_us(events) == 20.0  # [0, 15] and [20, 25]
    summary = profile_step.summarise(events, steps=2, wall_s=50e-6, top=2)
    assert summary["busy_ms_per_step"] == pytest.approx(0.010) and summary["idle_share"] == pytest.approx(0.6)
    assert summary["kernels_per_step"] == 2.0
    assert [row["name"] for row in summary["top"]] == ["a", "b"]
    assert profile_step.kind_of("void cutlass::Kernel<sm90_xmma_gemm_bf16>") == "matmul"
    assert profile_step.kind_of("void at::native::multi_tensor_apply_kernel") == "optimizer"
    assert profile_step.kind_of("pytorch_flash::flash_fwd_kernel") == "attention"
