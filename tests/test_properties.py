"""Property-based tests (hypothesis): the tokenizer wrapper and the collate function on arbitrary
input never crash, never lose a token and keep their layout. (The CSV loaders' properties are in
tests/test_data.py.)"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bert import BertTokenizer, Encoded
from multitask.batching import pad_encodings

transformers = pytest.importorskip("transformers")

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizers(minilm_dir):
    return (BertTokenizer.from_pretrained(minilm_dir),
            transformers.BertTokenizerFast.from_pretrained(str(minilm_dir)))


@SETTINGS
@given(texts=st.lists(TEXT, min_size=1, max_size=4), max_length=st.integers(3, 40))
def test_tokenizer_any_text(tokenizers, texts, max_length):
    ours, theirs = tokenizers
    batch = ours(texts, max_length=max_length)
    lengths = batch["attention_mask"].sum(dim=1)
    assert batch["input_ids"].shape[1] <= max_length
    assert (batch["input_ids"][:, 0] == ours.cls_token_id).all()
    for row, n in enumerate(lengths.tolist()):
        assert batch["input_ids"][row, n - 1] == ours.sep_token_id
        assert (batch["input_ids"][row, n:] == ours.pad_token_id).all()
    assert int(batch["input_ids"].max()) < ours.vocab_size
    reference = theirs(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], reference["input_ids"])


@SETTINGS
@given(pairs=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=4), max_length=st.integers(4, 40))
def test_tokenizer_any_pair(tokenizers, pairs, max_length):
    ours, theirs = tokenizers
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    batch = ours(first, second, max_length=max_length)
    reference = theirs(first, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(batch[key], reference[key]), key
    for row in range(len(pairs)):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        assert (ids == ours.sep_token_id).sum() == 2  # exactly [CLS] a [SEP] b [SEP]


ENCODING = st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.lists(st.integers(1, 30521), min_size=n, max_size=n),
    st.lists(st.integers(0, 1), min_size=n, max_size=n)))


@settings(max_examples=100, deadline=None)
@given(encodings=st.lists(ENCODING, min_size=1, max_size=12))
def test_collate_keeps_every_token(encodings):
    items = [Encoded(ids, types) for ids, types in encodings]
    batch = pad_encodings(items, pad_id=0)
    longest = max(len(ids) for ids, _ in encodings)
    assert batch["input_ids"].shape == (len(items), longest)
    for row, (ids, types) in enumerate(encodings):
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids
        assert batch["token_type_ids"][row, :n].tolist() == types
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert batch["input_ids"][row, n:].eq(0).all()
