"""The multitask recipe's levers (issue 15): --tasks, the learning-rate schedule, parameter
groups, mean pooling, fixed and learned task weights, and --recipe itself."""

import json
import math

import numpy as np
import pytest
import torch

import multitask_classifier
from bert import BertConfig, BertModel
from multitask import training
from multitask.batching import Batch
from multitask.checkpoint import build_heads
from multitask.config import RECIPES, TrainConfig, task_values
from multitask.diagnostics import encoder_gradient_norm, encoder_gradients, task_gradient_cosines
from multitask.heads import MultitaskBert
from multitask.losses import TaskWeighting, paraphrase_loss, sentiment_loss, similarity_mse_loss

from test_training import read_metrics, tiny_config


def tiny_model(pooling="cls", **kwargs) -> MultitaskBert:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return MultitaskBert(BertModel(config), sts_head="concat", dropout=0.0, pooling=pooling, **kwargs).eval()


# ---- the learning-rate schedule -------------------------------------------------------------


def test_constant_schedule_is_the_learning_rate():
    config = TrainConfig(lr=3e-5, recipe="paper")
    assert [training.scheduled_lr(config, s, 100) for s in (0, 50, 99)] == [3e-5] * 3


def test_linear_schedule_warms_up_then_decays_to_zero():
    config = TrainConfig(lr=1.0, lr_schedule="linear", warmup=0.1)  # 10 warmup steps of 100
    lrs = [training.scheduled_lr(config, s, 100) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # 0.1, 0.2, ..., 1.0
    assert lrs[10] == pytest.approx(1.0)  # the peak right after the warmup
    assert lrs[10:] == pytest.approx([(100 - s) / 90 for s in range(10, 100)])
    assert lrs[-1] == pytest.approx(1 / 90)  # the last step's, just above 0
    assert all(later < earlier for earlier, later in zip(lrs[10:], lrs[11:]))


def test_linear_schedule_without_warmup_starts_at_the_peak():
    config = TrainConfig(lr=2.0, lr_schedule="linear", warmup=0.0)
    assert training.scheduled_lr(config, 0, 4) == pytest.approx(2.0)
    assert training.scheduled_lr(config, 3, 4) == pytest.approx(0.5)
    assert training.scheduled_lr(config, 0, 1) == pytest.approx(2.0)  # a one-step run: its step at the peak


@pytest.mark.parametrize("total, expected", [
    (168, [(s + 1) / 16.8 for s in range(16)] + [1.0] + [(168 - s) / 151.2 for s in range(17, 168)]),
    (5, [1.0, 4 / 4.5, 3 / 4.5, 2 / 4.5, 1 / 4.5]),
    (1, [1.0]),
])
def test_the_warmup_ends_at_the_peak_when_its_share_is_not_a_whole_number_of_steps(total, expected):
    # 10% of 168 steps is 16.8: steps 0-16 warm up, and step 16 is at the peak, not 17 / 16.8 of it;
    # 10% of 5 steps is half a step: the first step is already at the peak, not twice it.
    config = TrainConfig(lr=1.0, lr_schedule="linear", warmup=0.1)
    lrs = [training.scheduled_lr(config, s, total) for s in range(total)]
    assert lrs == pytest.approx(expected) and max(lrs) == 1.0


@pytest.mark.parametrize("epochs, ranking", [(1, 1), (2, 1), (3, 2), (4, 2)])
def test_the_mnr_head_ranks_for_the_first_half_of_the_epochs_rounded_up(epochs, ranking):
    assert training.mnr_epochs(epochs) == ranking


# ---- parameter groups -----------------------------------------------------------------------


@pytest.mark.parametrize("private_layers", [0, 1])
def test_parameter_groups_decay_only_matrices_and_scale_the_heads(private_layers):
    model = tiny_model(balance="uncertainty", private_layers=private_layers)
    config = TrainConfig(weight_decay=0.01, head_lr_mult=5.0)
    groups = training.parameter_groups(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = []
    for group in groups:
        group_names = [names[id(p)] for p in group["params"]]
        seen += group_names
        heads = [not n.startswith(("bert.", "private.")) for n in group_names]
        assert len(set(heads)) == 1  # a group is all encoder (private top layers too) or all heads
        assert group["lr_mult"] == (5.0 if heads[0] else 1.0)
        for name in group_names:
            no_decay = name.endswith(".bias") or "LayerNorm" in name or name.startswith("task_weighting.")
            assert group["weight_decay"] == (0.0 if no_decay else 0.01), name
    assert sorted(seen) == sorted(names.values())  # every parameter exactly once
    # Without weight decay nothing is exempted: one group each for the encoder and the heads.
    assert [g["weight_decay"] for g in training.parameter_groups(model, TrainConfig())] == [0.0, 0.0]


def expected_layers_above(name: str, layers: int, private: int) -> int:
    """The depth of an encoder parameter, read off its name: layers above it in the whole encoder."""
    parts = name.split(".")
    if parts[1] == "embeddings":
        return layers
    if parts[0] == "private":  # the k-th private copy is layer (layers - private + k) of the checkpoint
        return layers - 1 - (layers - private + int(parts[3]))
    if parts[1] == "encoder":
        return layers - 1 - int(parts[3])
    return 0  # the pooler


@pytest.mark.parametrize("private_layers", [0, 1])
def test_layer_lr_decay_scales_each_layer_by_its_depth(private_layers):
    model = tiny_model(private_layers=private_layers)  # 2 layers; private: the top one copied per task
    config = TrainConfig(layer_lr_decay=0.5, head_lr_mult=3.0, weight_decay=0.01)
    mult = {id(p): g["lr_mult"] for g in training.parameter_groups(model, config) for p in g["params"]}
    depths = set()
    for name, parameter in model.named_parameters():
        if name.startswith(("bert.", "private.")):
            depth = expected_layers_above(name, 2, private_layers)
            depths.add(depth)
            assert mult[id(parameter)] == 0.5 ** depth, name
        else:
            assert mult[id(parameter)] == 3.0, name  # the heads: --head-lr-mult, never decayed
    assert depths == {0, 1, 2}  # the top layer (and pooler), the one below, the embeddings
    # With no decay (1) the groups are the encoder's and the heads', as before the flag existed.
    assert [g["lr_mult"] for g in training.parameter_groups(model, TrainConfig(head_lr_mult=3.0))] == [1.0, 3.0]


def test_layer_lr_decay_moves_each_layer_by_its_own_rate_in_a_training_step(tiny_setup, tmp_path):
    """AdamW's first step moves a weight by lr * g / (|g| + eps), about lr wherever the gradient is
    far above eps: so the largest move in each layer is that layer's rate, lr * 0.5^depth."""
    config = tiny_config(tiny_setup, tmp_path, layer_lr_decay=0.5, lr=1e-3, lr_schedule="constant",
                         warmup=0.0, pooling="cls")
    trainer = training.Trainer(config, log=lambda m: None)
    bert = trainer.model.bert
    layers = {"embeddings": bert.embeddings.word_embeddings.weight,
              "layer 0": bert.encoder.layer[0].output.dense.weight,
              "layer 1": bert.encoder.layer[1].output.dense.weight, "pooler": bert.pooler.dense.weight}
    before = {name: p.detach().clone() for name, p in layers.items()}
    trainer.set_learning_rate("sst", 0, training.EpochProgress(1))
    trainer.train_step(("sst",), False, training.EpochProgress(1))
    moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in layers.items()}
    expected = {"embeddings": 0.25e-3, "layer 0": 0.5e-3, "layer 1": 1e-3, "pooler": 1e-3}  # the tiny model: 2 layers
    assert moved == pytest.approx(expected, rel=0.1)  # (a factor 2 apart; a gradient near eps moves a little less)


def test_mean_pooling_freezes_the_unused_pooler():
    model = tiny_model(pooling="mean")
    assert not any(p.requires_grad for p in model.bert.pooler.parameters())
    grouped = {id(p) for g in training.parameter_groups(model, TrainConfig()) for p in g["params"]}
    assert not grouped & {id(p) for p in model.bert.pooler.parameters()}


# ---- mean pooling ---------------------------------------------------------------------------


def batch_of(ids: list[list[int]], width: int, task: str = "sst") -> Batch:
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    inputs = {"input_ids": input_ids, "token_type_ids": torch.zeros_like(input_ids), "attention_mask": mask}
    labels = torch.zeros(len(ids), dtype=torch.long) if task == "sst" else torch.ones(len(ids))
    return Batch(task, np.arange(len(ids)), inputs, labels)


def test_mean_pooling_averages_the_real_tokens_only():
    model = tiny_model(pooling="mean")
    rows = [[2, 7, 9, 3], [2, 11, 3]]
    pooled = model.pooled(batch_of(rows, 4))
    wider = model.pooled(batch_of(rows, 9))  # more padding changes nothing
    torch.testing.assert_close(pooled, wider, atol=1e-6, rtol=1e-6)
    hidden = model.bert(**batch_of(rows, 4).inputs)["last_hidden_state"]
    torch.testing.assert_close(pooled[0], hidden[0, :4].mean(0), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(pooled[1], hidden[1, :3].mean(0), atol=1e-6, rtol=1e-6)
    cls = tiny_model(pooling="cls")
    torch.testing.assert_close(cls.pooled(batch_of(rows, 4)), cls.bert(**batch_of(rows, 4).inputs)["pooler_output"])


# ---- the layer shared by the heads (--shared-layer) ------------------------------------------


def test_shared_layer_is_a_residual_block_that_starts_as_the_identity():
    model = tiny_model(pooling="mean", shared_layer=True)
    plain = tiny_model(pooling="mean")
    batch = batch_of([[2, 7, 9, 3], [2, 11, 3]], 4)
    with torch.no_grad():
        torch.testing.assert_close(model.pooled(batch), plain.pooled(batch), atol=0, rtol=0)
        layer = model.shared
        torch.nn.init.normal_(layer.dense_out.weight)
        torch.nn.init.normal_(layer.dense_out.bias)
        x = plain.pooled(batch).double()
        inner = torch.nn.functional.gelu(x @ layer.dense_in.weight.double().T + layer.dense_in.bias.double())
        expected = x + inner @ layer.dense_out.weight.double().T + layer.dense_out.bias.double()
        torch.testing.assert_close(model.pooled(batch).double(), expected, atol=1e-5, rtol=1e-5)


def test_every_task_trains_the_shared_layer(tiny_setup, tmp_path):
    config = tiny_config(tiny_setup, tmp_path, shared_layer=True, pooling="mean")
    trainer = training.Trainer(config, log=lambda m: None)
    assert trainer.model.shared is not None
    trainer.train_step(("sst",), False, training.EpochProgress(1))  # W_out leaves zero: W_in gets gradient next
    for task in ("sst", "qqp", "sts"):
        trainer.model.zero_grad(set_to_none=True)
        before = trainer.model.shared.dense_in.weight.detach().clone()
        trainer.train_step((task,), False, training.EpochProgress(1))
        assert trainer.model.shared.dense_in.weight.grad.abs().sum() > 0, task
        assert not torch.equal(trainer.model.shared.dense_in.weight, before), task


# ---- each task's own top layers (--private-layers) -------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_private_layers_start_as_the_checkpoint_for_every_task(pooling):
    plain = tiny_model(pooling=pooling)  # 2 layers, both shared
    model = tiny_model(pooling=pooling, private_layers=1)  # the same weights; layer 2 per task
    assert len(model.bert.encoder.layer) == 1
    assert {task: len(layers) for task, layers in model.private.tasks.items()} == {"sst": 1, "qqp": 1, "sts": 1}
    assert "private.tasks.sts.0.attention.self.query.weight" in model.state_dict()
    batch = batch_of([[2, 7, 9, 3], [2, 11, 3]], 5)  # (padding in the second row)
    with torch.no_grad():
        for task in ("sst", "qqp", "sts"):
            batch.task = task
            torch.testing.assert_close(model.pooled(batch), plain.pooled(batch), atol=1e-6, rtol=1e-6)


def test_private_layers_are_the_top_of_the_stack():
    # What the model computes by hand: the shared layer, then the task's own copy of the top one.
    model = tiny_model(pooling="mean", private_layers=1)
    with torch.no_grad():
        for layer in model.private.tasks["qqp"].modules():  # qqp's copy now differs from the others
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=0.5)
        batch = batch_of([[2, 7, 9, 3], [2, 11, 3, 4]], 4, "qqp")  # no padding: no mask needed
        hidden = model.bert.embeddings(batch.inputs["input_ids"], batch.inputs["token_type_ids"])
        hidden = model.private.tasks["qqp"][0](model.bert.encoder.layer[0](hidden, None), None)
        torch.testing.assert_close(model.pooled(batch), hidden.mean(dim=1), atol=1e-6, rtol=1e-6)
        batch.task = "sst"
        assert not torch.allclose(model.pooled(batch), hidden.mean(dim=1), atol=1e-3)


@pytest.mark.parametrize("private_tasks, copies", [
    ("sst,qqp,sts", {"sst": "sst", "qqp": "qqp", "sts": "sts"}),  # the default: every task its own
    ("sst", {"sst": "sst", "qqp": "qqp+sts", "sts": "qqp+sts"}),  # SST alone; QQP and STS share one
])
def test_a_step_trains_the_shared_layers_and_only_its_own_task_s_private_ones(tiny_setup, tmp_path, private_tasks,
                                                                             copies):
    config = tiny_config(tiny_setup, tmp_path, private_layers=1, pooling="mean", private_tasks=private_tasks)
    trainer = training.Trainer(config, log=lambda m: None)
    assert set(trainer.model.private.tasks) == set(copies.values())
    for task in ("sst", "qqp", "sts"):
        trainer.model.zero_grad(set_to_none=True)
        private = {name: [p.detach().clone() for p in layers.parameters()]
                   for name, layers in trainer.model.private.tasks.items()}
        shared = [p.detach().clone() for p in trainer.model.bert.encoder.parameters()]
        trainer.train_step((task,), False, training.EpochProgress(1))
        assert any(not torch.equal(p, q) for p, q in zip(trainer.model.bert.encoder.parameters(), shared)), task
        for name, before in private.items():
            moved = any(not torch.equal(p, q) for p, q in zip(trainer.model.private.tasks[name].parameters(), before))
            assert moved == (name == copies[task]), (task, name)


def command_line(tiny_setup, tmp_path, *flags: str) -> list[str]:
    """multitask_classifier's arguments for the tiny setup and `flags`. The budget is two batches,
    so that a check that should refuse the flags and is missing costs a short run, then a failure."""
    model_dir, data_dir = tiny_setup
    return ["--model", str(model_dir), "--data-dir", str(data_dir), "--device", "cpu", "--out-dir",
            str(tmp_path / "run"), "--epochs", "1", "--batches-per-epoch", "2", "--no-progress", *flags]


@pytest.mark.parametrize("flags, message", [
    (["--private-tasks", "sst"], "--private-layers is 0"),
    (["--private-layers", "1", "--private-tasks", "sst,sentiment"], "--private-tasks must name some of"),
])
def test_private_tasks_are_checked_on_the_command_line(tiny_setup, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:  # a usage error, before any training
        multitask_classifier.main(command_line(tiny_setup, tmp_path, *flags))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and message in err


def test_private_layers_must_leave_a_shared_layer(tiny_setup, tmp_path, capsys):
    layers = json.loads((tiny_setup[0] / "config.json").read_text())["num_hidden_layers"]
    code = multitask_classifier.main(command_line(tiny_setup, tmp_path, "--private-layers", str(layers)))
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert f"--private-layers {layers}" in err and f"use 1 to {layers - 1}" in err


# ---- task weights ---------------------------------------------------------------------------


def test_fixed_task_weights_multiply_the_loss():
    weighting = TaskWeighting(("sst", "qqp", "sts"), {"sst": 1.0, "qqp": 0.5, "sts": 0.16})
    loss = torch.tensor(2.0)
    assert weighting("sts", loss).item() == pytest.approx(0.32)
    assert weighting("qqp", loss).item() == pytest.approx(1.0)
    assert list(weighting.parameters()) == [] and list(weighting.buffers()) == []
    weight = torch.nn.Parameter(torch.zeros(2))
    weight.grad = torch.tensor([3.0, 4.0])
    weighting.balance_gradients("sts", torch.tensor(5.0), [weight])  # fixed weights: no rescaling
    assert weight.grad.tolist() == [3.0, 4.0]


def test_task_value_options_read_each_task_once():
    # --loss-weights and --teachers share one parser: unnamed tasks weigh 1, spaces and a trailing
    # comma are forgiven, and a folder may hold "=" (only the first one splits).
    assert TrainConfig(loss_weights=" qqp = 1.5 ,").task_weights == {"sst": 1.0, "qqp": 1.5, "sts": 1.0}
    assert TrainConfig(teachers="sst=runs/lr=1e-4,qqp=q").teacher_folders == {"sst": "runs/lr=1e-4", "qqp": "q"}
    for text in ("sts=1,sts=2", "sts", "=1", "sts="):
        with pytest.raises(ValueError, match=text.split(",")[-1]):
            task_values(text)


def test_unit_scale_measures_the_sts_error_on_the_tanh_range():
    # The concat head's score is 2.5 (tanh z + 1); on the unit scale its squared error is that of
    # tanh z against label / 2.5 - 1, i.e. the 0-5 scale's divided by 2.5^2.
    batch = Batch("sts", np.arange(2), {"input_ids": torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]]),
                          "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
                          "token_type_ids": torch.zeros(2, 4, dtype=torch.long)},
                  torch.tensor([4.5, 0.5]))
    label, unit = tiny_model(), tiny_model(sts_loss_scale="unit")
    with torch.no_grad():
        tanh = (label.similarity_score(batch) / 2.5 - 1.0).double()
        expected = ((tanh - (batch.labels.double() / 2.5 - 1.0)) ** 2).mean()
        assert unit.loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)
        assert label.loss(batch).item() == pytest.approx(6.25 * expected.item(), rel=1e-5)


