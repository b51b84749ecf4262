"""Benchmark 3: inference throughput, predicting the three dev sets, ours as shipped against a
naive loop.

One model predicts SST dev, Quora dev and STS dev, two ways:

- **ours**, as shipped: `multitask.evaluation.predict_split`, what every epoch's evaluation runs.
  The dev sets are tokenized once (`tokenize_split`, as a training run does before its first
  epoch); batches of 128 are cut from the examples sorted by length (the least padding possible),
  under `torch.inference_mode` and, with `--precision auto`, bf16 autocast where the hardware has
  native bf16; the predictions are put back in file order.
- **naive**: batches of 128 in file order, each tokenized when its turn comes and padded to its
  longest member, fp32, under a plain `torch.no_grad`.

Reported per dev set and in total: examples per second of each and their ratio. Ours is shown
twice: prediction alone (what each epoch's evaluation costs, the tokens being ready) and with its
one-time tokenization added (what predicting a file once costs). Also the share of padding in
each pipeline's batches, and, as an honesty check, the largest difference between the two
pipelines' predictions (fp32 on both sides: rounding only; bf16: bf16's rounding).

The model is the encoder of `--model` with the three task heads of a training run (the concat STS
head). The heads are fresh, random ones: the predictions mean nothing, but the time they take is
the same as a trained model's, and time is what is measured.

The pipelines alternate task by task (ours, naive, then naive, ours on the next), so that what
else the machine does slows both alike; each dev set is predicted `--repeats` times per pipeline,
and the median counts. On a CPU, by default, each dev set is cut to its first 1000 examples
(`--max-examples`: SST dev has 1101, Quora dev 3214 in the offline copy, STS dev 863) and predicted
twice per pipeline, so that the run takes a few minutes; on a GPU the default is the whole dev sets,
5 times.

    python benchmarks/inference.py                       # MiniLM on this machine (CPU)
    python benchmarks/inference.py --max-examples 0 --repeats 3   # the whole dev sets
    python benchmarks/inference.py --device cuda --model FOLDER --random-init
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))  # the sibling benchmark scripts

from training import (  # noqa: E402  (training.py also puts the repository on sys.path)
    FILE_KEYS,
    MINILM,
    add_common_arguments,
    apply_common_arguments,
    build_model,
    load_split,
    require_files,
    run_and_report,
    run_main,
    synchronize,
)
from encoder import machine_info  # noqa: E402

from bert import BertTokenizer  # noqa: E402
from multitask.batching import Batch, TokenizedSplit, plan_batches, tokenize_split  # noqa: E402
from multitask.data import Split  # noqa: E402
from multitask.evaluation import predict_split  # noqa: E402
from multitask.heads import TASKS, MultitaskBert, layouts  # noqa: E402
from multitask.runtime import resolve_precision  # noqa: E402


@dataclass
class Settings:
    """What to measure; filled from the command line."""

    model: str = MINILM
    random_init: bool = False
    data_dir: str = ""
    device: str = "cpu"
    precision: str = "auto"  # ours; the naive loop is fp32
    batch_size: int = 128  # the training runs' eval_batch_size
    max_examples: int = 1000  # per dev set, the first ones in file order; 0: all
    repeats: int = 2
    seed: int = 11711
    out: str = "benchmarks/results/inference.json"


def naive_predict(model: MultitaskBert, tokenizer: BertTokenizer, task: str, examples: list,
                  batch_size: int, device: torch.device) -> np.ndarray:
    """The first loop one would write: file order, tokenize each batch, fp32, torch.no_grad."""
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            if task == "sst":
                inputs = tokenizer([e.sentence for e in chunk])
            else:  # the concat head reads a pair as one input: [CLS] a [SEP] b [SEP]
                inputs = tokenizer([e.sentence1 for e in chunk], [e.sentence2 for e in chunk])
            batch = Batch(task, np.arange(start, start + len(chunk)), inputs, None)
            outputs.append(model.predict(batch.to(device)).float().cpu().numpy())
    return np.concatenate(outputs)


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """The share of padding in these batches: each batch is padded to its longest member."""
    padded = sum(len(rows) * int(lengths[rows].max()) for rows in batches)
    return 1.0 - int(lengths.sum()) / padded


def timed(run, device: torch.device) -> tuple[float, np.ndarray]:
    synchronize(device)
    start = time.perf_counter()
    predictions = run()
    synchronize(device)
    return time.perf_counter() - start, predictions


def run(settings: Settings) -> dict:
    device = torch.device(settings.device)
    data_dir = Path(settings.data_dir)
    paths = require_files(data_dir, [f"{FILE_KEYS[task]}-dev" for task in TASKS])
    machine = machine_info(device.type)  # first: whatever it needs fails before the long part
    precision = resolve_precision(settings.precision, device)

    weights = "random weights of its shape" if settings.random_init else "its weights"
    print(f"model: {settings.model} ({weights}) with fresh, random task heads (concat STS head): "
          f"the predictions mean nothing, their speed is what is measured", flush=True)
    tokenizer = BertTokenizer.from_pretrained(settings.model)
    model = build_model(settings.model, settings.random_init, settings.seed).to(device).eval()

    splits: dict[str, Split] = {}
    for task in TASKS:
        split = load_split(task, paths[f"{FILE_KEYS[task]}-dev"])
        total = len(split.examples)
        if settings.max_examples and total > settings.max_examples:
            split = Split(split.name, split.path, split.examples[:settings.max_examples], split.skipped)
            print(f"  {task} dev: the first {settings.max_examples} of {total} examples "
                  f"(--max-examples; 0 for all)")
        splits[task] = split

    # Ours tokenizes each dev set once (a training run does it before its first epoch).
    tokenized: dict[str, TokenizedSplit] = {}
    tokenize_seconds: dict[str, float] = {}
    tokenizer.encode(["warm up the tokenizer"], ["and its pair template"])  # its first-call costs
    for task in TASKS:
        start = time.perf_counter()
        tokenized[task] = tokenize_split(splits[task], task, tokenizer, layouts("concat")[task])
        tokenize_seconds[task] = time.perf_counter() - start

    def ours(task: str, split: TokenizedSplit) -> np.ndarray:
        return predict_split(model, split, settings.batch_size, tokenizer.pad_token_id, device, precision)

    def naive(task: str, examples: list) -> np.ndarray:
        return naive_predict(model, tokenizer, task, examples, settings.batch_size, device)

    pipelines = {"ours": ours, "naive": naive}
    inputs = {"ours": tokenized, "naive": {task: splits[task].examples for task in TASKS}}

    print(f"warm-up: one batch of each dev set per pipeline, not timed; ours in {precision}, "
          f"naive in fp32", flush=True)
    for task in TASKS:
        first = min(settings.batch_size, len(tokenized[task]))
        ours(task, tokenized[task].subset(np.arange(first)))
        naive(task, splits[task].examples[:first])

    times = {name: {task: [] for task in TASKS} for name in pipelines}
    predictions: dict[str, dict[str, np.ndarray]] = {name: {} for name in pipelines}
    names = list(pipelines)
    turn = 0
    for repeat in range(settings.repeats):
        for task in TASKS:
            for name in names if turn % 2 == 0 else names[::-1]:
                seconds, predicted = timed(lambda: pipelines[name](task, inputs[name][task]), device)
                times[name][task].append(seconds)
                predictions[name].setdefault(task, predicted)  # the first run's, for the check
            turn += 1
        print(f"  repeat {repeat + 1}/{settings.repeats}: " + ", ".join(
            f"{name} {sum(times[name][t][-1] for t in TASKS):.2f} s" for name in names), flush=True)

    rows = []
    for task in TASKS:
        n = len(tokenized[task])
        lengths = tokenized[task].lengths()
        ours_s = statistics.median(times["ours"][task])
        naive_s = statistics.median(times["naive"][task])
        difference = np.abs(predictions["ours"][task] - predictions["naive"][task]).max()
        rows.append({
            "task": task, "examples": n,
            "ours_seconds": ours_s, "naive_seconds": naive_s, "tokenize_seconds": tokenize_seconds[task],
            "ours_examples_per_s": n / ours_s,
            "ours_with_tokenize_examples_per_s": n / (ours_s + tokenize_seconds[task]),
            "naive_examples_per_s": n / naive_s,
            "ratio": naive_s / ours_s,
            "ratio_with_tokenize": naive_s / (ours_s + tokenize_seconds[task]),
            "ours_padding": padding_fraction(lengths, plan_batches(lengths, settings.batch_size, None)),
            "naive_padding": padding_fraction(lengths, [np.arange(i, min(i + settings.batch_size, n))
                                                        for i in range(0, n, settings.batch_size)]),
            "max_abs_difference": float(difference),
            "ours_samples_s": [round(t, 4) for t in times["ours"][task]],
            "naive_samples_s": [round(t, 4) for t in times["naive"][task]],
        })
    n = sum(r["examples"] for r in rows)
    ours_s = sum(r["ours_seconds"] for r in rows)
    naive_s = sum(r["naive_seconds"] for r in rows)
    tokenize_s = sum(r["tokenize_seconds"] for r in rows)
    total = {"task": "total", "examples": n, "ours_seconds": ours_s, "naive_seconds": naive_s,
             "tokenize_seconds": tokenize_s, "ours_examples_per_s": n / ours_s,
             "ours_with_tokenize_examples_per_s": n / (ours_s + tokenize_s),
             "naive_examples_per_s": n / naive_s, "ratio": naive_s / ours_s,
             "ratio_with_tokenize": naive_s / (ours_s + tokenize_s)}
    return {"machine": machine, "settings": asdict(settings), "precision": precision,
            "results": rows, "total": total}


def print_report(report: dict) -> None:
    columns = ["dev set", "examples", "ours ex/s", "+tokenize", "naive ex/s", "ours/naive",
               "(+tok)", "pad ours", "pad naive", "max |diff|"]
    widths = [7, 8, 10, 10, 10, 10, 6, 8, 9, 10]
    print()
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in report["results"] + [report["total"]]:
        values = [r["task"], r["examples"], f"{r['ours_examples_per_s']:.0f}",
                  f"{r['ours_with_tokenize_examples_per_s']:.0f}", f"{r['naive_examples_per_s']:.0f}",
                  f"{r['ratio']:.2f}x", f"{r['ratio_with_tokenize']:.2f}x",
                  f"{100 * r['ours_padding']:.1f}%" if "ours_padding" in r else "",
                  f"{100 * r['naive_padding']:.1f}%" if "naive_padding" in r else "",
                  f"{r['max_abs_difference']:.1e}" if "max_abs_difference" in r else ""]
        print("  ".join(str(v).rjust(w) for v, w in zip(values, widths)))
    settings = report["settings"]
    print(f"\n(examples per second, medians of {settings['repeats']} runs; ours in "
          f"{report['precision']}, naive in fp32; batches of {settings['batch_size']}. "
          f"+tokenize: ours with its one-time tokenization added, which each epoch's evaluation "
          f"does not pay. ours/naive: naive time over ours. max |diff|: the largest difference "
          f"between the two pipelines' predictions: SST class probabilities, Quora probability, "
          f"STS score on 0..5)")


def parse_args(argv: list[str] | None = None) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, defaults.out)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="examples per batch (a training run's --eval-batch-size)")
    parser.add_argument("--max-examples", type=int, default=None,
                        help="predict only the first N examples of each dev set, 0: all (default: "
                             f"{defaults.max_examples} on a CPU, all on a GPU)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed predictions of each dev set per pipeline, the median counts "
                             f"(default: {defaults.repeats} on a CPU, 5 on a GPU)")
    args = parser.parse_args(argv)
    apply_common_arguments(parser, args)
    on_gpu = args.device == "cuda"
    if args.max_examples is None:
        args.max_examples = 0 if on_gpu else defaults.max_examples
    if args.repeats is None:
        args.repeats = 5 if on_gpu else defaults.repeats
    if args.batch_size < 1 or args.repeats < 1 or args.max_examples < 0:
        parser.error("--batch-size and --repeats must be at least 1, --max-examples at least 0")
    return Settings(model=args.model, random_init=args.random_init, data_dir=str(args.data_dir),
                    device=args.device, precision=args.precision, batch_size=args.batch_size,
                    max_examples=args.max_examples, repeats=args.repeats, seed=args.seed, out=args.out)


def main(argv: list[str] | None = None) -> None:
    run_and_report(run, parse_args(argv), print_report)


if __name__ == "__main__":
    run_main(main)
