"""Export a trained multitask checkpoint in the forms the usual libraries load.

Multi-BERT fine-tunes the whole shared encoder together with a small head per task. This writes
the encoder, and each trained head on its own copy of the encoder, as folders that other tools
read without this project:

    OUT_DIR/               the encoder alone: a BertModel folder (config.json, model.safetensors,
                           vocab.txt, tokenizer_config.json), as `BertModel.from_pretrained` reads it
    OUT_DIR/sst/           SST-5 sentiment: a BertForSequenceClassification folder with 5 labels
                           (names in id2label), for transformers' text-classification pipeline
    OUT_DIR/paraphrase/    paraphrase (QQP): a BertForSequenceClassification folder for sentence
                           pairs, 2 labels (not_paraphrase, paraphrase)
    OUT_DIR/sts/           similarity (STS): for the concat head, a cross-encoder
                           (sentence_transformers.CrossEncoder); for the cosine, mnr and dot heads,
                           a SentenceTransformer folder

How each folder gives back our numbers (fp32; tests/test_export.py compares them on dev sentences):

- sst: the classifier is our sentiment layer, on BERT's pooler output like ours, so the softmax
  of its logits (what the pipeline returns) is our five class probabilities.
- paraphrase: our head has one logit z, P(paraphrase) = sigmoid(z). The export has two logits,
  [0, z] (a zero row and our row), whose softmax is [1 - sigmoid(z), sigmoid(z)]: the pipeline's
  "paraphrase" score is our probability, and logits[1] - logits[0] is z itself.
- sts, concat: our score is 2.5 * (tanh(z) + 1) on [0, 5]. The export's single logit is 2z (our
  layer's weights doubled, exact in floating point), and CrossEncoder applies a sigmoid to one
  logit: sigmoid(2z) = (tanh(z) + 1) / 2, which is our score / 5. Scores x 5 are ours; as an
  affine image they have the same Pearson r.
- sts, cosine / mnr / dot: the sentence embedding is BERT's pooler output (dense + tanh on the
  [CLS] token), projected by the head's linear layer for cosine and mnr. sentence-transformers
  modules: Transformer -> Pooling (CLS token) -> Dense (the pooler's weights, Tanh) -> Dense (the
  projection, no activation; not for dot). `encode` returns our embeddings; the folder's
  similarity function is cosine (our 0-5 score = 5 * cos) or, for dot, the dot product
  (our score itself).

- with --pooling mean (the heads read the mean of the last layer over the real tokens instead
  of the pooler): the SentenceTransformer's Pooling module takes the mean, and no pooler Dense
  follows. The classifiers (sst, paraphrase, the concat cross-encoder) cannot be expressed: the
  sequence-classification models those libraries load classify the pooler output. They are
  left out, with a note.
- with --private-layers N (each task has its own copy of the top N layers): each head's folder
  gets the whole encoder of its task, the shared layers with the task's own on top, as one
  ordinary BertModel; the encoder alone is left out, with a note, since no one encoder serves
  every head.

A head the run did not train (not in its --tasks, or never drawn by the sampler up to the saved
epoch) is left out too, with a note; naming such a part in --only is an error that says why.

OUT_DIR must be new or empty, or hold an earlier export, which is replaced (an export marks its
folder with multibert_export.json, naming the checkpoint and parts it wrote last); a folder
holding anything else (the pretrained model a run started from, say) is refused unless
--overwrite says to write among its files, and so is OUT_DIR inside the run or checkpoint folder.

Every folder truncates inputs where our model does (the run's --max-length, or the checkpoint's
maximum): model_max_length in tokenizer_config.json, max_seq_length for sentence-transformers.
The files are written by this module (safetensors and JSON); transformers and
sentence-transformers are needed only to load them.

    python -m multitask.export runs/gpu/annealed-concat exported/ann-concat
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from bert import BertModel, CheckpointError
from bert.files import atomic_write, write_text
from bert.loading import load_state_dict
from multitask.checkpoint import find_checkpoint
from multitask.commands import program_name
from multitask.predict import SENTIMENT_NAMES, TrainedModel, input_limit, open_checkpoint

EXPORTED_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")
# Written into OUT_DIR by every export: it tells an earlier export's folder, which a new export
# may replace, from a model folder of the same file names, which it must not.
EXPORT_RECORD = "multibert_export.json"

# The parts of an export; "sts" stands for whichever STS head the run trained.
PARTS = ("encoder", "sst", "paraphrase", "sts")
STS_PARTS = ("sts-concat", "sts-cosine", "sts-mnr", "sts-dot")  # asking for a particular STS head
PARAPHRASE_LABELS = ("not_paraphrase", "paraphrase")
TASK_OF_PART = {"sst": "sst", "paraphrase": "qqp", "sts": "sts"}

# What an export writes into OUT_DIR itself: the encoder's files, the heads' folders, the record.
OUT_DIR_ENTRIES = {*EXPORTED_FILES, "sst", "paraphrase", "sts", EXPORT_RECORD}
# What an export killed while writing leaves in OUT_DIR: a head folder's temporary twin
# (replace_folder's ".sts-k3j9x0_a") or a file's (atomic_write's "config.json.k3j9x0_a.tmp").
LEFTOVER = re.compile(r"\.(sst|paraphrase|sts)-\w{8}|("
                      + "|".join(map(re.escape, [*EXPORTED_FILES, EXPORT_RECORD])) + r")\.\w{8}\.tmp")
# Files and folders a head export writes; an existing head folder holding anything else is not
# replaced (it is not ours).
HEAD_FOLDER_ENTRIES = {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json",
                       "special_tokens_map.json", "modules.json", "sentence_bert_config.json",
                       "config_sentence_transformers.json", "README.md", "1_Pooling", "2_Dense",
                       "3_Dense"}
# The parameters this export knows how to map; a checkpoint with others (a head layout added
# later) is refused rather than exported without them.
KNOWN_HEAD_PARAMETERS = {"sentiment.weight", "sentiment.bias", "paraphrase.weight", "paraphrase.bias",
                         "similarity.weight", "similarity.bias"}

TANH = "torch.nn.modules.activation.Tanh"
IDENTITY = "torch.nn.modules.linear.Identity"
SIGMOID = "torch.nn.modules.activation.Sigmoid"


class ExportError(Exception):
    """The output folder cannot be written, or a part cannot be exported; the message says why
    and what to do."""


def check_target(out_dir: Path) -> None:
    """Raise ExportError unless `out_dir` is, or can become, a folder we can write into.

    Checked before the checkpoint is loaded, and without leaving anything behind: a trial
    folder is made (and removed) in the deepest folder of the path that exists already.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: OUT_DIR is an existing file; name a folder (it is created "
                          f"if needed)")
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ExportError(f"{out_dir}: {existing} is a file, so OUT_DIR cannot be created; name "
                          f"a folder")
    try:
        Path(tempfile.mkdtemp(prefix=".export-check-", dir=existing)).rmdir()
    except OSError as err:
        raise ExportError(f"{out_dir}: cannot write in {existing} ({err.strerror or err}); choose "
                          f"an OUT_DIR you can write to") from None


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (the best/ checkpoint's parent, where the run's
    records are), or the checkpoint folder itself where it stands alone."""
    parent = checkpoint.parent
    in_run = checkpoint.name == "best" and any((parent / name).is_file() for name in ("train_config.json",
                                                                                     "metrics.jsonl"))
    return parent if in_run else checkpoint


def check_place(out_dir: Path, checkpoint: Path, overwrite: bool) -> None:
    """Raise ExportError unless an export may write into `out_dir`: outside the run of
    `checkpoint` (writing into it would mix the export into the run's files) and not over files
    it did not write itself, unless `overwrite`. Checked before the checkpoint is loaded."""
    # A checkpoint's own weights would be replaced by the encoder's alone: refused even with --overwrite.
    if (out_dir / "multitask.json").exists() or (out_dir / "best" / "multitask.json").exists():
        raise ExportError(f"{out_dir} holds a multitask checkpoint or a training run; choose another "
                          f"output folder")
    run = run_folder(checkpoint)
    if out_dir.resolve().is_relative_to(run.resolve()):
        what = "the run" if run != checkpoint else "the checkpoint"
        raise ExportError(f"{out_dir}: OUT_DIR is inside {run}, {what} being exported, and the export "
                          f"would mix its files into that folder's; choose an output folder outside it")
    if overwrite or not out_dir.is_dir():
        return
    names = sorted(entry.name for entry in out_dir.iterdir() if not left_by_an_export(entry.name))
    if names and EXPORT_RECORD not in names:
        raise ExportError(f"{out_dir} holds files, and no {EXPORT_RECORD} marks them as an earlier "
                          f"export's ({_few(names)}); choose a new or empty OUT_DIR, or add --overwrite "
                          f"to write the export among them (replacing those of the export's names)")
    foreign = [name for name in names if name not in OUT_DIR_ENTRIES]
    if foreign:
        raise ExportError(f"{out_dir} holds an earlier export and files an export does not write "
                          f"({_few(foreign)}); choose a new or empty OUT_DIR, or add --overwrite to "
                          f"write the export among them")


def left_by_an_export(name: str) -> bool:
    """Whether `name` in OUT_DIR is what an export killed while writing leaves behind (LEFTOVER);
    the next export into the folder removes it."""
    return LEFTOVER.fullmatch(name) is not None


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# --------------------------------------------------------------------------------------------
# Which parts a run can export
# --------------------------------------------------------------------------------------------


def batches_trained(trained: TrainedModel) -> dict[str, int] | None:
    """How many training batches each task had up to the saved (best) epoch, from the run's
    metrics.jsonl (beside best/) or, without it, the checkpoint's own epoch record; None where
    the run's records do not say."""
    info = json.loads((trained.folder / "multitask.json").read_text(encoding="utf-8"))
    best = info.get("metrics") or {}
    records = [best]
    history_file = trained.folder.parent / "metrics.jsonl"
    if trained.folder.name == "best" and history_file.is_file() and "epoch" in best:
        try:
            history = [json.loads(line) for line in history_file.read_text(encoding="utf-8").splitlines()
                       if line.strip()]
            records = [r for r in history if isinstance(r, dict) and r.get("epoch", 0) <= best["epoch"]] or records
        except json.JSONDecodeError:
            pass  # an unreadable history: the checkpoint's own record still says something
    counts = {}
    for task in TASK_OF_PART.values():
        values = [r.get(f"batches_{task}") for r in records]
        if any(not isinstance(v, int) for v in values):
            return None
        counts[task] = sum(values)
    return counts


def pooling_of(trained: TrainedModel) -> str:
    """How the heads pool the encoder's output: "cls" (BERT's pooler on [CLS], the paper) or
    "mean" (the last layer's mean over the real tokens), where the model has the option."""
    return getattr(trained.model, "pooling", "cls")


def why_not(trained: TrainedModel) -> dict[str, str]:
    """The heads this run cannot export, each with the reason."""
    reasons = {}
    tasks = getattr(trained.config, "task_names", tuple(TASK_OF_PART.values()))  # --tasks, where it exists
    counts = batches_trained(trained)
    for part, task in TASK_OF_PART.items():
        if task not in tasks:
            reasons[part] = (f"the run did not train the {part} head (it trained --tasks "
                             f"{','.join(tasks)}), so its weights are the random initialisation")
        elif counts is not None and counts[task] == 0:
            reasons[part] = (f"the run never trained the {part} head (0 batches of {task} up to the "
                             f"saved epoch), so its weights are the random initialisation")
    if getattr(trained.model, "shared", None) is not None:
        for part in TASK_OF_PART:
            reasons.setdefault(part, f"the run's heads read the encoder through --shared-layer, a residual "
                                     f"block that no standard transformers or sentence-transformers module "
                                     f"has, so the {part} head cannot be exported exactly")
    if getattr(trained.model, "private", None) is not None:
        reasons["encoder"] = (f"the tasks have their own top {trained.config.private_layers} encoder layer(s) "
                              f"(--private-layers), so no one encoder serves every head; each head's "
                              f"folder holds the whole encoder of its task")
    if getattr(trained.model, "pals", None) is not None:
        for part in PARTS:
            reasons.setdefault(part, f"every head reads the encoder through its own projected attention layers "
                                     f"(--pals), modules beside every encoder layer that no standard transformers "
                                     f"or sentence-transformers model has, so the {part} cannot be exported "
                                     f"exactly; load the run with multitask.predict instead")
    if getattr(trained.config, "paraphrase_head", "joint") == "siamese":
        reasons.setdefault("paraphrase", "the run's paraphrase head is siamese (--paraphrase-head): it scores "
                                         "[|u - v|, u * v] of the two questions' embeddings, which no standard "
                                         "transformers or sentence-transformers class computes; the encoder "
                                         "folder holds the embeddings it reads")
    pooling = pooling_of(trained)
    if pooling == "mean":
        # transformers' BertForSequenceClassification (which CrossEncoder loads too) classifies
        # BERT's pooler output: no standard class classifies the mean of the tokens.
        classifiers = ["sst", "paraphrase"] + (["sts"] if trained.config.sts_head == "concat" else [])
        for part in classifiers:
            reasons.setdefault(part, f"the run pooled by the mean of the tokens (--pooling mean), and "
                                     f"a sequence-classification folder (transformers' "
                                     f"BertForSequenceClassification, which pipeline and CrossEncoder "
                                     f"load) classifies BERT's pooler output on [CLS] instead, so the "
                                     f"{part} head cannot be exported exactly")
    elif pooling != "cls":
        for part in TASK_OF_PART:
            reasons.setdefault(part, f"the export does not know the pooling {pooling!r}, so the "
                                     f"{part} head cannot be exported exactly")
    return reasons


def choose_parts(trained: TrainedModel, only: list[str] | None) -> list[str]:
    """The parts to write. Without `only`: the encoder and every head that can be exported (one
    the run did not train, or that no standard model expresses exactly, is left out with a note
    on stderr). A part named in `only` that cannot be exported is an ExportError."""
    head = trained.config.sts_head
    names = trained.model.state_dict()
    unknown = sorted(n for n in names if n not in KNOWN_HEAD_PARAMETERS
                     and not n.startswith(("bert.", "task_weighting.", "shared.", "private.", "pals.")))
    # (loss weights: training only; the shared layer and PALs: why_not refuses what reads them; the
    # private layers: each head's folder gets its task's)
    if unknown:
        raise ExportError(f"{trained.folder}: the checkpoint has parameters the export cannot map "
                          f"onto a standard model ({', '.join(unknown[:5])}); its heads cannot be "
                          f"exported exactly. Export the encoder alone with --only encoder")
    reasons = why_not(trained)
    if only is None:
        if all(part in reasons for part in PARTS):
            raise ExportError(f"{trained.folder}: nothing can be exported: " + "; ".join(
                f"{part}: {reasons[part]}" for part in PARTS))
        for part in sorted(reasons, key=PARTS.index):
            print(f"note: {part} not exported: {reasons[part]}", file=sys.stderr)
        return [p for p in PARTS if p not in reasons]
    chosen = []
    for part in only:
        if part in STS_PARTS:
            asked = part.removeprefix("sts-")
            if asked != head:
                raise ExportError(f"{trained.folder}: the run trained the {head} STS head, not "
                                  f"{asked}, so there is no {asked} head to export; --only sts "
                                  f"exports the {head} head")
            part = "sts"
        if part in reasons:
            raise ExportError(f"{trained.folder}: {reasons[part]}. Leave {part} out of --only")
        if part not in chosen:
            chosen.append(part)
    return chosen


# --------------------------------------------------------------------------------------------
# Writing the folders
# --------------------------------------------------------------------------------------------


def _write_json(path: Path, values: dict) -> None:
    write_text(path, json.dumps(values, indent=2) + "\n")


def _write_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write safetensors, then read them back and insist on the very same values."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().float().contiguous().cpu() for name, t in tensors.items()}
    atomic_write(path, lambda temp: save_file(tensors, temp, metadata={"format": "pt"}))
    reloaded = load_state_dict(path)
    for name, tensor in tensors.items():
        if name not in reloaded or not torch.equal(reloaded[name], tensor):
            raise CheckpointError(f"{path}: {name} did not survive the round trip")


def _write_tokenizer(folder: Path, trained: TrainedModel) -> None:
    """vocab.txt and tokenizer_config.json, truncating where our model does."""
    trained.tokenizer.save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"
    settings = json.loads(config_file.read_text(encoding="utf-8"))
    settings.update(model_max_length=input_limit(trained)[0], cls_token="[CLS]", sep_token="[SEP]",
                    pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    _write_json(config_file, settings)


def _encoder_tensors(trained: TrainedModel, prefix: str, task: str) -> dict[str, torch.Tensor]:
    """The encoder that `task`'s head reads, as a whole BertModel's tensors: the shared encoder,
    and with --private-layers the task's own top layers in their places (layers L-N .. L-1)."""
    tensors = {prefix + name: tensor for name, tensor in trained.model.bert.state_dict().items()}
    private = getattr(trained.model, "private", None)
    if private is not None:
        below = len(trained.model.bert.encoder.layer)  # the shared layers keep their numbers
        for name, tensor in private.layers(task).state_dict().items():
            index, rest = name.split(".", 1)  # "0.attention.self.query.weight"
            tensors[f"{prefix}encoder.layer.{below + int(index)}.{rest}"] = tensor
    return tensors


def _bert_config(trained: TrainedModel, architecture: str, **extra) -> dict:
    values = trained.model.bert.config.to_dict()
    values.update(architectures=[architecture], torch_dtype="float32", **extra)
    return values


def _labels(names) -> dict:
    return {"id2label": {str(i): name for i, name in enumerate(names)},
            "label2id": {name: i for i, name in enumerate(names)}}


def _readme(folder: Path, title: str, body: str) -> None:
    write_text(folder / "README.md", f"# {title}\n\n{body.strip()}\n")


def write_sst(folder: Path, trained: TrainedModel) -> None:
    model = trained.model
    _write_json(folder / "config.json", _bert_config(
        trained, "BertForSequenceClassification", problem_type="single_label_classification",
        classifier_dropout=trained.config.dropout, **_labels(SENTIMENT_NAMES)))
    _write_weights(folder / "model.safetensors", {
        **_encoder_tensors(trained, "bert.", "sst"),
        "classifier.weight": model.sentiment.weight, "classifier.bias": model.sentiment.bias})
    _write_tokenizer(folder, trained)
    _readme(folder, "SST-5 sentiment (multibert export)", """
A BertForSequenceClassification with 5 labels (0 negative .. 4 positive). The softmax of its
logits is the multitask model's class probabilities:

    from transformers import pipeline
    classify = pipeline("text-classification", model="PATH", top_k=None, truncation=True)
    classify("A gripping, funny film.")
""".replace("PATH", str(folder)))


def write_paraphrase(folder: Path, trained: TrainedModel) -> None:
    head = trained.model.paraphrase  # Linear(H, 1): the logit z, P(paraphrase) = sigmoid(z)
    weight = torch.cat([torch.zeros_like(head.weight), head.weight])  # logits [0, z]
    bias = torch.cat([torch.zeros_like(head.bias), head.bias])
    _write_json(folder / "config.json", _bert_config(
        trained, "BertForSequenceClassification", problem_type="single_label_classification",
        classifier_dropout=trained.config.dropout, **_labels(PARAPHRASE_LABELS)))
    _write_weights(folder / "model.safetensors", {
        **_encoder_tensors(trained, "bert.", "qqp"), "classifier.weight": weight, "classifier.bias": bias})
    _write_tokenizer(folder, trained)
    _readme(folder, "Paraphrase detection, Quora (multibert export)", """
A BertForSequenceClassification for sentence pairs with two logits, [0, z], where z is the
multitask model's paraphrase logit: their softmax is [1 - p, p] with p = sigmoid(z), the model's
paraphrase probability (logits[1] - logits[0] = z).

    from transformers import pipeline
    classify = pipeline("text-classification", model="PATH", top_k=None, truncation=True)
    classify({"text": "How do I cook rice?", "text_pair": "How is rice cooked?"})
""".replace("PATH", str(folder)))


def write_cross_encoder(folder: Path, trained: TrainedModel) -> None:
    head = trained.model.similarity  # Linear(H, 1): the logit z, our score 2.5 * (tanh(z) + 1)
    _write_json(folder / "config.json", _bert_config(
        trained, "BertForSequenceClassification", classifier_dropout=trained.config.dropout,
        sentence_transformers={"activation_fn": SIGMOID}, **_labels(["similarity"])))
    _write_weights(folder / "model.safetensors", {
        **_encoder_tensors(trained, "bert.", "sts"),
        # 2z: sigmoid(2z) = (tanh(z) + 1) / 2, our score / 5. Doubling is exact in floating point.
        "classifier.weight": 2 * head.weight, "classifier.bias": 2 * head.bias})
    _write_tokenizer(folder, trained)
    _readme(folder, "Semantic similarity, STS-B: a cross-encoder (multibert export)", """
The multitask model's concat head as a cross-encoder. Its one logit is twice the head's, so
CrossEncoder's sigmoid gives (tanh(z) + 1) / 2: the model's 0-5 similarity divided by 5.

    from sentence_transformers import CrossEncoder
    model = CrossEncoder("PATH")
    5 * model.predict([("A man is playing a guitar.", "A man plays the guitar.")])
""".replace("PATH", str(folder)))


def write_sentence_transformer(folder: Path, trained: TrainedModel) -> None:
    model, hidden = trained.model, trained.model.bert.config.hidden_size
    pooler = model.bert.pooler.dense
    projected = model.sts_head != "dot"
    cls = pooling_of(trained) == "cls"
    modules = [("sentence_transformers.models.Transformer", ""),
               ("sentence_transformers.models.Pooling", "1_Pooling")]
    modules += [("sentence_transformers.models.Dense", f"{i}_Dense") for i in range(2, 2 + cls + projected)]
    write_text(folder / "modules.json", json.dumps(
        [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (kind, path) in enumerate(modules)],
        indent=2) + "\n")
    _write_json(folder / "config.json", _bert_config(trained, "BertModel"))
    _write_weights(folder / "model.safetensors", _encoder_tensors(trained, "", "sts"))
    _write_tokenizer(folder, trained)
    _write_json(folder / "sentence_bert_config.json",
                {"max_seq_length": input_limit(trained)[0], "do_lower_case": False})
    similarity = "dot" if model.sts_head == "dot" else "cosine"
    _write_json(folder / "config_sentence_transformers.json",
                {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
                 "similarity_fn_name": similarity})
    (folder / "1_Pooling").mkdir()
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": cls,
        "pooling_mode_mean_tokens": not cls, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False, "include_prompt": True})
    dense = 2
    if cls:  # BERT's pooler (dense + tanh on the [CLS] token), which our heads read, as a Dense
        _write_dense(folder / f"{dense}_Dense", pooler.weight, pooler.bias, TANH)
        dense += 1
    if projected:
        _write_dense(folder / f"{dense}_Dense", model.similarity.weight, model.similarity.bias, IDENTITY)
    pooled = "[CLS] token -> BERT's pooler (dense + tanh)" if cls else "mean of the tokens"
    if similarity == "cosine":
        score = "the cosine of two embeddings, c, is the model's similarity as 5 * c (0-5)"
    else:
        score = "the dot product of two embeddings is the model's similarity score (the dot head's, unscaled)"
    _readme(folder, "Sentence embeddings, STS-B (multibert export)", f"""
The multitask model's {model.sts_head} head as a SentenceTransformer: {pooled} ->
{"the head's projection -> " if projected else ""}embedding. `encode` returns the model's sentence
embeddings; {score}.

    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer("{folder}")
    u, v = model.encode(["A man is playing a guitar.", "A man plays the guitar."])
    model.similarity(u, v)
""")