def test_a_config_written_before_sts_loss_scale_existed_keeps_the_label_scale():
    old = TrainConfig(recipe="tuned").to_dict()
    del old["sts_loss_scale"]
    old["loss_weights"] = "sst=1,qqp=1,sts=0.16"  # how the tuned recipe then scaled STS
    assert TrainConfig.from_dict(old).sts_loss_scale == "label"
    assert TrainConfig(recipe="tuned").sts_loss_scale == "unit"
    # Written before --recipe existed: the paper's settings, not today's default recipe.
    older = {k: v for k, v in old.items() if k not in RECIPES["paper"] and k != "recipe"}
    restored = TrainConfig.from_dict(older)
    assert (restored.recipe, restored.pooling, restored.lr_schedule, restored.sts_loss_scale) == (
        "paper", "cls", "constant", "label")


def test_uncertainty_weighting_follows_kendall_et_al():
    weighting = TaskWeighting(("sst", "qqp", "sts"), {"sst": 1.0, "qqp": 1.0, "sts": 2.0}, learned=True)
    with torch.no_grad():
        weighting.log_variance.copy_(torch.tensor([0.0, 0.5, -1.0]))
    loss = torch.tensor(3.0)
    assert weighting("qqp", loss).item() == pytest.approx(torch.exp(torch.tensor(-0.5)).item() * 3 + 0.5)
    objective = weighting("sts", loss)
    assert objective.item() == pytest.approx(2.0 * (torch.exp(torch.tensor(1.0)).item() * 3 - 1.0))
    objective.backward()
    # d/ds of w (exp(-s) L + s) = w (1 - exp(-s) L): only the step's task's s gets a gradient.
    expected = 2.0 * (1 - torch.exp(torch.tensor(1.0)).item() * 3)
    assert weighting.log_variance.grad.tolist() == pytest.approx([0.0, 0.0, expected])


