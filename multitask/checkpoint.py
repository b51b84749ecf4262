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

import dataclasses
import json
import random
import shutil
import typing
import zipfile
from pathlib import Path

import numpy as np
import torch

from bert import BertConfig, BertModel, BertTokenizer, CheckpointError
from bert.files import atomic_write, read_json_object, write_text
from bert.loading import load_error_reason, load_state_dict
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
    write_text(folder / "multitask.json", json.dumps(info, indent=2) + "\n")


def build_heads(encoder: BertModel, config: TrainConfig) -> MultitaskBert:
    """The multitask model around `encoder`, with the heads, pooling and loss weighting of `config`."""
    return MultitaskBert(encoder, sts_head=config.sts_head, dropout=config.dropout, pooling=config.pooling,
                         loss_weights=config.task_weights, balance=config.balance,
                         sts_loss_scale=config.sts_loss_scale, shared_layer=config.shared_layer,
                         private_layers=config.private_layers, private_groups=config.private_groups,
                         sts_loss=config.sts_loss, paraphrase_head=config.paraphrase_head,
                         paired_dropout=config.paired_dropout, label_smoothing=config.label_smoothing,
                         pals=config.pals, paraphrase_from_sts=config.paraphrase_from_sts)


def load_weights(folder: Path, model: MultitaskBert) -> None:
    """Copy a checkpoint's weights into a model of the same shape and STS head."""
    weights_file = Path(folder) / "model.safetensors"
    state, expected = load_state_dict(weights_file), model.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{folder}: not a checkpoint of this model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); was it trained with another --sts-head?")
    wrong = [name for name in expected if state[name].shape != expected[name].shape]
    if wrong:
        # The same names in other shapes: the files of two checkpoints mixed up (a cosine run's
        # weights beside a concat run's multitask.json, say), or another encoder's config.json.
        cause = ("config.json describes another encoder" if all(name.startswith("bert.") for name in wrong)
                 else "multitask.json holds another run's settings (another --sts-head, say)")
        shapes = ", ".join(f"{name} is {tuple(state[name].shape)} where the model needs "
                           f"{tuple(expected[name].shape)}" for name in wrong[:3])
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise CheckpointError(
            f"{weights_file}: weights of other shapes than config.json and multitask.json describe "
            f"({shapes}{more}); likely {cause}: the folder mixes two checkpoints' files. Copy one "
            f"run's best/ folder whole")
    model.load_state_dict(state)


def find_checkpoint(folder: str | Path) -> Path:
    """The checkpoint folder to load: `folder` itself, or the best/ checkpoint of a run folder.

    A run folder (what --out-dir names) holds its best checkpoint in best/; accepting either saves
    a confusing error for the most common slip.
    """
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"{folder} does not exist; pass a run folder or its best/ checkpoint")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is a file; pass a run folder or its best/ checkpoint folder")
    if (folder / "multitask.json").is_file():
        return folder
    if (folder / "best" / "multitask.json").is_file():
        return folder / "best"
    raise CheckpointError(
        f"{folder} is not a multitask checkpoint (no multitask.json in it or in {folder / 'best'}); "
        f"pass the --out-dir of a training run, or its best/ folder")


def load(folder: str | Path, device: str | torch.device = "cpu") -> tuple[MultitaskBert, BertTokenizer, TrainConfig, dict]:
    """Rebuild a trained model from its folder: (model in eval mode, tokenizer, config, metrics)."""
    folder = Path(folder)
    info_file = folder / "multitask.json"
    if not info_file.is_file():
        raise CheckpointError(f"{folder}: no multitask.json; is this a multitask checkpoint folder?")
    info = read_json_object(info_file, "a checkpoint's settings and metrics")
    config = read_settings(info_file, info.get("train_config"))
    encoder = BertModel(BertConfig.from_json_file(folder / "config.json"))
    try:
        model = build_heads(encoder, config)
    except ValueError as err:  # --private-layers or --pals that this encoder cannot have
        raise CheckpointError(f"{info_file}: its settings do not fit the encoder of {folder / 'config.json'} "
                              f"({err}); {SETTINGS_HINT}") from None
    load_weights(folder, model)
    tokenizer = BertTokenizer.from_pretrained(folder)
    if config.max_length is not None and config.max_length > tokenizer.model_max_length:
        raise CheckpointError(f"{info_file}: max_length is {config.max_length}, more than the "
                              f"{tokenizer.model_max_length} tokens the checkpoint reads; {SETTINGS_HINT}")
    return model.to(device).eval(), tokenizer, config, info.get("metrics", {})


