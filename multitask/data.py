"""Loaders for the CS224N "multitask BERT" dataset files (SST-5, Quora, STS-B).

The course distributes each split as a tab-separated file with csv-style quoting (a field that
holds a tab, a newline or a quote is wrapped in double quotes, and inner quotes are doubled). The
first column is an unnamed row index, and the test files carry no label column; one test file even
has an extra unnamed column, so columns are always found by their header name, never by position.

The files are real, slightly dirty data: the Quora training file has two rows whose label is empty
because of broken quoting upstream. A loader here never crashes on such a row and never guesses a
label for it: it skips the row and records where it was (file and 1-based physical line) and why,
so a training run can report exactly what it left out.

    split = load_quora("data/quora-train.csv")
    print(len(split.examples), split.report())
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Union

PathLike = Union[str, Path]


class DataError(Exception):
    """A dataset file is missing or unreadable; the message names the file and what to do."""


@dataclass(frozen=True)
class SkippedRow:
    """A record the loader left out: where it starts in the file and why it was skipped."""

    path: str
    line: int  # 1-based physical line on which the record starts
    reason: str


@dataclass(frozen=True)
class SentenceExample:
    """One SST example: a sentence and its sentiment class 0..4 (None in the test file)."""

    id: str
    sentence: str
    label: int | None


@dataclass(frozen=True)
class PairExample:
    """One sentence-pair example (Quora: 0.0/1.0 paraphrase; STS: similarity 0..5; None in test)."""

    id: str
    sentence1: str
    sentence2: str
    label: float | None


@dataclass
class Split:
    """The examples of one file, plus the records that were skipped on the way."""

    name: str
    path: str
    examples: list
    skipped: list[SkippedRow] = field(default_factory=list)

    def report(self, max_refs: int = 5) -> str | None:
        """A one-line summary of the skipped rows, or None when every record was kept.

        It names the file, counts the skipped rows by kind of problem, and cites the first
        ``max_refs`` of them as ``file:line reason`` so a reader can open the file there.
        """
        if not self.skipped:
            return None
        file_name = Path(self.path).name
        counts: dict[str, int] = {}
        for row in self.skipped:
            kind = _problem_kind(row.reason)
            counts[kind] = counts.get(kind, 0) + 1
        total = len(self.skipped)
        rows = "row" if total == 1 else "rows"
        if len(counts) == 1:
            summary = f"skipped {total} {rows} with {next(iter(counts))}"
        else:
            parts = ", ".join(f"{n} with {kind}" for kind, n in counts.items())
            summary = f"skipped {total} {rows}: {parts}"
        refs = "; ".join(
            f"{Path(row.path).name}:{row.line} {row.reason}" for row in self.skipped[:max_refs]
        )
        if total > max_refs:
            refs += f"; and {total - max_refs} more"
        return f"{file_name}: {summary} ({refs})"


# --------------------------------------------------------------------------------------------
# The three file formats
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Format:
    """What one task's files look like: its text columns and how to read its label."""

    task: str  # short name used in Split.name, e.g. "sst"
    text_columns: tuple[str, ...]  # one column for SST, two for the pair tasks
    label_column: str
    parse_label: Callable[[str], int | float]  # raises _SkipRow on a value it rejects


class _SkipRow(Exception):
    """Raised while reading one record that must be skipped; the message is the reason."""