def test_a_zero_weight_task_leaves_the_model_unchanged(tiny_setup, tmp_path):
    config = tiny_config(tiny_setup, tmp_path, loss_weights="sst=1,qqp=1,sts=0")
    trainer = training.Trainer(config, log=lambda m: None)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    [(loss, _)] = trainer.train_step(("sts",), False, training.EpochProgress(1))
    assert loss.item() > 0  # the loss is reported, unweighted
    for name, parameter in trainer.model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    trainer.train_step(("sst",), False, training.EpochProgress(1))
    assert not torch.equal(trainer.model.bert.embeddings.word_embeddings.weight,
                           before["bert.embeddings.word_embeddings.weight"])


def test_equal_norm_rescales_each_step_to_the_mean_of_the_running_norms():
    weighting = TaskWeighting(("sst", "qqp", "sts"), {"sst": 1.0, "qqp": 1.0, "sts": 0.5},
                              equal_norm=True, decay=0.5)
    assert weighting("sts", torch.tensor(2.0)).item() == 1.0  # the fixed weights still apply
    weight = torch.nn.Parameter(torch.zeros(3))

    def step(task, norm):
        weight.grad = torch.tensor([3.0, 4.0, 0.0]) * (norm / 5.0)  # a gradient of that norm
        weighting.balance_gradients(task, torch.tensor(norm), [weight])
        return weight.grad

    torch.testing.assert_close(step("sst", 4.0), torch.tensor([2.4, 3.2, 0.0]))  # alone: unchanged
    # sts, norm 0.5: averages sst 4, sts 0.5; target 2.25; the gradient becomes norm 2.25.
    torch.testing.assert_close(step("sts", 0.5), torch.tensor([3.0, 4.0, 0.0]) * 2.25 / 5)
    # sst again, norm 2: its average 0.5 * 4 + 0.5 * 2 = 3; target (3 + 0.5) / 2; scale 1.75 / 3.
    torch.testing.assert_close(step("sst", 2.0), torch.tensor([3.0, 4.0, 0.0]) * (2.0 / 5) * (1.75 / 3))
    torch.testing.assert_close(weighting.norm_average, torch.tensor([3.0, 0.0, 0.5]))
    assert weighting.seen.tolist() == [True, False, True]
    assert sorted(weighting.state_dict()) == ["norm_average", "seen"]  # saved and resumed with the model


