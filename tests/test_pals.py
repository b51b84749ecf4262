"""Projected attention layers (--pals, multitask/pals.py): each task's small self-attention beside
every encoder layer. The expected values are computed here by hand from the weights."""

import math

import pytest
import torch
import torch.nn.functional as F

import multitask_classifier
from bert import BertModel
from bert.config import BertConfig
from multitask import export, training
from multitask.export import ExportError
from multitask.pals import PALs
from synthetic import write_random_run, write_tiny_checkpoint
from test_recipe import batch_of, command_line, tiny_model
from test_training import tiny_config

TASKS = ("sst", "qqp", "sts")
WIDTH = 4  # tiny_model: hidden 16, 2 heads, 2 layers


def randomise(module: torch.nn.Module, std: float = 0.5) -> None:
    """Every Linear of `module` drawn at random (V_D too, which starts at zero)."""
    with torch.no_grad():
        for linear in module.modules():
            if isinstance(linear, torch.nn.Linear):
                torch.nn.init.normal_(linear.weight, std=std)
                torch.nn.init.normal_(linear.bias, std=std)


def small_attention(attention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention at the PALs' width, written out: x (B, T, d), mask (B, T) of 1/0."""
    batch, length, width = x.shape
    heads = attention.num_heads
    def split(t):  # (B, T, d) -> (B, heads, T, d / heads)
        return t.view(batch, length, heads, width // heads).transpose(1, 2)
    q, k, v = (split(F.linear(x, lin.weight, lin.bias)) for lin in (attention.query, attention.key, attention.value))
    scores = q @ k.transpose(-1, -2) / math.sqrt(width // heads)  # (B, heads, T, T)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, -math.inf)  # padding keys take no weight
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, width)


def test_pals_start_as_the_checkpoint_for_every_task():
    plain, model = tiny_model(pooling="mean"), tiny_model(pooling="mean", pals=WIDTH)  # the same encoder
    assert set(model.pals.tasks) == set(TASKS)
    batch = batch_of([[2, 7, 9, 3], [2, 11, 3]], 5)  # (padding in the second row)
    with torch.no_grad():
        for task in TASKS:
            batch.task = task
            torch.testing.assert_close(model.pooled(batch), plain.pooled(batch), atol=1e-6, rtol=1e-6)


def test_each_layer_adds_its_task_s_projected_attention_to_the_feed_forward_residual():
    # LN(a + FFN(a) + V_D SA_l(V_E h)) layer by layer, with h the layer's input and a its attention
    # sub-layer's output; the padded row's padding keys are masked in the small attention too.
    model = tiny_model(pooling="mean", pals=WIDTH)
    randomise(model.pals.tasks["qqp"])
    batch = batch_of([[2, 7, 9, 3], [2, 11, 3]], 5, "qqp")
    mask = batch.inputs["attention_mask"]
    with torch.no_grad():
        pals = model.pals.tasks["qqp"]
        hidden = model.bert.embeddings(batch.inputs["input_ids"], batch.inputs["token_type_ids"])
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for i, layer in enumerate(model.bert.encoder.layer):
            attended = layer.attention(hidden, bias)
            side = pals.up(small_attention(pals.attention[i], pals.down(hidden), mask))
            ffn = layer.output.dense(F.gelu(layer.intermediate.dense(attended)))
            hidden = layer.output.LayerNorm(attended + ffn + side)
        expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(model.pooled(batch), expected, atol=1e-5, rtol=1e-5)
        batch.task = "sst"  # the other tasks' PALs are still zero: they read the plain encoder
        assert not torch.allclose(model.pooled(batch), expected, atol=1e-3)


def test_each_task_has_its_own_projections_shared_by_its_layers():
    model = tiny_model(pals=WIDTH)
    hidden, layers = 16, 2
    for task in TASKS:
        pals = model.pals.tasks[task]
        assert len(pals.attention) == layers and all(a.num_heads == 2 for a in pals.attention)
        # 2 H d + H + d for V_E and V_D, once; 3 (d^2 + d) for each layer's query, key and value
        count = sum(p.numel() for p in pals.parameters())
        assert count == 2 * hidden * WIDTH + hidden + WIDTH + layers * 3 * (WIDTH * WIDTH + WIDTH)
        assert torch.count_nonzero(pals.up.weight) == 0 and torch.count_nonzero(pals.up.bias) == 0
        assert torch.count_nonzero(pals.down.weight) > 0
    assert model.pals.tasks["sst"].down is not model.pals.tasks["qqp"].down


def four_head_encoder(**settings) -> BertModel:
    """A small encoder with 4 attention heads (tiny_model has 2): hidden 32, two layers."""
    return BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=32, **settings))


