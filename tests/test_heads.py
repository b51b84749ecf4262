"""Tests for multitask/heads.py: input layouts, score ranges, losses, gradients, compile.

Every expected value is recomputed here from the encoder's own outputs (`model.bert(...)`) and the
heads' weights with plain tensor algebra, not through multitask/losses.py, so a wrong head or a
wrong loss shows up as a mismatch. The encoder is a tiny random BERT (tests/test_model.py's
tiny_config: hidden 32, 2 layers, vocabulary 100) fed hand-made token ids. Its weights are drawn
with std 0.5 instead of BERT's 0.02: at 0.02 a random encoder's pooled outputs barely depend on the
input (their spread across a batch is ~4e-4), too little to tell one row from another.
"""

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bert import BertModel, Encoded
from multitask import checkpoint, losses
from multitask.batching import Batch, TokenizedSplit, collate
from multitask.config import TrainConfig
from multitask.heads import STS_HEADS, MultitaskBert, PrivateTop, layouts
from test_model import tiny_config

PAD = 0
HIDDEN = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run these tiny models on one thread. Their operations take microseconds, and with two
    threads on a busy 2-core machine each one waits ~10 ms for the other thread (measured: a
    forward and loss 0.26 s with 2 threads, 0.013 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(sts_head: str = "concat", dropout: float = 0.3, encoder_dropout: float = 0.1,
               seed: int = 0, paraphrase_head: str = "joint") -> MultitaskBert:
    torch.manual_seed(seed)
    config = tiny_config(hidden_dropout_prob=encoder_dropout, attention_probs_dropout_prob=encoder_dropout,
                         initializer_range=0.5)
    return MultitaskBert(BertModel(config), sts_head=sts_head, dropout=dropout,
                         paraphrase_head=paraphrase_head).eval()


def make_batch(task: str, layout: str, size: int = 4, seed: int = 0) -> Batch:
    """A batch of random token ids (1..99) of varied lengths, collated as the pipeline does."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (2, size), generator=g).tolist()
    words = lambda n: torch.randint(5, 100, (n,), generator=g).tolist()  # noqa: E731
    cls, sep = 1, 2
    first, second = [], None
    if layout == "single":
        first = [Encoded([cls, *words(n), sep], [0] * (n + 2)) for n in lengths[0]]
    elif layout == "joint":
        first = [Encoded([cls, *words(a), sep, *words(b), sep], [0] * (a + 2) + [1] * (b + 1))
                 for a, b in zip(*lengths)]
    else:
        first = [Encoded([cls, *words(n), sep], [0] * (n + 2)) for n in lengths[0]]
        second = [Encoded([cls, *words(n), sep], [0] * (n + 2)) for n in lengths[1]]
    if task == "sst":
        labels = torch.randint(0, 5, (size,), generator=g)
    elif task == "qqp":
        labels = torch.randint(0, 2, (size,), generator=g).float()
    else:
        labels = torch.rand(size, generator=g) * 5
    split = TokenizedSplit(task, f"{task}-test", layout, [str(i) for i in range(size)], first, second, labels)
    return collate(split, np.arange(size), PAD)


def sts_batch(head: str, size: int = 4, seed: int = 0) -> Batch:
    return make_batch("sts", layouts(head)["sts"], size, seed)


def pooled(model: MultitaskBert, batch: Batch) -> torch.Tensor:
    return model.bert(**batch.inputs)["pooler_output"]


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def projected_halves(model: MultitaskBert, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    p = pooled(model, batch)
    size = p.shape[0] // 2
    return linear(p[:size], model.similarity), linear(p[size:], model.similarity)


def head_parameters(model: MultitaskBert) -> dict[str, list[torch.nn.Parameter]]:
    heads = {"sentiment": list(model.sentiment.parameters()),
             "paraphrase": list(model.paraphrase.parameters())}
    if hasattr(model, "similarity"):
        heads["similarity"] = list(model.similarity.parameters())
    return heads


# ------------------------------------------------------------------------------------------
# Layouts and construction
# ------------------------------------------------------------------------------------------


def test_layouts():
    assert layouts("concat") == {"sst": "single", "qqp": "joint", "sts": "joint"}
    for head in ("dot", "cosine", "mnr"):
        assert layouts(head) == {"sst": "single", "qqp": "joint", "sts": "separate"}


def test_layouts_of_the_siamese_paraphrase_head():
    assert layouts("concat", "siamese") == {"sst": "single", "qqp": "separate", "sts": "joint"}
    assert layouts("cosine", "siamese") == {"sst": "single", "qqp": "separate", "sts": "separate"}
    assert layouts("cosine", "joint") == layouts("cosine")


def test_head_shapes():
    concat, cosine, mnr, dot = (make_model(h) for h in ("concat", "cosine", "mnr", "dot"))
    for model in (concat, cosine, mnr, dot):
        assert model.sentiment.weight.shape == (5, HIDDEN)
        assert model.paraphrase.weight.shape == (1, HIDDEN)
        for name in ("sentiment_dropout", "paraphrase_dropout", "similarity_dropout"):
            assert getattr(model, name).p == 0.3
    assert concat.similarity.weight.shape == (1, HIDDEN)
    assert cosine.similarity.weight.shape == mnr.similarity.weight.shape == (HIDDEN, HIDDEN)


def test_dot_head_has_no_similarity_parameters():
    model = make_model("dot")
    assert not hasattr(model, "similarity")
    names = [name for name, _ in model.named_parameters()]
    assert not any(name.startswith("similarity") for name in names)
    extra = {name for name in names if not name.startswith("bert.")}
    assert extra == {"sentiment.weight", "sentiment.bias", "paraphrase.weight", "paraphrase.bias"}


def test_unknown_head_lists_the_choices():
    assert STS_HEADS == ("dot", "cosine", "concat", "mnr")
    with pytest.raises(ValueError, match="^unknown STS head 'bilinear'; choose one of dot, cosine, concat, mnr$"):
        make_model("bilinear")
    with pytest.raises(ValueError, match="^unknown paraphrase head 'bilinear'; choose one of joint, siamese$"):
        make_model("cosine", paraphrase_head="bilinear")


@pytest.mark.parametrize("sts_head, paraphrase_head", [("cosine", "joint"), ("concat", "siamese")])
def test_paraphrase_labels_from_sts_pairs_need_the_heads_that_read_a_pair_as_one_input(sts_head, paraphrase_head):
    with pytest.raises(ValueError, match="^paraphrase_from_sts trains the paraphrase head on the STS step's pair "
                                         "encoding: it needs the concat STS head and the joint paraphrase head$"):
        MultitaskBert(BertModel(tiny_config()), sts_head=sts_head, paraphrase_head=paraphrase_head,
                      paraphrase_from_sts=1.0)


def test_the_keyword_defaults_build_the_paper_s_model():
    # MultitaskBert(encoder) with no settings is the model --recipe paper builds: the concat head,
    # dropout 0.3, the pooler's [CLS] output, the STS loss on the 0-5 scale, every task weighted 1.
    torch.manual_seed(0)
    encoder = BertModel(tiny_config())
    torch.manual_seed(1)
    by_hand = MultitaskBert(copy.deepcopy(encoder)).train()
    torch.manual_seed(1)
    paper = checkpoint.build_heads(copy.deepcopy(encoder), TrainConfig(recipe="paper")).train()
    mine, theirs = by_hand.state_dict(), paper.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[name], theirs[name]) for name in theirs)
    for task, layout in layouts("concat").items():
        batch = make_batch(task, layout, size=6)
        torch.manual_seed(2)
        loss = by_hand.loss(batch)
        torch.manual_seed(2)  # the same dropout draws
        assert loss.item() == paper.loss(batch).item()
        assert by_hand.task_weighting(task, loss).item() == paper.task_weighting(task, loss).item() == loss.item()


@pytest.mark.parametrize("n", [0, 2])  # tiny_config: two layers
def test_private_layers_leave_at_least_one_layer_shared(n):
    encoder = BertModel(tiny_config())
    with pytest.raises(ValueError, match=rf"^private_layers={n}: the encoder has 2 layers and at least one must "
                                         r"stay shared; choose 1 to 1$"):
        PrivateTop(encoder, n, [("sst",), ("qqp", "sts")])
    assert len(encoder.encoder.layer) == 2  # refused before any layer was taken out


def test_unknown_task_in_loss():
    model = make_model()
    batch = make_batch("sst", "single")
    batch = Batch("nli", batch.rows, batch.inputs, batch.labels)
    with pytest.raises(ValueError, match="nli"):
        model.loss(batch)


# ------------------------------------------------------------------------------------------
# Predictions and their ranges
# ------------------------------------------------------------------------------------------


def test_sst_predict_gives_class_probabilities():
    model = make_model()
    batch = make_batch("sst", "single", size=6)
    probabilities = model.predict(batch)
    assert probabilities.shape == (6, 5) and probabilities.dtype == torch.float32
    assert not probabilities.requires_grad
    assert torch.allclose(probabilities.sum(-1), torch.ones(6), atol=1e-6)
    assert (probabilities >= 0).all()
    with torch.no_grad():
        expected = torch.softmax(linear(pooled(model, batch), model.sentiment), dim=-1)
    assert torch.allclose(probabilities, expected, atol=1e-6)


def test_qqp_predict_gives_probabilities():
    model = make_model()
    batch = make_batch("qqp", "joint", size=6)
    probabilities = model.predict(batch)
    assert probabilities.shape == (6,)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    with torch.no_grad():
        expected = torch.sigmoid(linear(pooled(model, batch), model.paraphrase)[:, 0])
    assert torch.allclose(probabilities, expected, atol=1e-6)


def test_concat_score_in_label_range_even_for_huge_logits():
    model = make_model("concat")
    batch = sts_batch("concat", size=8)
    score = model.predict(batch)
    assert score.shape == (8,)
    assert ((score >= 0) & (score <= 5)).all()
    with torch.no_grad():
        logit = linear(pooled(model, batch), model.similarity)[:, 0]
    assert torch.allclose(score, (torch.tanh(logit) + 1) * 2.5, atol=1e-5)
    with torch.no_grad():
        model.similarity.weight.mul_(1e4)
        model.similarity.bias.mul_(1e4)
        huge = linear(pooled(model, batch), model.similarity)[:, 0]
    assert huge.abs().min() > 10  # the tanh is saturated: tanh(10) is 1.0 in float32
    score = model.predict(batch)
    assert torch.isfinite(score).all()
    assert ((score >= 0) & (score <= 5)).all()
    assert set(score.tolist()) <= {0.0, 5.0}
    assert (score == 0).any() or (score == 5).any()


@pytest.mark.parametrize("head", ["cosine", "mnr"])
def test_cosine_score_is_five_times_the_cosine(head):
    model = make_model(head)
    batch = sts_batch(head, size=16)
    score = model.predict(batch)
    assert score.shape == (16,)
    assert ((score >= -5) & (score <= 5)).all()
    with torch.no_grad():
        u, v = projected_halves(model, batch)
        cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    assert torch.allclose(score, 5 * cos, atol=1e-5)


@pytest.mark.parametrize("head", ["cosine", "mnr"])
def test_untrained_projection_keeps_the_encoders_own_cosine(head):
    # The projection starts as the identity: before any step, the score is 5 x the cosine of
    # the encoder's pooled embeddings themselves (a sentence-embedding checkpoint's zero-shot score).
    model = make_model(head)
    assert torch.equal(model.similarity.weight, torch.eye(model.similarity.weight.shape[0]))
    assert torch.equal(model.similarity.bias, torch.zeros_like(model.similarity.bias))
    batch = sts_batch(head, size=16)
    with torch.no_grad():
        u, v = model.pooled(batch).chunk(2)
        expected = 5 * torch.nn.functional.cosine_similarity(u, v, dim=-1)
    torch.testing.assert_close(model.predict(batch), expected, atol=1e-5, rtol=1e-5)


def test_cosine_score_in_label_range_for_identical_sentences():
    # Identical sentences in both halves: u = v, cos = 1 up to rounding. Observed on this machine:
    # some of 1000 such scores come out as 5.0000005 (about 1.3% of random vectors do).
    model = make_model("cosine")
    size = 1000
    batch = sts_batch("cosine", size=size)
    ids = batch.inputs
    same = {k: torch.cat([v[:size], v[:size]]) for k, v in ids.items()}
    score = model.predict(Batch("sts", batch.rows, same, batch.labels))
    assert torch.allclose(score, torch.full((size,), 5.0), atol=1e-5)
    assert (score <= 5).all() and (score >= 0).all()


def test_dot_score_is_the_pooled_outputs_product():
    model = make_model("dot")
    batch = sts_batch("dot", size=5)
    assert batch.inputs["input_ids"].shape[0] == 10
    score = model.predict(batch)
    assert score.shape == (5,)
    with torch.no_grad():
        p = pooled(model, batch)
    expected = torch.stack([torch.dot(p[i], p[5 + i]) for i in range(5)])
    assert torch.allclose(score, expected, atol=1e-5)
    # not the trivial products of a row with itself or with its neighbour
    assert not torch.allclose(score, (p[:5] * p[:5]).sum(-1), atol=1e-3)


# ------------------------------------------------------------------------------------------
# Losses, recomputed independently
# ------------------------------------------------------------------------------------------


@pytest.fixture(params=["eval", "no-dropout-train"])
def deterministic(request):
    """Either eval mode, or train mode with every dropout probability 0: the same numbers."""
    def build(head: str = "concat", paraphrase_head: str = "joint") -> MultitaskBert:
        if request.param == "eval":
            return make_model(head, paraphrase_head=paraphrase_head)
        return make_model(head, dropout=0.0, encoder_dropout=0.0, paraphrase_head=paraphrase_head).train()
    return build


def test_sst_loss_is_cross_entropy(deterministic):
    model = deterministic()
    batch = make_batch("sst", "single", size=6)
    loss = model.loss(batch)
    assert loss.dim() == 0 and loss.dtype == torch.float32
    with torch.no_grad():
        logits = linear(pooled(model, batch), model.sentiment)
        log_probabilities = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        expected = -log_probabilities[torch.arange(6), batch.labels].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, batch.labels).item(), rel=1e-5)


def test_qqp_loss_is_binary_cross_entropy(deterministic):
    model = deterministic()
    batch = make_batch("qqp", "joint", size=6)
    assert set(batch.labels.tolist()) == {0.0, 1.0}
    loss = model.loss(batch)
    with torch.no_grad():
        x = linear(pooled(model, batch), model.paraphrase)[:, 0]
        y = batch.labels
        p = torch.sigmoid(x.double())
        expected = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def siamese_logit(model: MultitaskBert, batch: Batch) -> torch.Tensor:
    """The siamese paraphrase head by hand: w . [|u - v|, u * v] + b on the pooled questions."""
    p = pooled(model, batch)
    u, v = p[:p.shape[0] // 2], p[p.shape[0] // 2:]
    w, b = model.paraphrase.weight[0], model.paraphrase.bias[0]
    return (u - v).abs() @ w[:HIDDEN] + (u * v) @ w[HIDDEN:] + b


def swapped(batch: Batch) -> Batch:
    """A separately laid out pair batch with each pair's two sentences exchanged."""
    half = batch.inputs["input_ids"].shape[0] // 2
    order = torch.cat([torch.arange(half, 2 * half), torch.arange(half)])
    return dataclasses.replace(batch, inputs={k: t[order] for k, t in batch.inputs.items()})


def test_siamese_paraphrase_loss_reads_both_questions_alone(deterministic):
    model = deterministic("cosine", paraphrase_head="siamese")
    batch = make_batch("qqp", "separate", size=6)
    assert batch.inputs["input_ids"].shape[0] == 12  # the six first questions, then the six second ones
    assert model.paraphrase.weight.shape == (1, 2 * HIDDEN)
    loss = model.loss(batch)
    with torch.no_grad():
        x = siamese_logit(model, batch).double()
        y = batch.labels
        p = torch.sigmoid(x)
        expected = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
        torch.testing.assert_close(model.predict(batch), torch.sigmoid(x).float(), rtol=1e-5, atol=1e-6)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_siamese_paraphrase_logit_does_not_depend_on_the_questions_order():
    model = make_model("cosine", paraphrase_head="siamese")
    batch = make_batch("qqp", "separate", size=5)
    with torch.no_grad():
        logit, logit_swapped = model.paraphrase_logit(batch), model.paraphrase_logit(swapped(batch))
    torch.testing.assert_close(logit, logit_swapped, rtol=1e-5, atol=1e-6)
    assert logit.std() > 1e-3  # and it is not a constant


def test_sts_concat_loss_is_mse_of_rescaled_tanh(deterministic):
    model = deterministic("concat")
    batch = sts_batch("concat", size=6)
    loss = model.loss(batch)
    with torch.no_grad():
        logit = linear(pooled(model, batch), model.similarity)[:, 0]
        expected = (((torch.tanh(logit) + 1) * 2.5 - batch.labels) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_sts_dot_loss_is_mse_of_the_product(deterministic):
    model = deterministic("dot")
    batch = sts_batch("dot", size=6)
    loss = model.loss(batch)
    with torch.no_grad():
        p = pooled(model, batch)
        expected = (((p[:6] * p[6:]).sum(-1) - batch.labels) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model.loss(batch, use_mnr=True).item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("head", ["cosine", "mnr"])
def test_sts_cosine_loss(deterministic, head):
    model = deterministic(head)
    batch = sts_batch(head, size=6)
    loss = model.loss(batch)  # mnr without use_mnr: the cosine loss of the second half of training
    with torch.no_grad():
        u, v = projected_halves(model, batch)
        cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
        expected = ((cos - batch.labels / 5) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the label is rescaled: comparing the cosine with the raw 0..5 label gives another number
    assert loss.item() != pytest.approx(((cos - batch.labels) ** 2).mean().item(), rel=1e-2)


@pytest.mark.parametrize("head", ["cosine", "mnr"])
def test_sts_cosent_loss_ranks_the_projected_cosines(head):
    torch.manual_seed(0)
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.5)
    model = MultitaskBert(BertModel(config), sts_head=head, dropout=0.0, sts_loss="cosent").eval()
    batch = sts_batch(head, size=6)
    loss = model.loss(batch)  # mnr without use_mnr: its second phase, here with CoSENT
    with torch.no_grad():
        u, v = projected_halves(model, batch)
        cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
        ordered = batch.labels[:, None] > batch.labels[None, :]
        expected = torch.log(1 + torch.exp(20 * (cos[None, :] - cos[:, None]))[ordered].sum())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def manual_mnr(u: torch.Tensor, v: torch.Tensor) -> float:
    """-1/K sum_i log(exp(u_i.v_i) / sum_j exp(u_i.v_j)), written out with Python loops."""
    k = u.shape[0]
    total = 0.0
    for i in range(k):
        scores = [float(torch.dot(u[i].double(), v[j].double())) for j in range(k)]
        total += -math.log(math.exp(scores[i]) / sum(math.exp(s) for s in scores))
    return total / k


@pytest.mark.parametrize("use_mnr, sts_loss", [(True, "mse"), (False, "cosent")])
def test_a_ranking_loss_under_torchrun_takes_every_process_s_rows(use_mnr, sts_loss):
    # `gather_rows` stacks every process's rows of a tensor; the stand-in here is a second process
    # holding this one's rows in reverse order. The loss must be the one over all the rows, each
    # pair's label still beside its embeddings.
    torch.manual_seed(0)
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.5)
    model = MultitaskBert(BertModel(config), sts_head="mnr", dropout=0.0, sts_loss=sts_loss).eval()
    batch = sts_batch("mnr", size=6)
    def both_processes(rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([rows, rows.flip(0)])  # (2B, ...)
    loss = model.loss(batch, use_mnr=use_mnr, gather_rows=both_processes)
    with torch.no_grad():
        u, v = (both_processes(half) for half in projected_halves(model, batch))  # (12, H) each
        labels = both_processes(batch.labels)  # (12,)
        expected = losses.multiple_negatives_ranking_loss(u, v) if use_mnr else losses.cosent_loss(u, v, labels)
        alone = model.loss(batch, use_mnr=use_mnr)  # one process: its own rows only
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(alone.item(), rel=1e-3)


def test_mnr_loss_uses_in_batch_negatives(deterministic):
    model = deterministic("mnr")
    batch = sts_batch("mnr", size=3)
    loss = model.loss(batch, use_mnr=True)
    with torch.no_grad():
        u, v = projected_halves(model, batch)
    assert loss.item() == pytest.approx(manual_mnr(u, v), rel=1e-5)
    assert loss.item() == pytest.approx(losses.multiple_negatives_ranking_loss(u, v).item(), rel=1e-5)
    # the scores are far from uniform (a loss of log 3), so the check above has teeth
    assert abs(loss.item() - math.log(3)) > 0.1
    # and it differs from the cosine loss the same batch would give
    assert loss.item() != pytest.approx(model.loss(batch).item(), rel=1e-3)


def test_mnr_loss_matches_library_function_on_a_larger_batch():
    model = make_model("mnr")
    batch = sts_batch("mnr", size=7, seed=3)
    with torch.no_grad():
        u, v = projected_halves(model, batch)
    assert model.loss(batch, use_mnr=True).item() == pytest.approx(manual_mnr(u, v), rel=1e-5)


def test_head_dropout_is_active_in_training():
    # Encoder dropout 0, head dropout 0.3: train-mode losses differ from the eval-mode loss
    # only through the heads' own dropout.
    model = make_model("concat", dropout=0.3, encoder_dropout=0.0)
    batch = make_batch("sst", "single", size=6)
    eval_loss = model.loss(batch).item()
    model.train()
    torch.manual_seed(1)
    train_losses = [model.loss(batch).item() for _ in range(3)]
    assert all(t != pytest.approx(eval_loss, rel=1e-4) for t in train_losses)


def test_paired_dropout_drops_the_same_units_of_both_sentences_of_a_pair():
    model = make_model("cosine", dropout=0.3).train()
    pooled = torch.rand(2 * 64, HIDDEN) + 0.5  # 64 pairs: first sentences, then second ones; no zeros
    torch.manual_seed(0)
    independent = model.drop_pairs(model.similarity_dropout, pooled)  # the paper's: a mask per sentence
    model.paired_dropout = True
    paired = model.drop_pairs(model.similarity_dropout, pooled)
    for out in (independent, paired):
        kept = out != 0
        assert 0.6 < kept.float().mean() < 0.8  # p = 0.3
        torch.testing.assert_close(out[kept], pooled[kept] / 0.7)  # kept units rescaled by 1 / (1 - p)
    assert torch.equal(paired[:64] != 0, paired[64:] != 0)  # sentence i and its partner B + i: one mask
    assert not torch.equal(paired[0] != 0, paired[1] != 0)  # but each pair its own
    assert not torch.equal(independent[:64] != 0, independent[64:] != 0)
    model.eval()
    assert torch.equal(model.drop_pairs(model.similarity_dropout, pooled), pooled)  # no dropout in eval


@pytest.mark.parametrize("head, task, paraphrase_head", [("cosine", "sts", "joint"), ("mnr", "sts", "joint"),
                                                         ("cosine", "qqp", "siamese")])
def test_with_paired_dropout_a_sentence_paired_with_itself_stays_identical_in_training(head, task, paraphrase_head):
    model = make_model(head, dropout=0.3, encoder_dropout=0.0, paraphrase_head=paraphrase_head).train()
    batch = make_batch(task, "separate", size=8)
    half = batch.inputs["input_ids"].shape[0] // 2
    same = dataclasses.replace(batch, inputs={k: torch.cat([t[:half], t[:half]]) for k, t in batch.inputs.items()})
    if task == "sts":
        u, v = model.sentence_embeddings(same)
        assert not torch.allclose(u, v)  # independent masks: two copies of a sentence differ
        model.paired_dropout = True
        u, v = model.sentence_embeddings(same)
        torch.testing.assert_close(u, v)  # one mask per pair: still the same sentence
    else:  # the siamese paraphrase head: |u - v| is 0 for a question paired with itself
        features = lambda: model.drop_pairs(model.paraphrase_dropout, model.pooled(same)).chunk(2)  # noqa: E731
        u, v = features()
        assert (u - v).abs().sum() > 0
        model.paired_dropout = True
        u, v = features()
        assert torch.equal(u, v)


# ------------------------------------------------------------------------------------------
# Gradients reach the encoder and the task's own head only
# ------------------------------------------------------------------------------------------


GRADIENT_CASES = [
    ("concat", "sst", False, "sentiment"),
    ("concat", "qqp", False, "paraphrase"),
    ("concat", "sts", False, "similarity"),
    ("cosine", "sts", False, "similarity"),
    ("mnr", "sts", True, "similarity"),
    ("mnr", "sts", False, "similarity"),
    ("dot", "sts", False, None),
    ("dot", "sst", False, "sentiment"),
]


@pytest.mark.parametrize("head,task,use_mnr,own,paraphrase_head", [
    *(case + ("joint",) for case in GRADIENT_CASES),
    ("cosine", "qqp", False, "paraphrase", "siamese"),
    ("cosine", "sts", False, "similarity", "siamese"),
])
def test_gradients_reach_encoder_and_own_head_only(head, task, use_mnr, own, paraphrase_head):
    model = make_model(head, paraphrase_head=paraphrase_head).train()
    batch = make_batch(task, layouts(head, paraphrase_head)[task], size=4)
    model.zero_grad(set_to_none=True)
    model.loss(batch, use_mnr=use_mnr).backward()
    encoder_grads = {name: p.grad for name, p in model.bert.named_parameters()}
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
                 "pooler.dense.weight"):
        matches = [g for n, g in encoder_grads.items() if n.endswith(name)]
        assert matches, f"no encoder parameter named {name}"
        assert matches[0] is not None and matches[0].abs().sum() > 0, name
    for head_name, parameters in head_parameters(model).items():
        for p in parameters:
            if head_name == own:
                assert p.grad is not None and p.grad.abs().sum() > 0, head_name
            else:
                assert p.grad is None, f"{head_name} got a gradient from a {task} batch"


# ------------------------------------------------------------------------------------------
# compile_encoder
# ------------------------------------------------------------------------------------------


class FakeOptimizedModule(torch.nn.Module):
    """Stands in for torch.compile's OptimizedModule: an nn.Module holding the original as
    `_orig_mod`, so registering it as a submodule would add `..._orig_mod.*` state_dict keys."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self._orig_mod = module

    def forward(self, *args, **kwargs):
        raise AssertionError("the compiled encoder must not run in this test")


def test_compile_encoder_keeps_the_state_dict(monkeypatch):
    # torch.compile itself is replaced: importing the compiler alone takes ~5 s on this CPU, and
    # what is checked here is only how the model holds the compiled encoder.
    from multitask.runtime import CompiledOrEager

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: compiled.append(module) or FakeOptimizedModule(module))
    model = make_model("cosine")
    keys = list(model.state_dict().keys())
    modules = [name for name, _ in model.named_modules()]
    parameters = sum(p.numel() for p in model.parameters())
    assert model.compiled_encoder is None
    model.compile_encoder()
    assert compiled == [model.bert]
    assert isinstance(model.compiled_encoder, CompiledOrEager)
    assert model.compiled_encoder.module is model.bert
    assert list(model.state_dict().keys()) == keys
    assert [name for name, _ in model.named_modules()] == modules
    assert sum(p.numel() for p in model.parameters()) == parameters
