"""A checkpoint folder (a run's best/) whose files are damaged or come from different runs is one
clear CheckpointError naming the file and the bad value, in every tool that loads it (predict,
analysis and export all go through checkpoint.load), never an error deep in the heads, the
tokenizer or torch, nor a model silently built another way."""

import json
import shutil

import pytest

from bert import CheckpointError
from multitask import checkpoint, export, predict

from synthetic import write_random_run, write_tiny_checkpoint


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoint-files")
    encoder_dir = write_tiny_checkpoint(root / "encoder", None)  # its own small vocabulary: no MiniLM
    return {head: write_random_run(root / head, encoder_dir, head) for head in ("concat", "cosine")}


@pytest.fixture()
def best(runs, tmp_path):
    """A copy of the concat run's best/ folder, to damage."""
    return shutil.copytree(runs["concat"] / "best", tmp_path / "best")


def load_error(folder) -> str:
    with pytest.raises(CheckpointError) as caught:
        checkpoint.load(folder)
    return str(caught.value)


def test_weights_of_another_sts_head_name_the_tensors_shapes_and_cause(runs, best, tmp_path, capsys):
    shutil.copy(runs["cosine"] / "best" / "model.safetensors", best / "model.safetensors")
    message = load_error(best)
    assert message.startswith(f"{best / 'model.safetensors'}: weights of other shapes"), message
    assert "similarity.weight is (32, 32) where the model needs (1, 32)" in message
    assert "another --sts-head" in message and "best/ folder whole" in message
    # what the user sees: one line, from each tool
    assert predict.main([str(best), "--sentence", "the movie"]) == 1
    assert export.main([str(best), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and len(err.splitlines()) == 2 and "Traceback" not in err


def test_a_config_json_of_another_encoder_is_named_as_the_cause(best):
    values = json.loads((best / "config.json").read_text())
    (best / "config.json").write_text(json.dumps({**values, "intermediate_size": 48}))
    message = load_error(best)
    assert "bert.encoder.layer.0.intermediate.dense.weight is (64, 32) where the model needs (48, 32)" in message
    assert "config.json describes another encoder" in message and "and 3 more" in message  # (6 in all)


@pytest.mark.parametrize("key, value, expected", [
    ("sts_head", "foo", "a setting the run cannot have had (--sts-head must be one of dot, cosine, concat, mnr, "
                        "got 'foo')"),
    ("pooling", "max", "(--pooling must be one of cls, mean, got 'max')"),  # was run as mean pooling
    ("max_length", 1, "(--max-length must be at least 3, got 1)"),
    ("max_length", "abc", "max_length is 'abc'; it must be a whole number or null"),
    ("dropout", None, "dropout is None; it must be a number"),
    ("shared_layer", 1, "shared_layer is 1; it must be true or false"),
    ("max_length", 65, "max_length is 65, more than the 64 tokens the checkpoint reads"),
    ("private_layers", 2, "its settings do not fit the encoder of"),  # the tiny encoder has 2 layers
])
def test_a_bad_setting_in_multitask_json_is_named(best, key, value, expected):
    info = json.loads((best / "multitask.json").read_text())
    info["train_config"][key] = value
    (best / "multitask.json").write_text(json.dumps(info))
    message = load_error(best)
    assert message.startswith(f"{best / 'multitask.json'}: "), message
    assert expected in message, message
    assert "train_config.json" in message  # where the run's own settings are


def test_multitask_json_without_settings(best):
    (best / "multitask.json").write_text(json.dumps({"metrics": {}}))
    assert "no train_config object" in load_error(best)
    (best / "multitask.json").write_text(json.dumps(["train_config"]))
    assert "(a JSON object)" in load_error(best)