def test_equal_norm_as_the_model_builds_it_averages_with_decay_0_9():
    """The running norms of every --balance equal-norm run: n_t = 0.9 n_t + 0.1 ||g||."""
    weighting = tiny_model(balance="equal-norm").task_weighting
    weight = torch.nn.Parameter(torch.zeros(2))
    for norm in (4.0, 2.0):
        weight.grad = torch.tensor([norm, 0.0])
        weighting.balance_gradients("qqp", torch.tensor(norm), [weight])
    assert weighting.norm_average.tolist() == pytest.approx([0.0, 0.9 * 4.0 + 0.1 * 2.0, 0.0])


def test_equal_norm_lifts_the_weak_tasks_gradient_in_a_real_step(tiny_setup, tmp_path):
    config = tiny_config(tiny_setup, tmp_path, balance="equal-norm", loss_weights="sst=1,qqp=1,sts=0.001")
    trainer = training.Trainer(config, log=lambda m: None)
    progress = training.EpochProgress(1)
    trainer.train_step(("sst",), False, progress)
    trainer.train_step(("sts",), False, progress)  # a loss weighted 0.001: a tiny gradient, lifted
    averages = trainer.model.task_weighting.norm_average
    recorded = {t: progress.grad_norms[t][0].item() for t in ("sst", "sts")}  # (sum, steps) of one step  # the norms before rescaling
    assert averages[0].item() == pytest.approx(recorded["sst"], rel=1e-6)
    assert averages[2].item() == pytest.approx(recorded["sts"], rel=1e-6)
    assert recorded["sts"] < 0.1 * recorded["sst"]
    after = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in trainer.model.bert.parameters() if p.grad is not None))
    assert after.item() == pytest.approx((recorded["sst"] + recorded["sts"]) / 2, rel=1e-4)


