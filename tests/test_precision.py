"""Mixed precision without a GPU: fp16 autocast and loss scaling on the CPU, and --precision auto.

torch runs fp16 autocast on a CPU as well (emulated where the CPU has no fp16 arithmetic, so only
tiny models are trained here), so the fp16 training path (the GradScaler from
multitask/runtime.py, our hand-written AdamW, the heads and losses) is tested on every machine.
tests/test_gpu.py trains in bf16 and fp16 on CUDA with the same budget (tests/learning.py).
"""

import json
import math

import pytest
import torch

from bert import AdamW, BertConfig, BertModel
from multitask import checkpoint, runtime, training
from multitask.batching import Batch
from multitask.config import TrainConfig
from multitask.heads import MultitaskBert

from learning import LEARNING_SETTINGS, assert_every_task_learned
from synthetic import write_dataset, write_tiny_checkpoint

CPU = torch.device("cpu")
INITIAL_SCALE = 2.0**16  # torch's GradScaler default, which grad_scaler keeps


def test_fp16_autocast_on_the_cpu_runs_linear_layers_in_fp16():
    """The premise of this file: without it the tests below would train in fp32 unawares."""
    torch.manual_seed(0)
    linear, x = torch.nn.Linear(64, 64), torch.randn(8, 64)
    with runtime.autocast(CPU, "fp16"):
        y = linear(x)
    assert y.dtype == torch.float16
    # fp16 keeps 11 bits of mantissa: the product differs from fp32's in the 4th digit, not later.
    error = (y.float() - linear(x)).abs().max().item()
    assert 1e-5 < error < 2e-2
    assert runtime.grad_scaler(CPU, "fp16").get_scale() == INITIAL_SCALE
    for precision in ("fp32", "bf16"):
        assert not runtime.grad_scaler(CPU, precision).is_enabled()


# ---- the GradScaler and our AdamW -------------------------------------------------------------

def scaled_step(parameters, optimizer, scaler, gradients) -> None:
    """One training step of the trainer's shape: scale(loss).backward(), step, update; the loss
    sum(p * g) has exactly the gradient g for each parameter p."""
    optimizer.zero_grad(set_to_none=True)
    loss = sum((p * g).sum() for p, g in zip(parameters, gradients))
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


@pytest.mark.parametrize("foreach", [False, True])
def test_the_scaler_unscales_for_adamw_and_an_overflow_leaves_adamw_untouched(foreach):
    torch.manual_seed(0)
    start = [torch.randn(4, 3), torch.randn(3)]
    settings = dict(lr=1e-2, weight_decay=0.01, eps=1e-6, foreach=foreach)
    # Gradients of the order of eps, where Adam's update m / (sqrt(v) + eps) depends on their
    # size: gradients left scaled by 2^16 would move the weights about twice as far.
    good = [[torch.randn(4, 3) * 1e-6, torch.randn(3) * 1e-6] for _ in range(2)]
    overflowing = [torch.full((4, 3), 1e35), torch.randn(3)]  # 1e35 x 2^16 is inf in float32

    params = [torch.nn.Parameter(p.clone()) for p in start]
    optimizer = AdamW(params, **settings)
    scaler = runtime.grad_scaler(CPU, "fp16")
    scaled_step(params, optimizer, scaler, good[0])
    torch.testing.assert_close(params[0].grad, good[0][0])  # unscaled in place before the step
    after_first = [p.detach().clone() for p in params]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in params]

    scaled_step(params, optimizer, scaler, overflowing)
    assert scaler.get_scale() == INITIAL_SCALE / 2  # the overflow halves the scale...
    for p, before, m in zip(params, after_first, moments):  # ...and the step is not taken at all
        assert torch.equal(p.detach(), before)
        assert optimizer.state[p]["step"] == 1
        assert torch.equal(optimizer.state[p]["exp_avg"], m)

    scaled_step(params, optimizer, scaler, good[1])
    # The reference: the same AdamW given only the two good gradients, unscaled, in order; its
    # second step's bias correction is step 2's, as it must be for ours.
    reference = [torch.nn.Parameter(p.clone()) for p in start]
    plain = AdamW(reference, **settings)
    for gradients in good:
        for p, g in zip(reference, gradients):
            p.grad = g.clone()
        plain.step()
    for p, expected in zip(params, reference):
        assert optimizer.state[p]["step"] == 2
        torch.testing.assert_close(p.detach(), expected.detach(), atol=1e-7, rtol=1e-6)
    assert not torch.equal(params[0].detach(), after_first[0])


# ---- fp16 training is fp32 training but for the skipped steps ----------------------------------

def tiny_model() -> MultitaskBert:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return MultitaskBert(BertModel(config), sts_head="concat", dropout=0.0)


def batches(count: int) -> list[Batch]:
    """SST, QQP and STS batches in turn, of random tokens; every STS label is 5, so that the first
    STS gradients, (5 - 2.5) x 2.5 x 2 summed over the batch into the concat head's bias, are
    about 12 and overflow fp16 once scaled by 2^16."""
    generator = torch.Generator().manual_seed(1)
    made = []
    for i in range(count):
        task = ("sst", "qqp", "sts")[i % 3]
        input_ids = torch.randint(5, 40, (16, 10), generator=generator)
        input_ids[:, 0] = 2  # [CLS]
        attention_mask = torch.ones_like(input_ids)
        attention_mask[::4, 7:] = 0  # some padding, so the attention mask is in play
        token_type_ids = torch.zeros_like(input_ids)
        token_type_ids[:, 5:] = 1 if task != "sst" else 0
        labels = {"sst": torch.randint(0, 5, (16,), generator=generator),
                  "qqp": torch.randint(0, 2, (16,), generator=generator).float(),
                  "sts": torch.full((16,), 5.0)}[task]
        made.append(Batch(task, None, {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask,
                                        "token_type_ids": token_type_ids}, labels))
    return made


