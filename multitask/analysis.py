"""Error analysis of a trained model, as in section 6 of the Multi-BERT paper.

The paper studies its best model's hardest STS dev pairs and finds that it overrates the
similarity of long pairs: of the 13 pairs among the first 500 dev examples whose two sentences
total 300 characters or more, 9 were overestimates and 4 underestimates. This module repeats
that study on any checkpoint, over the whole dev sets:

(a) the STS dev pairs with the largest absolute errors: both sentences, label and prediction;
(b) over- and underestimates for long pairs (the two sentences together >= 300 characters) and
    for the rest: counts and the mean signed error (prediction - label) of each group, so a
    positive mean says the model overrates that group's similarity;
(c) the SST dev confusion matrix (rows: gold class, columns: predicted class), which shows
    whether sentiment errors are near misses ("somewhat positive" for "positive") or not.

    python -m multitask.analysis runs/gpu/annealed-concat --data-dir data --top 10

For the baseline's "dot" head the prediction is a raw dot product with no fixed scale, so its
errors against the 0-5 labels are reported but say little; the report notes it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import numpy as np

from bert import CheckpointError
from multitask.batching import tokenize_split
from multitask.commands import program_name
from multitask.config import DEVICES, PRECISIONS, positive_int
from multitask.data import DataError, Split, dataset_paths, load_sst, load_sts, require_examples
from multitask.evaluation import predict_split
from multitask.heads import NUM_SENTIMENTS, layouts
from multitask.metrics import pearson
from multitask.predict import SENTIMENT_NAMES, TrainedModel, open_checkpoint
from multitask.runtime import RuntimeSetupError, resolve_precision

LONG_PAIR_CHARACTERS = 300  # the paper's threshold: both sentences together, in characters


@dataclass
class PairError:
    """One STS dev pair and how far the model's score was from its label."""

    id: str
    sentence1: str
    sentence2: str
    label: float
    prediction: float

    @property
    def error(self) -> float:
        return self.prediction - self.label  # positive: the model overrates the similarity


@dataclass
class LengthGroup:
    """Over- and underestimates among the STS pairs of one length group."""

    name: str  # "long" or "short"
    count: int
    over: int  # prediction > label
    under: int  # prediction < label
    exact: int  # prediction == label (rare: only where a score saturates at 0 or 5)
    mean_signed_error: float  # mean of prediction - label; NaN for an empty group
    mean_absolute_error: float


@dataclass
class ErrorAnalysis:
    """The three parts of the analysis, for printing (format_report) and for tests."""

    checkpoint: str
    sts_head: str
    largest_errors: list[PairError]  # (a), sorted by absolute error, largest first
    long_pairs: LengthGroup  # (b)
    short_pairs: LengthGroup
    long_characters: int
    confusion: np.ndarray  # (c): (5, 5) counts, rows = gold class, columns = predicted class
    sst_accuracy: float
    sts_pearson: float
    # The dev files' skipped rows (bad labels, duplicate ids), each summed up in the one line
    # training prints for them (Split.report()): the analysis covers only the rows kept.
    skipped_rows: list[str] = field(default_factory=list)


def length_group(name: str, errors: np.ndarray) -> LengthGroup:
    """Summarise the signed errors (prediction - label) of one group of pairs."""
    if len(errors) == 0:
        return LengthGroup(name, 0, 0, 0, 0, float("nan"), float("nan"))
    return LengthGroup(name, len(errors), int((errors > 0).sum()), int((errors < 0).sum()),
                       int((errors == 0).sum()), float(errors.mean()), float(np.abs(errors).mean()))