def test_uncertainty_weights_are_learned_and_saved(tiny_setup, tmp_path):
    config = tiny_config(tiny_setup, tmp_path, epochs=1, batches_per_epoch=12, balance="uncertainty")
    training.train(config, log=lambda m: None)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "best" / "model.safetensors")["task_weighting.log_variance"]
    assert saved.shape == (3,) and bool((saved != 0).all())


# ---- single-task runs and the recipe --------------------------------------------------------


def test_a_single_task_run_trains_and_evaluates_that_task_only(tiny_setup, tmp_path):
    config = tiny_config(tiny_setup, tmp_path, tasks="sts", epochs=2, batches_per_epoch=15)
    final = training.train(config, log=lambda m: None)
    assert set(final) == {"sts_corr", "overall"}
    assert final["overall"] == pytest.approx((final["sts_corr"] + 1) / 2)
    records = read_metrics(tmp_path)
    assert [(r["batches_sst"], r["batches_qqp"], r["batches_sts"]) for r in records] == [(0, 0, 15)] * 2
    assert records[-1]["train_loss_sts"] < records[0]["train_loss_sts"]
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["sts-dev-output.csv", "sts-test-output.csv"]


def test_recipes_fill_what_no_flag_gives(tmp_path):
    parser = multitask_classifier.build_parser()
    default = multitask_classifier.config_from_args(parser.parse_args([]))
    assert default.recipe == "tuned"  # the ablation's winner (README)
    assert {k: getattr(default, k) for k in RECIPES["tuned"]} == RECIPES["tuned"]
    paper = multitask_classifier.config_from_args(parser.parse_args(["--recipe", "paper"]))
    assert {k: getattr(paper, k) for k in RECIPES["paper"]} == RECIPES["paper"]
    assert (paper.lr, paper.lr_schedule, paper.pooling, paper.warmup) == (1e-5, "constant", "cls", 0.0)
    assert (default.paired_dropout, paper.paired_dropout) == (True, False)
    for flags, paired in ((["--no-paired-dropout"], False), (["--recipe", "paper", "--paired-dropout"], True)):
        assert multitask_classifier.config_from_args(parser.parse_args(flags)).paired_dropout is paired  # a switch both ways
    tuned = multitask_classifier.config_from_args(parser.parse_args(["--recipe", "tuned", "--lr", "3e-5"]))
    assert tuned.lr == 3e-5  # the flag wins
    for flags in (["--lr-schedule", "constant"], ["--lr-schedule", "constant", "--warmup", "0"],
                  ["--recipe", "paper", "--lr-schedule", "linear", "--warmup", "0.1"]):
        multitask_classifier.config_from_args(parser.parse_args(flags)).validate()  # no warmup asked for in vain
    assert {k: getattr(tuned, k) for k in RECIPES["tuned"] if k != "lr"} == {
        k: v for k, v in RECIPES["tuned"].items() if k != "lr"}
    # A run folder records the filled-in values, so the run can be read back and repeated.
    assert json.loads(json.dumps(tuned.to_dict()))["pooling"] == "mean"
    assert TrainConfig.from_dict(tuned.to_dict()) == tuned


