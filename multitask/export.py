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
from pathlib import Path

import torch

from bert import BertModel, CheckpointError
from multitask.predict import open_checkpoint

EXPORTED_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")


def export(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the checkpoint's encoder and tokenizer into `out_dir`, then check it loads back."""
    trained = open_checkpoint(checkpoint_dir, "cpu")
    out_dir = Path(out_dir)
    # Exporting into the checkpoint would replace its multitask weights with the encoder's alone.
    if out_dir.resolve() == trained.folder.resolve() or (out_dir / "multitask.json").exists():
        raise CheckpointError(f"{out_dir} holds a multitask checkpoint; choose another output folder")
    encoder = trained.model.bert
    encoder.save_pretrained(out_dir)
    trained.tokenizer.save_pretrained(out_dir)

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
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(EXPORTED_FILES)} to {out_dir}; load it with "
          f"BertModel.from_pretrained({str(out_dir)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
