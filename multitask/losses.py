"""Loss functions and score transforms for the multitask heads, as plain functions of tensors.

The task heads produce embeddings or logits; this module turns them into
training losses and into similarity scores on the STS label scale [0, 5]:

- SST's cross-entropy and QQP's binary cross-entropy, with optional label smoothing;
- multiple negatives ranking loss (Henderson et al. 2017, "Efficient Natural Language Response
  Suggestion for Smart Reply"), as used by Multi-BERT (section 4.2) on STS pairs labelled >= 4;
- the cosine-similarity regression loss of Sentence-BERT (Reimers & Gurevych 2019), and CoSENT,
  a ranking loss on the same cosines (Su 2022);
- the dot-product score of the Multi-BERT baseline and the tanh rescaling of its concat head;
- the paraphrase loss on STS pairs, whose paraphrase labels come from their similarity scores.

Precision: under bf16 autocast the encoder's outputs arrive in bfloat16, whose 8-bit mantissa
resolves only about 2-3 significant digits. Matrix products may stay in bf16 (that is where the
speed is), but every similarity is cast up to float32 *before* a softmax, a normalisation or a
squared error, because those sum or subtract many terms, and rounding each one to bf16 would
bias the loss and its gradient. Every function here returns float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# The STS labels run from 0 (unrelated) to 5 (equivalent); the paper keeps pairs >= 4 for MNR.
STS_MAX_LABEL = 5.0
MNR_POSITIVE_THRESHOLD = 4.0
UNIT_SCALE_FACTOR = (2.0 / STS_MAX_LABEL) ** 2  # 0.16: a squared error on [0, 5] measured on [-1, 1]
# STS pairs read as paraphrase labels (paraphrase_loss_from_similarity): >= 4 "mostly
# equivalent" is a paraphrase, <= 2 "not equivalent" is not; the pairs between are left out.
PARAPHRASE_FROM_SIMILARITY = 4.0
NOT_PARAPHRASE_FROM_SIMILARITY = 2.0
COSENT_SCALE = 20.0  # CoSENT's inverse temperature on cosines (Su 2022; sentence-transformers' default)


def _check_pair(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raise ValueError unless a and b are (B, H) batches of the same shape."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must both be (batch, hidden) of the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def multiple_negatives_ranking_loss(anchors: Tensor, positives: Tensor, scale: float = 1.0) -> Tensor:
    """Multiple negatives ranking loss with in-batch negatives (Henderson et al. 2017).

    For K positive pairs (x_i, y_i), every other y_j in the batch serves as a negative for x_i:

        S = scale * anchors @ positives.T                       (K, K), S_ij = scale * x_i . y_j
        L = -1/K * sum_i log( exp(S_ii) / sum_j exp(S_ij) )

    i.e. a K-way classification of each anchor's own positive among the batch, which is the
    cross-entropy of S's rows against the targets 0..K-1. All K^2 scores come from one matrix
    product. The score is the plain dot product, as in the paper; scale = 1 keeps it unchanged.

    Args:
        anchors: (K, H) embeddings of the first sentences x_i.
        positives: (K, H) embeddings of their paired sentences y_i (row i pairs with anchors[i]).
        scale: multiplies every score (an inverse temperature); must be positive.

    Returns:
        The mean loss, a float32 scalar. An empty batch (K = 0, e.g. no pair labelled >= 4) gives
        0, still attached to the autograd graph, so the caller's backward() (and a distributed
        run's gradient all-reduce, which every rank must join) runs unchanged.
    """
    _check_pair("anchors", anchors, "positives", positives)
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    num_pairs = anchors.shape[0]
    # Cast up after the product, before the softmax: see the module docstring.
    scores = (anchors @ positives.T).float() * scale  # (K, K)
    if num_pairs == 0:
        return scores.sum()  # an empty sum: 0.0, connected to both inputs
    targets = torch.arange(num_pairs, device=scores.device)  # (K,) pair i's positive is column i
    return F.cross_entropy(scores, targets)


def dot_similarity(u: Tensor, v: Tensor) -> Tensor:
    """Row-wise dot product u_i . v_i, the Multi-BERT baseline's STS score: (B, H), (B, H) -> (B,).

    Computed in float32: a dot product of 768-dimensional BERT outputs can reach the hundreds,
    where bf16's spacing is whole units, too coarse for a score on the 0-5 label scale.
    """
    _check_pair("u", u, "v", v)
    return (u.float() * v.float()).sum(dim=-1)  # (B,)


def cosine_similarity(u: Tensor, v: Tensor) -> Tensor:
    """Row-wise cosine similarity in float32: (B, H), (B, H) -> (B,), values in [-1, 1]."""
    _check_pair("u", u, "v", v)
    # Rounding can put the cosine of (anti)parallel vectors a hair outside [-1, 1]: clamp it.
    return F.cosine_similarity(u.float(), v.float(), dim=-1).clamp(-1.0, 1.0)  # (B,)


def rescale_similarity_to_cosine(labels_0_5: Tensor) -> Tensor:
    """The target cosine of an STS label: label / 5, so 0 (unrelated) asks for orthogonal
    embeddings and 5 (equivalent) for parallel ones. See `cosine_similarity_loss`."""
    return labels_0_5.float() / STS_MAX_LABEL


def rescale_cosine_to_similarity(cosine: Tensor) -> Tensor:
    """The STS score of a cosine, the inverse of `rescale_similarity_to_cosine`: 5 * cos.

    A cosine in [0, 1] lands on the label scale [0, 5]; a negative one (rare after training)
    gives a score below 0, kept as it is rather than clipped, so that the ranking of pairs and
    Pearson's r stay those of the cosines.
    """
    return cosine.float() * STS_MAX_LABEL


def rescale_tanh_to_similarity(x: Tensor) -> Tensor:
    """Squash a logit into the STS label scale [0, 5]: (tanh(x) + 1) * 2.5 (the concat head).

    tanh bounds the prediction to [-1, 1], so the head can never predict outside the labels'
    range, and the affine map then lines [-1, 1] up with [0, 5]; a logit of 0 means 2.5.
    """
    return (torch.tanh(x.float()) + 1.0) * (STS_MAX_LABEL / 2)


def sentiment_loss(logits: Tensor, labels: Tensor, smoothing: float = 0.0) -> Tensor:
    """SST's cross-entropy over its K = 5 classes, in float32, with optional label smoothing:

        target = (1 - eps) * label + eps / K        (label: one-hot, or a teacher's distribution)
        L = -mean_i sum_k target_ik * log softmax(logits_i)_k

    logits: (B, K); labels: (B,) class indices, or (B, K) probabilities (--teachers). eps = 0 is
    the plain cross-entropy. Smoothing (Szegedy et al. 2016) keeps the logits from growing without
    bound on examples already right.
    """
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


def paraphrase_loss(logits: Tensor, labels: Tensor, smoothing: float = 0.0) -> Tensor:
    """QQP's binary cross-entropy on the paraphrase logit, in float32, with optional label smoothing:

        target = (1 - eps) * y + eps / 2            (y: 0 or 1, or a teacher's probability)
        L = -mean_i [target_i log sigmoid(z_i) + (1 - target_i) log(1 - sigmoid(z_i))]

    logits, labels: (B,). The same smoothing as sentiment_loss's, for two classes.
    """
    targets = labels.float() * (1.0 - smoothing) + smoothing / 2
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


def paraphrase_loss_from_similarity(logits: Tensor, labels_0_5: Tensor, smoothing: float = 0.0) -> Tensor:
    """QQP's binary cross-entropy on STS pairs, with paraphrase labels read off their similarity:

        y_i = 1 where label_i >= 4 ("mostly equivalent"), 0 where label_i <= 2 ("not equivalent")
        target_i = (1 - eps) * y_i + eps / 2      (paraphrase_loss's label smoothing, eps = smoothing)
        L = sum_i used_i * BCE(z_i, target_i) / max(1, sum_i used_i)    used_i: label_i outside (2, 4)

    The pairs in between ("roughly equivalent, some important information differs") are left
    out: Quora's duplicates are questions with the same intent, and a pair scored 3 could be
    either. By these thresholds 23% of the STS training pairs are paraphrases and 37% are not, a
    positive rate among the pairs used (0.38) near Quora's (0.37). The pairs left out are masked
    rather than dropped, so that the shapes stay fixed (a captured CUDA graph needs that); a batch
    with no pair used gives 0, still attached to the graph.

    logits: (B,) the paraphrase head's logits on the STS pairs; labels_0_5: (B,) their scores
    (under --teachers, the STS labels already moved towards the STS teacher's scores, so the
    thresholds read the mixed score).
    """
    paraphrase = labels_0_5 >= PARAPHRASE_FROM_SIMILARITY  # (B,) bool
    used = paraphrase | (labels_0_5 <= NOT_PARAPHRASE_FROM_SIMILARITY)  # (B,) bool
    targets = paraphrase.float() * (1.0 - smoothing) + smoothing / 2  # (B,) as in paraphrase_loss
    per_pair = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")  # (B,)
    return (per_pair * used).sum() / used.sum().clamp(min=1)


def similarity_mse_loss(predictions: Tensor, labels_0_5: Tensor, unit_scale: bool = False) -> Tensor:
    """Mean squared error between predicted STS scores and labels, in float32 (dot and concat heads).

    With unit_scale the errors are measured in units of half the label range, 2.5: the MSE is
    divided by 2.5^2 (multiplied by 0.16), which for the concat head is exactly its MSE on the
    [-1, 1] range of its tanh. On the 0-5 scale an error of one label point costs 6.25 times
    more than on [-1, 1]; one AdamW serving every task then sees STS gradients that dwarf the
    classification losses' (issue 15, README).
    """
    if predictions.shape != labels_0_5.shape:
        raise ValueError(
            f"predictions and labels must have the same shape, got {tuple(predictions.shape)} "
            f"and {tuple(labels_0_5.shape)}"
        )
    mse = F.mse_loss(predictions.float(), labels_0_5.float())
    return mse * UNIT_SCALE_FACTOR if unit_scale else mse


def cosine_similarity_loss(u: Tensor, v: Tensor, labels_0_5: Tensor) -> Tensor:
    """MSE between cos(u_i, v_i) and the STS label rescaled to [0, 1] (Reimers & Gurevych 2019).

    The labels are mapped with label / 5, as sentence-transformers' CosineSimilarityLoss expects:
    0 (unrelated) asks for orthogonal embeddings, 5 (equivalent) for parallel ones. We first used
    the whole range, label / 2.5 - 1 (0 asks for opposite vectors), and measured what it costs
    (all-MiniLM-L6-v2, 120 STS batches, tuned recipe, seed 0): the dev r fell from the
    checkpoint's zero-shot 0.838 to 0.752, against 0.838 with label / 5. A sentence-embedding
    checkpoint puts unrelated sentences near cosine 0; asking for -1 tears that geometry apart.
    A prediction maps back onto [0, 5] with `rescale_cosine_to_similarity`.

    Args:
        u, v: (B, H) embeddings of the two sentences of each pair.
        labels_0_5: (B,) gold similarity in [0, 5].
    """
    cosine = cosine_similarity(u, v)  # (B,) float32
    return similarity_mse_loss(cosine, rescale_similarity_to_cosine(labels_0_5))


def cosent_loss(u: Tensor, v: Tensor, labels_0_5: Tensor, scale: float = COSENT_SCALE) -> Tensor:
    """CoSENT (Su 2022, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT"): a
    ranking loss on the cosines of a batch of pairs. Every two pairs whose labels differ should
    have their cosines in the labels' order:

        s_i = scale * cos(u_i, v_i)                                       (B,)
        L   = log(1 + sum over (i, j) with label_i > label_j of exp(s_j - s_i))

    A pair scored below a pair labelled less similar adds a term that grows with the size of
    the inversion; pairs in the right order by a wide margin add almost nothing. Unlike
    `cosine_similarity_loss` it asks for no particular cosine, only the labels' order, which is
    what the STS score (a correlation) measures; a sentence-embedding checkpoint keeps its own
    cosine scale. Its gradient with respect to each cosine is a softmax over the inversions
    times `scale`, so it does not fade as the cosines near their targets the way a squared
    error does. An all-equal batch has no ordered pair: L = log 1 = 0, still attached to the
    graph.

    Args:
        u, v: (B, H) embeddings of the two sentences of each pair.
        labels_0_5: (B,) gold similarity in [0, 5] (only their order matters).
        scale: the inverse temperature; 20 as in the paper's code.
    """
    scores = cosine_similarity(u, v) * scale  # (B,) float32
    inversions = scores.unsqueeze(0) - scores.unsqueeze(1)  # (B, B): [i, j] = s_j - s_i
    ordered = labels_0_5.unsqueeze(1) > labels_0_5.unsqueeze(0)  # (B, B): pair i above pair j
    # The unordered entries become -inf (exp = 0) instead of being dropped, so that the shapes
    # stay fixed (a captured CUDA graph needs that); the 0 is the "1 +" inside the log.
    terms = inversions.masked_fill(~ordered, float("-inf")).flatten()  # (B * B,)
    return torch.logsumexp(torch.cat([terms.new_zeros(1), terms]), dim=0)


def mnr_positive_mask(labels_0_5: Tensor, threshold: float = MNR_POSITIVE_THRESHOLD) -> Tensor:
    """Which STS pairs count as positives for the ranking loss: label >= threshold. (B,) -> (B,) bool.

    MNR needs pairs known to be similar; the paper keeps those labelled at least 4.
    """
    return labels_0_5 >= threshold


class TaskWeighting(torch.nn.Module):
    """How much each task counts in the shared encoder's update (one task per step).

    fixed:        w_t * L_t, with the weights of --loss-weights (all 1 in the paper).
    equal-norm:   w_t * L_t, and after the backward pass the step's encoder gradient g is
                  rescaled so that every task pushes the encoder equally hard on average:

                      n_t = decay * n_t + (1 - decay) * ||g||    (the first step of t: n_t = ||g||)
                      g  <- g * mean_s(n_s) / n_t                (mean over the tasks seen so far)

                  One AdamW serves all tasks, and its second moments average every task's
                  squared gradients: a task whose gradients are ten times smaller (the cosine
                  head's, measured in issue 15) moves the encoder ten times less. This is the
                  direct form of the gradient-norm balancing that GradNorm (Chen, Badrinarayanan,
                  Lee & Rabinovich 2018, "GradNorm: Gradient Normalization for Adaptive Loss
                  Balancing in Deep Multitask Networks") reaches by learning the loss weights:
                  here the norms are equalised outright (GradNorm's alpha = 0), with running
                  averages because only one task has a gradient at each step. The task's own
                  step-to-step variation is kept; heads are not rescaled (AdamW's per-parameter
                  normalisation makes their scale moot). The averages are buffers: they are saved
                  and resumed with the model.
    uncertainty:  w_t * (exp(-s_t) * L_t + s_t), where s_t = log sigma_t^2 is learned with the
                  model (Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using Uncertainty to
                  Weigh Losses For Scene Geometry and Semantics"). A task whose loss stays large
                  gets a larger sigma and so a smaller weight exp(-s_t); the + s_t term keeps sigma
                  from growing without bound. This is the common simplified form, the same for
                  every task; the paper's constant factors (1/2 on a regression loss and on its
                  log sigma^2, 1/2 on a classification task's log sigma^2) are left out.
    """

    def __init__(self, tasks: tuple[str, ...], weights: dict[str, float], learned: bool = False,
                 equal_norm: bool = False, decay: float = 0.9):
        super().__init__()
        self.tasks, self.weights = tuple(tasks), dict(weights)
        # s_t = 0 at the start: every task begins with weight exp(0) = 1.
        self.log_variance = torch.nn.Parameter(torch.zeros(len(self.tasks))) if learned else None
        self.equal_norm, self.decay = equal_norm, decay
        if equal_norm:  # n_t, and whether task t has had a step yet
            self.register_buffer("norm_average", torch.zeros(len(self.tasks)))
            self.register_buffer("seen", torch.zeros(len(self.tasks), dtype=torch.bool))

    @torch.no_grad()
    def balance_gradients(self, task: str, norm: Tensor, parameters) -> None:
        """equal-norm: rescale the encoder gradients of this step of `task`, whose norm is `norm`
        (a device scalar; no host sync). Nothing for the other balances."""
        if not self.equal_norm:
            return
        t = self.tasks.index(task)
        norm = norm.float().to(self.norm_average.device)
        finite = torch.isfinite(norm)  # (an fp16 step that the scaler will skip: left out)
        blended = self.decay * self.norm_average[t] + (1.0 - self.decay) * norm
        self.norm_average[t] = torch.where(finite, torch.where(self.seen[t], blended, norm), self.norm_average[t])
        self.seen[t] |= finite
        target = (self.norm_average * self.seen).sum() / self.seen.sum().clamp(min=1)  # mean over the tasks seen
        scale = torch.where(finite, target / self.norm_average[t].clamp(min=1e-12), 1.0)
        grads = [p.grad for p in parameters if p.grad is not None]
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))

    def forward(self, task: str, loss: Tensor) -> Tensor:
        if self.log_variance is None:
            return loss * self.weights[task]
        s = self.log_variance[self.tasks.index(task)]  # () float32
        return self.weights[task] * (torch.exp(-s) * loss + s)