# What to do about settings no run can have had: train_config.json (in the run folder, beside
# best/) holds the same settings, written when the run started.
SETTINGS_HINT = ("the file is damaged or was edited: put back the value the run was trained with (the run's "
                 "train_config.json, beside best/, holds its settings), or train the run again")
# How a type of TrainConfig's fields reads in a message.
TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def read_settings(info_file: Path, values: object) -> TrainConfig:
    """The TrainConfig of multitask.json's train_config, checked as the command line checks its
    options (TrainConfig.validate) and for JSON types the command line cannot produce: a damaged
    or edited file is a CheckpointError naming the setting, not an error deep in the heads or the
    tokenizer, nor a model silently built another way (an unknown pooling ran as the mean)."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{info_file}: no train_config object (the run's settings) in it; {SETTINGS_HINT}")
    try:
        config = TrainConfig.from_dict(values)
    except TypeError as err:  # a recipe that is not a name, say
        raise CheckpointError(f"{info_file}: unreadable settings ({err}); {SETTINGS_HINT}") from None
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        kinds = typing.get_args(hints[field.name]) or (hints[field.name],)  # `int | None`: (int, None)
        value = getattr(config, field.name)
        if not any(_is_of_type(value, kind) for kind in kinds):
            allowed = " or ".join(TYPE_NAMES.get(kind, "null") for kind in kinds)
            raise CheckpointError(f"{info_file}: {field.name} is {value!r}; it must be {allowed}; {SETTINGS_HINT}")
    try:
        config.validate()
    except ValueError as err:
        raise CheckpointError(f"{info_file}: a setting the run cannot have had ({err}); {SETTINGS_HINT}") from None
    return config


def _is_of_type(value: object, kind: type) -> bool:
    """Whether a JSON value is one of a TrainConfig field's types (a bool is not a number; a
    whole number is a float)."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


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


def save_training_state(trainer, progress=None, next_epoch: int | None = None) -> None:
    """Write OUT/checkpoint.pt for `trainer` (multitask/training.py): mid-epoch (`progress`, an
    EpochProgress) or between epochs (`next_epoch`).

    Every rank takes part (the random generators and each rank's running sums are gathered);
    rank 0 writes. Each rank's own loss sums and token counts are stored, so that a resumed rank
    adds the same numbers in the same order as an uninterrupted one (float sums depend on the
    order); "progress" holds the totals over the ranks, for readers. The file is written
    atomically: a kill at any moment leaves the previous one intact.
    """
    distributed = trainer.distributed
    rng = distributed.gather(capture_rng_state())
    progress_of_ranks = distributed.gather(progress.state()) if progress else None
    totals = progress.totals(distributed).state() if progress else None
    if not distributed.is_main:
        return
    optimizers = [optimizer.state_dict() for optimizer in trainer.distinct_optimizers]  # one, or one a task
    state = {
        "format": TRAINING_STATE_FORMAT,
        "config": trainer.config.to_dict(),
        "model": trainer.model.state_dict(),
        # The one AdamW's state, or with --task-moments a list of them, one a task in --tasks order.
        "optimizer": optimizers if trainer.config.task_moments else optimizers[0],
        "scaler": trainer.scaler.state_dict(),
        "surgery": trainer.surgery.state_dict() if trainer.surgery is not None else None,  # --project-conflicts
        "average": trainer.average.state_dict() if trainer.average is not None else None,  # --average-last
        "rng": rng[0],
        "rng_of_ranks": rng,  # one per rank; rank 0's is also "rng"
        "streams": {name: stream.state() for name, stream in trainer.streams.items()},
        "epoch": progress.epoch if progress else next_epoch,
        "progress": totals,
        "progress_of_ranks": progress_of_ranks,  # one per rank, each its own running sums
        "best_overall": trainer.best_overall,
        "history": trainer.history,
    }
    atomic_write(training_state_path(trainer.out_dir), lambda temp: torch.save(state, temp))


