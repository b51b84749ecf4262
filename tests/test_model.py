"""BertModel on tiny random configs: shapes, masking, the two attention paths, gradients."""

import pytest
import torch

from bert import BertConfig, BertModel
from bert.attention import additive_attention_mask, reference_attention, sdpa_attention
from bert.model import ACTIVATIONS, attention_bias


def tiny_config(**overrides) -> BertConfig:
    values = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=40)
    values.update(overrides)
    return BertConfig(**values)


def batch(seed: int = 0, size: int = 3, length: int = 9):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 100, (size, length), generator=g)
    attention_mask = torch.ones(size, length, dtype=torch.long)
    attention_mask[1, 5:] = 0
    attention_mask[2, 2:] = 0
    input_ids[attention_mask == 0] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 3:] = 1
    return input_ids, attention_mask, token_type_ids


def test_output_shapes_and_keys():
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    out = model(*batch())
    assert set(out) == {"last_hidden_state", "pooler_output"}
    assert out["last_hidden_state"].shape == (3, 9, 32)
    assert out["pooler_output"].shape == (3, 32)
    assert torch.all(out["pooler_output"].abs() <= 1)  # tanh


def test_padding_does_not_change_real_tokens():
    """Appending padding must leave the unpadded positions' outputs unchanged."""
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    ids, mask, types = batch()
    short = model(ids[:, :5], mask[:, :5], types[:, :5])
    pad = torch.zeros(3, 7, dtype=torch.long)
    longer = model(torch.cat([ids[:, :5], pad], 1), torch.cat([mask[:, :5], pad], 1),
                   torch.cat([types[:, :5], pad], 1))
    keep = mask[:, :5].bool()
    torch.testing.assert_close(longer["last_hidden_state"][:, :5][keep],
                               short["last_hidden_state"][keep], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(longer["pooler_output"], short["pooler_output"], atol=1e-5, rtol=1e-4)


def test_defaults_for_optional_inputs():
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    ids = torch.randint(1, 100, (2, 6))
    explicit = model(ids, torch.ones_like(ids), torch.zeros_like(ids))
    implicit = model(ids)
    torch.testing.assert_close(explicit["last_hidden_state"], implicit["last_hidden_state"])


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_reference_and_sdpa_attention_agree(dtype, atol):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8, generator=g, dtype=dtype) for _ in range(3))
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    bias = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    dropout = torch.nn.Dropout(0.0)
    torch.testing.assert_close(reference_attention(q, k, v, bias, dropout),
                               sdpa_attention(q, k, v, bias, dropout), atol=atol, rtol=0)
    torch.testing.assert_close(reference_attention(q, k, v, None, dropout),
                               sdpa_attention(q, k, v, None, dropout), atol=atol, rtol=0)



@pytest.mark.parametrize("attend", [reference_attention, sdpa_attention])
def test_attention_dropout_applies_in_training_only(attend):
    """Both paths drop attention weights when the dropout module trains, and only then."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8, generator=g) for _ in range(3))
    dropout = torch.nn.Dropout(0.5).eval()
    undropped = attend(q, k, v, None, torch.nn.Dropout(0.0))
    torch.testing.assert_close(attend(q, k, v, None, dropout), undropped, atol=1e-6, rtol=0)
    dropout.train()
    torch.manual_seed(0)
    first, second = attend(q, k, v, None, dropout), attend(q, k, v, None, dropout)
    assert (first - undropped).abs().max().item() > 0.1  # half the weights are gone, the rest doubled
    assert (first - second).abs().max().item() > 0.1  # a fresh mask at every call

@pytest.mark.parametrize("implementation", ["reference", "sdpa"])
def test_unpadded_batch_skips_the_mask_and_matches_the_masked_computation(implementation):
    """A batch without padding gets no attention bias (None); the layers must then compute what
    they compute with an explicit all-zero bias, forward and backward."""
    torch.manual_seed(0)
    model = BertModel(tiny_config(attention_implementation=implementation)).eval()
    ids = torch.randint(1, 100, (3, 9))
    full = torch.ones_like(ids)
    hidden = model.embeddings(ids, torch.zeros_like(ids))
    assert attention_bias(full, hidden) is None
    results = []
    for bias in (None, additive_attention_mask(full, hidden.dtype)):
        model.zero_grad()
        out = model.encoder(hidden.detach(), bias)
        out.sum().backward()
        results.append((out, [p.grad.clone() for p in model.encoder.parameters()]))
    (skipped, skipped_grads), (added, added_grads) = results
    torch.testing.assert_close(skipped, added, atol=1e-6, rtol=0)
    for a, b in zip(skipped_grads, added_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_attention_bias_is_built_in_the_dtype_attention_computes_in():
    """Built once per forward: bf16 under autocast (where float32's most negative number would
    round to -inf), the hidden states' dtype otherwise."""
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    hidden = torch.zeros(2, 3, 4)
    assert attention_bias(mask, hidden).dtype == torch.float32
    assert attention_bias(mask, hidden.double()).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bias = attention_bias(mask, hidden)
        assert attention_bias(mask, hidden.double()).dtype == torch.float64  # autocast skips fp64
    assert bias.dtype == torch.bfloat16 and bias.shape == (2, 1, 1, 3)
    assert torch.isfinite(bias).all() and bias[0, 0, 0, 2] < -1e38 and bias[1].eq(0).all()


