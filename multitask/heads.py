"""MultitaskBert: one shared BERT encoder with a small head per task (Multi-BERT, section 4).

    SST-5 sentiment   [CLS] s [SEP]            -> pooled -> dropout -> Linear(H, 5)  -> cross-entropy
    Paraphrase (QQP), one of two heads:
      joint    [CLS] a [SEP] b [SEP] -> pooled -> dropout -> Linear(H, 1)      -> binary cross-entropy
               (a cross-encoder, as in the paper)
      siamese  a and b encoded alone -> pooled -> dropout -> u, v;
               [|u - v|, u * v] -> Linear(2H, 1)                           -> binary cross-entropy
               (a bi-encoder: the questions read as the cosine heads read STS pairs, as sentence
               embeddings; the features are symmetric, so swapping the questions keeps the logit)
    Similarity (STS), one of four heads:
      dot     a and b encoded alone; score = pooled_a . pooled_b;                 MSE against the label
      cosine  a and b alone; projected pooled outputs; score = 5 cos(u, v);       MSE of cos against label / 5
              (the projection starts as the identity: the first score is the checkpoint's own cosine)
      concat  [CLS] a [SEP] b [SEP] -> Linear(H, 1) -> tanh, rescaled to [0, 5]; MSE against the label
      mnr     as cosine, but the first half of the epochs train the multiple negatives ranking
              loss on the pairs labelled >= 4 (Henderson et al. 2017), then the cosine loss
    With sts_loss="cosent", the cosine and mnr heads' cosines are trained with CoSENT (Su 2022),
    a ranking loss over the batch's pairs, instead of the squared error against label / 5.

With paraphrase_from_sts = w (the concat head with the joint paraphrase head, both reading a
pair as one input), each STS batch also trains the paraphrase head, on the same pooled pair
encoding: its loss gains w times QQP's binary cross-entropy on the STS pairs, whose paraphrase
labels are read off their scores (>= 4 a paraphrase, <= 2 not, the rest left out;
losses.paraphrase_loss_from_similarity). This is the one place where a task learns from another
task's labels rather than only through the shared encoder: the paraphrase head gets the STS pairs
as extra examples (about a quarter as many as QQP's own batches bring in a 600-batch run, since 60%
of the STS pairs are used) for the price of one linear layer, since the encoder's forward pass is
the STS step's own. Measured, it did not help: STS's idea of equivalence is not Quora's, and the
head ranked Quora's pairs worse (docs/ablation-unseen-seeds.md, session 17).

With shared_layer, every head reads the pooled embedding through one more layer that all tasks
share and train (`SharedLayer`), the paper's proposed future work (section 7).

With private_layers = N, the encoder's top N transformer layers stop being shared: each task (or
each group of tasks, private_groups) gets its own copy of them, initialised from the checkpoint
(`PrivateTop`), and the shared encoder keeps the layers below. This is hard parameter sharing
with task-specific top layers (Caruana 1997; the usual form in multitask BERT work, e.g.
Stickland & Murray 2019 compare it with adapters): the lower layers learn what the tasks share,
while each task's last layers, where the task-specific features live, are not pulled towards the
other tasks. The cost is N layers of parameters per extra copy; a batch still runs through L
layers.

With pals = d, every layer of the shared encoder gets a small task-specific module beside it,
a projected attention layer of width d (`multitask/pals.py`, Stickland & Murray 2019): every
layer stays shared, and each task adds its own low-dimensional term to each.

"pooled" is BERT's pooler output (dense + tanh on [CLS]), as in the paper, or with pooling="mean"
the mean of the last layer over the real tokens (how sentence-embedding checkpoints such as
all-MiniLM-L6-v2 were trained). Each head sees it through its own dropout (the paper's 0.3). The losses themselves live in multitask/losses.py.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bert import BertModel
from bert.model import attention_bias
from multitask import losses
from multitask.batching import Batch
from multitask.config import COSINE_HEADS, PARAPHRASE_HEADS, STS_HEADS, TASKS
from multitask.pals import PALs

NUM_SENTIMENTS = 5


def layouts(sts_head: str, paraphrase_head: str = "joint") -> dict[str, str]:
    """How each task's inputs are laid out for these heads (see multitask/batching.py)."""
    return {"sst": "single", "qqp": "separate" if paraphrase_head == "siamese" else "joint",
            "sts": "joint" if sts_head == "concat" else "separate"}


