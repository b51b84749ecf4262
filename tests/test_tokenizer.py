"""BertTokenizer against transformers' BertTokenizerFast: ids, token types and masks identical."""

import csv
import json
import shutil

import pytest
import torch

from bert import BertTokenizer

transformers = pytest.importorskip("transformers")

HARD_CASES = [
    "",
    "   ",
    "Héllo Wörld! Crème brûlée, naïve café, Ångström, São Paulo.",
    "中文字符和日本語のテキスト混合 English 한국어",
    "Emoji 😀👍🏽🇫🇷 and symbols ™ © ∑ ∞ → ★",
    "Punctuation runs!!!??? ...,,,;;; --- ((( ))) \"\"\" ''' ``",
    "tabs\tand\nnewlines\r\nand\u00a0non-breaking\u200bzero-width",
    "control\x00chars\x07here\ufeff",
    "supercalifragilisticexpialidocious antidisestablishmentarianism " + "x" * 150,
    "UPPER lower MiXeD 1234567890 3.14159 $100 @user #tag http://example.com/a?b=c",
    "special tokens in raw text: [MASK] [SEP] [cls] [UNK]",
    " ".join(["word"] * 2000),  # a 2,000-word sentence: truncated, never an index error
]
HARD_PAIRS = [
    ("", "an empty first sentence"),
    (" ".join(["long"] * 600), "short second"),
    ("short first", " ".join(["long"] * 600)),
    (" ".join(["alpha"] * 300), " ".join(["beta"] * 400)),
    ("Crème brûlée?", "中文 😀"),
]


@pytest.fixture(scope="module")
def tokenizers(minilm_dir):
    ours = BertTokenizer.from_pretrained(minilm_dir)
    theirs = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    return ours, theirs


def assert_same(ours, theirs, texts, pairs=None, max_length=None):
    mine = ours(texts, pairs, max_length=max_length)
    reference = theirs(texts, pairs, truncation=True, padding=True, return_tensors="pt",
                       max_length=max_length or ours.model_max_length)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        if not torch.equal(mine[key], reference[key]):
            rows = (mine[key] != reference[key]).any(dim=1).nonzero().flatten().tolist()
            raise AssertionError(f"{key} differs on rows {rows[:5]}: e.g. {texts[rows[0]]!r}")


def test_model_max_length(tokenizers):
    ours, _ = tokenizers
    assert ours.model_max_length == 512


def test_single_and_pair_layout(tokenizers):
    ours, _ = tokenizers
    batch = ours(["hello world"], ["good morning"])
    tokens = ours.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert tokens == ["[CLS]", "hello", "world", "[SEP]", "good", "morning", "[SEP]"]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert ours.decode(batch["input_ids"][0].tolist()) == "hello world good morning"


def test_padding_to_longest(tokenizers):
    ours, _ = tokenizers
    batch = ours(["a", "a much longer sentence here"])
    assert batch["input_ids"].shape == (2, 7)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert batch["input_ids"][0, 3:].eq(ours.pad_token_id).all()
    assert all(tensor.dtype == torch.long for tensor in batch.values())  # what nn.Embedding and the mask expect
    nothing = ours.pad([])  # an empty batch pads to (0, 0), not to one column of padding
    assert all(tensor.shape == (0, 0) for tensor in nothing.values())


def test_one_string_is_one_input_not_its_characters(tokenizers):
    ours, _ = tokenizers
    one, listed = ours("hello world"), ours(["hello world"])
    assert all(torch.equal(one[key], listed[key]) for key in listed)
    pair, listed = ours("hello world", "good morning"), ours(["hello world"], ["good morning"])
    assert all(torch.equal(pair[key], listed[key]) for key in listed)


def test_decode_keeps_the_special_tokens_when_asked(tokenizers):
    ours, _ = tokenizers
    ids = ours(["hello world"])["input_ids"][0].tolist()
    assert ours.decode(ids) == "hello world"
    assert ours.decode(ids, skip_special_tokens=False) == "[CLS] hello world [SEP]"


@pytest.mark.parametrize("settings", [
    None,  # no tokenizer_config.json: the defaults of the original BERT (uncased, CJK split, accents stripped)
    {"do_lower_case": False},  # a cased checkpoint: case and accents kept
    {"do_lower_case": True, "strip_accents": False},  # lower-cased, accents kept
    {"tokenize_chinese_chars": False},
])
def test_tokenizer_settings_read_as_transformers_reads_them(tmp_path, minilm_dir, settings):
    """Each normalisation setting of tokenizer_config.json, and its default when the file or the
    key is missing, gives the ids transformers gives, on text where the setting matters."""
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    if settings is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    ours = BertTokenizer.from_pretrained(tmp_path)
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    assert_same(ours, theirs, HARD_CASES)
    if settings is None:  # built from the vocabulary alone: the same defaults, and BERT's 512 positions
        direct = BertTokenizer(tmp_path / "vocab.txt")
        assert direct.model_max_length == ours.model_max_length == 512
        assert_same(direct, theirs, HARD_CASES)


def test_hard_cases(tokenizers):
    ours, theirs = tokenizers
    assert_same(ours, theirs, HARD_CASES)
    assert_same(ours, theirs, [a for a, _ in HARD_PAIRS], [b for _, b in HARD_PAIRS])
    assert_same(ours, theirs, [a for a, _ in HARD_PAIRS], [b for _, b in HARD_PAIRS], max_length=16)
    long = ours([HARD_CASES[-1]])
    assert long["input_ids"].shape == (1, 512) and long["input_ids"][0, -1] == ours.sep_token_id


def test_bad_arguments(tokenizers):
    ours, _ = tokenizers
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType"):
        ours(["fine", None])
    with pytest.raises(ValueError, match="2 texts but 1 pairs"):
        ours(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="exceeds the model's maximum"):
        ours(["a"], max_length=1000)
    with pytest.raises(ValueError, match="no room"):
        ours(["a"], ["b"], max_length=2)


def read_column(path, *columns):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [[row[c] for row in rows] for c in columns]


@pytest.mark.parametrize("max_length", [None, 24])
def test_every_dev_sentence(shared_data_dir, tokenizers, max_length):
    ours, theirs = tokenizers
    (sst,) = read_column(shared_data_dir / "ids-sst-dev.csv", "sentence")
    assert len(sst) == 1101
    for start in range(0, len(sst), 256):
        assert_same(ours, theirs, sst[start:start + 256], max_length=max_length)
    for name, count in (("sts-dev.csv", 863), ("quora-dev.csv", 3214)):
        first, second = read_column(shared_data_dir / name, "sentence1", "sentence2")
        assert len(first) == count
        for start in range(0, count, 256):
            chunk = slice(start, start + 256)
            assert_same(ours, theirs, first[chunk], second[chunk], max_length=max_length)
            assert_same(ours, theirs, second[chunk], max_length=max_length)
