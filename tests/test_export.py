"""multitask.export: each exported head, loaded by the library a user would load it with, gives
our model's numbers on real dev sentences (fp32, within 1e-5).

The checkpoints are tiny random BERTs (2 layers, hidden 32, all-MiniLM-L6-v2's vocabulary) with
random heads, saved as a run folder without training: what matters here is that the exported
numbers equal ours, whatever the weights. The weights are drawn large enough that every
nonlinearity (the pooler's tanh, the heads' squashing) works away from its linear part, so that
a dropped or misplaced one shows (tests/synthetic.py, write_random_run).
"""

import json
import shutil

import numpy as np
import pytest
import torch

from multitask import export, predict
from multitask.batching import collate, tokenize_split
from multitask.data import Split, dataset_paths, load_quora, load_sst, load_sts

from synthetic import write_random_run, write_tiny_checkpoint

MAX_LENGTH = 40  # shorter than some dev inputs: the exports must truncate where we do
TOLERANCE = 1e-5


def pick(examples, key, count=24, longest=4):
    """The first `count` examples and the `longest` longest ones (those get truncated)."""
    by_length = sorted(examples, key=key, reverse=True)
    chosen = list(examples[:count]) + [e for e in by_length[:longest] if e not in examples[:count]]
    return chosen


@pytest.fixture(scope="module")
def dev(shared_data_dir):
    paths = dataset_paths(shared_data_dir)
    sst = pick(load_sst(paths["sst-dev"]).examples, lambda e: len(e.sentence))
    sts = pick(load_sts(paths["sts-dev"]).examples, lambda e: len(e.sentence1) + len(e.sentence2))
    quora = pick(load_quora(paths["quora-dev"]).examples, lambda e: len(e.sentence1) + len(e.sentence2))
    return sst, sts, quora


