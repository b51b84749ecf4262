"""Saving and loading trained multitask models.

A checkpoint folder is self-contained and readable by other tools:

    config.json, vocab.txt, tokenizer_config.json   the encoder's config and tokenizer
    model.safetensors                               every weight: encoder (`bert.*`) and heads
    multitask.json                                  the run's TrainConfig and the epoch's metrics

A training state (OUT/checkpoint.pt) holds everything needed to resume a run exactly: model,
optimizer, loss scaler, random generators, and the position in the epoch and in each task's data.

Weights are safetensors, so loading never runs pickled code; each file is written to a
temporary name and renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
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


# --------------------------------------------------------------------------------------------
# Training state, for resuming a run after a crash
# --------------------------------------------------------------------------------------------

TRAINING_STATE_FORMAT = 1


def capture_rng_state() -> dict:
    """Every random generator a training step draws from: Python's, NumPy's global one, torch's
    CPU generator and each CUDA device's. Stored as plain tensors and numbers, so the
    checkpoint loads with torch.load(weights_only=True)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, state: dict) -> None:
    """Write a resumable training state atomically: a kill at any moment leaves the previous
    file intact (the new one is written to a temporary name, fsynced, then renamed)."""
    state = {"format": TRAINING_STATE_FORMAT, **state}
    atomic_write(Path(path), lambda temp: torch.save(state, temp))


def load_training_state(path: Path) -> dict:
    """Read a training state with weights_only=True (never runs pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint there (nothing to resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise CheckpointError(
            f"{path}: cannot read the training checkpoint ({first_line[:200]}). It may be truncated "
            f"or not a multibert checkpoint; pickled code is never run.") from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise CheckpointError(f"{path}: not a multibert training checkpoint (format {TRAINING_STATE_FORMAT})")
    return state


def load_training_config(path: Path) -> TrainConfig:
    """Only the settings stored in a training checkpoint (memory-mapped: the weights stay on disk)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint there (nothing to resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return TrainConfig.from_dict(state["config"])
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read the training checkpoint ({str(err)[:200]}); it may be "
                              f"truncated or not a multibert checkpoint") from None
