"""Ask a trained multitask model about your own sentences (Multi-BERT's three tasks).

    python -m multitask.predict runs/gpu/annealed-concat --sentence "A gripping, funny film."
    python -m multitask.predict runs/gpu/annealed-concat --pair "How do I cook rice?" "How is rice cooked?"
    python -m multitask.predict runs/gpu/annealed-concat --input reviews.txt --output scores.csv

A file of inputs (--input) is either a table with a header line (a .csv or .tsv file; comma- or
tab-separated: a header line holding a tab makes it tab-separated) whose columns `sentence`, or
`sentence1` and `sentence2`, hold the texts (other names with --columns; an `id` column is copied
to the output), or plain text with one sentence per line, or one pair per line as two
tab-separated sentences. Its scores go to the --output CSV, computed in batches (--batch-size)
with a progress bar on stderr (--no-progress turns it off).

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
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bert import BertTokenizer, CheckpointError
from bert.files import atomic_write
from multitask import checkpoint
from multitask.batching import collate, tokenize_split
from multitask.commands import program_name
from multitask.config import DEVICES, TrainConfig, positive_int
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


def open_checkpoint(folder: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a trained model (multitask/checkpoint.py) for prediction or analysis."""
    found = checkpoint.find_checkpoint(folder)
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
    probabilities = _predict(trained, split, "sst", model_layouts(trained)["sst"])  # (5,)
    return SentimentPrediction(int(probabilities.argmax()), probabilities.tolist())


def predict_pair(trained: TrainedModel, first: str, second: str) -> PairPrediction:
    split = Split("input", "command line", [PairExample("input", first, second, None)])
    task_layouts = model_layouts(trained)
    paraphrase = _predict(trained, split, "qqp", task_layouts["qqp"])
    similarity = _predict(trained, split, "sts", task_layouts["sts"])
    return PairPrediction(float(paraphrase), float(similarity), trained.config.sts_head)


def input_limit(trained: TrainedModel) -> tuple[int, str]:
    """The most tokens the model reads per input, and where that limit comes from."""
    if trained.config.max_length is not None:
        return trained.config.max_length, "the --max-length it was trained with"
    return trained.tokenizer.model_max_length, "the checkpoint's maximum"


def model_layouts(trained: TrainedModel) -> dict[str, str]:
    """How the trained model's heads read their inputs (multitask/heads.py, `layouts`)."""
    return layouts(trained.config.sts_head, trained.config.paraphrase_head)


def pair_layouts(trained: TrainedModel) -> set[str]:
    """How the model's two pair heads (paraphrase, similarity) read a pair: "joint", "separate"."""
    task_layouts = model_layouts(trained)
    return {task_layouts["qqp"], task_layouts["sts"]}


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
        # Each pair head reads the pair together (the joint paraphrase head, the concat STS head)
        # or each sentence on its own (the siamese paraphrase head, the other STS heads).
        read = pair_layouts(trained)
        if "joint" in read:
            measured.append(("the pair (read together)", tokenizer.untruncated_lengths([first], [second])[0]))
        if "separate" in read:
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


# --------------------------------------------------------------------------------------------
# A file of inputs (--input), scored in batches into a CSV file (--output)
# --------------------------------------------------------------------------------------------

TABLE_SUFFIXES = (".csv", ".tsv")
SENTENCE_COLUMNS = ("sentence",)
PAIR_COLUMNS = ("sentence1", "sentence2")


class InputError(Exception):
    """An input or output file of --input/--output that cannot be used; the message names the
    file (and line) and what to do."""


@dataclass
class Inputs:
    """The texts of an input file: one tuple per input (a sentence, or the two of a pair)."""

    path: Path
    columns: tuple[str, ...]  # the output's text columns: ("sentence",) or two for pairs
    texts: list[tuple[str, ...]]
    lines: list[int]  # the line each input starts on, for messages
    ids: list[str] | None = None  # the table's id column, when it has one

    @property
    def pairs(self) -> bool:
        return len(self.columns) == 2


