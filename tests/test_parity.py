"""Parity with the reference library: transformers' BertModel on the same checkpoints.

- the real all-MiniLM-L6-v2 checkpoint (offline package), on a padded batch of real sentences and
  sentence pairs, both attention paths, fp32, max abs difference <= 1e-5;
- a randomly initialised checkpoint of bert-base-uncased's exact shape (12 layers, hidden 768)
  written by transformers, as model.safetensors and as an old-style pytorch_model.bin with
  `bert.` prefixes, gamma/beta LayerNorm names and the cls.* pre-training heads;
- the CS224N sanity_check.data fixture against bert-base-uncased where that checkpoint is cached.
"""

import json
import logging
import re
import shutil

import pytest
import torch

from bert import BertModel, BertTokenizer, CheckpointError

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "It 's a lovely film with lovely performances by Buy and Accorsi .",
    "No one goes unindicted here , which is probably for the best .",
    "What makes one angry?",
    "Two black dogs are playing on the grass.",
    "A man is slicing a tomato.",
    "The gorgeously elaborate continuation of `` The Lord of the Rings '' trilogy is so huge "
    "that a column of words can not adequately describe co-writer/director Peter Jackson 's "
    "expanded vision of J.R.R. Tolkien 's Middle-earth .",
]
PAIRS = [
    ("What makes one angry?", "What is the one thing that makes you most angry?"),
    ("UN chief welcomes peaceful presidential elections in Guinea",
     "UN chief condemns attack against peacekeepers in Mali"),
    ("Two black dogs are playing on the grass.", "Two black dogs are playing in a grassy plain."),
    ("How do I learn Python?", "What is the best way to learn Python quickly and well?"),
]
TOLERANCE = 1e-5


def max_differences(ours: dict, theirs, mask: torch.Tensor) -> tuple[float, float]:
    keep = mask.bool()
    hidden = (ours["last_hidden_state"][keep] - theirs.last_hidden_state[keep]).abs().max()
    pooled = (ours["pooler_output"] - theirs.pooler_output).abs().max()
    return hidden.item(), pooled.item()


def assert_parity(ours: BertModel, theirs, batches: list[dict]) -> None:
    ours.eval()
    theirs.eval()
    for implementation in ("reference", "sdpa"):
        ours.set_attention_implementation(implementation)
        for inputs in batches:
            with torch.no_grad():
                hidden, pooled = max_differences(ours(**inputs), theirs(**inputs), inputs["attention_mask"])
            assert hidden <= TOLERANCE, f"{implementation}: last_hidden_state differs by {hidden}"
            assert pooled <= TOLERANCE, f"{implementation}: pooler_output differs by {pooled}"


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir):
    return BertTokenizer.from_pretrained(minilm_dir)


def real_batches(tokenizer: BertTokenizer) -> list[dict]:
    singles = tokenizer(SENTENCES)
    pairs = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS])
    assert (singles["attention_mask"] == 0).any() and (pairs["attention_mask"] == 0).any()  # padded
    assert (pairs["token_type_ids"] == 1).any()
    return [singles, pairs]


def test_minilm_parity(minilm_dir, minilm_tokenizer):
    ours = BertModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    theirs = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager")
    assert ours.config.num_hidden_layers == 6 and ours.config.hidden_size == 384
    assert_parity(ours, theirs, real_batches(minilm_tokenizer))


def test_minilm_loads_from_folder_path_identically(minilm_dir):
    by_name = BertModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    by_path = BertModel.from_pretrained(minilm_dir)
    for (name, a), (_, b) in zip(by_name.state_dict().items(), by_path.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.fixture(scope="module")
def bert_base_random(tmp_path_factory, minilm_dir):
    """A random bert-base-uncased-shaped BertForPreTraining written by transformers, twice (about
    1 GB on disk, removed when this module's tests end)."""
    torch.manual_seed(0)
    config = transformers.BertConfig()  # the bert-base-uncased shape
    reference = transformers.BertForPreTraining(config).eval()
    modern = tmp_path_factory.mktemp("bert-base-safetensors")
    reference.bert.save_pretrained(modern)
    legacy = tmp_path_factory.mktemp("bert-base-legacy-bin")
    state = {}
    for name, tensor in reference.state_dict().items():
        name = re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", name)
        state[re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", name)] = tensor.clone()
    assert any(name.startswith("cls.") for name in state) and all(
        name.startswith(("bert.", "cls.")) for name in state)
    torch.save(state, legacy / "pytorch_model.bin")
    (legacy / "config.json").write_text(json.dumps(config.to_dict()))
    yield reference.bert, modern, legacy
    shutil.rmtree(modern, ignore_errors=True)
    shutil.rmtree(legacy, ignore_errors=True)


def test_bert_base_shape_safetensors_parity(bert_base_random, minilm_tokenizer):
    reference, modern, _ = bert_base_random
    assert (modern / "model.safetensors").is_file()
    ours = BertModel.from_pretrained(modern)
    assert ours.config.num_hidden_layers == 12 and ours.config.hidden_size == 768
    reference.set_attn_implementation("eager")
    assert_parity(ours, reference, real_batches(minilm_tokenizer))


def test_bert_base_shape_legacy_bin_loads_the_same_weights(bert_base_random, caplog):
    # The same tensors as the safetensors folder, whose outputs the test above holds to
    # transformers': old names (gamma/beta) mapped, the pre-training heads skipped.
    reference, modern, legacy = bert_base_random
    with caplog.at_level(logging.WARNING, logger="bert"):
        ours = BertModel.from_pretrained(legacy)
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "cls.predictions" in skipped[0].getMessage()  # reported once
    expected = BertModel.from_pretrained(modern).state_dict()
    assert list(ours.state_dict()) == list(expected)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_sanity_check_fixture_bert_base_uncased(shared_data_dir):
    """The CS224N fixture: bert-base-uncased outputs for two fixed inputs."""
    try:
        model = BertModel.from_pretrained("bert-base-uncased")
    except CheckpointError as err:
        pytest.skip(f"bert-base-uncased is not available locally: {str(err)[:160]}")
    expected = torch.load(shared_data_dir / "sanity_check.data", weights_only=True)
    input_ids = torch.tensor([[101, 7592, 2088, 102, 0, 0, 0, 0],
                              [101, 7592, 15756, 2897, 2005, 17953, 2361, 102]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8])
    for implementation in ("reference", "sdpa"):
        model.set_attention_implementation(implementation)
        with torch.no_grad():
            out = model(input_ids, mask)
        keep = mask.bool()
        torch.testing.assert_close(out["last_hidden_state"][keep],
                                   expected["last_hidden_state"][keep], atol=1e-5, rtol=1e-3)
        torch.testing.assert_close(out["pooler_output"], expected["pooler_output"], atol=1e-5, rtol=1e-3)
