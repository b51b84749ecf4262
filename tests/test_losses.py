"""Tests for multitask/losses.py: hand-computed cases, parity with sentence-transformers, precision.

Parity with sentence-transformers: its MultipleNegativesRankingLoss and CosineSimilarityLoss
normally embed raw text with a SentenceTransformer model, but both expose
`compute_loss_from_embeddings(embeddings, labels)`, the part after the encoder. We build them
around a stand-in model (nn.Identity(), never called) and feed that method the same float64
embeddings we give our functions, then compare the losses and, for MNR, the gradients.
"""

import math

import pytest
import torch
from torch import nn

from multitask.losses import (
    cosent_loss,
    cosine_similarity,
    cosine_similarity_loss,
    dot_similarity,
    mnr_positive_mask,
    multiple_negatives_ranking_loss,
    paraphrase_loss,
    paraphrase_loss_from_similarity,
    rescale_cosine_to_similarity,
    rescale_similarity_to_cosine,
    rescale_tanh_to_similarity,
    sentiment_loss,
    similarity_mse_loss,
)


@pytest.fixture(scope="module")
def st_reference():
    """sentence-transformers' loss classes and dot_score (a test-only dependency)."""
    pytest.importorskip("sentence_transformers")
    try:  # the current home of the losses; older releases only have sentence_transformers.losses
        from sentence_transformers.sentence_transformer import losses
    except ImportError:
        from sentence_transformers import losses
    from sentence_transformers import util

    return losses, util


def random_pairs(num_pairs: int, hidden: int, seed: int, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.randn(num_pairs, hidden, generator=generator, dtype=dtype)
    positives = torch.randn(num_pairs, hidden, generator=generator, dtype=dtype)
    return anchors, positives


# ---------------------------------------------------------------------------- MNR: hand-computed


def test_mnr_identity_pairs_by_hand():
    # S = I @ I.T = [[1, 0], [0, 1]]; each row is a 2-way softmax of [1, 0] with the 1 on target:
    # loss = -log(e / (e + 1)) for both rows, so also for their mean.
    eye = torch.eye(2)
    loss = multiple_negatives_ranking_loss(eye, eye)
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + 1)), rel=1e-6)


def test_mnr_rows_are_anchors_and_columns_are_positives():
    # anchors [[1, 0], [0, 1]], positives [[3, 0], [1, 1]]: S = anchors @ positives.T = [[3, 1], [0, 1]].
    # Row 0 (target 0): -log(e^3 / (e^3 + e^1)) = log(1 + e^-2).
    # Row 1 (target 1): -log(e^1 / (e^0 + e^1)) = log(1 + e^-1).
    # (The transposed S would give log(1 + e^-3) and log 2 instead.)
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2
    assert multiple_negatives_ranking_loss(anchors, positives).item() == pytest.approx(expected, rel=1e-6)


def test_mnr_scale_multiplies_the_scores():
    # scale 2 turns S = I into 2I: loss = -log(e^2 / (e^2 + 1)).
    eye = torch.eye(2)
    loss = multiple_negatives_ranking_loss(eye, eye, scale=2.0)
    assert loss.item() == pytest.approx(-math.log(math.e**2 / (math.e**2 + 1)), rel=1e-6)


def test_mnr_single_pair_has_nothing_to_rank():
    anchors, positives = random_pairs(1, 8, seed=0)
    assert multiple_negatives_ranking_loss(anchors, positives).item() == pytest.approx(0.0, abs=1e-12)


def test_mnr_empty_batch_is_zero_and_still_differentiable():
    anchors = torch.zeros(0, 8, requires_grad=True)
    positives = torch.zeros(0, 8, requires_grad=True)
    loss = multiple_negatives_ranking_loss(anchors, positives)
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()  # must not raise: the caller's training step runs unchanged
    assert anchors.grad.shape == (0, 8) and positives.grad.shape == (0, 8)