def pair_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The siamese paraphrase head's input from two sentence embeddings (B, H) each: (B, 2H).

    |u - v| says where the two differ and u * v where they agree (summed, it is their dot
    product); both are symmetric in u and v, as being a paraphrase is. (Sentence-BERT's
    classification objective concatenates (u, v, |u - v|), which depends on the order.)
    """
    return torch.cat([(u - v).abs(), u * v], dim=-1)


class SharedLayer(nn.Module):
    """A residual feed-forward block between the encoder and every task head:

        shared(x) = x + W_out gelu(W_in x + b_in) + b_out          (B, H) -> (B, H)

    The paper's section 7 proposes "shared weights between task heads", expecting the tasks to
    transfer patterns through them. W_out and b_out start at zero, so the block starts as the
    identity and the heads (and a cosine head's zero-shot score) begin exactly where they would
    without it; training then grows it. (W_in gets gradient once W_out is non-zero, after the
    first step.)
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.dense_in = nn.Linear(hidden, hidden)
        self.dense_out = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.dense_out.weight)
        nn.init.zeros_(self.dense_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dense_out(F.gelu(self.dense_in(x)))  # (B, H)


class PrivateTop(nn.Module):
    """The top `n` transformer layers of `encoder`, taken out of it and copied once per task.

        shared:   embeddings -> layer 1 ... layer L-n            (all tasks)
        private:  layer L-n+1 ... layer L                        (one copy per task)

    Every copy starts as the checkpoint's own layers, so before training each task computes
    exactly what the whole checkpoint computed.

    `groups` says which tasks share a copy: one group per task (the default) gives every task its
    own; ("sst",), ("qqp", "sts") gives SST its own top layers while paraphrase and similarity,
    whose gradients agree, keep sharing theirs (task grouping: Standley et al. 2020, "Which Tasks
    Should Be Learned Together in Multi-task Learning?"). A group's copy is named by its tasks
    joined with "+" (private.tasks.sst, private.tasks.qqp+sts).
    """

    def __init__(self, encoder: BertModel, n: int, groups: list[tuple[str, ...]]):
        super().__init__()
        layers = encoder.encoder.layer
        if not 0 < n < len(layers):
            raise ValueError(f"private_layers={n}: the encoder has {len(layers)} layers and at least one "
                             f"must stay shared; choose 1 to {len(layers) - 1}")
        top = layers[len(layers) - n:]
        self.tasks = nn.ModuleDict({"+".join(group): copy.deepcopy(top) for group in groups})
        self.copy_of = {task: "+".join(group) for group in groups for task in group}  # task -> its copy's name
        del layers[len(layers) - n:]  # the shared encoder now stops below them

    def layers(self, task: str) -> nn.ModuleList:
        """The top layers `task` reads (its own, or its group's)."""
        return self.tasks[self.copy_of[task]]

    def forward(self, task: str, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask_bias = attention_bias(attention_mask, hidden)  # (B, 1, 1, T), as the encoder builds it
        for layer in self.layers(task):
            hidden = layer(hidden, mask_bias)  # (B, T, H)
        return hidden


class MultitaskBert(nn.Module):
    """One BERT encoder and the three tasks' heads: `loss(batch)` and `predict(batch)` for the
    task the batch names. Each keyword is a command-line flag of the same name
    (checkpoint.build_heads passes them); left out, they give the paper's model, the one
    `--recipe paper` builds."""

    def __init__(self, encoder: BertModel, *, sts_head: str = "concat", dropout: float = 0.3,
                 pooling: str = "cls", loss_weights: dict[str, float] | None = None,
                 balance: str = "fixed", sts_loss_scale: str = "label", shared_layer: bool = False,
                 private_layers: int = 0, private_groups: list[tuple[str, ...]] | None = None,
                 sts_loss: str = "mse", paraphrase_head: str = "joint", paired_dropout: bool = False,
                 label_smoothing: float = 0.0, pals: int = 0, paraphrase_from_sts: float = 0.0):
        super().__init__()
        if sts_head not in STS_HEADS:
            raise ValueError(f"unknown STS head {sts_head!r}; choose one of {', '.join(STS_HEADS)}")
        if paraphrase_head not in PARAPHRASE_HEADS:
            raise ValueError(f"unknown paraphrase head {paraphrase_head!r}; choose one of {', '.join(PARAPHRASE_HEADS)}")
        if paraphrase_from_sts and (sts_head != "concat" or paraphrase_head != "joint"):
            raise ValueError("paraphrase_from_sts trains the paraphrase head on the STS step's pair encoding: "
                             "it needs the concat STS head and the joint paraphrase head")
        hidden = encoder.config.hidden_size
        self.bert = encoder
        self.sts_head = sts_head
        self.paraphrase_siamese = paraphrase_head == "siamese"  # each question encoded alone
        self.paired_dropout = paired_dropout  # one dropout mask per pair of separately encoded sentences
        self.pooling = pooling
        self.sts_unit_scale = sts_loss_scale == "unit"  # the dot and concat MSE on [-1, 1]: losses.py
        self.sts_cosent = sts_loss == "cosent"  # the cosine and mnr heads' cosines ranked, not regressed
        self.label_smoothing = label_smoothing  # SST's and QQP's targets eps of the way to uniform: losses.py
        self.paraphrase_from_sts = paraphrase_from_sts  # weight of the paraphrase loss on STS pairs: loss()
        if pooling == "mean":  # the pooler is not used: frozen, so that no step waits for its gradient
            encoder.pooler.requires_grad_(False)
        # Each task's loss weight (fixed, or learned with balance="uncertainty") and, with
        # balance="equal-norm", its gradient's rescaling: see losses.py.
        self.task_weighting = losses.TaskWeighting(TASKS, loss_weights or dict.fromkeys(TASKS, 1.0),
                                                   learned=balance == "uncertainty",
                                                   equal_norm=balance == "equal-norm")
        self.shared = SharedLayer(hidden) if shared_layer else None  # read by every head
        # Each task's (or group of tasks') own copy of the encoder's top layers (taken out of
        # self.bert), or None.
        groups = private_groups or [(task,) for task in TASKS]
        self.private = PrivateTop(encoder, private_layers, groups) if private_layers else None
        # Each task's projected attention layers beside every encoder layer (multitask/pals.py), or None.
        self.pals = PALs(encoder, pals, TASKS) if pals else None
        self.sentiment_dropout = nn.Dropout(dropout)
        self.sentiment = nn.Linear(hidden, NUM_SENTIMENTS)
        self.paraphrase_dropout = nn.Dropout(dropout)
        self.paraphrase = nn.Linear(2 * hidden if self.paraphrase_siamese else hidden, 1)
        self.similarity_dropout = nn.Dropout(dropout)
        if sts_head == "concat":
            self.similarity = nn.Linear(hidden, 1)
        elif sts_head in COSINE_HEADS:
            self.similarity = nn.Linear(hidden, hidden)  # projects each sentence's embedding
            # Identity and zero bias: training starts from the encoder's own embeddings and
            # cosines (for a sentence-embedding checkpoint with mean pooling, its zero-shot STS
            # score) instead of from a random rotation that throws that away.
            nn.init.eye_(self.similarity.weight)
            nn.init.zeros_(self.similarity.bias)
        # "dot" has no parameters of its own: the score is the encoder's pooled outputs' product.
        # Wrappers that share the encoder's weights, set by compile_encoder() and, under torchrun,
        # by the trainer (a multitask.distributed.ReplicatedEncoder for the training passes).
        # Neither is a submodule, so parameter names and checkpoints stay those of the plain model.
        self.compiled_encoder = None
        self.replicated_encoder = None

    def compile_encoder(self) -> None:
        """Run the encoder through torch.compile (falls back to eager where that fails)."""
        from multitask.runtime import CompiledOrEager

        self.compiled_encoder = CompiledOrEager(self.bert)

    def head_parameters(self) -> list[nn.Parameter]:
        """The task heads' parameters: everything but the shared encoder."""
        return [p for name, p in self.named_parameters() if not name.startswith("bert.")]

    def pooled(self, batch: Batch) -> torch.Tensor:
        if self.replicated_encoder is not None and torch.is_grad_enabled():
            encoder = self.replicated_encoder  # a training pass under DDP: gradients get all-reduced
        else:
            encoder = self.compiled_encoder or self.bert
        if self.pals is None:
            outputs = encoder(**batch.inputs)
        else:  # every layer adds this task's PAL term
            outputs = encoder(**batch.inputs, adapter=self.pals.adapter(batch.task))
        hidden = outputs["last_hidden_state"]  # (B, T, H), or (2B, T, H) for "separate"
        if self.private is not None:  # this task's own top layers
            hidden = self.private(batch.task, hidden, batch.inputs["attention_mask"])
        if self.pooling == "cls":
            # BERT's pooler on [CLS] (the encoder already applied it to its own output, which is
            # only the right input without private layers)
            pooled = outputs["pooler_output"] if self.private is None else self.bert.pooler(hidden)  # (B, H)
        else:  # mean pooling: the average of the last layer over each input's real tokens
            mask = batch.inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            summed = (hidden * mask).sum(dim=1)  # (B, H)
            pooled = summed / mask.sum(dim=1).clamp(min=1.0)  # (B, H)
        return pooled if self.shared is None else self.shared(pooled)

    def sentiment_logits(self, batch: Batch) -> torch.Tensor:
        return self.sentiment(self.sentiment_dropout(self.pooled(batch)))  # (B, 5)

    def paraphrase_logit(self, batch: Batch) -> torch.Tensor:
        if not self.paraphrase_siamese:
            return self.joint_paraphrase_logit(self.pooled(batch))  # (B,)
        u, v = self.drop_pairs(self.paraphrase_dropout, self.pooled(batch)).chunk(2)  # first, second questions: (B, H)
        return self.paraphrase(pair_features(u, v)).squeeze(-1)  # (B,)

    def joint_paraphrase_logit(self, pooled: torch.Tensor) -> torch.Tensor:
        """The joint paraphrase head on pooled pair encodings (B, H): the logits (B,)."""
        return self.paraphrase(self.paraphrase_dropout(pooled)).squeeze(-1)

    def drop_pairs(self, dropout: nn.Dropout, pooled: torch.Tensor) -> torch.Tensor:
        """A head's dropout on separately encoded pairs: pooled (2B, H), the B first sentences then
        the B second ones, in the same layout.

        By default each of the 2B embeddings draws its own mask, as in the paper. With
        paired_dropout both sentences of a pair lose the same units. Independent masks make two
        identical sentences look different (at p = 0.3 their expected cosine falls to about 0.7,
        with noise), so a head trained to read similarity from the pair's agreement learns
        from that noise; a shared mask drops the same coordinates of both, and a pair's cosine
        only sees the units both kept.
        """
        if not self.paired_dropout:
            return dropout(pooled)  # (2B, H)
        keep = dropout(torch.ones_like(pooled[:pooled.shape[0] // 2]))  # (B, H): 0 or 1 / (1 - p); ones in eval
        return pooled * keep.repeat(2, 1)  # (2B, H): row i and row B + i share their mask

    def sentence_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The two sentences' embeddings, u and v (B, H), from one stacked forward pass."""
        embedded = self.drop_pairs(self.similarity_dropout, self.pooled(batch))  # (2B, H)
        if self.sts_head != "dot":
            embedded = self.similarity(embedded)  # (2B, H)
        u, v = embedded.chunk(2)  # first sentences, then second ones: (B, H) each
        return u, v

    def similarity_score(self, batch: Batch) -> torch.Tensor:
        """The STS prediction (B,): on the label scale [0, 5], except the dot head's raw product."""
        if self.sts_head == "concat":
            return self.concat_score(self.pooled(batch))
        u, v = self.sentence_embeddings(batch)
        if self.sts_head == "dot":
            return losses.dot_similarity(u, v)
        return losses.rescale_cosine_to_similarity(losses.cosine_similarity(u, v))

    def concat_score(self, pooled: torch.Tensor) -> torch.Tensor:
        """The concat head on pooled pair encodings (B, H): the STS scores (B,) on [0, 5]."""
        logit = self.similarity(self.similarity_dropout(pooled)).squeeze(-1)  # (B,)
        return losses.rescale_tanh_to_similarity(logit)

    def loss(self, batch: Batch, use_mnr: bool = False,
             gather_rows: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The training loss of one batch of task `batch.task` (float32 scalar).

        `gather_rows`, in a distributed run, stacks every process's rows of a tensor, so that the
        MNR loss takes its in-batch negatives, and CoSENT its pairs to rank, from the whole global
        batch.
        """
        if batch.task == "sst":
            return losses.sentiment_loss(self.sentiment_logits(batch), batch.labels, self.label_smoothing)
        if batch.task == "qqp":
            return losses.paraphrase_loss(self.paraphrase_logit(batch), batch.labels, self.label_smoothing)
        if batch.task != "sts":
            raise ValueError(f"unknown task {batch.task!r}")
        if self.sts_head in COSINE_HEADS:
            u, v = self.sentence_embeddings(batch)
            if gather_rows is not None:  # a ranking loss (MNR, CoSENT) under torchrun: every rank's rows
                u, v = gather_rows(u), gather_rows(v)
            if use_mnr:
                return losses.multiple_negatives_ranking_loss(u, v)
            if self.sts_cosent:  # ranks every two pairs of the (global) batch
                labels = batch.labels if gather_rows is None else gather_rows(batch.labels.unsqueeze(1)).squeeze(1)
                return losses.cosent_loss(u, v, labels)
            return losses.cosine_similarity_loss(u, v, batch.labels)
        if self.paraphrase_from_sts:  # (the concat head) one pair encoding, read by two heads
            pooled = self.pooled(batch)  # (B, H)
            similarity = losses.similarity_mse_loss(self.concat_score(pooled), batch.labels, self.sts_unit_scale)
            paraphrase = losses.paraphrase_loss_from_similarity(self.joint_paraphrase_logit(pooled), batch.labels,
                                                                  self.label_smoothing)
            return similarity + self.paraphrase_from_sts * paraphrase
        return losses.similarity_mse_loss(self.similarity_score(batch), batch.labels, self.sts_unit_scale)

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        """Predictions of one batch: SST class probabilities (B, 5), paraphrase probability (B,),
        similarity score (B,)."""
        if batch.task == "sst":
            return torch.softmax(self.sentiment_logits(batch).float(), dim=-1)
        if batch.task == "qqp":
            return torch.sigmoid(self.paraphrase_logit(batch).float())
        return self.similarity_score(batch).float()
