"""Ask a trained multitask model about your own sentences (Multi-BERT's three tasks).

    python -m multitask.predict runs/gpu/annealed-concat --sentence "A gripping, funny film."
    python -m multitask.predict runs/gpu/annealed-concat --pair "How do I cook rice?" "How is rice cooked?"

One sentence gets its SST-5 sentiment class and the five class probabilities; a pair gets the
paraphrase head's probability (the QQP task) and the similarity head's score (the STS task,
0 = unrelated to 5 = same meaning). The inputs go through exactly the layouts the model was
trained on (multitask/batching.py), so the answers match what evaluation measures.

The similarity score is on the 0-5 scale for the concat, cosine and mnr heads. The paper's
baseline "dot" head scores a pair by the raw dot product of the two pooled outputs, which has no
fixed range: training pulls it towards the labels, but nothing bounds it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from bert import BertTokenizer, CheckpointError
from multitask import checkpoint
from multitask.batching import collate, tokenize_split
from multitask.config import DEVICES, TrainConfig
from multitask.data import PairExample, SentenceExample, Split
from multitask.heads import MultitaskBert, layouts
from multitask.runtime import RuntimeSetupError, resolve_device

# SST-5's classes (paper, section 5.1).
SENTIMENT_NAMES = ("negative", "somewhat negative", "neutral", "somewhat positive", "positive")


@dataclass
class TrainedModel:
    """A trained checkpoint, ready to predict: the model in eval mode and what it was trained with."""

    folder: Path
    model: MultitaskBert
    tokenizer: BertTokenizer
    config: TrainConfig
    device: torch.device


def find_checkpoint(folder: str | Path) -> Path:
    """The checkpoint folder to load: `folder` itself, or the best/ checkpoint of a run folder.

    A run folder (what --out-dir names) holds its best checkpoint in best/; accepting either saves
    a confusing error for the most common slip.
    """
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"{folder} does not exist; pass a run folder or its best/ checkpoint")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is a file; pass a run folder or its best/ checkpoint folder")
    if (folder / "multitask.json").is_file():
        return folder
    if (folder / "best" / "multitask.json").is_file():
        return folder / "best"
    raise CheckpointError(
        f"{folder} is not a multitask checkpoint (no multitask.json in it or in {folder / 'best'}); "
        f"pass the --out-dir of a training run, or its best/ folder")


def open_checkpoint(folder: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a trained model (multitask/checkpoint.py) for prediction or analysis."""
    found = find_checkpoint(folder)
    resolved = resolve_device(device)
    model, tokenizer, config, _ = checkpoint.load(found, resolved)
    return TrainedModel(found, model, tokenizer, config, resolved)


@dataclass
class SentimentPrediction:
    label: int  # the most probable class, 0 (negative) .. 4 (positive)
    probabilities: list[float]  # one per class; they sum to 1

    @property
    def name(self) -> str:
        return SENTIMENT_NAMES[self.label]


@dataclass
class PairPrediction:
    paraphrase_probability: float  # the paraphrase (QQP) head's P(same question)
    similarity: float  # the STS head's score; 0..5 except for the "dot" head
    sts_head: str

    @property
    def similarity_is_scaled(self) -> bool:
        return self.sts_head != "dot"


def _predict(trained: TrainedModel, split: Split, task: str, layout: str) -> torch.Tensor:
    """The model's prediction for the one example of `split`, in the layout `task` was trained on."""
    tokenized = tokenize_split(split, task, trained.tokenizer, layout, trained.config.max_length)
    batch = collate(tokenized, [0], trained.tokenizer.pad_token_id).to(trained.device)
    with torch.inference_mode():
        return trained.model.predict(batch)[0].float().cpu()


def predict_sentiment(trained: TrainedModel, sentence: str) -> SentimentPrediction:
    split = Split("input", "command line", [SentenceExample("input", sentence, None)])
    probabilities = _predict(trained, split, "sst", layouts(trained.config.sts_head)["sst"])  # (5,)
    return SentimentPrediction(int(probabilities.argmax()), probabilities.tolist())