def read_inputs(path: str | Path, columns: list[str] | None = None) -> Inputs:
    """Read `path` (see the module's docstring): a table with a header, or plain text."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; --input names a file of sentences or pairs")
    if not path.is_file():
        raise InputError(f"{path}: not a file; --input names a file of sentences or pairs")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from None
    if path.suffix.lower() in TABLE_SUFFIXES:
        inputs = _read_table(path, text, columns)
    elif columns:
        raise InputError(f"{path}: --columns names the columns of a table, but this is read as plain "
                         f"text (one input per line) because it does not end in .csv or .tsv")
    else:
        inputs = _read_lines(path, text)
    if not inputs.texts:
        raise InputError(f"{path}: holds no sentences to score")
    return inputs


def _table_rows(path: Path, reader) -> Iterator[tuple[int, list[str]]]:
    """Yield (the line a row starts on, its cells); a quote left open is an InputError there.

    The reader must be strict: a quote that opens a cell must close it right before a delimiter
    or the end of a line. A lenient reader reads on from an unclosed quote, as one cell, to the
    next quote or the end of the file, and the rows in between vanish without a word.
    """
    start = 1
    try:
        for row in reader:
            yield start, row
            start = reader.line_num + 1
    except csv.Error as err:
        raise InputError(f"{path}:{start}: a quote (\") opens a cell of the row on this line and does "
                         f"not close where the cell ends ({err}), so the rows after it would be read "
                         f"into that cell; close the quote, or remove it (to keep a quote in a cell, "
                         f"put the whole cell in quotes and double the quote: \"\")") from None


def _read_table(path: Path, text: str, columns: list[str] | None) -> Inputs:
    lines = text.splitlines(keepends=True)
    header_line = next((line for line in lines if line.strip()), "")
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in header_line else ","
    mark = "tab" if delimiter == "\t" else "comma"  # (for the messages)
    # A cell may be longer than csv's default limit of 128 KiB (the model reads it cut short, with a
    # warning), and the strict reader's csv.Error must mean a quote problem. The limit is
    # process-wide, so only ever raise it (as multitask/data.py does).
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    rows = _table_rows(path, csv.reader(lines, delimiter=delimiter, strict=True))
    header, header_at = None, 0
    for start, row in rows:
        if row and any(cell.strip() for cell in row):
            header, header_at = [cell.strip() for cell in row], start
            break
    if header is None:
        raise InputError(f"{path}: empty; a table needs a header line naming its columns")
    if columns:
        wanted = tuple(columns)
    elif all(name in header for name in PAIR_COLUMNS):
        wanted = PAIR_COLUMNS
    elif all(name in header for name in SENTENCE_COLUMNS):
        wanted = SENTENCE_COLUMNS
    else:
        raise InputError(f"{path}:{header_at}: the header ({', '.join(repr(h) for h in header)}) has no "
                         f"'sentence' column nor 'sentence1' and 'sentence2'; name the text columns "
                         f"with --columns NAME or --columns FIRST SECOND")
    missing = [name for name in wanted if name not in header]
    if missing:
        raise InputError(f"{path}:{header_at}: no column {', '.join(repr(m) for m in missing)} in the "
                         f"header ({', '.join(repr(h) for h in header)})")
    # header.index() below would read the first of two same-named columns and ignore the other.
    repeated = [name for name in dict.fromkeys((*wanted, "id")) if header.count(name) > 1]
    if repeated:
        raise InputError(f"{path}:{header_at}: the header names {', '.join(repr(r) for r in repeated)} "
                         f"more than once, so it is ambiguous which column to read; rename the "
                         f"columns so that each name is used once")
    where = [header.index(name) for name in wanted]
    id_at = header.index("id") if "id" in header else None
    inputs = Inputs(path, wanted, [], [], [] if id_at is not None else None)
    for start, row in rows:
        if not row:
            continue  # a blank line
        if len(row) < len(header):
            raise InputError(f"{path}:{start}: {len(row)} field(s) where the header has "
                             f"{len(header)}; is a {mark} missing, or a quote left open above?")
        if any(cell.strip() for cell in row[len(header):]):  # (empty cells at a line's end hold nothing)
            # "1,Hello, world" would read as the sentence "Hello", the rest of it lost
            raise InputError(f"{path}:{start}: {len(row)} fields where the header has {len(header)}; "
                             f"is there a {mark} inside a sentence? Put that cell in quotes "
                             f"(\"Hello, world\"), so the {mark} stays part of the text")
        texts = tuple(row[i] for i in where)
        for name, value in zip(wanted, texts):
            if not value.strip():
                raise InputError(f"{path}:{start}: the {name} is empty")
        inputs.texts.append(texts)
        inputs.lines.append(start)
        if inputs.ids is not None:
            inputs.ids.append(row[id_at])
    return inputs


def _read_lines(path: Path, text: str) -> Inputs:
    texts, lines = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = tuple(line.split("\t"))
        if len(parts) > 2:
            raise InputError(f"{path}:{number}: {len(parts) - 1} tabs; a line holds one sentence, or a "
                             f"pair as two sentences separated by one tab")
        if texts and len(parts) != len(texts[0]):
            kinds = {1: "one sentence", 2: "a pair (two tab-separated sentences)"}
            raise InputError(f"{path}:{number}: {kinds[len(parts)]}, but line {lines[0]} has "
                             f"{kinds[len(texts[0])]}; a file holds sentences or pairs, not both")
        if any(not part.strip() for part in parts):
            raise InputError(f"{path}:{number}: an empty sentence on either side of the tab")
        texts.append(parts)
        lines.append(number)
    columns = PAIR_COLUMNS if texts and len(texts[0]) == 2 else SENTENCE_COLUMNS
    return Inputs(path, columns, texts, lines)


def check_output(output: str | Path, input_path: str | Path) -> Path:
    """The --output file, checked before any work: a file in an existing folder we can write
    to, and not the input itself."""
    output = Path(output)
    if output.exists() and output.is_dir():
        raise InputError(f"{output}: a folder; --output names the CSV file to write")
    if output.exists() and output.resolve() == Path(input_path).resolve():
        raise InputError(f"{output}: the same file as --input; choose another --output")
    folder = output.parent
    if not folder.is_dir():
        raise InputError(f"{output}: the folder {folder} does not exist; create it or choose "
                         f"another --output")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{output}: cannot write in {folder}; choose another --output")
    return output


def predict_sentiments(trained: TrainedModel, sentences: list[str]) -> torch.Tensor:
    """SST-5 class probabilities of a batch of sentences: (B, 5)."""
    split = Split("input", "input file", [SentenceExample(str(i), s, None) for i, s in enumerate(sentences)])
    return _predict_all(trained, split, "sst", model_layouts(trained)["sst"])


def predict_pairs(trained: TrainedModel, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Paraphrase probabilities and similarity scores of a batch of pairs: (B,), (B,)."""
    split = Split("input", "input file", [PairExample(str(i), a, b, None) for i, (a, b) in enumerate(pairs)])
    task_layouts = model_layouts(trained)
    return (_predict_all(trained, split, "qqp", task_layouts["qqp"]),
            _predict_all(trained, split, "sts", task_layouts["sts"]))


