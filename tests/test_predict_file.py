"""multitask.predict --input FILE --output OUT_CSV: a file of sentences or pairs, scored in
batches; the scores equal the one-input mode's, and bad files are clear errors (file:line)."""

import csv
import errno
import subprocess
import sys

import pytest

from multitask import predict
from multitask.data import dataset_paths, load_sst, load_sts

from synthetic import write_random_run, write_tiny_checkpoint

MAX_LENGTH = 40
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def run(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("predict-file")
    return write_random_run(root / "run", write_tiny_checkpoint(root / "encoder", minilm_dir), "cosine",
                            MAX_LENGTH)


@pytest.fixture(scope="module")
def trained(run):
    return predict.open_checkpoint(run)


@pytest.fixture(scope="module")
def dev(shared_data_dir):
    paths = dataset_paths(shared_data_dir)
    sst = load_sst(paths["sst-dev"]).examples
    longest = max(sst, key=lambda e: len(e.sentence))
    return [e.sentence for e in sst[:20]] + [longest.sentence], load_sts(paths["sts-dev"]).examples[:20]


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_sentences_one_per_line(run, trained, dev, tmp_path, capsys):
    sentences, _ = dev
    source, output = tmp_path / "sentences.txt", tmp_path / "scores.csv"
    source.write_text("\n".join(sentences[:10]) + "\n\n" + "\n".join(sentences[10:]) + "\n")  # a blank line
    assert predict.main([str(run), "--input", str(source), "--output", str(output), "--batch-size", "6"]) == 0
    captured = capsys.readouterr()
    assert "predicting" in captured.err and "21/21" in captured.err  # the progress bar
    cut = [line for line, sentence in zip([*range(1, 11), *range(12, 23)], sentences)
           if predict.truncation_warnings(trained, sentence)]  # (line 11 is blank)
    assert 22 in cut  # the longest sentence
    assert (f"warning: {len(cut)} of 21 inputs are longer than the model reads (40 tokens, the "
            f"--max-length it was trained with)") in captured.err
    assert f"the first at {source}:{cut[0]}\n" in captured.err
    assert f"wrote the scores of 21 sentences to {output}" in captured.out
    rows = read_csv(output)
    assert list(rows[0]) == ["sentence", "label", "label_name", "p_negative", "p_somewhat_negative",
                             "p_neutral", "p_somewhat_positive", "p_positive"]
    assert [r["sentence"] for r in rows] == sentences
    for row, sentence in zip(rows, sentences):
        expected = predict.predict_sentiment(trained, sentence)
        probabilities = [float(row[key]) for key in list(row)[3:]]
        assert max(abs(a - b) for a, b in zip(probabilities, expected.probabilities)) < TOLERANCE
        assert (int(row["label"]), row["label_name"]) == (expected.label, expected.name)
    assert len({r["label"] for r in rows}) > 1  # the sentences get different answers


@pytest.mark.parametrize("kind", ["tab-separated lines", "csv with a header", "the CS224N file"])
def test_pairs(run, trained, dev, tmp_path, capsys, shared_data_dir, kind):
    _, sts = dev
    output = tmp_path / "scores.csv"
    if kind == "tab-separated lines":
        source = tmp_path / "pairs.txt"
        source.write_text("".join(f"{e.sentence1}\t{e.sentence2}\n" for e in sts))
    elif kind == "csv with a header":
        source = tmp_path / "pairs.csv"
        with open(source, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)  # quotes the fields that hold commas or quotes
            writer.writerow(["question", "answer", "note"])
            writer.writerows([e.sentence1, e.sentence2, "x, y"] for e in sts)
    else:  # the course's own file (tab-separated, with ids), cut to its first 20 pairs
        source = tmp_path / "sts-dev.csv"
        lines = (shared_data_dir / "sts-dev.csv").read_text(encoding="utf-8").splitlines(keepends=True)
        source.write_text("".join(lines[:21]), encoding="utf-8")
    columns = ["--columns", "question", "answer"] if kind == "csv with a header" else []
    assert predict.main([str(run), "--input", str(source), "--output", str(output), "--no-progress",
                         "--batch-size", "8", *columns]) == 0
    assert "predicting" not in capsys.readouterr().err
    rows = read_csv(output)
    texts = ["question", "answer"] if columns else ["sentence1", "sentence2"]
    ids = ["id"] if kind == "the CS224N file" else []
    assert list(rows[0]) == ids + texts + ["paraphrase_probability", "similarity"]
    # (the course's loader strips the sentences; the output keeps them as the file has them)
    assert [(r[texts[0]].strip(), r[texts[1]].strip()) for r in rows] == [(e.sentence1, e.sentence2) for e in sts]
    if ids:
        assert [r["id"] for r in rows] == [e.id for e in sts]
    for row, example in zip(rows, sts):
        expected = predict.predict_pair(trained, example.sentence1, example.sentence2)
        assert abs(float(row["paraphrase_probability"]) - expected.paraphrase_probability) < TOLERANCE
        assert abs(float(row["similarity"]) - expected.similarity) < TOLERANCE


BAD_FILES = [
    # (file name, contents, extra arguments, the message's key phrase)
    ("missing.txt", None, [], "missing.txt: no such file"),
    ("mixed.txt", "one sentence\na first\tand a second\n", [], "mixed.txt:2: a pair"),
    ("tabs.txt", "a\tb\tc\n", [], "tabs.txt:1: 2 tabs"),
    ("empty-side.txt", "a first\tb\n\t second\n", [], "empty-side.txt:2: an empty sentence"),
    ("short-row.csv", "id,sentence1,sentence2\n1,a,b\n2,only one\n", [], "short-row.csv:3: 2 field(s) where the header has 3"),
    # An unquoted comma (tab) in a sentence splits it: "Hello" would be scored, ", world" lost.
    ("long-row.csv", "id,sentence\n1,fine\n2,Hello, world\n", [],
     "long-row.csv:3: 3 fields where the header has 2; is there a comma inside a sentence?"),
    ("long-row.tsv", "sentence1\tsentence2\na\tb\tc\n", [],
     "long-row.tsv:2: 3 fields where the header has 2; is there a tab inside a sentence?"),
    ("empty-cell.csv", "sentence\nfine\n\"\"\n", [], "empty-cell.csv:3: the sentence is empty"),
    ("no-columns.csv", "text,label\nnice,1\n", [], "has no 'sentence' column"),
    ("wrong-column.csv", "text,label\nnice,1\n", ["--columns", "review"], "no column 'review'"),
    ("blank.txt", "\n\n", [], "blank.txt: holds no sentences"),
    ("latin1.txt", b"caf\xe9\n", [], "latin1.txt: not UTF-8"),
    # A quote left open would swallow the rows after it into one cell (the old reader scored one).
    ("open-quote.csv", 'id,sentence\n1,"the movie\n2,fine\n3,ok\n', [], 'open-quote.csv:2: a quote (") opens'),
    ("open-quote.tsv", 'id\tsentence\n1\t"the movie\n2\tfine\n3\tok\n', [], "open-quote.tsv:2: a quote"),
    ("closed-later.csv", 'sentence\nfine\n"the movie\nok\na "good" one\n', [], "closed-later.csv:3: a quote"),
    ("quote-then-text.csv", 'sentence\n"Up" is a fine film\n', [], "quote-then-text.csv:2: a quote"),
    ("repeated-column.csv", "sentence,sentence\nx,y\n", [],
     "repeated-column.csv:1: the header names 'sentence' more than once"),
    ("repeated-id.tsv", "id\tsentence\tid\n1\tx\t2\n", [], "repeated-id.tsv:1: the header names 'id' more"),
]


@pytest.mark.parametrize("name,contents,extra,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_input_files(run, tmp_path, capsys, name, contents, extra, message):
    source = tmp_path / name
    if isinstance(contents, bytes):
        source.write_bytes(contents)
    elif contents is not None:
        source.write_text(contents)
    output = tmp_path / "scores.csv"
    assert predict.main([str(run), "--input", str(source), "--output", str(output), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    assert not output.exists()


def test_quoted_cells_with_line_breaks_quotes_and_a_huge_one_are_read(tmp_path):
    huge = "word " * 40_000  # 200 kB, past csv's default limit of 128 kB a cell
    source = tmp_path / "quoted.csv"
    source.write_text(f'id,sentence\n1,"two\nlines"\n2,"a ""quoted"" word"\n3,"{huge}"\n')
    old_limit = csv.field_size_limit(131_072)  # the default, whatever an earlier test set
    try:
        inputs = predict.read_inputs(source)
    finally:
        csv.field_size_limit(old_limit)
    assert inputs.texts == [("two\nlines",), ('a "quoted" word',), (huge,)]
    assert inputs.lines == [2, 4, 5] and inputs.ids == ["1", "2", "3"]


def test_empty_cells_past_the_header_are_ignored(tmp_path):
    source = tmp_path / "spreadsheet.csv"  # (a spreadsheet's export may end its lines with commas)
    source.write_text('id,sentence,\n1,"Hello, world",\n2,fine,,\n')
    inputs = predict.read_inputs(source)
    assert inputs.texts == [("Hello, world",), ("fine",)] and inputs.ids == ["1", "2"]


def test_usage_errors_and_no_traceback(run, tmp_path):
    source = tmp_path / "s.txt"
    source.write_text("a fine film\n")

    def call(*args):
        return subprocess.run([sys.executable, "-m", "multitask.predict", str(run), *args],
                              capture_output=True, text=True, timeout=120)

    process = call("--input", str(source))
    assert process.returncode == 2 and "--input needs --output" in process.stderr
    process = call("--sentence", "x", "--output", str(tmp_path / "o.csv"))
    assert process.returncode == 2 and "go with --input" in process.stderr
    process = call("--input", str(source), "--output", str(tmp_path / "nowhere" / "o.csv"))
    assert process.returncode == 1 and "does not exist; create it" in process.stderr
    assert "Traceback" not in process.stderr
    process = call("--input", str(source), "--output", str(source))
    assert process.returncode == 1 and "the same file as --input" in process.stderr
    assert source.read_text() == "a fine film\n"


def test_the_output_is_written_whole_or_not_at_all(run, trained, tmp_path, monkeypatch, capsys):
    source, output = tmp_path / "sentences.txt", tmp_path / "scores.csv"
    source.write_text("a fine film\n" * 10)
    output.write_text("the scores of an earlier run\n")
    real, batches = predict.predict_sentiments, []
    def fail_on_the_second_batch(model, texts):
        batches.append(texts)
        if len(batches) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model, texts)

    monkeypatch.setattr(predict, "predict_sentiments", fail_on_the_second_batch)
    assert predict.main([str(run), "--input", str(source), "--output", str(output), "--batch-size", "4",
                         "--no-progress"]) == 1
    assert f"error: cannot write {output}: no space left in {tmp_path}" in capsys.readouterr().err
    assert output.read_text() == "the scores of an earlier run\n"  # the old file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv", "sentences.txt"]  # no partial file

    monkeypatch.undo()
    assert predict.main([str(run), "--input", str(source), "--output", str(output), "--no-progress"]) == 0
    assert len(read_csv(output)) == 10
    (tmp_path / "plain.csv").write_text("")
    assert output.stat().st_mode == (tmp_path / "plain.csv").stat().st_mode  # not mkstemp's 0600