def test_the_tuned_recipe_scores_the_dot_head_on_the_pooler_s_output():
    parser = multitask_classifier.build_parser()
    def read(*flags):
        return multitask_classifier.config_from_args(parser.parse_args(list(flags)))
    dot = read("--sts-head", "dot")
    assert dot.pooling == "cls"  # mean-pooled raw products swamp the other tasks (config.HEAD_RECIPES)
    assert {k: getattr(dot, k) for k in RECIPES["tuned"] if k != "pooling"} == {
        k: v for k, v in RECIPES["tuned"].items() if k != "pooling"}  # the rest of the recipe as for any head
    assert read("--sts-head", "dot", "--pooling", "mean").pooling == "mean"  # the flag wins
    assert [read("--sts-head", head).pooling for head in ("concat", "cosine", "mnr")] == ["mean"] * 3
    assert read("--recipe", "paper", "--sts-head", "dot").pooling == "cls"
    assert TrainConfig.from_dict(dot.to_dict()) == dot
    # A tuned dot run written before the exception recorded mean pooling, and reads back as it ran.
    older = {**dot.to_dict(), "pooling": "mean"}
    assert TrainConfig.from_dict(older).pooling == "mean"


def test_the_sts_loss_reaches_the_model():
    for sts_loss, cosent in (("mse", False), ("cosent", True)):
        config = TrainConfig(sts_head="cosine", sts_loss=sts_loss)
        config.validate()
        encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=32))
        assert build_heads(encoder, config).sts_cosent is cosent


def test_the_paraphrase_head_and_paired_dropout_reach_the_model_and_an_old_run_reads_as_before():
    encoder = lambda: BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,  # noqa: E731
                                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=32))
    for head, siamese, inputs in (("joint", False, 16), ("siamese", True, 32)):
        config = TrainConfig(sts_head="cosine", paraphrase_head=head)
        config.validate()
        model = build_heads(encoder(), config)
        assert (model.paraphrase_siamese, model.paraphrase.in_features) == (siamese, inputs)
    old = TrainConfig().to_dict()
    del old["paraphrase_head"], old["paired_dropout"]  # a run folder written before the settings existed
    assert (TrainConfig.from_dict(old).paraphrase_head, TrainConfig.from_dict(old).paired_dropout) == ("joint", False)
    for paired in (False, True):
        assert build_heads(encoder(), TrainConfig(sts_head="cosine", paired_dropout=paired)).paired_dropout is paired


def test_label_smoothing_reaches_the_classification_losses_only():
    """--label-smoothing: the model's SST and QQP losses are the smoothed ones; STS's is unchanged."""
    torch.manual_seed(0)
    plain = tiny_model()
    smoothed = tiny_model(label_smoothing=0.2)
    smoothed.load_state_dict(plain.state_dict())
    sst = batch_of([[2, 7, 9, 3], [2, 11, 3]], 4)
    logits = plain.sentiment_logits(sst)
    assert smoothed.loss(sst).item() == pytest.approx(sentiment_loss(logits, sst.labels, 0.2).item(), rel=1e-6)
    assert smoothed.loss(sst).item() != pytest.approx(plain.loss(sst).item(), rel=1e-3)
    qqp = batch_of([[2, 5, 3, 6, 3], [2, 8, 8, 3, 9, 3]], 6, task="qqp")
    logit = plain.paraphrase_logit(qqp)
    assert smoothed.loss(qqp).item() == pytest.approx(paraphrase_loss(logit, qqp.labels, 0.2).item(), rel=1e-6)
    assert smoothed.loss(qqp).item() != pytest.approx(plain.loss(qqp).item(), rel=1e-3)
    sts = batch_of([[2, 5, 3, 6, 3], [2, 8, 8, 3, 9, 3]], 6, task="sts")
    assert smoothed.loss(sts).item() == plain.loss(sts).item()
    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=32))
    assert build_heads(encoder, TrainConfig(label_smoothing=0.1)).label_smoothing == 0.1  # the flag, to the model
    old = TrainConfig().to_dict()
    del old["label_smoothing"]  # a run folder written before the setting existed: the plain labels
    assert TrainConfig.from_dict(old).label_smoothing == 0.0