def _predict_all(trained: TrainedModel, split: Split, task: str, layout: str) -> torch.Tensor:
    tokenized = tokenize_split(split, task, trained.tokenizer, layout, trained.config.max_length)
    batch = collate(tokenized, np.arange(len(split.examples)), trained.tokenizer.pad_token_id)
    with torch.inference_mode():
        return trained.model.predict(batch.to(trained.device)).float().cpu()


def output_header(inputs: Inputs) -> list[str]:
    scores = (["paraphrase_probability", "similarity"] if inputs.pairs else
              ["label", "label_name"] + ["p_" + name.replace(" ", "_") for name in SENTIMENT_NAMES])
    return (["id"] if inputs.ids is not None else []) + list(inputs.columns) + scores


def truncated_inputs(trained: TrainedModel, texts: list[tuple[str, ...]]) -> list[bool]:
    """For each input, whether the model reads it cut short (see `truncation_warnings`)."""
    limit, _ = input_limit(trained)
    tokenizer = trained.tokenizer
    if len(texts[0]) == 1:
        lengths = [tokenizer.untruncated_lengths([t[0] for t in texts])]
    else:
        firsts, seconds = [t[0] for t in texts], [t[1] for t in texts]
        read = pair_layouts(trained)
        lengths = [tokenizer.untruncated_lengths(firsts, seconds)] if "joint" in read else []
        if "separate" in read:
            lengths += [tokenizer.untruncated_lengths(firsts), tokenizer.untruncated_lengths(seconds)]
    return [any(length[i] > limit for length in lengths) for i in range(len(texts))]