# Room for what checkpoint.pt holds besides tensors: random generators, data positions, history
# (60 KB measured on the full CS224N files)
OTHER_STATE_BYTES = 4 << 20


def bytes_needed(trainer) -> int:
    """About the most disk the run's files take at once: checkpoint.pt (the weights, two Adam
    moments a weight in each AdamW, and --average-last's running mean) and best/'s weights, each
    while its previous copy is still there (atomic_write renames the new one over it)."""
    weights = sum(tensor.numel() * tensor.element_size() for tensor in trainer.model.state_dict().values())
    copies_in_state = 1 + 2 * len(trainer.distinct_optimizers) + (trainer.average is not None)
    return 2 * ((copies_in_state + 1) * weights + OTHER_STATE_BYTES)


def warn_if_short_of_space(trainer) -> None:
    """Say at the start, not hours later, that the run's checkpoints will not fit on the disk."""
    out_dir = trainer.out_dir
    written = [training_state_path(out_dir), out_dir / "best" / "model.safetensors"]  # a resumed run's
    need = bytes_needed(trainer) - sum(path.stat().st_size for path in written if path.is_file())
    free = shutil.disk_usage(out_dir).free
    if free < need:
        trainer.log(f"warning: {out_dir} has {free / 2**20:,.0f} MiB free, and this run's checkpoints need "
                    f"about {need / 2**20:,.0f} MiB more: the run will stop when the disk fills. Free "
                    f"some space or choose another --out-dir now (a stopped run continues with --resume)")