def test_attention_paths_agree_in_model_forward_and_backward():
    torch.manual_seed(0)
    config = tiny_config(attention_implementation="reference")
    reference = BertModel(config).eval()
    fast = BertModel(tiny_config(attention_implementation="sdpa")).eval()
    fast.load_state_dict(reference.state_dict())
    outputs = []
    for model in (reference, fast):
        out = model(*batch())
        (out["last_hidden_state"].sum() + out["pooler_output"].sum()).backward()
        outputs.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref_out, ref_grads), (fast_out, fast_grads) = outputs
    for key in ref_out:
        torch.testing.assert_close(fast_out[key], ref_out[key], atol=1e-5, rtol=1e-4)
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], atol=1e-4, rtol=1e-3)


def test_set_attention_implementation_switches_every_layer():
    model = BertModel(tiny_config())
    model.set_attention_implementation("reference")
    layers = [layer.attention.self for layer in model.encoder.layer]
    assert all(layer.implementation == "reference" for layer in layers)
    with pytest.raises(ValueError, match="attention_implementation"):
        model.set_attention_implementation("flash")


def test_all_padding_row_is_finite():
    """A row with no real token must not produce NaN (finite mask value, not -inf)."""
    torch.manual_seed(0)
    for implementation in ("reference", "sdpa"):
        model = BertModel(tiny_config(attention_implementation=implementation)).eval()
        ids = torch.zeros(2, 4, dtype=torch.long)
        mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
        assert torch.isfinite(model(ids, mask)["last_hidden_state"]).all()


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    ids, mask, types = batch()
    exact = model(ids, mask, types)["last_hidden_state"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        approx = model(ids, mask, types)["last_hidden_state"]
    keep = mask.bool()
    assert (approx.float()[keep] - exact[keep]).abs().max() < 0.1


def test_dropout_active_only_in_training():
    torch.manual_seed(0)
    model = BertModel(tiny_config(hidden_dropout_prob=0.5))
    ids, mask, types = batch()
    model.train()
    a, b = model(ids, mask, types)["pooler_output"], model(ids, mask, types)["pooler_output"]
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(ids, mask, types)["pooler_output"],
                               model(ids, mask, types)["pooler_output"])


def test_bad_inputs_are_clear_errors():
    model = BertModel(tiny_config())
    assert model(torch.ones(1, 40, dtype=torch.long))["last_hidden_state"].shape == (1, 40, 32)  # the limit itself
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, 41, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        model(torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(num_attention_heads=5)


def test_save_and_reload_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = BertModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    again = BertModel.from_pretrained(tmp_path)
    ids, mask, types = batch()
    torch.testing.assert_close(again(ids, mask, types)["last_hidden_state"],
                               model(ids, mask, types)["last_hidden_state"], atol=0, rtol=0)


def test_gelu_new_is_the_tanh_approximation():
    """Older checkpoints' configs name "gelu_new": GELU's tanh form, which torch also computes."""
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    torch.testing.assert_close(ACTIVATIONS["gelu_new"](x), torch.nn.functional.gelu(x, approximate="tanh"))
    assert not torch.allclose(ACTIVATIONS["gelu_new"](x), ACTIVATIONS["gelu"](x))  # not the exact GELU


def test_the_padding_token_embedding_starts_at_zero_and_gets_no_gradient():
    """As in BERT (and transformers' BertEmbeddings): the [PAD] row is zero at initialisation and
    fine-tuning never moves it."""
    torch.manual_seed(0)
    config = tiny_config()
    model = BertModel(config)
    pad_row = model.embeddings.word_embeddings.weight[config.pad_token_id]
    assert torch.count_nonzero(pad_row) == 0
    assert torch.count_nonzero(model.embeddings.word_embeddings.weight[config.pad_token_id + 1]) > 0
    input_ids, attention_mask, token_type_ids = batch()
    assert (input_ids == config.pad_token_id).any()
    hidden = model(input_ids, attention_mask, token_type_ids)["last_hidden_state"]
    # (a plain sum would do nothing: the last LayerNorm's outputs sum to a constant)
    (hidden * torch.randn(hidden.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
    grad = model.embeddings.word_embeddings.weight.grad
    assert torch.count_nonzero(grad[config.pad_token_id]) == 0
    assert grad[input_ids[0, 0]].abs().max() > 1e-3  # a real token's row does learn