def predict_file(trained: TrainedModel, inputs: Inputs, output: Path, batch_size: int = 64,
                 progress: bool = True) -> list[str]:
    """Score every input of `inputs` in batches of `batch_size` and write the --output CSV
    (written whole or not at all: bert.files.atomic_write). Returns the
    warnings to show (inputs the model reads cut short)."""
    from tqdm import tqdm

    cut = []  # the lines of inputs the model reads cut short

    def write(temp: str) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as handle, tqdm(
                total=len(inputs.texts), unit="input", disable=not progress, file=sys.stderr,
                desc="predicting") as bar:
            writer = csv.writer(handle)
            writer.writerow(output_header(inputs))
            for start in range(0, len(inputs.texts), batch_size):
                texts = inputs.texts[start:start + batch_size]
                cut.extend(line for line, short in zip(inputs.lines[start:], truncated_inputs(trained, texts))
                           if short)
                if inputs.pairs:
                    paraphrase, similarity = predict_pairs(trained, texts)
                    scores = [[repr(p), repr(s)] for p, s in zip(paraphrase.tolist(), similarity.tolist())]
                else:
                    probabilities = predict_sentiments(trained, [t[0] for t in texts])
                    scores = [[str(label), SENTIMENT_NAMES[label]] + [repr(p) for p in row]
                              for label, row in zip(probabilities.argmax(dim=-1).tolist(), probabilities.tolist())]
                for offset, (row_texts, row_scores) in enumerate(zip(texts, scores)):
                    row_id = [inputs.ids[start + offset]] if inputs.ids is not None else []
                    writer.writerow(row_id + list(row_texts) + row_scores)
                bar.update(len(texts))

    atomic_write(output, write)
    if not cut:
        return []
    limit, source = input_limit(trained)
    return [f"warning: {len(cut):,} of {len(inputs.texts):,} inputs are longer than the model reads "
            f"({limit} tokens, {source}) and were cut short, so their scores are about the part "
            f"that was kept; the first at {inputs.path}:{cut[0]}"]


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the text is empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("multitask.predict"),
        description="Predict with a trained multitask model: the sentiment of one sentence, or "
                    "the paraphrase probability and similarity of a pair, printed; or the scores "
                    "of every sentence or pair of a file (--input), written to a CSV file "
                    "(--output).")
    parser.add_argument("checkpoint", metavar="CHECKPOINT_DIR",
                        help="input: a training run's --out-dir, or its best/ checkpoint folder")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--sentence", type=non_empty, help="one sentence: its SST-5 sentiment")
    what.add_argument("--pair", nargs=2, type=non_empty, metavar=("FIRST", "SECOND"),
                      help="two sentences: paraphrase probability and similarity")
    what.add_argument("--input", metavar="FILE",
                      help="a file of inputs: a table with a header (.csv or .tsv; columns "
                           "'sentence', or 'sentence1' and 'sentence2'; an 'id' column is copied), "
                           "or plain text with one sentence, or two tab-separated ones, per line")
    files = parser.add_argument_group("with --input")
    files.add_argument("--output", metavar="OUT_CSV",
                       help="the CSV file to write: the inputs with, for sentences, label, "
                            "label_name and the five class probabilities p_*; for pairs, "
                            "paraphrase_probability and similarity (required with --input)")
    files.add_argument("--columns", nargs="+", metavar="NAME",
                       help="the table's text column, or two for pairs (default: sentence, or "
                            "sentence1 sentence2)")
    files.add_argument("--batch-size", type=positive_int, default=64,
                       help="inputs scored together (default: 64)")
    files.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress bar on stderr")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where to run the model (one input: the CPU is quick enough; for a "
                             "large file, cuda or auto)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.input is None and (args.output or args.columns):
        parser.error("--output and --columns go with --input FILE")
    if args.input is not None and not args.output:
        parser.error("--input needs --output OUT_CSV, the file to write the scores to")
    if args.columns is not None and len(args.columns) > 2:
        parser.error("--columns takes one column (sentences) or two (pairs)")
    try:
        inputs = output = None
        if args.input is not None:  # checked before the model is loaded
            inputs = read_inputs(args.input, args.columns)
            output = check_output(args.output, args.input)
        trained = open_checkpoint(args.checkpoint, args.device)
        if inputs is not None:
            warnings = predict_file(trained, inputs, output, args.batch_size, args.progress)
            for warning in warnings:
                print(warning, file=sys.stderr)
            count, kind = len(inputs.texts), "pair" if inputs.pairs else "sentence"
            print(f"wrote the scores of {count:,} {kind}{'s' if count != 1 else ''} to {output}")
            return 0
    except (CheckpointError, RuntimeSetupError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # the output's disk filled up, say
        print(f"error: {args.output}: writing failed ({err.strerror or err})", file=sys.stderr)
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