@pytest.fixture(scope="module")
def runs(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("export-runs")
    encoder_dir = write_tiny_checkpoint(root / "encoder", minilm_dir)
    return {head: write_random_run(root / head, encoder_dir, head, MAX_LENGTH)
            for head in ("concat", "cosine", "mnr", "dot")}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    folders = {}
    for head, run in runs.items():
        assert export.main([str(run), str(root / head)]) == 0
        folders[head] = root / head
    return folders


def max_difference(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def test_sst_pipeline_gives_our_probabilities(runs, exported, dev):
    transformers = pytest.importorskip("transformers")
    sst, _, _ = dev
    trained = predict.open_checkpoint(runs["concat"])
    ours = [predict.predict_sentiment(trained, e.sentence).probabilities for e in sst]
    classify = transformers.pipeline("text-classification", model=str(exported["concat"] / "sst"),
                                     top_k=None, truncation=True, device="cpu")
    answers = classify([e.sentence for e in sst])
    theirs = [[{a["label"]: a["score"] for a in answer}[name] for name in predict.SENTIMENT_NAMES]
              for answer in answers]
    assert max_difference(theirs, ours) < TOLERANCE
    assert np.ptp(np.array(ours), axis=0).max() > 0.02  # the inputs do lead to different answers


def test_paraphrase_pipeline_gives_our_probability(runs, exported, dev):
    transformers = pytest.importorskip("transformers")
    _, _, quora = dev
    trained = predict.open_checkpoint(runs["cosine"])
    ours = [predict.predict_pair(trained, e.sentence1, e.sentence2).paraphrase_probability for e in quora]
    classify = transformers.pipeline("text-classification", model=str(exported["cosine"] / "paraphrase"),
                                     top_k=None, truncation=True, device="cpu")
    answers = classify([{"text": e.sentence1, "text_pair": e.sentence2} for e in quora])
    theirs = [{a["label"]: a["score"] for a in answer}["paraphrase"] for answer in answers]
    assert max_difference(theirs, ours) < TOLERANCE
    assert np.ptp(ours) > 0.05


def test_concat_cross_encoder_scores_are_ours_over_five(runs, exported, dev):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    _, sts, _ = dev
    trained = predict.open_checkpoint(runs["concat"])
    ours = np.array([predict.predict_pair(trained, e.sentence1, e.sentence2).similarity for e in sts])
    model = sentence_transformers.CrossEncoder(str(exported["concat"] / "sts"), device="cpu")
    theirs = model.predict([(e.sentence1, e.sentence2) for e in sts])
    assert max_difference(5 * theirs, ours) < TOLERANCE
    gold = [e.label for e in sts]
    assert np.corrcoef(theirs, gold)[0, 1] == pytest.approx(np.corrcoef(ours, gold)[0, 1], abs=1e-6)
    assert np.ptp(ours) > 0.25


@pytest.mark.parametrize("head", ["cosine", "mnr", "dot"])
def test_sentence_transformer_encodes_our_embeddings(runs, exported, dev, head):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    _, sts, _ = dev
    trained = predict.open_checkpoint(runs[head])
    split = Split("dev", "sts-dev.csv", sts)
    tokenized = tokenize_split(split, "sts", trained.tokenizer, "separate", MAX_LENGTH)
    batch = collate(tokenized, np.arange(len(sts)), trained.tokenizer.pad_token_id)
    with torch.no_grad():
        u, v = trained.model.sentence_embeddings(batch)
        ours = trained.model.similarity_score(batch)
    model = sentence_transformers.SentenceTransformer(str(exported[head] / "sts"), device="cpu")
    first = model.encode([e.sentence1 for e in sts], convert_to_tensor=True)
    second = model.encode([e.sentence2 for e in sts], convert_to_tensor=True)
    assert max_difference(first, u) < TOLERANCE and max_difference(second, v) < TOLERANCE
    similarity = model.similarity_pairwise(first, second)
    theirs = similarity if head == "dot" else 5 * similarity
    assert max_difference(theirs, ours) < TOLERANCE
    assert model.similarity_fn_name == ("dot" if head == "dot" else "cosine")


def test_encoder_folder_and_the_message(runs, exported, capsys):
    folder = exported["cosine"]
    for name in export.EXPORTED_FILES:
        assert (folder / name).is_file(), name
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["paraphrase", "sst", "sts"]
    assert export.main([str(runs["dot"]), str(folder / "again"), "--only", "sts"]) == 0
    out = capsys.readouterr().out
    assert "wrote sts to" in out and "SentenceTransformer" in out and "encoder" not in out
    assert sorted(p.name for p in (folder / "again").iterdir()) == [export.EXPORT_RECORD, "sts"]
    record = json.loads((folder / "again" / export.EXPORT_RECORD).read_text())
    assert record == {"checkpoint": str((runs["dot"] / "best").resolve()), "parts": ["sts"]}


def test_refuses_a_head_the_run_did_not_train(runs, tmp_path, capsys, minilm_dir):
    out_dir = tmp_path / "out"
    assert export.main([str(runs["concat"]), str(out_dir), "--only", "sts-cosine"]) == 1
    err = capsys.readouterr().err
    assert "trained the concat STS head, not cosine" in err and "Traceback" not in err
    assert not out_dir.exists()  # nothing written

    # A run whose sampler never drew an SST batch up to the saved epoch.
    untrained = write_random_run(tmp_path / "no-sst", runs["concat"] / "best", "concat", MAX_LENGTH,
                                 {"batches_sst": 0})
    assert export.main([str(untrained), str(out_dir), "--only", "sst"]) == 1
    assert "never trained the sst head" in capsys.readouterr().err
    assert export.main([str(untrained), str(out_dir)]) == 0  # by default: left out, with a note
    captured = capsys.readouterr()
    assert "note: sst not exported" in captured.err
    assert (out_dir / "paraphrase").is_dir() and not (out_dir / "sst").exists()


def test_a_new_export_replaces_an_old_head_folder_but_not_a_foreign_one(runs, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert export.main([str(runs["cosine"]), str(out_dir), "--only", "sts"]) == 0
    assert (out_dir / "sts" / "modules.json").is_file()
    assert export.main([str(runs["concat"]), str(out_dir), "--only", "sts"]) == 0
    assert not (out_dir / "sts" / "modules.json").exists()  # no stale SentenceTransformer file
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temporary folder left

    (out_dir / "sst").mkdir()
    (out_dir / "sst" / "my-notes.txt").write_text("keep me")
    assert export.main([str(runs["concat"]), str(out_dir), "--only", "sst"]) == 1
    assert "holds files an export does not write (my-notes.txt)" in capsys.readouterr().err
    assert (out_dir / "sst" / "my-notes.txt").read_text() == "keep me"
    assert export.main([str(runs["concat"]), str(out_dir), "--only", "sst", "--overwrite"]) == 0  # as told
    assert not (out_dir / "sst" / "my-notes.txt").exists() and (out_dir / "sst" / "config.json").is_file()


def test_refuses_a_folder_of_files_no_export_wrote_unless_told_to_overwrite(runs, tmp_path, capsys):
    """The pretrained model a run started from has the encoder's file names: exporting into it
    would replace its weights without a word."""
    model = write_tiny_checkpoint(tmp_path / "model", None)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    assert export.main([str(runs["concat"]), str(model)]) == 1
    err = capsys.readouterr().err
    assert f"{model} holds files, and no {export.EXPORT_RECORD} marks them as an earlier export's " \
           f"(config.json, model.safetensors, vocab.txt)" in err and "add --overwrite" in err
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before  # nothing written

    assert export.main([str(runs["concat"]), str(model), "--overwrite", "--only", "encoder"]) == 0
    capsys.readouterr()
    assert (model / "model.safetensors").read_bytes() != before["model.safetensors"]
    # Now an earlier export's folder, it is replaced without --overwrite, but a file added beside
    # the export is not the export's.
    assert export.main([str(runs["concat"]), str(model), "--only", "encoder"]) == 0
    (model / "notes.txt").write_text("mine")
    assert export.main([str(runs["concat"]), str(model), "--only", "encoder"]) == 1
    assert "holds an earlier export and files an export does not write (notes.txt)" in capsys.readouterr().err


def test_what_a_killed_export_left_is_removed_by_the_next(runs, tmp_path, capsys):
    """An export killed while writing leaves a head folder's temporary twin or a file's temporary
    copy; they are the export's own, so the next export neither refuses the folder for them nor
    leaves them there. Anything else beside them still is not the export's."""
    out_dir = tmp_path / "out"
    assert export.main([str(runs["concat"]), str(out_dir), "--only", "encoder", "sst"]) == 0
    (out_dir / ".sst-k3j9x0_a").mkdir()  # the names tempfile gives: 8 characters of [a-z0-9_]
    (out_dir / ".sst-k3j9x0_a" / "config.json").write_text("{}")
    (out_dir / "model.safetensors.abcd1234.tmp").write_bytes(b"half a file")
    assert export.main([str(runs["concat"]), str(out_dir), "--only", "encoder", "sst"]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([*export.EXPORTED_FILES, export.EXPORT_RECORD, "sst"])
    # killed before anything but its record's temporary copy was written: a new folder, as good as empty
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / f"{export.EXPORT_RECORD}.x1y2z3w4.tmp").write_text("{")
    assert export.main([str(runs["concat"]), str(fresh), "--only", "sst"]) == 0
    assert sorted(p.name for p in fresh.iterdir()) == [export.EXPORT_RECORD, "sst"]
    (out_dir / ".sst-notes").mkdir()  # not a name an export gives
    assert export.main([str(runs["concat"]), str(out_dir), "--only", "sst"]) == 1
    assert "files an export does not write (.sst-notes)" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["", "run", "run/best", "run/exported", "run/best/exported"])
def test_refuses_an_empty_out_dir_and_one_in_the_run(runs, where, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(runs["concat"], run)
    monkeypatch.chdir(tmp_path)  # where an empty OUT_DIR would write
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert export.main([str(run), where]) == 1
    err = capsys.readouterr().err
    expected = {"": "OUT_DIR is empty", "run": "holds a multitask checkpoint or a training run",
                "run/best": "holds a multitask checkpoint or a training run"}
    assert expected.get(where, f"OUT_DIR is inside {run}, the run being exported") in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def needs_setting(name):
    import dataclasses

    from multitask.config import TrainConfig

    if name not in {f.name for f in dataclasses.fields(TrainConfig)}:
        pytest.skip(f"this checkout's TrainConfig has no {name!r} setting")


def test_mean_pooling_exports_the_embeddings_and_refuses_the_classifiers(runs, dev, tmp_path, capsys):
    needs_setting("pooling")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    _, sts, _ = dev
    run = write_random_run(tmp_path / "mean", runs["cosine"] / "best", "cosine", MAX_LENGTH, pooling="mean")
    out_dir = tmp_path / "out"
    assert export.main([str(run), str(out_dir)]) == 0
    err = capsys.readouterr().err
    for part in ("sst", "paraphrase"):
        assert f"note: {part} not exported: the run pooled by the mean of the tokens (--pooling mean)" in err
        assert not (out_dir / part).exists()
    modules = [m["path"] for m in json.loads((out_dir / "sts" / "modules.json").read_text())]
    assert modules == ["", "1_Pooling", "2_Dense"]  # no pooler: mean pooling, then the projection

    trained = predict.open_checkpoint(run)
    tokenized = tokenize_split(Split("dev", "sts-dev.csv", sts), "sts", trained.tokenizer, "separate", MAX_LENGTH)
    with torch.no_grad():
        u, v = trained.model.sentence_embeddings(
            collate(tokenized, np.arange(len(sts)), trained.tokenizer.pad_token_id))
    model = sentence_transformers.SentenceTransformer(str(out_dir / "sts"), device="cpu")
    assert max_difference(model.encode([e.sentence1 for e in sts]), u) < TOLERANCE
    assert max_difference(model.encode([e.sentence2 for e in sts]), v) < TOLERANCE

    assert export.main([str(run), str(out_dir), "--only", "sst"]) == 1
    assert "BertForSequenceClassification" in capsys.readouterr().err


def test_a_run_of_some_tasks_exports_only_those(runs, tmp_path, capsys):
    needs_setting("tasks")
    run = write_random_run(tmp_path / "two-tasks", runs["concat"] / "best", "concat", MAX_LENGTH,
                           tasks="sst,qqp", balance="uncertainty")  # (learned loss weights: ignored)
    out_dir = tmp_path / "out"
    assert export.main([str(run), str(out_dir)]) == 0
    assert "note: sts not exported: the run did not train the sts head" in capsys.readouterr().err
    assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == ["paraphrase", "sst"]
    assert export.main([str(run), str(out_dir), "--only", "sts-concat"]) == 1
    assert "it trained --tasks sst,qqp" in capsys.readouterr().err


def test_a_private_layers_run_exports_each_head_on_its_own_task_s_encoder(runs, dev, tmp_path, capsys):
    needs_setting("private_layers")
    transformers = pytest.importorskip("transformers")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    sst, sts, _ = dev
    # SST its own top layer; paraphrase and similarity share one (the sts folder gets that one)
    run = write_random_run(tmp_path / "private", runs["cosine"] / "best", "cosine", MAX_LENGTH, private_layers=1,
                           private_tasks="sst")
    out_dir = tmp_path / "out"
    assert export.main([str(run), str(out_dir)]) == 0
    assert "note: encoder not exported: the tasks have their own top 1 encoder layer(s)" in capsys.readouterr().err
    assert not (out_dir / "model.safetensors").exists()
    trained = predict.open_checkpoint(run)
    assert trained.config.private_layers == 1 and set(trained.model.private.tasks) == {"sst", "qqp+sts"}

    ours = [predict.predict_sentiment(trained, e.sentence).probabilities for e in sst]
    classify = transformers.pipeline("text-classification", model=str(out_dir / "sst"), top_k=None,
                                     truncation=True, device="cpu")
    theirs = [[{a["label"]: a["score"] for a in answer}[name] for name in predict.SENTIMENT_NAMES]
              for answer in classify([e.sentence for e in sst])]
    assert max_difference(theirs, ours) < TOLERANCE

    tokenized = tokenize_split(Split("dev", "sts-dev.csv", sts), "sts", trained.tokenizer, "separate", MAX_LENGTH)
    with torch.no_grad():
        u, _ = trained.model.sentence_embeddings(collate(tokenized, np.arange(len(sts)), trained.tokenizer.pad_token_id))
    model = sentence_transformers.SentenceTransformer(str(out_dir / "sts"), device="cpu")
    assert max_difference(model.encode([e.sentence1 for e in sts]), u) < TOLERANCE


def test_a_shared_layer_run_exports_the_encoder_and_refuses_every_head(runs, tmp_path, capsys):
    needs_setting("shared_layer")
    run = write_random_run(tmp_path / "shared", runs["cosine"] / "best", "cosine", MAX_LENGTH, shared_layer=True)
    out_dir = tmp_path / "out"
    assert export.main([str(run), str(out_dir)]) == 0
    err = capsys.readouterr().err
    for part in ("sst", "paraphrase", "sts"):
        assert f"note: {part} not exported: the run's heads read the encoder through --shared-layer" in err
    assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == []
    assert (out_dir / "model.safetensors").is_file()  # the encoder itself is still exported


def test_a_siamese_paraphrase_run_exports_the_rest_and_refuses_the_paraphrase_head(runs, tmp_path, capsys):
    needs_setting("paraphrase_head")
    run = write_random_run(tmp_path / "siamese", runs["cosine"] / "best", "cosine", MAX_LENGTH,
                           paraphrase_head="siamese")
    out_dir = tmp_path / "out"
    assert export.main([str(run), str(out_dir)]) == 0
    assert "note: paraphrase not exported: the run's paraphrase head is siamese" in capsys.readouterr().err
    assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == ["sst", "sts"]
    assert export.main([str(run), str(out_dir), "--only", "paraphrase"]) == 1
    assert "[|u - v|, u * v]" in capsys.readouterr().err