def test_mnr_does_not_depend_on_the_order_of_the_pairs():
    anchors, positives = random_pairs(6, 8, seed=1)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    shuffled = multiple_negatives_ranking_loss(anchors[order], positives[order])
    assert shuffled.item() == pytest.approx(multiple_negatives_ranking_loss(anchors, positives).item(), rel=1e-6)


# ---------------------------------------------------------------------------- MNR: reference and autograd


@pytest.mark.parametrize(
    "num_pairs, hidden, scale", [(2, 3, 1.0), (8, 16, 1.0), (32, 64, 1.0), (8, 16, 20.0)]
)
def test_mnr_matches_sentence_transformers(st_reference, num_pairs, hidden, scale):
    losses, util = st_reference
    reference = losses.MultipleNegativesRankingLoss(
        nn.Identity(), scale=scale, similarity_fct=util.dot_score
    )
    # Keep the scores modest so the scale-20 case is not a saturated softmax with zero gradients.
    anchors, positives = random_pairs(num_pairs, hidden, seed=num_pairs)
    anchors, positives = anchors / math.sqrt(hidden), positives / math.sqrt(hidden)

    ours_inputs = [anchors.clone().requires_grad_(), positives.clone().requires_grad_()]
    theirs_inputs = [anchors.clone().requires_grad_(), positives.clone().requires_grad_()]
    ours = multiple_negatives_ranking_loss(*ours_inputs, scale=scale)
    theirs = reference.compute_loss_from_embeddings(theirs_inputs, labels=None)
    ours.backward()
    theirs.backward()

    # Ours is float32 by design, theirs float64: agreement to float32 precision.
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    for mine, reference_input in zip(ours_inputs, theirs_inputs):
        torch.testing.assert_close(mine.grad, reference_input.grad, rtol=1e-4, atol=1e-6)