def test_paraphrase_from_sts_trains_the_paraphrase_head_on_the_sts_pairs():
    """--paraphrase-from-sts w: an STS batch's loss is the concat head's plus w times the paraphrase
    head's loss on the same pair encoding, its pairs >= 4 read as paraphrases and <= 2 as not;
    without it no STS step reaches the paraphrase head. SST's and QQP's losses are unchanged."""
    plain = tiny_model(sts_loss_scale="unit")
    both = tiny_model(sts_loss_scale="unit", paraphrase_from_sts=0.5)
    both.load_state_dict(plain.state_dict())
    sts = batch_of([[2, 5, 3, 6, 3], [2, 8, 8, 3, 9, 3], [2, 7, 3, 4, 3]], 6, task="sts")
    sts.labels = torch.tensor([4.6, 1.0, 3.0])  # a paraphrase, not one, left out
    pooled = plain.pooled(sts)
    similarity = similarity_mse_loss(plain.concat_score(pooled), sts.labels, unit_scale=True)
    logits = plain.paraphrase(pooled).squeeze(-1)  # dropout 0: the joint head's logits
    paraphrase = paraphrase_loss(logits[:2], torch.tensor([1.0, 0.0]))
    assert plain.loss(sts).item() == pytest.approx(similarity.item(), rel=1e-6)
    assert both.loss(sts).item() == pytest.approx((similarity + 0.5 * paraphrase).item(), rel=1e-6)
    plain.loss(sts).backward()
    both.loss(sts).backward()
    assert plain.paraphrase.weight.grad is None
    assert both.paraphrase.weight.grad.abs().sum() > 0
    top = [m.bert.encoder.layer[-1].output.dense.weight.grad for m in (plain, both)]
    assert not torch.allclose(*top)  # the paraphrase loss reaches the shared encoder too
    for task in ("sst", "qqp"):
        other = batch_of([[2, 5, 3, 6, 3], [2, 8, 8, 3, 9, 3]], 6, task=task)
        assert both.loss(other).item() == plain.loss(other).item()
    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=32))
    assert build_heads(encoder, TrainConfig(paraphrase_from_sts=0.5)).paraphrase_from_sts == 0.5  # the flag, to the model
    old = TrainConfig().to_dict()
    del old["paraphrase_from_sts"]  # a run folder written before the setting existed: off
    assert TrainConfig.from_dict(old).paraphrase_from_sts == 0.0
    with pytest.raises(ValueError, match="concat STS head and the joint paraphrase head"):
        tiny_model(paraphrase_from_sts=1.0, paraphrase_head="siamese")
    # --label-smoothing reaches the paraphrase targets read off the STS pairs, as it reaches QQP's own
    smoothed = tiny_model(sts_loss_scale="unit", paraphrase_from_sts=0.5, label_smoothing=0.2)
    smoothed.load_state_dict(plain.state_dict())
    paraphrase = paraphrase_loss(logits[:2], torch.tensor([1.0, 0.0]), 0.2)
    assert smoothed.loss(sts).item() == pytest.approx((similarity + 0.5 * paraphrase).item(), rel=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--label-smoothing", "-0.1"], "--label-smoothing must be in [0, 1)"),
    (["--label-smoothing", "nan"], "--label-smoothing must be in [0, 1)"),
    (["--paraphrase-head", "cross"], "--paraphrase-head"),
    (["--paraphrase-from-sts", "-1"], "--paraphrase-from-sts is a loss weight"),
    (["--paraphrase-from-sts", "nan"], "--paraphrase-from-sts is a loss weight"),
    (["--paraphrase-from-sts", "1", "--sts-head", "cosine"], "needs --sts-head concat and --paraphrase-head joint"),
    (["--paraphrase-from-sts", "1", "--paraphrase-head", "siamese"], "got concat and siamese"),
    (["--paraphrase-from-sts", "1", "--tasks", "sst,sts"], "--tasks must include both qqp and sts"),
    (["--tasks", "sst,foo"], "--tasks"),
    (["--tasks", "sst,sst"], "--tasks"),
    (["--loss-weights", "sts=x"], "--loss-weights"),
    (["--loss-weights", "sts=-1"], "--loss-weights"),
    (["--loss-weights", "bogus=1"], "--loss-weights"),
    (["--loss-weights", "sts=0.16,sts=1"], "'sts=1' is not task=number"),  # not silently the last one
    (["--loss-weights", "sts=1=2"], "'sts=1=2' is not task=number"),
    (["--loss-weights", "sts"], "'sts' is not task=number"),
    (["--warmup", "1.5"], "--warmup"),
    (["--recipe", "paper", "--warmup", "0.1"], "--warmup 0.1 needs --lr-schedule linear"),  # else silently no warmup
    (["--lr-schedule", "constant", "--warmup", "0.2"], "the learning rate here is constant"),
    (["--loss-weights", "sts=2", "--balance", "equal-norm"], "would have no effect under --balance equal-norm"),
    (["--loss-weights", "sst=0,qqp=0,sts=0"], "weighs every trained task 0, so nothing would train"),
    (["--loss-weights", "sst=0,qqp=1,sts=1", "--tasks", "sst"], "weighs every trained task 0"),
    (["--loss-weights", "qqp=2", "--tasks", "sst"], "gives qqp=2, but --tasks sst does not train that task"),
    (["--loss-weights", "sst=0.5,qqp=0,sts=3", "--tasks", "sst"], "gives qqp=0, sts=3, but --tasks sst"),
    (["--weight-decay", "1e30"], "would multiply the weights by -1e+26 every step"),  # was a NaN blamed on --lr
    (["--weight-decay", "5000", "--head-lr-mult", "2"], "below 1 / 0.0002 = 5000"),  # the heads' rate counts
    (["--seed", str(2 ** 32)], "--seed must be below 2**32"),  # numpy's seeding would fail after the model loads
    (["--head-lr-mult", "0"], "--head-lr-mult"),
    (["--layer-lr-decay", "0"], "--layer-lr-decay is a factor in (0, 1]"),
    (["--layer-lr-decay", "1.5"], "--layer-lr-decay is a factor in (0, 1]"),
    (["--layer-lr-decay", "nan"], "--layer-lr-decay is a factor in (0, 1]"),
    (["--pooling", "max"], "--pooling"),
    (["--recipe", "best"], "--recipe"),
    (["--sts-loss", "cosent"], "the concat head has none"),  # the default head is concat
    (["--sts-loss", "cosent", "--sts-head", "dot"], "the dot head has none"),
    (["--sts-loss", "rank", "--sts-head", "cosine"], "--sts-loss"),
])
def test_bad_recipe_settings_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        multitask_classifier.main(flags)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