def predict_pair(trained: TrainedModel, first: str, second: str) -> PairPrediction:
    split = Split("input", "command line", [PairExample("input", first, second, None)])
    task_layouts = layouts(trained.config.sts_head)
    paraphrase = _predict(trained, split, "qqp", task_layouts["qqp"])
    similarity = _predict(trained, split, "sts", task_layouts["sts"])
    return PairPrediction(float(paraphrase), float(similarity), trained.config.sts_head)


def input_limit(trained: TrainedModel) -> tuple[int, str]:
    """The most tokens the model reads per input, and where that limit comes from."""
    if trained.config.max_length is not None:
        return trained.config.max_length, "the --max-length it was trained with"
    return trained.tokenizer.model_max_length, "the checkpoint's maximum"


def truncation_warnings(trained: TrainedModel, first: str, second: str | None = None) -> list[str]:
    """A warning for each input the model will see cut short, saying how many tokens were cut.

    The model reads at most `input_limit` tokens, [CLS] and [SEP] included; the tokenizer drops
    the rest (for a pair read jointly, from the longer sentence first). Predicting silently from
    the beginning of a long text would pass off an answer about a part as one about the whole.
    """
    limit, source = input_limit(trained)
    tokenizer = trained.tokenizer
    measured = []  # (what, tokens)
    if second is None:
        measured.append(("the sentence", tokenizer.untruncated_lengths([first])[0]))
    else:
        # The paraphrase head always reads the pair jointly; the similarity head does too for
        # "concat", and otherwise reads each sentence on its own.
        measured.append(("the pair (read together)", tokenizer.untruncated_lengths([first], [second])[0]))
        if layouts(trained.config.sts_head)["sts"] == "separate":
            measured.append(("the first sentence", tokenizer.untruncated_lengths([first])[0]))
            measured.append(("the second sentence", tokenizer.untruncated_lengths([second])[0]))
    return [
        f"warning: {what} is {tokens:,} tokens long but the model reads at most {limit} ({source}): "
        f"{tokens - limit:,} tokens were cut off, so the answer is about the part that was kept"
        for what, tokens in measured if tokens > limit
    ]


def format_sentiment(prediction: SentimentPrediction) -> str:
    lines = [f"sentiment: {prediction.label} ({prediction.name})"]
    for label, (name, p) in enumerate(zip(SENTIMENT_NAMES, prediction.probabilities)):
        lines.append(f"  {label} {name:<18} {p:.3f}")
    return "\n".join(lines)


def format_pair(prediction: PairPrediction) -> str:
    lines = [f"paraphrase probability: {prediction.paraphrase_probability:.3f}"]
    if prediction.similarity_is_scaled:
        lines.append(f"similarity (0-5): {prediction.similarity:.2f}")
    else:
        lines.append(f"similarity score: {prediction.similarity:.3f} (the dot head's score is an "
                     f"unscaled dot product of the two pooled outputs, not on the 0-5 scale)")
    return "\n".join(lines)


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the text is empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m multitask.predict",
        description="Predict with a trained multitask model: the sentiment of one sentence, or "
                    "the paraphrase probability and similarity of a pair.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT_DIR",
                        help="a training run's --out-dir, or its best/ checkpoint folder")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--sentence", type=non_empty, help="one sentence: its SST-5 sentiment")
    what.add_argument("--pair", nargs=2, type=non_empty, metavar=("FIRST", "SECOND"),
                      help="two sentences: paraphrase probability and similarity")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where to run the model (one input: the CPU is quick enough)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        trained = open_checkpoint(args.checkpoint, args.device)
    except (CheckpointError, RuntimeSetupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    texts = [args.sentence] if args.sentence is not None else args.pair
    for warning in truncation_warnings(trained, *texts):
        print(warning, file=sys.stderr)
    if args.sentence is not None:
        print(format_sentiment(predict_sentiment(trained, args.sentence)))
    else:
        print(format_pair(predict_pair(trained, *args.pair)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