def test_mnr_gradient_reaches_both_inputs():
    anchors, positives = random_pairs(4, 8, seed=2, dtype=torch.float32)
    anchors.requires_grad_()
    positives.requires_grad_()
    multiple_negatives_ranking_loss(anchors, positives).backward()
    for grad in (anchors.grad, positives.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_mnr_gradient_is_correct():
    # An independent reference that needs no sentence-transformers: the loss written out as the
    # mean negative log-softmax of S's diagonal. (torch.autograd.gradcheck would need float64 all
    # the way through, but our loss returns float32 by design.)
    anchors, positives = random_pairs(5, 4, seed=3)
    ours_a, ours_p = anchors.float().requires_grad_(), positives.float().requires_grad_()
    multiple_negatives_ranking_loss(ours_a, ours_p).backward()
    ref_a, ref_p = anchors.float().requires_grad_(), positives.float().requires_grad_()
    scores = ref_a @ ref_p.T  # (K, K)
    (-torch.log_softmax(scores, dim=1).diagonal().mean()).backward()
    torch.testing.assert_close(ours_a.grad, ref_a.grad)
    torch.testing.assert_close(ours_p.grad, ref_p.grad)


def test_mnr_bf16_inputs_give_a_float32_loss_close_to_fp32():
    anchors, positives = random_pairs(32, 64, seed=4, dtype=torch.float32)
    anchors, positives = anchors / 8, positives / 8  # scores of order 1, as trained models give
    fp32 = multiple_negatives_ranking_loss(anchors, positives)
    bf16 = multiple_negatives_ranking_loss(anchors.bfloat16(), positives.bfloat16())
    assert bf16.dtype == torch.float32
    # bf16 keeps ~3 significant digits; the inputs' rounding moves the loss by well under 1%.
    assert bf16.item() == pytest.approx(fp32.item(), rel=1e-2)


def test_mnr_under_bf16_autocast_returns_float32():
    anchors, positives = random_pairs(16, 32, seed=5, dtype=torch.float32)
    fp32 = multiple_negatives_ranking_loss(anchors / 6, positives / 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = multiple_negatives_ranking_loss(anchors / 6, positives / 6)
    assert autocast.dtype == torch.float32
    assert autocast.item() == pytest.approx(fp32.item(), rel=1e-2)


@pytest.mark.parametrize("anchor_shape, positive_shape", [((4, 8), (4, 9)), ((4, 8), (3, 8)), ((8,), (8,))])
def test_mnr_rejects_mismatched_shapes(anchor_shape, positive_shape):
    with pytest.raises(ValueError, match="same shape"):
        multiple_negatives_ranking_loss(torch.zeros(anchor_shape), torch.zeros(positive_shape))


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_mnr_rejects_a_non_positive_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        multiple_negatives_ranking_loss(torch.eye(2), torch.eye(2), scale=scale)


# ---------------------------------------------------------------------------- cosine loss


def test_label_rescaling_to_the_cosine_range():
    labels = torch.tensor([0.0, 1.25, 2.5, 5.0])
    torch.testing.assert_close(rescale_similarity_to_cosine(labels), torch.tensor([0.0, 0.25, 0.5, 1.0]))
    torch.testing.assert_close(rescale_cosine_to_similarity(rescale_similarity_to_cosine(labels)), labels)


def test_cosine_loss_by_hand():
    # Pair 0: (1, 0) vs (0, 1): cos = 0; label 2.5 -> target 0.5; error^2 = 1/4.
    # Pair 1: (3, 4) vs (3, 4): cos = 1; label 0 -> target 0; error^2 = 1.
    # Mean: (0.25 + 1) / 2 = 0.625.
    u = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    v = torch.tensor([[0.0, 1.0], [3.0, 4.0]])
    labels = torch.tensor([2.5, 0.0])
    assert cosine_similarity_loss(u, v, labels).item() == pytest.approx(0.625, rel=1e-6)


def test_cosine_loss_is_zero_when_cosines_match_the_labels():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    v = torch.tensor([[5.0, 0.0], [1.0, 1.7320508], [0.0, 3.0]])  # cos = 1, 1/2, 0
    labels = torch.tensor([5.0, 2.5, 0.0])
    assert cosine_similarity_loss(u, v, labels).item() == pytest.approx(0.0, abs=1e-12)


def test_cosine_loss_matches_sentence_transformers_on_rescaled_labels(st_reference):
    losses, _ = st_reference
    reference = losses.CosineSimilarityLoss(nn.Identity())
    u, v = random_pairs(16, 8, seed=6)
    labels = torch.rand(16, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 5
    # sentence-transformers takes the target cosine directly, so we hand it our rescaled labels.
    theirs = reference.compute_loss_from_embeddings([u, v], rescale_similarity_to_cosine(labels))
    assert cosine_similarity_loss(u, v, labels).item() == pytest.approx(theirs.item(), rel=1e-5)


def test_cosine_loss_gradient_reaches_both_inputs_and_is_float32_for_bf16():
    u, v = random_pairs(4, 8, seed=7, dtype=torch.float32)
    u, v = u.bfloat16().requires_grad_(), v.bfloat16().requires_grad_()
    loss = cosine_similarity_loss(u, v, torch.tensor([0.0, 1.0, 4.0, 5.0]))
    assert loss.dtype == torch.float32
    loss.backward()
    for grad in (u.grad, v.grad):
        assert grad is not None and torch.isfinite(grad.float()).all() and grad.abs().sum() > 0


# ---------------------------------------------------------------------------- CoSENT


def loop_cosent(u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor, scale: float = 20.0) -> float:
    """log(1 + sum over label_i > label_j of exp(scale * (cos_j - cos_i))), written out with loops."""
    cos = [float(torch.dot(a, b) / (a.norm() * b.norm())) for a, b in zip(u.double(), v.double())]
    total = 1.0
    for i in range(len(cos)):
        for j in range(len(cos)):
            if labels[i] > labels[j]:
                total += math.exp(scale * (cos[j] - cos[i]))
    return math.log(total)


def test_cosent_by_hand():
    # Pair 0: cos 0, label 4; pair 1: cos 1/2, label 1: pair 1 outranks pair 0 by 1/2 although its
    # label is lower, so L = log(1 + exp(20 * (1/2 - 0))) = log(1 + e^10).
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[0.0, 1.0], [1.0, 1.7320508]])
    labels = torch.tensor([4.0, 1.0])
    assert cosent_loss(u, v, labels).item() == pytest.approx(math.log(1 + math.exp(10.0)), rel=1e-6)
    # The same pairs with the labels swapped are in order: L = log(1 + exp(20 * (0 - 1/2))), about
    # 4.5e-5 (computed in float32 as log(1.0000454): good to about 1e-7).
    assert cosent_loss(u, v, labels.flip(0)).item() == pytest.approx(math.log(1 + math.exp(-10.0)), abs=1e-7)


@pytest.mark.parametrize("scale", [20.0, 1.0])
def test_cosent_matches_the_loop_over_every_two_pairs(scale):
    u, v = random_pairs(12, 8, seed=11)
    labels = torch.tensor([0.0, 1.0, 1.0, 2.5, 3.0, 3.0, 3.0, 4.0, 4.2, 5.0, 0.4, 2.5], dtype=torch.float64)  # ties
    # (ours is float32, the loop float64; at scale 20 a cosine's rounding moves the loss by about 1e-6)
    assert cosent_loss(u, v, labels, scale).item() == pytest.approx(loop_cosent(u, v, labels, scale), rel=1e-5)


def test_cosent_matches_sentence_transformers(st_reference):
    losses, _ = st_reference
    reference = losses.CoSENTLoss(nn.Identity())  # its default scale is 20, as ours
    u, v = random_pairs(16, 8, seed=12)
    labels = torch.randint(0, 6, (16,), generator=torch.Generator().manual_seed(12)).double()  # with ties
    theirs = reference.compute_loss_from_embeddings([u, v], labels)
    assert cosent_loss(u, v, labels).item() == pytest.approx(theirs.item(), rel=1e-5)  # float32 against float64


def test_cosent_depends_on_the_labels_order_only():
    u, v = random_pairs(10, 8, seed=13)
    labels = torch.rand(10, generator=torch.Generator().manual_seed(13), dtype=torch.float64) * 5
    same_order = labels ** 2 + 7.0  # another scale, the same order
    assert cosent_loss(u, v, same_order).item() == pytest.approx(cosent_loss(u, v, labels).item(), rel=1e-12)
    reversed_order = 5.0 - labels
    assert cosent_loss(u, v, reversed_order).item() != pytest.approx(cosent_loss(u, v, labels).item(), rel=1e-3)


def test_cosent_of_equal_labels_is_zero_and_still_differentiable():
    u, v = random_pairs(4, 8, seed=14, dtype=torch.float32)
    u.requires_grad_()
    loss = cosent_loss(u, v, torch.full((4,), 3.0))
    assert loss.item() == 0.0
    loss.backward()
    assert u.grad is not None and torch.count_nonzero(u.grad) == 0


def test_cosent_gradient_raises_the_more_similar_pair_and_lowers_the_other():
    u, v = random_pairs(2, 8, seed=15)
    cos = cosine_similarity(u, v).detach().requires_grad_()  # the loss through its cosines
    labels = torch.tensor([5.0, 0.0])
    scores = cos * 20.0
    torch.logsumexp(torch.stack([scores.new_zeros(()), scores[1] - scores[0]]), dim=0).backward()
    expected = cos.grad.clone()
    u.requires_grad_()
    cosent_loss(u, v, labels).backward()
    assert expected[0] < 0 < expected[1]  # gradient descent raises cos_0 (label 5), lowers cos_1 (label 0)
    # and the loss's gradient on u_0 moves cos_0 the same way: a small step along -grad raises it
    step = u.detach() - 1e-3 * u.grad
    assert cosine_similarity(step, v)[0] > cosine_similarity(u.detach(), v)[0]


def test_cosent_bf16_inputs_give_a_float32_loss():
    u, v = random_pairs(6, 8, seed=16, dtype=torch.float32)
    labels = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    loss = cosent_loss(u.bfloat16(), v.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(cosent_loss(u, v, labels).item(), rel=5e-2)


# ---------------------------------------------------------------------------- scores and helpers


def test_tanh_rescaling_spans_exactly_zero_to_five():
    logits = torch.tensor([-float("inf"), -1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4, float("inf")])
    scores = rescale_tanh_to_similarity(logits)
    assert scores.min().item() == 0.0 and scores.max().item() == 5.0
    assert scores[4].item() == 2.5
    assert (scores.diff() >= 0).all()  # monotone in the logit


def test_tanh_rescaling_returns_float32_for_bf16():
    scores = rescale_tanh_to_similarity(torch.tensor([-3.0, 0.0, 3.0], dtype=torch.bfloat16))
    assert scores.dtype == torch.float32
    assert scores[1].item() == 2.5


def test_dot_similarity_is_the_row_wise_dot_product():
    u = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    v = torch.tensor([[4.0, 0.5], [2.0, 6.0]])
    torch.testing.assert_close(dot_similarity(u, v), torch.tensor([5.0, 0.0]))
    assert dot_similarity(u.bfloat16(), v.bfloat16()).dtype == torch.float32


def test_cosine_similarity_is_row_wise():
    u = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    v = torch.tensor([[0.0, 2.0], [3.0, 3.0]])
    torch.testing.assert_close(cosine_similarity(u, v), torch.tensor([0.0, 1.0]))


def test_similarity_mse_loss_rejects_shapes_that_would_broadcast():
    # (B, 1) against (B,) would silently broadcast to (B, B) in a plain MSE.
    with pytest.raises(ValueError, match="same shape"):
        similarity_mse_loss(torch.zeros(4, 1), torch.zeros(4))
    loss = similarity_mse_loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 5.0]))
    assert loss.item() == pytest.approx(2.5)  # ((1 - 2)^2 + (3 - 5)^2) / 2


