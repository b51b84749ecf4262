"""What fills one training step (issue 14): a torch.profiler trace of a few steps, summed by kind.

On an H200 the graphed step of bert-base's shape (bf16, batch 32) took 9.8 ms against a floor
of 1.34 ms (benchmarks/measured/). The floor counts only the matrix products and AdamW's memory
traffic, so the gap is some mix of bucket padding, attention's softmax, the elementwise work,
the many small kernels, and time the GPU sits idle. This script measures which. Per pipeline
(`eager`: Trainer.train_step; `graphed`: the same step replayed from CUDA graphs):

- wall time per step, and the GPU's busy time per step (the union of the kernels' intervals:
  kernels on two streams that overlap count once), so the idle share is 1 - busy / wall;
- the number of kernels per step (a graph replay launches them all at once, but each still runs);
- the kernels' time by kind (matrix products, attention, the optimizer's multi-tensor kernels,
  normalisation, elementwise, copies, other; `KINDS` names the patterns) and the top kernels;
- the capturable AdamW alone: its kernels and their time for one eager optimizer step.

    python benchmarks/profile_step.py --device cuda --model FOLDER --random-init   # e.g. bert-base
    python benchmarks/profile_step.py --steps 2 --warmup 1                       # a CPU smoke test

On a CPU there are no kernels: the same tables list the CPU operators by their own time instead
(a check that the script runs, not a measurement of interest).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's packages
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

from encoder import machine_info  # noqa: E402
from training import MINILM, build_model, default_data_dir, trainer_data_dir  # noqa: E402
from bert import AdamW, BertTokenizer  # noqa: E402
from multitask.config import TrainConfig  # noqa: E402
from multitask.heads import TASKS  # noqa: E402
from multitask.samplers import epoch_plan  # noqa: E402
from multitask.training import EpochProgress, Trainer  # noqa: E402

# A kernel's kind, from the first pattern its name matches (case-insensitive), in this order.
KINDS = [
    ("attention", r"flash|fmha|attention|softmax|efficient_attention"),
    ("optimizer", r"foreach|multi_tensor|multitensor"),
    ("matmul", r"gemm|cutlass|cublas|nvjet|sm\d\d_xmma|matmul|\bmm\b|addmm|linear"),
    ("normalisation", r"layer_norm|layernorm|native_layer_norm"),
    ("copy", r"memcpy|memset|copy|cat|index|gather|scatter"),
    ("elementwise", r"elementwise|vectorized|unrolled|reduce|gelu|dropout|fused|mul|add|div|tanh|where"),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def work_events(trace, device: torch.device) -> list[tuple[str, float, float]]:
    """(name, start_us, end_us) of what did the work: the GPU's kernels and copies on CUDA; on a
    CPU, each operator from its start for its own time (without the operators it called), so no
    time counts twice in the sums (the union of these intervals only approximates busy time)."""
    events = trace.events()
    if device.type == "cuda":
        return [(e.name, e.time_range.start, e.time_range.end) for e in events
                if e.device_type == DeviceType.CUDA]
    return [(e.name, e.time_range.start, e.time_range.start + e.self_cpu_time_total) for e in events
            if e.device_type == DeviceType.CPU and e.self_cpu_time_total > 0]


def busy_us(events: list[tuple[str, float, float]]) -> float:
    """The length of the union of the events' intervals (overlaps count once)."""
    total, reach = 0.0, -float("inf")
    for _, start, end in sorted(events, key=lambda e: e[1]):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def summarise(events: list[tuple[str, float, float]], steps: int, wall_s: float, top: int) -> dict:
    """Per step: wall time, busy time, kernel count, time by kind, and the top kernels."""
    by_kind: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}
    for name, start, end in events:
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + (end - start)
        by_name.setdefault(name, []).append(end - start)
    busy_ms = busy_us(events) / 1000 / steps
    wall_ms = 1000 * wall_s / steps
    ranked = sorted(by_name.items(), key=lambda item: -sum(item[1]))[:top]
    return {
        "steps": steps, "wall_ms_per_step": wall_ms, "busy_ms_per_step": busy_ms,
        "idle_share": max(0.0, 1.0 - busy_ms / wall_ms) if wall_ms > 0 else None,
        "kernels_per_step": len(events) / steps,
        "ms_per_step_by_kind": {k: v / 1000 / steps for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top": [{"name": name[:160], "kind": kind_of(name), "calls_per_step": len(times) / steps,
                 "ms_per_step": sum(times) / 1000 / steps} for name, times in ranked],
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_steps(trainer: Trainer, plan: list[str], device: torch.device, top: int) -> dict:
    """Profile `trainer.train_step` over `plan` (already warmed up) and summarise it."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    progress = EpochProgress(1)
    sync(device)
    with profile(activities=activities) as trace:
        started = time.perf_counter()
        for task in plan:
            trainer.train_step((task,), False, progress)
        sync(device)
        wall = time.perf_counter() - started
    return summarise(work_events(trace, device), len(plan), wall, top)


def profile_optimizer(trainer: Trainer, device: torch.device, top: int) -> dict:
    """One eager step of the capturable AdamW over the model's parameters (gradients of ones)."""
    parameters = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = AdamW(parameters, lr=1e-5, capturable=True)
    for p in parameters:
        p.grad = torch.ones_like(p)
    optimizer.step()  # the first step creates the state (not profiled)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as trace:
        started = time.perf_counter()
        optimizer.step()
        sync(device)
        wall = time.perf_counter() - started
    for p in parameters:
        p.grad = None
    summary = summarise(work_events(trace, device), 1, wall, top)
    summary["parameter_tensors"] = len(parameters)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MINILM, help="checkpoint folder or id (default: the offline MiniLM)")
    parser.add_argument("--random-init", action="store_true", help="random weights of the checkpoint's shape")
    parser.add_argument("--data-dir", default=str(default_data_dir()))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=300, help="untimed steps first (graph capture happens there)")
    parser.add_argument("--steps", type=int, default=30, help="profiled steps per pipeline")
    parser.add_argument("--pipelines", default=None, help="eager,graphed (default: both on CUDA, eager on a CPU)")
    parser.add_argument("--top", type=int, default=15, help="kernels listed per pipeline")
    parser.add_argument("--out", default="benchmarks/results/profile.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to this torch")
    pipelines = (args.pipelines or ("eager,graphed" if device.type == "cuda" else "eager")).split(",")
    if "graphed" in pipelines and device.type != "cuda":
        parser.error("the graphed pipeline needs --device cuda")
    if any(name not in ("eager", "graphed") for name in pipelines):
        parser.error(f"--pipelines takes eager and/or graphed, got {args.pipelines!r}")

    tokenizer = BertTokenizer.from_pretrained(args.model)
    report = {"machine": machine_info(device.type), "model": args.model, "random_init": args.random_init,
              "batch_size": args.batch_size, "pipelines": {}}
    with tempfile.TemporaryDirectory() as workdir:
        data_dir = str(trainer_data_dir(Path(args.data_dir), Path(workdir)))
        for name in pipelines:
            config = TrainConfig(model=args.model, sampler="annealed", sts_head="concat", data_dir=data_dir,
                                 out_dir=str(Path(workdir) / name), batch_size=args.batch_size,
                                 precision=args.precision, device=device.type, progress=False, save_every=None,
                                 cuda_graphs=name == "graphed")
            model = build_model(args.model, args.random_init, config.seed)
            trainer = Trainer(config, log=lambda message: None, model=model, tokenizer=tokenizer)
            plan = epoch_plan("annealed", trainer.task_sizes, 1, 1, args.warmup + args.steps, config.seed)
            warm = [TASKS[i % len(TASKS)] for i in range(min(args.warmup, 3))] + plan[:args.warmup]
            progress = EpochProgress(1)
            for task in warm:  # (every shape met here is captured here, not in the profile)
                trainer.train_step((task,), False, progress)
            before = len(trainer.graphs.captured) if trainer.graphs is not None else 0
            result = profile_steps(trainer, plan[args.warmup:], device, args.top)
            result["precision"] = trainer.precision
            if trainer.graphs is not None:  # (a shape first met in the profile: eager once, then captured)
                result["graphs"] = len(trainer.graphs.captured)
                result["graphs_captured_during_profile"] = len(trainer.graphs.captured) - before
            report["pipelines"][name] = result
            print(f"{name}: {result['wall_ms_per_step']:.2f} ms a step, the device busy "
                  f"{result['busy_ms_per_step']:.2f} ms, {result['kernels_per_step']:.0f} kernels a step; by kind (ms): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in result["ms_per_step_by_kind"].items()), flush=True)
        report["capturable_adamw"] = profile_optimizer(trainer, device, args.top)
        adamw = report["capturable_adamw"]
        print(f"capturable AdamW, one eager step over {adamw['parameter_tensors']} tensors: "
              f"{adamw['kernels_per_step']:.0f} kernels, {adamw['busy_ms_per_step']:.2f} ms busy, "
              f"{adamw['wall_ms_per_step']:.2f} ms wall", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
