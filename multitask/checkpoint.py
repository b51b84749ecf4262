"""Saving and loading trained multitask models.

A checkpoint folder is self-contained and readable by other tools:

    config.json, vocab.txt, tokenizer_config.json   the encoder's config and tokenizer
    model.safetensors                               every weight: encoder (`bert.*`) and heads
    multitask.json                                  the run's TrainConfig and the epoch's metrics

Weights are safetensors, so loading never runs pickled code; each file is written to a
temporary name and renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bert import BertConfig, BertModel, BertTokenizer, CheckpointError
from bert.loading import atomic_write, load_state_dict
from multitask.config import TrainConfig
from multitask.heads import MultitaskBert


def save(folder: Path, model: MultitaskBert, tokenizer: BertTokenizer, config: TrainConfig,
         record: dict) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    model.bert.config.save(folder)
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda temp: save_file(tensors, temp, metadata={"format": "pt"}))
    info = {"train_config": config.to_dict(), "metrics": record}
    atomic_write(folder / "multitask.json",
                 lambda temp: Path(temp).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8"))


def load_weights(folder: Path, model: MultitaskBert) -> None:
    """Copy a checkpoint's weights into a model of the same shape and STS head."""
    state = load_state_dict(Path(folder) / "model.safetensors")
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: not a checkpoint of this model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); was it trained with another --sts-head?")
    model.load_state_dict(state)


def load(folder: str | Path, device: str | torch.device = "cpu") -> tuple[MultitaskBert, BertTokenizer, TrainConfig, dict]:
    """Rebuild a trained model from its folder: (model in eval mode, tokenizer, config, metrics)."""
    folder = Path(folder)
    info_file = folder / "multitask.json"
    if not info_file.is_file():
        raise CheckpointError(f"{folder}: no multitask.json; is this a multitask checkpoint folder?")
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
        config = TrainConfig.from_dict(info["train_config"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{info_file}: unreadable ({err})") from None
    encoder = BertModel(BertConfig.from_json_file(folder / "config.json"))
    model = MultitaskBert(encoder, config.sts_head, config.dropout)
    load_weights(folder, model)
    tokenizer = BertTokenizer.from_pretrained(folder)
    return model.to(device).eval(), tokenizer, config, info.get("metrics", {})