def test_similarity_mse_loss_on_the_unit_scale_is_the_mse_of_the_tanh_range():
    """--sts-loss-scale unit: the errors in units of 2.5, i.e. the MSE between prediction / 2.5 - 1
    and label / 2.5 - 1 (the concat head's tanh range), 2.5^2 = 6.25 times smaller."""
    predictions, labels = torch.tensor([1.0, 3.0, 4.5]), torch.tensor([2.0, 5.0, 0.5])
    on_unit = ((predictions / 2.5 - 1) - (labels / 2.5 - 1)).pow(2).mean()
    unit = similarity_mse_loss(predictions, labels, unit_scale=True)
    assert unit.item() == pytest.approx(on_unit.item(), rel=1e-6)
    assert unit.item() == pytest.approx(similarity_mse_loss(predictions, labels).item() / 6.25, rel=1e-6)


def test_mnr_positive_mask_keeps_labels_of_at_least_four():
    labels = torch.tensor([0.0, 3.99, 4.0, 4.6, 5.0])
    assert mnr_positive_mask(labels).tolist() == [False, False, True, True, True]


# ---------------------------------------------------------------------------- more edges


@pytest.mark.parametrize("function, names", [(multiple_negatives_ranking_loss, "anchors and positives"),
                                             (dot_similarity, "u and v"), (cosine_similarity, "u and v")])