def _write_dense(folder: Path, weight: torch.Tensor, bias: torch.Tensor, activation: str) -> None:
    folder.mkdir()
    _write_json(folder / "config.json", {"in_features": weight.shape[1], "out_features": weight.shape[0],
                                         "bias": True, "activation_function": activation})
    _write_weights(folder / "model.safetensors", {"linear.weight": weight, "linear.bias": bias})


def write_head(part: str, folder: Path, trained: TrainedModel) -> None:
    if part == "sst":
        write_sst(folder, trained)
    elif part == "paraphrase":
        write_paraphrase(folder, trained)
    elif trained.config.sts_head == "concat":
        write_cross_encoder(folder, trained)
    else:
        write_sentence_transformer(folder, trained)


def replace_folder(target: Path, write, overwrite: bool = False) -> None:
    """Write a head's folder next to `target`, then put it in `target`'s place: an earlier export
    there (of another STS head, say) leaves no stale file behind. A folder holding files an export
    does not write is not ours, and is refused unless `overwrite`."""
    if target.exists():
        if not target.is_dir():
            raise ExportError(f"{target} is a file; remove it or choose another OUT_DIR")
        foreign = sorted(entry.name for entry in target.iterdir() if entry.name not in HEAD_FOLDER_ENTRIES)
        if foreign and not overwrite:
            raise ExportError(f"{target} already exists and holds files an export does not write "
                              f"({', '.join(foreign[:5])}); choose another OUT_DIR, or add --overwrite to "
                              f"replace the folder")
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(temporary)
        if target.exists():
            shutil.rmtree(target)
        temporary.rename(target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def export(checkpoint_dir: str | Path, out_dir: str | Path, only: list[str] | None = None,
           overwrite: bool = False) -> dict[str, tuple[Path, str]]:
    """Write the checkpoint's encoder and trained heads under `out_dir` (see the module's
    docstring); return each written part's folder and what loads it. `overwrite`: write into an
    `out_dir` that holds files no export wrote, replacing those of the export's names."""
    if not str(out_dir).strip():  # Path("") would be the current folder
        raise ExportError("OUT_DIR is empty; name the folder to write the export into (it is created if "
                          "needed)")
    out_dir = Path(out_dir)
    check_target(out_dir)
    check_place(out_dir, find_checkpoint(checkpoint_dir), overwrite)
    trained = open_checkpoint(checkpoint_dir, "cpu")
    trained.model.float()
    parts = choose_parts(trained, only)
    head = trained.config.sts_head
    written = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for leftover in filter(lambda entry: left_by_an_export(entry.name), out_dir.iterdir()):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()  # (an export killed here)
        # The record first: an export killed half way leaves a folder the next export may replace.
        _write_json(out_dir / EXPORT_RECORD, {"checkpoint": str(trained.folder.resolve()), "parts": parts})
        if "encoder" in parts:
            written["encoder"] = export_encoder(trained, out_dir), how_to_load("encoder", head)
        for part in parts:
            if part != "encoder":
                replace_folder(out_dir / part, lambda folder, part=part: write_head(part, folder, trained),
                               overwrite)
                written[part] = out_dir / part, how_to_load(part, head)
    except OSError as err:  # the disk filled up, say, after the check above
        raise ExportError(f"{out_dir}: writing the export failed ({err.strerror or err}); free "
                          f"some space or choose another OUT_DIR, then export again") from None
    return written


def export_encoder(trained: TrainedModel, out_dir: Path) -> Path:
    """The encoder alone, as a BertModel folder in `out_dir`; checked by loading it back."""
    encoder = trained.model.bert
    encoder.save_pretrained(out_dir)
    trained.tokenizer.save_pretrained(out_dir)
    reloaded = BertModel.from_pretrained(out_dir).state_dict()
    for name, tensor in encoder.state_dict().items():
        if not torch.equal(reloaded[name], tensor.cpu()):
            raise CheckpointError(f"{out_dir}: {name} did not survive the round trip")
    return out_dir


HOW_TO_LOAD = {
    "encoder": "transformers.BertModel.from_pretrained",
    "sst": 'transformers.pipeline("text-classification", top_k=None)',
    "paraphrase": 'transformers.pipeline("text-classification", top_k=None) with {"text", "text_pair"}',
    "concat": "sentence_transformers.CrossEncoder (its scores x 5 are the 0-5 similarity)",
    "embeddings": "sentence_transformers.SentenceTransformer",
}


def how_to_load(part: str, sts_head: str) -> str:
    if part == "sts":
        return HOW_TO_LOAD["concat" if sts_head == "concat" else "embeddings"]
    return HOW_TO_LOAD[part]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("multitask.export"),
        description="Write a trained multitask checkpoint as folders other libraries load. "
                    "OUT_DIR itself: the fine-tuned encoder (config.json, model.safetensors, "
                    "vocab.txt, tokenizer_config.json) for transformers' BertModel. OUT_DIR/sst: "
                    "SST-5 sentiment, a BertForSequenceClassification (5 labels). "
                    "OUT_DIR/paraphrase: paraphrase detection for sentence pairs, a "
                    "BertForSequenceClassification (2 labels). OUT_DIR/sts: the similarity head, "
                    "a sentence-transformers CrossEncoder (concat head; scores x 5 are the 0-5 "
                    "similarity) or SentenceTransformer (cosine, mnr, dot heads). A head the run "
                    "did not train, or that no standard model expresses exactly (the classifiers "
                    "of a --pooling mean run), is left out with a note.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT_DIR",
                        help="input: a training run's --out-dir, or its best/ checkpoint folder")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="output: the folder to write, outside the run (created if needed; an "
                             "earlier export there is replaced; a folder holding other files is "
                             "refused without --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an OUT_DIR that holds files no export wrote (the pretrained "
                             "model a run started from, say): files and head folders of the export's "
                             "names are replaced, others are left")
    parser.add_argument("--only", nargs="+", metavar="PART", choices=PARTS + STS_PARTS,
                        help=f"write only these parts ({', '.join(PARTS)}; or sts-concat, "
                             f"sts-cosine, sts-mnr, sts-dot to insist on that STS head). Default: "
                             f"the encoder and every head the run trained")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = export(args.checkpoint, args.out_dir, args.only, args.overwrite)
    except (CheckpointError, ExportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for part, (folder, loader) in written.items():
        print(f"wrote {part} to {folder}; load it with {loader}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
