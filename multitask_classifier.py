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
import shutil
import sys
import tempfile
from pathlib import Path

from bert import CheckpointError
from bert.files import WriteError
from multitask.config import TrainConfig, add_arguments, config_from_args
from multitask.data import DataError
from multitask.runtime import RuntimeSetupError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune one BERT for SST-5 sentiment, Quora paraphrase detection and "
                    "STS similarity at once, as in 'Multi-BERT: Investigating Methods for BERT "
                    "Multitask Learning'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)  # one option per TrainConfig field (multitask/config.py)
    run = parser.add_argument_group("this run's output folder")
    run.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR_OR_FILE",
                     help="continue a killed run from its training checkpoint: OUT/checkpoint.pt "
                          "of --out-dir, or the given run folder or checkpoint file; the run's "
                          "own settings are used unless you change them")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --out-dir (without it, a folder holding a "
                          "run is refused, so that no run is lost by mistake)")
    return parser


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


# What a run writes into --out-dir (see multitask/training.py): a folder holding any of them holds a run.
RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "train_config.json", "final_metrics.json", "best", "predictions")


def prepare_out_dir(folder: Path, resuming: bool, overwrite: bool) -> None:
    """Make sure the run can write into `folder` and destroys no other run, before any work.

    Raises ValueError (a usage error) for a file, the file system's root, an unwritable folder, or
    a folder that holds a run when neither --resume nor --overwrite was given. With --overwrite,
    the old run's files go.
    """
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out-dir {folder} is a file; name a folder for the run's outputs")
    if folder.resolve() == Path(folder.resolve().anchor):  # its files among the system's (--overwrite deletes)
        raise ValueError(f"--out-dir {folder} is the root of the file system; name a folder of the run's own")
    held = [name for name in RUN_FILES if (folder / name).exists()]
    if held and not (resuming or overwrite):
        raise ValueError(f"--out-dir {folder} already holds a run ({', '.join(held)}): continue it with "
                         f"--resume, replace it with --overwrite, or choose another --out-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"--out-dir {folder} is not writable ({err.strerror}); choose another folder") from None
    if overwrite and not resuming and int(os.environ.get("RANK", "0")) == 0:  # one process deletes
        for name in held:
            shutil.rmtree(folder / name) if (folder / name).is_dir() else (folder / name).unlink()


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
        if config.teachers:  # a mistyped teacher folder: refused before the data is read
            from multitask.distill import find_teachers
            find_teachers(config.teacher_folders)
        prepare_out_dir(Path(config.out_dir), resuming=resume is not None, overwrite=args.overwrite)
    except CheckpointError as err:
        print(f"{error_prefix()}{err}", file=sys.stderr)
        return 1
    except ValueError as err:
        parser.error(str(err))
    from multitask.training import NonFiniteLossError, train  # after the checks: --help stays fast

    try:
        train(config, resume=resume)
    except WriteError as err:  # a full disk mid-run: the checkpoint before it is whole
        print(f"{error_prefix()}{err}; then --resume {config.out_dir} continues from the last checkpoint",
              file=sys.stderr)
        return 1
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