def _shorten(text: str, limit: int = 40) -> str:
    """Quote a field for a skip reason, cut short so a huge field cannot flood the report."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


# Plain ASCII decimal numbers only. float() alone would also accept "nan", "inf", "0_1" (= 1.0)
# and non-ASCII digits, and silently turning such debris into a label is what the loader must
# never do.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _parse_number(text: str) -> float:
    """The label as a finite float; _SkipRow says what is wrong with it otherwise."""
    if not text:
        raise _SkipRow("empty label")
    if not _NUMBER.fullmatch(text):
        raise _SkipRow(f"non-numeric label {_shorten(text)}")
    value = float(text)
    if not math.isfinite(value):  # e.g. "1e999" overflows to inf
        raise _SkipRow(f"label {_shorten(text)} out of range")
    return value


def _parse_sentiment(text: str) -> int:
    """SST-5: an integer class 0..4; "3" and "3.0" are both accepted."""
    value = _parse_number(text)
    if value != int(value):
        raise _SkipRow(f"label {_shorten(text)} is not a whole number (expected an integer 0..4)")
    if not 0 <= value <= 4:
        raise _SkipRow(f"label {_shorten(text)} out of range (expected an integer 0..4)")
    return int(value)


def _parse_duplicate(text: str) -> float:
    """Quora: 0 (different questions) or 1 (paraphrases), written "0.0"/"1.0" in the files."""
    value = _parse_number(text)
    if value not in (0.0, 1.0):
        raise _SkipRow(f"label {_shorten(text)} out of range (expected 0 or 1)")
    return value


def _parse_similarity(text: str) -> float:
    """STS-B: a real-valued similarity score in [0, 5]."""
    value = _parse_number(text)
    if not 0.0 <= value <= 5.0:
        raise _SkipRow(f"label {_shorten(text)} out of range (expected a number from 0 to 5)")
    return value


def _problem_kind(reason: str) -> str:
    """Group a skip reason into the phrase Split.report() counts it under."""
    if reason.startswith(("empty label", "non-numeric label", "label ")):
        return "a missing or invalid label"
    if reason.startswith("duplicate id"):
        return "a duplicate id"
    if reason.startswith("short row"):
        return "too few fields"
    if reason.startswith("long row"):
        return "more fields than the header"
    return "an empty id or sentence"


# --------------------------------------------------------------------------------------------
# Public loaders
# --------------------------------------------------------------------------------------------


# A labelled file that yields no example at all (a header only, or every label invalid) is a
# DataError unless the caller passes allow_empty=True: training or evaluating on nothing would
# only fail later, far from the cause (an empty batch, a NaN correlation). Unlabelled test files
# may be empty: there is then nothing to predict.


def load_sst(path: PathLike, labelled: bool = True, allow_empty: bool = False) -> Split:
    """Load an SST-5 file (``ids-sst-*.csv``): columns id, sentence and, if labelled, sentiment."""
    fmt = _Format("sst", ("sentence",), "sentiment", _parse_sentiment)
    return _load(path, fmt, labelled, _make_sentence_example, allow_empty)


def load_quora(path: PathLike, labelled: bool = True, allow_empty: bool = False) -> Split:
    """Load a Quora file (``quora-*.csv``): id, sentence1, sentence2 and (labelled) is_duplicate."""
    fmt = _Format("quora", ("sentence1", "sentence2"), "is_duplicate", _parse_duplicate)
    return _load(path, fmt, labelled, _make_pair_example, allow_empty)


def load_sts(path: PathLike, labelled: bool = True, allow_empty: bool = False) -> Split:
    """Load an STS-B file (``sts-*.csv``): id, sentence1, sentence2 and, if labelled, similarity."""
    fmt = _Format("sts", ("sentence1", "sentence2"), "similarity", _parse_similarity)
    return _load(path, fmt, labelled, _make_pair_example, allow_empty)


def require_examples(split: Split) -> Split:
    """Return `split` if it holds at least one example; otherwise raise a DataError that names
    its file, says why nothing was left (the skipped rows, or no rows at all) and what to do."""
    if split.examples:
        return split
    if split.skipped:
        why = f"every row was skipped: {split.report()}"
    else:
        why = "it has a header line but no rows"
    raise DataError(
        f"{split.path}: no usable examples ({why}). Fix the file, or delete it so that it is "
        f"downloaded again (when online), or point --data-dir at a folder with good files."
    )


def dataset_paths(data_dir: PathLike) -> dict[str, Path]:
    """The standard CS224N file of each task and split, e.g. "sst-train" -> ids-sst-train.csv.

    The values are where the files are expected; this does not check that they exist.
    """
    folder = Path(data_dir)
    names = {
        "sst-train": "ids-sst-train.csv",
        "sst-dev": "ids-sst-dev.csv",
        "sst-test": "ids-sst-test-student.csv",
        "quora-train": "quora-train.csv",
        "quora-dev": "quora-dev.csv",
        "quora-test": "quora-test-student.csv",
        "sts-train": "sts-train.csv",
        "sts-dev": "sts-dev.csv",
        "sts-test": "sts-test-student.csv",
    }
    return {key: folder / name for key, name in names.items()}


# --------------------------------------------------------------------------------------------
# The shared reading loop
# --------------------------------------------------------------------------------------------


def _make_sentence_example(row_id: str, texts: list[str], label) -> SentenceExample:
    return SentenceExample(id=row_id, sentence=texts[0], label=label)


def _make_pair_example(row_id: str, texts: list[str], label) -> PairExample:
    return PairExample(id=row_id, sentence1=texts[0], sentence2=texts[1], label=label)


def _split_name(task: str, path: Path) -> str:
    """"sst-train" for ids-sst-train.csv, "quora-test" for quora-test-student.csv, and so on."""
    parts = path.stem.split("-")
    for part in ("train", "dev", "test"):
        if part in parts:
            return f"{task}-{part}"
    return f"{task}-{path.stem}"


def _records(reader) -> Iterator[tuple[int, list[str]]]:
    """Yield (first physical line, fields) for every record after the header.

    ``reader.line_num`` counts the lines read so far, i.e. the line on which a record ENDS; a
    quoted field with newlines makes a record span several lines. So a record starts on the line
    after the one where the previous record ended.
    """
    end_of_previous = reader.line_num
    for fields in reader:
        yield end_of_previous + 1, fields
        end_of_previous = reader.line_num


# Every record of a CS224N file starts on a new line with its unnamed integer row index and a tab.
# A field holding a line break followed by such a start has swallowed the next row: a quote opened
# the field and was not closed where the field ends, so csv read on, as one field, to the next
# quote or to the end of the file. No real sentence holds one (the public files have no line break
# in any field), so the file is refused rather than read with its rows merged or lost.
_RECORD_START = re.compile(r"[\r\n][0-9]+\t")
_LINE_END = re.compile(r"\r\n|\r|\n")  # as a file opened with newline="" sees them


def _check_open_quote(path: Path, line: int, fields: list[str]) -> None:
    """Raise a DataError if a field of the record that starts on `line` swallowed a later row."""
    for index, text in enumerate(fields):
        swallowed = _RECORD_START.search(text)
        if swallowed:
            # The line the field (and so its opening quote) starts on, and the swallowed row's.
            opened = line + sum(len(_LINE_END.findall(f)) for f in fields[:index])
            row = opened + len(_LINE_END.findall(text[: swallowed.start() + 1]))
            raise DataError(
                f"{path}:{opened}: a quote (\") opens a field on this line and is not closed "
                f"before the row on line {row} starts, so the rows after it would be read as "
                f"part of that field. Close the quote where the field ends, or remove it."
            )


def _column_indices(path: Path, header: list[str], fmt: _Format, labelled: bool) -> dict[str, int]:
    """Find each required column by name; raise a DataError that says what was found instead."""
    required = ["id", *fmt.text_columns] + ([fmt.label_column] if labelled else [])
    names = [name.strip() for name in header]
    missing = [column for column in required if column not in names]
    if missing:
        hint = ""
        if labelled and missing == [fmt.label_column]:
            hint = (f" It looks like an unlabelled test file, but a training or dev file needs "
                    f"its {fmt.label_column!r} column: put the labelled file there (or delete it "
                    f"so that it is downloaded again, when online), or point --data-dir at a "
                    f"folder with the right files.")
        raise DataError(
            f"{path}: the header does not have the expected columns. "
            f"Expected {required}, found {names} (missing {missing}). "
            f"Is this a {fmt.task} file in the CS224N tab-separated format?{hint}"
        )
    repeated = [column for column in required if names.count(column) > 1]
    if repeated:
        raise DataError(
            f"{path}: the header names column(s) {repeated} more than once ({names}); "
            f"it is ambiguous which one to read."
        )
    return {column: names.index(column) for column in required}


def _parse_record(
    fields: list[str], columns: dict[str, int], width: int, fmt: _Format, labelled: bool
) -> tuple[str, list[str], int | float | None]:
    """Check one record and return its (id, texts, label); raise _SkipRow to leave it out.

    `width` is the header's number of columns. A record with text beyond them has a tab in one
    of its fields that no quotes protect, so its fields sit in the wrong columns (a sentence cut
    in two, its second half read as the next column): it is left out rather than read misaligned.
    Empty fields beyond the header (tabs at the end of a line) hold nothing and are ignored.
    The label is checked next because an empty or broken label is the usual symptom of a row
    whose quoting went wrong, and that is the most useful thing to tell the reader about it.
    """
    needed = max(columns.values()) + 1
    if len(fields) < needed:
        raise _SkipRow(f"short row ({len(fields)} fields, expected at least {needed})")
    if any(field.strip() for field in fields[width:]):
        raise _SkipRow(f"long row ({len(fields)} fields, the header has {width}: an unquoted tab "
                       f"inside a sentence? quote the field)")
    label = fmt.parse_label(fields[columns[fmt.label_column]].strip()) if labelled else None
    row_id = fields[columns["id"]].strip()
    if not row_id:
        raise _SkipRow("empty id")
    texts = [fields[columns[column]].strip() for column in fmt.text_columns]
    empty = [column for column, text in zip(fmt.text_columns, texts) if not text]
    if empty:
        raise _SkipRow(f"empty {' and '.join(empty)}")
    return row_id, texts, label


def _not_utf8_error(path: Path, error: UnicodeDecodeError) -> DataError:
    """The DataError for a file that is not UTF-8, naming the line and byte of the first bad byte.

    The text reader decodes the file chunk by chunk, and its error counts bytes from the start of
    the chunk, not of the file; decoding the whole file again gives the true position.
    """
    where, reason = "", error.reason
    data = path.read_bytes()
    try:
        data.decode("utf-8")  # not utf-8-sig: a byte-order mark counts as the 3 bytes it is
    except UnicodeDecodeError as whole:
        line = 1 + len(_LINE_END.findall(data[: whole.start].decode("utf-8")))
        where, reason = f":{line}", f"{whole.reason} at byte {whole.start} of the file"
    return DataError(
        f"{path}{where}: not valid UTF-8 text ({reason}). "
        f"The CS224N files are UTF-8; re-download or re-export the file."
    )


def _load(path: PathLike, fmt: _Format, labelled: bool, make_example: Callable,
          allow_empty: bool = False) -> Split:
    """Read one file of the given format into a Split, skipping (and recording) bad records."""
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"{path}: a folder, not a dataset file. Move the folder out of the way and put the "
            f"CS224N file {path.name} in its place, or point --data-dir at a folder that has it."
        )
    if not path.is_file():
        raise DataError(
            f"{path}: dataset file not found. The CS224N files are downloaded into the data "
            f"folder automatically when there is a network connection; offline, copy them there "
            f"or point --data-dir at a folder that has them."
        )
    # A single sentence could legitimately exceed csv's default 128 KiB field limit. The limit is
    # process-wide, so only ever raise it; 2**31 - 1 fits the C long on every platform.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))

    examples: list = []
    skipped: list[SkippedRow] = []
    first_line_of_id: dict[str, int] = {}
    # newline="" hands line endings inside quoted fields to the csv module untouched, as its docs
    # require; utf-8-sig tolerates a byte-order mark some editors add when saving.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter="\t", quotechar='"')
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: the file is empty; expected a header line.")
            _check_open_quote(path, 1, header)
            columns = _column_indices(path, header, fmt, labelled)
            for line, fields in _records(reader):
                if not fields:
                    continue  # a blank line holds no record, so there is nothing to skip
                _check_open_quote(path, line, fields)
                try:
                    row_id, texts, label = _parse_record(fields, columns, len(header), fmt, labelled)
                    # Predictions are written one row per id, so a repeated id would be ambiguous.
                    if row_id in first_line_of_id:
                        raise _SkipRow(
                            f"duplicate id {_shorten(row_id)} "
                            f"(first on line {first_line_of_id[row_id]})"
                        )
                except _SkipRow as problem:
                    skipped.append(SkippedRow(path=str(path), line=line, reason=str(problem)))
                    continue
                first_line_of_id[row_id] = line
                examples.append(make_example(row_id, texts, label))
        except UnicodeDecodeError as error:
            raise _not_utf8_error(path, error) from error
        except csv.Error as error:
            raise DataError(
                f"{path}:{reader.line_num}: cannot parse the file as csv ({error})."
            ) from error

    split = Split(name=_split_name(fmt.task, path), path=str(path), examples=examples, skipped=skipped)
    return split if allow_empty or not labelled else require_examples(split)