# ---- diagnostics: how the tasks pull on the encoder -------------------------------------------


def test_encoder_gradient_norm_is_the_norm_of_all_encoder_gradients():
    model = tiny_model()
    model.train()
    model.loss(batch_of([[2, 7, 9, 3], [2, 11, 3]], 4)).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.bert.parameters() if p.grad is not None]).norm()
    assert encoder_gradient_norm(model.bert).item() == pytest.approx(expected.item(), rel=1e-5)


def test_one_task_s_part_of_a_mixed_step_s_gradient_counts_in_full_a_weight_new_to_the_step():
    # --mix-tasks: a step's tasks add their gradients up, and a task's norm is that of what it
    # added since `encoder_gradients` was taken, None where the earlier tasks reached no weight.
    encoder = torch.nn.Linear(3, 2)
    encoder.weight.grad = torch.ones(2, 3)  # an earlier task's part; the bias: none yet
    earlier = encoder_gradients(encoder)
    encoder.weight.grad += 2.0  # this task's part: 2 on every weight ...
    encoder.bias.grad = torch.tensor([3.0, 4.0])  # ... and the bias, which only it reached
    assert encoder_gradient_norm(encoder, minus=earlier).item() == pytest.approx(7.0)  # sqrt(6 * 4 + 9 + 16)
    assert encoder_gradient_norm(encoder).item() == pytest.approx(math.sqrt(6 * 9 + 25))  # the whole step's


def test_a_task_probed_twice_has_cosine_one_and_the_model_is_left_as_it_was():
    model = tiny_model()
    model.train()
    batch = batch_of([[2, 7, 9, 3], [2, 11, 3]], 4)
    other = batch_of([[2, 5, 3], [2, 8, 8, 3]], 4, task="qqp")
    cosines = task_gradient_cosines(model, {"sst": batch, "again": batch, "other": other}, torch.device("cpu"), "fp32")
    assert cosines["grad_cosine_sst_again"] == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= cosines["grad_cosine_sst_other"] <= 1.0
    assert cosines["grad_cosine_sst_other"] != pytest.approx(1.0, abs=1e-3)
    assert model.training and all(p.grad is None for p in model.parameters())


def test_probes_and_norms_are_logged_and_do_not_change_the_training(tiny_setup, tmp_path):
    plain = tiny_config(tiny_setup, tmp_path / "plain", epochs=1, batches_per_epoch=12)
    probed = tiny_config(tiny_setup, tmp_path / "probed", epochs=1, batches_per_epoch=12, probe_every=4)
    training.train(plain, log=lambda m: None)
    training.train(probed, log=lambda m: None)
    (without,), (with_probes,) = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "probed")
    for task in ("sst", "qqp", "sts"):
        assert with_probes[f"train_loss_{task}"] == without[f"train_loss_{task}"]  # bit for bit
        assert with_probes[f"grad_norm_{task}"] == without[f"grad_norm_{task}"] > 0
    assert with_probes["sts_corr"] == without["sts_corr"]
    for pair in ("sst_qqp", "sst_sts", "qqp_sts"):
        assert -1.0 <= with_probes[f"grad_cosine_{pair}"] <= 1.0
        assert f"grad_cosine_{pair}" not in without


def test_report_to_tensorboard_logs_the_run(tiny_setup, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(tiny_setup, tmp_path, epochs=2, batches_per_epoch=10, report_to="tensorboard")
    training.train(config, log=lambda m: None)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_sst", "train/lr", "train/grad_norm_sts", "epoch/sts_corr", "epoch/overall",
            "epoch/train_tokens_per_second"} <= tags
    records = read_metrics(tmp_path)
    logged = [(e.step, e.value) for e in events.Scalars("epoch/sts_corr")]
    assert [step for step, _ in logged] == [1, 2]
    assert [value for _, value in logged] == pytest.approx([r["sts_corr"] for r in records], abs=1e-6)
    assert [e.step for e in events.Scalars("train/loss_qqp")] == [10, 20]  # each epoch's end