def training_state_path(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoint.pt"


# Settings that may differ when a run is resumed: they change neither the numbers nor the files
# (the data folder may move; its files must hold the same examples, which each batch stream checks).
RESUMABLE_CHANGES = {"progress", "device", "compile", "save_every", "out_dir", "data_dir", "skip_nonfinite"}


def resume_training(trainer, path: Path) -> dict | None:
    """Put `trainer` where the training checkpoint `path` was written, exactly; return this
    rank's progress in the interrupted epoch (EpochProgress's fields), or None at an epoch's start.

    Under torchrun every rank reads the file (on several nodes it must be on a shared
    filesystem). Resuming with another number of processes works, but is not bit-exact: dropout
    then draws other masks.
    """
    state = load_training_state(path)
    changed = {k: (v, getattr(trainer.config, k)) for k, v in state["config"].items()
               if k not in RESUMABLE_CHANGES and getattr(trainer.config, k, v) != v}
    if changed:
        raise CheckpointError(f"{path} was written with other settings: " + ", ".join(
            f"{k}={old!r} (now {new!r})" for k, (old, new) in changed.items()))
    trainer.model.load_state_dict(state["model"])
    saved = state["optimizer"] if trainer.config.task_moments else [state["optimizer"]]  # (settings checked above)
    for optimizer, optimizer_state in zip(trainer.distinct_optimizers, saved, strict=True):
        optimizer.load_state_dict(optimizer_state)
    trainer.scaler.load_state_dict(state["scaler"])
    if trainer.surgery is not None and state.get("surgery"):
        trainer.surgery.load_state_dict(state["surgery"])
    if trainer.average is not None and state.get("average"):
        trainer.average.load_state_dict(state["average"])
    for name, stream_state in state["streams"].items():
        try:
            trainer.streams[name].load_state(stream_state)
        except ValueError as err:  # data_dir may move, but the examples must be the ones the run drew from
            raise CheckpointError(f"{path}: the training data differ from the run's ({err}); resume with the "
                                  f"files it trained on (it read --data-dir {state['config']['data_dir']}), "
                                  f"or start again with --overwrite") from None
    trainer.best_overall, trainer.history, trainer.start_epoch = state["best_overall"], state["history"], state["epoch"]
    distributed = trainer.distributed
    rngs = state.get("rng_of_ranks", [state["rng"]])
    same_world = len(rngs) == distributed.world_size
    values = None
    if state["progress"] is not None:
        if same_world and state.get("progress_of_ranks"):  # this rank's own running sums
            values = dict(state["progress_of_ranks"][distributed.rank])
        else:  # another number of processes: rank 0 carries the totals, the others start at 0
            values = dict(state["progress"])
            if not distributed.is_main:
                values["loss_sums"] = {t: torch.zeros_like(v) for t, v in values["loss_sums"].items()}
                values["real_tokens"] = values["padded_tokens"] = 0
        values["loss_sums"] = {t: v.to(trainer.device) for t, v in values["loss_sums"].items()}
        values["grad_norms"] = {t: v.to(trainer.device) for t, v in values.get("grad_norms", {}).items()}
    if same_world:
        restore_rng_state(rngs[distributed.rank])
    else:
        trainer.log(f"warning: {path} was written by {len(rngs)} process(es), this run has "
                    f"{distributed.world_size}: the run continues, but dropout draws other masks "
                    f"than the original run would have")
    where = f"epoch {trainer.start_epoch}, step {values['step']}" if values else f"the start of epoch {trainer.start_epoch}"
    trainer.log(f"resuming from {path} at {where}")
    return values


def start_run(out_dir: Path, config: TrainConfig) -> None:
    """Write the run's settings into its folder, and remove temporary files that a killed
    write left behind (atomic_write's NAME.*.tmp: never a valid file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in [*out_dir.glob("*.*.tmp"), *out_dir.glob("best/*.*.tmp")]:
        leftover.unlink()
    write_text(out_dir / "train_config.json", json.dumps(config.to_dict(), indent=2) + "\n")


def write_metrics(out_dir: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl from the history (so a resumed run drops lines it redoes)."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    write_text(out_dir / "metrics.jsonl", text)


def load_training_state(path: Path) -> dict:
    """Read a training state with weights_only=True (never runs pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint there (nothing to resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise unreadable_state(path, err) from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise CheckpointError(f"{path}: not a multibert training checkpoint (format {TRAINING_STATE_FORMAT})")
    return state


def load_training_config(path: Path) -> TrainConfig:
    """Only the settings stored in a training checkpoint (see _load_part)."""
    return _load_part(path, lambda state: TrainConfig.from_dict(state["config"]))


def load_stream_states(path: Path) -> dict[str, dict]:
    """Only the batch streams' states stored in a training checkpoint (see _load_part)."""
    return _load_part(path, lambda state: state["streams"])


def _load_part(path: Path, part: typing.Callable[[dict], object]):
    """`part` of the training checkpoint at `path`, memory-mapped: the weights stay on disk."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint there (nothing to resume)")
    try:
        return part(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    except Exception as err:
        raise unreadable_state(path, err) from None


def unreadable_state(path: Path, err: Exception) -> CheckpointError:
    """The error for a training checkpoint torch cannot read. Where the file is not the zip archive
    torch.save writes (empty, cut short by a crash, another kind of file), torch's own reason is
    advice on saving with other options, or a sentence cut off: say what the file is instead."""
    if zipfile.is_zipfile(path):  # (a cut-short archive has lost its directory at the end: not one)
        reason = load_error_reason(err)  # pickled code refused, say: its one line worth quoting
    elif path.stat().st_size == 0:
        reason = "the file is empty"
    else:
        reason = "not a whole torch.save archive: cut short, or another kind of file"
    return CheckpointError(f"{path}: cannot read the training checkpoint ({reason}). It may be truncated "
                           f"or not a multibert checkpoint; pickled code is never run.")