def train_steps(precision: str, data: list[Batch], leave_out: set[int] = frozenset()) -> tuple[list[float], list[int]]:
    """The trainer's step on each batch; returns the losses and the steps the scaler skipped.
    Steps in `leave_out` are computed but not taken (to replay fp16's skips in fp32)."""
    model = tiny_model().train()
    optimizer = AdamW(model.parameters(), lr=1e-3)
    scaler = runtime.grad_scaler(CPU, precision)
    losses, skipped = [], []
    for step, batch in enumerate(data):
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast(CPU, precision):
            loss = model.loss(batch)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        if step not in leave_out:
            scaler.step(optimizer)
        scaler.update()
        if scaler.get_scale() < scale:
            skipped.append(step)
        losses.append(loss.item())
    return losses, skipped


def test_fp16_training_is_fp32_training_but_for_the_steps_the_scaler_skips():
    data = batches(24)
    fp16, skipped = train_steps("fp16", data)
    # The scaler skips the first STS steps and no others: the scale comes down from 2^16 to what
    # the STS head's gradient allows (about 65504 / 12: 2^12, four halvings), then holds.
    sts_steps = [step for step, batch in enumerate(data) if batch.task == "sts"]
    assert skipped, "no step overflowed at 2^16: the scaler is not scaling"
    assert skipped == sts_steps[:len(skipped)] and len(skipped) < len(sts_steps), skipped
    assert fp16[sts_steps[-1]] < 0.5 * fp16[sts_steps[0]]  # the steps taken since do learn
    fp32, none = train_steps("fp32", data, leave_out=set(skipped))
    assert none == []
    # fp16 rounding and no more: the losses agree step by step (measured: 8e-4 at most).
    assert fp16 == pytest.approx(fp32, abs=5e-3)
    # Taking the skipped steps in fp32 gives other losses (measured: up to 5.1): the comparison
    # can tell.
    all_steps, _ = train_steps("fp32", data)
    assert max(abs(a - b) for a, b in zip(all_steps, fp16)) > 0.5


# ---- a whole run in fp16 learns ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return write_tiny_checkpoint(root / "model", None), write_dataset(root / "data", train=96, dev=32, test=8)


def test_fp16_training_on_the_cpu_learns_every_task(tiny_setup, tmp_path):
    model_dir, data_dir = tiny_setup
    config = TrainConfig(model=str(model_dir), data_dir=str(data_dir), out_dir=str(tmp_path), device="cpu",
                         precision="fp16", **LEARNING_SETTINGS)
    training.train(config, log=lambda message: None)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert_every_task_learned(records)
    # Three STS steps skipped (2^16 -> 2^13) on every seed measured; the scale never grows back
    # within 200 steps (it would after 2000 without an overflow).
    scale = checkpoint.load_training_state(tmp_path / "checkpoint.pt")["scaler"]["scale"]
    skipped = round(math.log2(INITIAL_SCALE / scale))
    assert 1 <= skipped <= 4, scale


# ---- --precision auto ---------------------------------------------------------------------------

def pretend_gpu(monkeypatch, native_bf16: bool) -> None:
    """A CUDA GPU as torch would describe it: with native bf16 (Ampere on), or a T4/V100 whose
    bf16 torch can only emulate (is_bf16_supported's default then still answers True)."""
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


def test_auto_precision_on_a_gpu_without_bf16_is_fp16(monkeypatch):
    pretend_gpu(monkeypatch, native_bf16=False)
    device = runtime.resolve_device("auto")
    assert device.type == "cuda"
    assert runtime.resolve_precision("auto", device) == "fp16"
    # Asked for explicitly, emulated bf16 is refused (slower than fp32); fp16 and fp32 are kept.
    with pytest.raises(runtime.RuntimeSetupError, match="fp16"):
        runtime.resolve_precision("bf16", device)
    assert runtime.resolve_precision("fp16", device) == "fp16"
    assert runtime.resolve_precision("fp32", device) == "fp32"


def test_auto_precision_on_a_gpu_with_bf16_is_bf16(monkeypatch):
    pretend_gpu(monkeypatch, native_bf16=True)
    assert runtime.resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert runtime.resolve_precision("bf16", torch.device("cuda")) == "bf16"


@pytest.mark.parametrize("capability,expected", [((7, 5), "fp16"), ((8, 0), "bf16")])
def test_auto_precision_with_an_older_torch(monkeypatch, capability, expected):
    """torch versions whose is_bf16_supported takes no argument: the compute capability decides."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    assert runtime.resolve_precision("auto", torch.device("cuda")) == expected


@pytest.mark.parametrize("fast_bf16,expected", [(False, "fp32"), (True, "bf16")])
def test_auto_precision_on_a_cpu_is_never_fp16(monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert runtime.resolve_precision("auto", CPU) == expected