def test_shape_errors_name_both_arguments(function, names):
    with pytest.raises(ValueError, match=f"^{names} must both be"):
        function(torch.zeros(4, 8), torch.zeros(4, 9))


def test_mnr_targets_follow_the_scores_device():
    """The targets are made on the scores' device: on the shape-only "meta" device (a stand-in
    for a GPU here) the loss is computed there, with no tensor left on the CPU."""
    anchors, positives = torch.zeros(3, 4, device="meta"), torch.zeros(3, 4, device="meta")
    loss = multiple_negatives_ranking_loss(anchors, positives)
    assert loss.device.type == "meta" and loss.shape == ()


def test_cosine_similarity_stays_within_minus_one_and_one():
    """Rounding puts the float32 cosine of many (anti)parallel pairs a hair outside [-1, 1]
    (about one random vector in five); the result is clamped back, so that the cosine loss and
    the rescaling to [0, 5] never see a value outside the range."""
    u = torch.randn(1000, 64, generator=torch.Generator().manual_seed(0))
    for factor in (1.0, 3.0, -1.0, -3.0):
        cosines = cosine_similarity(u, factor * u)
        assert cosines.abs().max().item() <= 1.0
        torch.testing.assert_close(cosines, torch.full((1000,), math.copysign(1.0, factor)))


