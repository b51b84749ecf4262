"""Benchmark 4: what length buckets cost in padding, on the real training files.

A step replayed from a CUDA graph needs the shapes it was captured with, so under --cuda-graphs
every batch is padded up to one of a few bucket lengths (multitask/batching.py). This script
counts, without a model or a clock, how many more tokens that makes the encoder process: for
each task's training file, one seeded epoch of batches planned exactly as training plans them
(length-grouped pools, batches of 32), padded three ways:

- **longest**: to the batch's longest input, as shipped (no buckets);
- **buckets**: to the smallest of `training_buckets` that holds it, what --cuda-graphs uses: the
  default boundaries, then the longest training input rounded up to a multiple of 8 (the cap);
- alternatives, for comparison: the same boundaries capped at the tokenizer's maximum (512)
  instead, powers of two, and coarser boundaries (16, 32, 48, 64, 96, 128, 256), all capped at
  the longest input as the default.

Reported per task and layout, and over all tasks weighted by the annealed sampler's first-epoch
mix (proportional to dataset size): the padding fraction (padding tokens / all tokens, what
metrics.jsonl reports as `padding_fraction`), the tokens processed per real token (the cost
multiplier: 1.25 means a quarter more work) and how many distinct batch lengths occur (one CUDA
graph each per task).

    python benchmarks/padding.py                        # the real data, MiniLM's (= bert-base's) vocab
    python benchmarks/padding.py --out benchmarks/measured/DATE-cpu-padding.json
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))  # run as a script from a checkout, installed or not
sys.path.insert(0, str(BENCHMARKS))

from bert import BertTokenizer  # noqa: E402
from multitask.batching import (BUCKETS, bucket_length, length_buckets, plan_batches,  # noqa: E402
                                tokenize_split, training_buckets)
from training import (FILE_KEYS, MINILM, default_data_dir, load_split, require_files,  # noqa: E402
                      run_and_report, run_main)
from encoder import machine_info  # noqa: E402

# (task, layout): SST alone; QQP and the concat STS head as joint pairs; the dot, cosine and MNR
# STS heads encode each sentence alone, both stacked in one batch.
CASES = [("sst", "single"), ("qqp", "joint"), ("sts", "joint"), ("sts", "separate")]
ALTERNATIVES = {
    "powers_of_two": (16, 32, 64, 128, 256),
    "coarse": (16, 32, 48, 64, 96, 128, 256),  # the brief's example boundaries, 256 then the cap
}


@dataclass
class Settings:
    model: str = MINILM
    data_dir: str = str(default_data_dir())
    batch_size: int = 32
    max_length: int | None = None  # the cap (default: the tokenizer's maximum, 512 for BERT)
    seed: int = 11711
    out: str = "benchmarks/results/padding.json"


def padded_tokens(first: np.ndarray, second: np.ndarray | None, batches: list[np.ndarray],
                  buckets: tuple[int, ...] | None) -> tuple[int, int, set[int]]:
    """(real tokens, tokens after padding, the distinct padded lengths) over the batches.

    `first` and `second` are the token counts of each example's one or two inputs; a "separate"
    batch stacks both sentences of its B pairs into 2B rows of one length.
    """
    real = total = 0
    lengths = set()
    for rows in batches:
        longest = int(first[rows].max() if second is None else max(first[rows].max(), second[rows].max()))
        length = bucket_length(longest, buckets)
        count = len(rows) * (1 if second is None else 2)
        real += int(first[rows].sum()) + (0 if second is None else int(second[rows].sum()))
        total += count * length
        lengths.add(length)
    return real, total, lengths


def run(settings: Settings) -> dict:
    data_dir = Path(settings.data_dir)
    paths = require_files(data_dir, [f"{FILE_KEYS[task]}-train" for task in FILE_KEYS])
    tokenizer = BertTokenizer.from_pretrained(settings.model)
    limit = settings.max_length or tokenizer.model_max_length
    splits = {f"{task}-{layout}": tokenize_split(load_split(task, paths[f"{FILE_KEYS[task]}-train"], report=False),
                                                 task, tokenizer, layout, settings.max_length)
              for task, layout in CASES}
    buckets = training_buckets(list(splits.values()), limit)
    cap = buckets[-1]
    schemes = {"longest": None, "buckets": buckets, "buckets_cap_512": length_buckets(limit, BUCKETS)}
    schemes.update({name: length_buckets(cap, bounds) for name, bounds in ALTERNATIVES.items()})
    results, sizes = {}, {}
    for task, layout in CASES:
        split = splits[f"{task}-{layout}"]
        first = np.array([len(e.input_ids) for e in split.first])
        second = None if split.second is None else np.array([len(e.input_ids) for e in split.second])
        # One epoch, planned as BatchStream plans its first pass (seeded by (seed, pass 0)).
        rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 0]))
        batches = plan_batches(split.lengths(), settings.batch_size, rng, group_by_length=True)
        case = f"{task}-{layout}"
        sizes[case] = len(split)
        results[case] = {}
        for name, buckets in schemes.items():
            real, total, lengths = padded_tokens(first, second, batches, buckets)
            results[case][name] = {"real_tokens": real, "tokens": total, "padding_fraction": 1 - real / total,
                                   "tokens_per_real_token": total / real, "distinct_lengths": len(lengths)}
    # The mix of a multitask epoch with the concat STS head (the default): each task's batches in
    # proportion to its dataset size (the annealed sampler's first epoch), so per-token sums.
    overall = {}
    for name in schemes:
        cases = ["sst-single", "qqp-joint", "sts-joint"]
        real = sum(results[c][name]["real_tokens"] for c in cases)
        total = sum(results[c][name]["tokens"] for c in cases)
        overall[name] = {"padding_fraction": 1 - real / total, "tokens_per_real_token": total / real}
    return {"machine": machine_info("cpu"), "settings": asdict(settings), "cap": cap,
            "schemes": {k: v for k, v in schemes.items()}, "examples": sizes, "results": results,
            "overall_concat_head": overall}


def print_report(report: dict) -> None:
    schemes = list(report["schemes"])
    print(f"\npadding fraction (tokens per real token, distinct lengths) per scheme; batches of "
          f"{report['settings']['batch_size']}, length-grouped; the longest input, rounded up: {report['cap']}")
    print("case".ljust(14) + "".join(name.rjust(22) for name in schemes))
    for case, row in report["results"].items():
        print(case.ljust(14) + "".join(
            f"{100 * row[n]['padding_fraction']:5.1f}% ({row[n]['tokens_per_real_token']:.3f}, {row[n]['distinct_lengths']:3d} T)".rjust(22)
            for n in schemes))
    overall = report["overall_concat_head"]
    print("all (concat)".ljust(14) + "".join(
        f"{100 * overall[n]['padding_fraction']:5.1f}% ({overall[n]['tokens_per_real_token']:.3f})".rjust(22)
        for n in schemes))
    print("\n(T: distinct padded lengths; with buckets, one CUDA graph per task and length)")
    for name, buckets in report["schemes"].items():
        print(f"  {name}: {buckets or 'the longest input of each batch'}")


def parse_args(argv: list[str] | None = None) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=defaults.model, help="whose tokenizer (vocab.txt) to use")
    parser.add_argument("--data-dir", type=Path, default=Path(defaults.data_dir),
                        help="folder with the CS224N training files")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="examples per batch")
    parser.add_argument("--max-length", type=int, default=None, help="the length cap (default: the tokenizer's)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds the batch plan")
    parser.add_argument("--out", default=defaults.out, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.max_length is not None and args.max_length < 3:
        parser.error("--max-length must be at least 3")
    return Settings(args.model, str(args.data_dir), args.batch_size, args.max_length, args.seed, args.out)


def main(argv: list[str] | None = None) -> None:
    run_and_report(run, parse_args(argv), print_report)


if __name__ == "__main__":
    run_main(main)