def test_pals_start_as_bert_s_weights_and_attend_as_its_layers_do():
    torch.manual_seed(0)
    encoder = four_head_encoder(initializer_range=0.05, attention_probs_dropout_prob=0.25,
                                attention_implementation="reference")
    pals = PALs(encoder, 8, TASKS).tasks["sts"]
    drawn = [pals.down.weight] + [lin.weight for a in pals.attention for lin in (a.query, a.key, a.value)]
    weights = torch.cat([w.detach().flatten() for w in drawn])  # 32 x 8 + 2 x 3 x 8 x 8 = 640 draws
    assert 0.045 < weights.std().item() < 0.055 and abs(weights.mean().item()) < 0.005  # N(0, 0.05)
    assert all(torch.count_nonzero(lin.bias) == 0 for lin in pals.modules() if isinstance(lin, torch.nn.Linear))
    for attention in pals.attention:  # the encoder's attention dropout and implementation
        assert (attention.dropout.p, attention.implementation, attention.num_heads) == (0.25, "reference", 4)


@pytest.mark.parametrize("width", [0, -8, 6])
def test_a_pals_width_that_does_not_fit_the_heads_is_refused(width):
    example = {0: 4, -8: 4, 6: 8}[width]
    with pytest.raises(ValueError, match=rf"^--pals {width}: the width must be a positive multiple of the encoder's "
                                         rf"4 attention heads \(for example {example}\)$"):
        PALs(four_head_encoder(), width, TASKS)


def test_pals_train_at_the_encoder_s_rate():
    model = tiny_model(pals=WIDTH)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = training.parameter_groups(model, training.TrainConfig(head_lr_mult=5.0))
    rates = {names[id(p)]: group["lr_mult"] for group in groups for p in group["params"]}
    assert rates["pals.tasks.sst.down.weight"] == rates["bert.encoder.layer.0.attention.self.query.weight"] == 1.0
    assert rates["sentiment.weight"] == 5.0


def test_a_step_trains_the_shared_encoder_and_only_its_own_task_s_pals(tiny_setup, tmp_path):
    trainer = training.Trainer(tiny_config(tiny_setup, tmp_path, pals=8, pooling="mean"), log=lambda m: None)
    pals = trainer.model.pals.tasks
    for task in TASKS:
        before = {name: [p.detach().clone() for p in module.parameters()] for name, module in pals.items()}
        shared = [p.detach().clone() for p in trainer.model.bert.encoder.parameters()]
        trainer.train_step((task,), False, training.EpochProgress(1))
        assert any(not torch.equal(p, q) for p, q in zip(trainer.model.bert.encoder.parameters(), shared)), task
        for name, old in before.items():
            moved = any(not torch.equal(p, q) for p, q in zip(pals[name].parameters(), old))
            assert moved == (name == task), (task, name)


def test_a_pals_run_trains_saves_and_reloads(tiny_setup, tmp_path):
    config = tiny_config(tiny_setup, tmp_path, pals=8, epochs=1, batches_per_epoch=12)
    final = training.train(config, log=lambda m: None)
    trained = training.Trainer(config, log=lambda m: None)  # a fresh model: the PALs start at zero again
    assert torch.count_nonzero(trained.model.pals.tasks["sst"].up.weight) == 0
    training.checkpoint.load_weights(tmp_path / "best", trained.model)  # the trained PALs are in the checkpoint
    assert torch.count_nonzero(trained.model.pals.tasks["sst"].up.weight) > 0
    metrics, _ = trained.evaluate()
    assert metrics == pytest.approx(final, abs=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--pals", "-4"], "--pals must be at least 0"),
    (["--pals", "8", "--private-layers", "1"], "--pals 8 and --private-layers 1"),
])
def test_pals_settings_are_checked_on_the_command_line(tiny_setup, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:  # a usage error, before any training
        multitask_classifier.main(command_line(tiny_setup, tmp_path, *flags))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and message in err


def test_the_pals_width_must_fit_the_encoder_s_heads(tiny_setup, tmp_path, capsys):
    code = multitask_classifier.main(command_line(tiny_setup, tmp_path, "--pals", "6"))  # the tiny model: 4 heads
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "--pals 6" in err and "a multiple of 4 (for example 8)" in err


def test_a_pals_width_above_the_hidden_size_is_refused_before_training(tiny_setup, tmp_path, capsys):
    code = multitask_classifier.main(command_line(tiny_setup, tmp_path, "--pals", "4096"))  # a multiple of the heads
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "--pals 4096" in err and "use at most" in err and "hidden_size" not in err


def test_a_pals_run_cannot_be_exported_as_standard_models(tmp_path, minilm_dir, capsys):
    encoder_dir = write_tiny_checkpoint(tmp_path / "encoder", minilm_dir)
    run = write_random_run(tmp_path / "pals", encoder_dir, "cosine", pals=8)
    with pytest.raises(ExportError, match=r"nothing can be exported: encoder: every head reads the encoder"):
        export.export(run, tmp_path / "out")
    assert export.main([str(run), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "--pals" in err and "Traceback" not in err and not (tmp_path / "out").exists()