def confusion_matrix(gold: np.ndarray, predicted: np.ndarray, classes: int = NUM_SENTIMENTS) -> np.ndarray:
    """counts[g, p]: how many examples of gold class g were predicted as class p."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (gold, predicted), 1)  # add.at counts repeated (g, p) pairs, unlike +=
    return counts


def analyse(trained: TrainedModel, sts_dev: Split, sst_dev: Split, top: int = 10,
            long_characters: int = LONG_PAIR_CHARACTERS, precision: str = "fp32",
            batch_size: int = 64) -> ErrorAnalysis:
    """Predict the STS and SST dev sets with `trained` and compute the three parts."""
    for split in (sts_dev, sst_dev):  # a correlation or confusion matrix of nothing means nothing
        require_examples(split)
    config, tokenizer = trained.config, trained.tokenizer
    task_layouts = layouts(config.sts_head, config.paraphrase_head)

    def predictions(split: Split, task: str) -> np.ndarray:
        tokenized = tokenize_split(split, task, tokenizer, task_layouts[task], config.max_length)
        return predict_split(trained.model, tokenized, batch_size, tokenizer.pad_token_id,
                             trained.device, precision)

    # (a) and (b): STS.
    pairs = sts_dev.examples
    scores = predictions(sts_dev, "sts")  # (N,)
    labels = np.array([e.label for e in pairs], dtype=np.float64)
    errors = scores.astype(np.float64) - labels
    worst = np.argsort(-np.abs(errors), kind="stable")[:top]
    largest = [PairError(pairs[i].id, pairs[i].sentence1, pairs[i].sentence2, float(labels[i]),
                         float(scores[i])) for i in worst]
    lengths = np.array([len(e.sentence1) + len(e.sentence2) for e in pairs])
    is_long = lengths >= long_characters

    # (c): SST.
    gold = np.array([e.label for e in sst_dev.examples], dtype=np.int64)
    predicted = predictions(sst_dev, "sst").argmax(axis=-1)  # (N, 5) probabilities -> classes
    confusion = confusion_matrix(gold, predicted)
    return ErrorAnalysis(
        checkpoint=str(trained.folder), sts_head=config.sts_head, largest_errors=largest,
        long_pairs=length_group("long", errors[is_long]),
        short_pairs=length_group("short", errors[~is_long]), long_characters=long_characters,
        confusion=confusion, sst_accuracy=float(np.trace(confusion) / max(confusion.sum(), 1)),
        sts_pearson=pearson(scores, labels),
        skipped_rows=[split.report() for split in (sts_dev, sst_dev) if split.report()])


def format_report(analysis: ErrorAnalysis) -> str:
    lines = [f"Error analysis of {analysis.checkpoint} (STS head: {analysis.sts_head})", ""]
    if analysis.skipped_rows:
        lines += [f"note: {report}" for report in analysis.skipped_rows]
        lines += ["(the analysis below covers only the rows that were kept)", ""]
    if analysis.sts_head == "dot":
        lines += ["note: the dot head's STS score is an unscaled dot product, not on the labels' "
                  "0-5 scale, so its errors below measure scale as much as mistakes.", ""]

    top = len(analysis.largest_errors)
    lines.append(f"(a) The {top} STS dev pairs with the largest absolute errors "
                 f"(Pearson r over the dev set: {analysis.sts_pearson:.3f})")
    for rank, pair in enumerate(analysis.largest_errors, 1):
        lines += [f"{rank:3d}. [{pair.id}] label {pair.label:.2f}  prediction {pair.prediction:.2f}  "
                  f"({pair.error:+.2f})",
                  f"     1: {pair.sentence1}",
                  f"     2: {pair.sentence2}"]
    lines.append("")

    lines.append(f"(b) Over- and underestimates: long pairs (both sentences together >= "
                 f"{analysis.long_characters} characters) against the rest")
    lines.append(f"     {'group':<6} {'pairs':>6} {'over':>6} {'under':>6} {'exact':>6} "
                 f"{'mean signed error':>18} {'mean |error|':>13}")
    for group in (analysis.long_pairs, analysis.short_pairs):
        lines.append(f"     {group.name:<6} {group.count:>6} {group.over:>6} {group.under:>6} "
                     f"{group.exact:>6} {group.mean_signed_error:>+18.3f} {group.mean_absolute_error:>13.3f}")
    lines.append("     (signed error = prediction - label: positive means the model overrates "
                 "the similarity; the paper found 9 of 13 long pairs overestimated)")
    lines.append("")

    total = int(analysis.confusion.sum())
    lines.append(f"(c) SST dev confusion matrix, rows = gold, columns = predicted "
                 f"({total} sentences, accuracy {analysis.sst_accuracy:.3f})")
    width = 7
    heading = "".join(f"{c:>{width}}" for c in range(NUM_SENTIMENTS))
    lines.append(" " * 24 + heading + f"{'recall':>{width + 2}}")
    for gold, row in enumerate(analysis.confusion):
        recall = row[gold] / row.sum() if row.sum() else float("nan")
        lines.append(f"  {gold} {SENTIMENT_NAMES[gold]:<20}" + "".join(f"{n:>{width}}" for n in row)
                     + f"{recall:>{width + 2}.3f}")
    return "\n".join(lines)


@dataclass
class AnalysisConfig:
    checkpoint: str
    data_dir: str | None  # None: the data folder the checkpoint was trained with
    top: int = 10
    long_characters: int = LONG_PAIR_CHARACTERS
    device: str = "auto"
    precision: str = "fp32"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("multitask.analysis"),
        description="Error analysis of a trained checkpoint, as in the Multi-BERT paper's "
                    "section 6: the worst STS dev pairs, over- and underestimates of long pairs, "
                    "and the SST dev confusion matrix, read from the STS and SST dev files and "
                    "printed as a report on standard output.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT_DIR",
                        help="a training run's --out-dir, or its best/ checkpoint folder")
    parser.add_argument("--data-dir", default=None,
                        help="folder with sts-dev.csv and ids-sst-dev.csv (default: the one the "
                             "checkpoint was trained with)")
    parser.add_argument("--top", type=positive_int, default=10,
                        help="how many of the worst STS pairs to show")
    parser.add_argument("--long-chars", type=positive_int, default=LONG_PAIR_CHARACTERS,
                        help="a pair is long when its two sentences total at least this many "
                             "characters (the paper: 300)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: CUDA when there is a GPU, else the CPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="autocast precision of the predictions (fp32: the exact scores)")
    return parser


def run(config: AnalysisConfig) -> ErrorAnalysis:
    trained = open_checkpoint(config.checkpoint, config.device)
    paths = dataset_paths(config.data_dir or trained.config.data_dir)
    return analyse(trained, load_sts(paths["sts-dev"]), load_sst(paths["sst-dev"]), config.top,
                   config.long_characters, resolve_precision(config.precision, trained.device))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = AnalysisConfig(checkpoint=args.checkpoint, data_dir=args.data_dir, top=args.top,
                            long_characters=args.long_chars, device=args.device,
                            precision=args.precision)
    try:
        analysis = run(config)
    except (CheckpointError, DataError, RuntimeSetupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(format_report(analysis))
    return 0


if __name__ == "__main__":
    sys.exit(main())
