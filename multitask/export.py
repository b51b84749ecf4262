"""Export the fine-tuned encoder of a multitask checkpoint as a standard BERT folder.

Multi-BERT fine-tunes every parameter of the shared encoder, so after training it is a BERT of
its own, tuned for sentiment, paraphrase and similarity. This writes it in the layout every BERT
library reads:

    config.json            the encoder's shape (BertConfig.save)
    model.safetensors      the encoder's weights under the public names ("encoder.layer.0. ...")
    vocab.txt              the WordPiece vocabulary
    tokenizer_config.json  lower-casing and the maximum length

so that `transformers.BertModel.from_pretrained(OUT_DIR)`, or ours, loads it as it would
bert-base-uncased. The task heads are not part of it: they stay in the checkpoint.

    python -m multitask.export runs/gpu/annealed-concat exported/ann-concat
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from bert import BertModel, CheckpointError
from multitask.predict import open_checkpoint

EXPORTED_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")


class ExportError(Exception):
    """The output folder cannot be written; the message names it and what to do."""


def check_target(out_dir: Path) -> None:
    """Raise ExportError unless `out_dir` is, or can become, a folder we can write into.

    Checked before the checkpoint is loaded, and without leaving anything behind: a trial
    folder is made (and removed) in the deepest folder of the path that exists already.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: OUT_DIR is an existing file; name a folder (it is created "
                          f"if needed)")
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ExportError(f"{out_dir}: {existing} is a file, so OUT_DIR cannot be created; name "
                          f"a folder")
    try:
        Path(tempfile.mkdtemp(prefix=".export-check-", dir=existing)).rmdir()
    except OSError as err:
        raise ExportError(f"{out_dir}: cannot write in {existing} ({err.strerror or err}); choose "
                          f"an OUT_DIR you can write to") from None


def export(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the checkpoint's encoder and tokenizer into `out_dir`, then check it loads back."""
    out_dir = Path(out_dir)
    check_target(out_dir)
    trained = open_checkpoint(checkpoint_dir, "cpu")
    # Exporting into the checkpoint would replace its multitask weights with the encoder's alone.
    if out_dir.resolve() == trained.folder.resolve() or (out_dir / "multitask.json").exists():
        raise CheckpointError(f"{out_dir} holds a multitask checkpoint; choose another output folder")
    encoder = trained.model.bert
    try:
        encoder.save_pretrained(out_dir)
        trained.tokenizer.save_pretrained(out_dir)
    except OSError as err:  # the disk filled up, say, after the check above
        raise ExportError(f"{out_dir}: writing the export failed ({err.strerror or err}); free "
                          f"some space or choose another OUT_DIR, then export again") from None

    # Read the folder back as a user would and insist on the very same weights.
    reloaded = BertModel.from_pretrained(out_dir).state_dict()
    for name, tensor in encoder.state_dict().items():
        if not torch.equal(reloaded[name], tensor.cpu()):
            raise CheckpointError(f"{out_dir}: {name} did not survive the round trip")
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m multitask.export",
        description="Write a multitask checkpoint's fine-tuned BERT encoder as a standard folder "
                    "(config.json, model.safetensors, vocab.txt, tokenizer_config.json) that "
                    "transformers' BertModel.from_pretrained and ours both load.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT_DIR",
                        help="a training run's --out-dir, or its best/ checkpoint folder")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="the folder to write (created if needed; same-named files are replaced)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out_dir = export(args.checkpoint, args.out_dir)
    except (CheckpointError, ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(EXPORTED_FILES)} to {out_dir}; load it with "
          f"BertModel.from_pretrained({str(out_dir)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