# ---- the classification losses and label smoothing -------------------------------------------


def smoothed_cross_entropy_by_hand(logits, targets, eps):
    """-mean_i sum_k [(1 - eps) target_ik + eps / K] log softmax(logits_i)_k, in float64."""
    classes = logits.shape[-1]
    smoothed = (1 - eps) * targets.double() + eps / classes
    return -(smoothed * torch.log_softmax(logits.double(), dim=-1)).sum(-1).mean()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_sentiment_loss_smooths_class_labels_and_teacher_distributions_by_hand(eps):
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    onehot = torch.nn.functional.one_hot(labels, 5)
    assert sentiment_loss(logits, labels, eps).item() == pytest.approx(
        smoothed_cross_entropy_by_hand(logits, onehot, eps).item(), rel=1e-6)
    soft = torch.softmax(torch.randn(6, 5, generator=torch.Generator().manual_seed(1)), -1)  # a teacher's
    assert sentiment_loss(logits, soft, eps).item() == pytest.approx(
        smoothed_cross_entropy_by_hand(logits, soft, eps).item(), rel=1e-6)


def test_classification_losses_do_not_smooth_unless_asked():
    logits, labels = torch.randn(6, 5, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 4, 2, 2, 1, 3])
    assert sentiment_loss(logits, labels).item() == pytest.approx(
        nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    logit, label = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    assert paraphrase_loss(logit, label).item() == pytest.approx(
        nn.functional.binary_cross_entropy_with_logits(logit, label).item(), rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_paraphrase_loss_smooths_towards_one_half_by_hand(eps):
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    labels = torch.tensor([1.0, 0.0, 0.7, 1.0])  # 0.7: a teacher's probability
    targets = (1 - eps) * labels.double() + eps / 2
    p = torch.sigmoid(logits.double())
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert paraphrase_loss(logits, labels, eps).item() == pytest.approx(expected.item(), rel=1e-6)


def test_smoothed_losses_are_smallest_at_the_smoothed_targets():
    """With eps, a right and confident prediction is no longer free: the loss of a positive pair
    is least at probability 1 - eps/2, and SST's at probability 1 - eps + eps/5 for the label."""
    eps = 0.2
    logit = torch.tensor([math.log((1 - eps / 2) / (eps / 2))], requires_grad=True)  # sigmoid = 0.9
    paraphrase_loss(logit, torch.tensor([1.0]), eps).backward()
    assert logit.grad.abs().item() < 1e-6
    positive = torch.tensor([1.0])
    assert paraphrase_loss(logit.detach() + 1.0, positive, eps) > paraphrase_loss(logit.detach(), positive, eps)
    target = torch.full((1, 5), eps / 5)
    target[0, 2] += 1 - eps
    logits = target.log().requires_grad_()  # softmax(logits) = target
    sentiment_loss(logits, torch.tensor([2]), eps).backward()
    assert logits.grad.abs().max().item() < 1e-6


def test_classification_losses_are_float32_for_bf16_logits():
    logits = torch.randn(4, 5).bfloat16()
    assert sentiment_loss(logits, torch.tensor([0, 1, 2, 3]), 0.1).dtype == torch.float32
    assert paraphrase_loss(logits[:, 0], torch.tensor([0.0, 1.0, 1.0, 0.0]), 0.1).dtype == torch.float32


def test_paraphrase_loss_from_similarity_by_hand():
    """STS scores >= 4 are paraphrases, <= 2 are not (both thresholds included), the rest left out."""
    logits = torch.tensor([1.5, -0.5, 2.0, 0.3, -1.0, 4.0, -2.0])
    scores = torch.tensor([5.0, 4.0, 3.9, 2.0, 0.0, 3.0, 2.1])
    used, targets = [0, 1, 3, 4], torch.tensor([1.0, 1.0, 0.0, 0.0])
    p = torch.sigmoid(logits[used].double())
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert paraphrase_loss_from_similarity(logits, scores).item() == pytest.approx(expected.item(), rel=1e-6)
    # the pairs left out have no say: moving their logits changes nothing
    moved = logits.clone()
    moved[[2, 5, 6]] = torch.tensor([-7.0, 9.0, 5.0])
    assert paraphrase_loss_from_similarity(moved, scores).item() == pytest.approx(expected.item(), rel=1e-6)
    # it is QQP's own loss on the pairs used
    assert paraphrase_loss_from_similarity(logits, scores).item() == pytest.approx(
        paraphrase_loss(logits[used], targets).item(), rel=1e-6)


def test_paraphrase_loss_from_similarity_smooths_its_targets_as_paraphrase_loss_does():
    """With eps, the read-off targets 1 and 0 become 1 - eps/2 and eps/2, on the pairs used only."""
    logits, scores = torch.tensor([1.5, -0.5, 2.0, 0.3]), torch.tensor([4.5, 1.0, 3.0, 2.0])
    targets = torch.tensor([0.95, 0.05, 0.05])  # eps 0.1 on the paraphrase, and on the two that are not
    by_hand = nn.functional.binary_cross_entropy_with_logits(logits[[0, 1, 3]], targets)
    assert paraphrase_loss_from_similarity(logits, scores, 0.1).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert paraphrase_loss_from_similarity(logits, scores, 0.1).item() == pytest.approx(
        paraphrase_loss(logits[[0, 1, 3]], torch.tensor([1.0, 0.0, 0.0]), 0.1).item(), rel=1e-6)
    assert paraphrase_loss_from_similarity(logits, scores, 0.1) != paraphrase_loss_from_similarity(logits, scores)


def test_paraphrase_loss_from_similarity_averages_over_the_pairs_used_even_one():
    logits, scores = torch.tensor([0.4, 2.0, -1.0]), torch.tensor([4.2, 3.0, 2.5])  # one pair used
    alone = nn.functional.binary_cross_entropy_with_logits(torch.tensor([0.4]), torch.tensor([1.0]))
    assert paraphrase_loss_from_similarity(logits, scores).item() == pytest.approx(alone.item(), rel=1e-6)


def test_paraphrase_loss_from_similarity_without_a_pair_used_is_zero_and_differentiable():
    logits = torch.tensor([0.7, -0.2], requires_grad=True)
    loss = paraphrase_loss_from_similarity(logits, torch.tensor([3.0, 2.5]))
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    loss.backward()
    assert logits.grad.tolist() == [0.0, 0.0]


def test_paraphrase_loss_from_similarity_gradient_raises_paraphrases_and_lowers_the_rest():
    logits = torch.zeros(3, requires_grad=True)
    paraphrase_loss_from_similarity(logits, torch.tensor([4.5, 1.0, 3.0]).bfloat16()).backward()
    assert logits.grad[0] < 0 < logits.grad[1]  # descent raises the paraphrase's logit, lowers the other's
    assert logits.grad[2] == 0
