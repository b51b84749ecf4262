"""AdamW: the CS224N reference fixture, the three implementations, and torch.optim.AdamW."""

import copy

import numpy as np
import pytest
import torch

from bert import AdamW


# The three paths of bert/optimizer.py, as constructor arguments.
PATHS = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "capturable": dict(capturable=True)}


def train_fixture_layer(foreach: bool, capturable: bool = False) -> np.ndarray:
    """The recipe that produced the shared fixture optimizer_test.npy: a bias-free Linear(3, 2)
    built after torch.manual_seed(0), 1000 steps on inputs x ~ default_rng(0).uniform(size=3) drawn
    one per step, target (x0 + x1, -x2), summed squared error; AdamW as configured below."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2, bias=False)
    optimizer = AdamW(layer.parameters(), lr=1e-3, weight_decay=1e-4, betas=(0.9, 0.999),
                      eps=1e-6, correct_bias=True, foreach=foreach, capturable=capturable)
    rng = np.random.default_rng(0)
    for _ in range(1000):
        optimizer.zero_grad()
        x = torch.tensor(rng.uniform(size=[layer.in_features]), dtype=torch.float32)
        y_hat = layer(x)
        y = torch.tensor([x[0] + x[1], -x[2]])
        loss = ((y - y_hat) ** 2).sum()
        loss.backward()
        optimizer.step()
    return layer.weight.detach().numpy()


@pytest.mark.parametrize("foreach,capturable", [(False, False), (True, False), (True, True)])
def test_reproduces_reference_fixture(shared_data_dir, foreach, capturable):
    expected = np.load(shared_data_dir / "optimizer_test.npy")
    np.testing.assert_allclose(train_fixture_layer(foreach, capturable), expected, atol=1e-6, rtol=1e-4)


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def train(model, optimizer, steps: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 8, generator=g)
        target = torch.randn(16, 3, generator=g)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), target).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("weight_decay,correct_bias", [(0.0, True), (0.01, True), (0.01, False)])
def test_foreach_path_equals_reference_loop(weight_decay, correct_bias):
    results = []
    for foreach in (False, True):
        model = small_model()
        optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=weight_decay,
                          correct_bias=correct_bias, foreach=foreach)
        results.append(train(model, optimizer, 100))
    for loop, fast in zip(*results):
        torch.testing.assert_close(fast, loop, atol=1e-7, rtol=0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_matches_torch_adamw_when_configured_alike(weight_decay):
    """Alike: same lr/betas/weight decay, eps=1e-8 (small against sqrt(v)), amsgrad off.
    What remains is eps's placement and decay-before vs after the update (module docstring)."""
    ours_model, torch_model = small_model(), small_model()
    ours = AdamW(ours_model.parameters(), lr=1e-3, eps=1e-8, weight_decay=weight_decay)
    reference = torch.optim.AdamW(torch_model.parameters(), lr=1e-3, eps=1e-8,
                                  weight_decay=weight_decay, foreach=False)
    for a, b in zip(train(ours_model, ours, 200), train(torch_model, reference, 200)):
        assert (a - b).abs().max().item() <= 1e-5


def test_parameter_groups_and_frozen_parameters():
    model = small_model()
    first, second = model[0], model[2]
    second.weight.requires_grad_(False)
    before = second.weight.detach().clone()
    optimizer = AdamW([{"params": first.parameters(), "lr": 0.0},
                       {"params": [second.weight, second.bias], "lr": 1e-2}])
    frozen_first = [p.detach().clone() for p in first.parameters()]
    train(model, optimizer, 3)
    assert torch.equal(second.weight, before)  # no gradient: untouched, no state
    assert second.weight not in optimizer.state
    for old, new in zip(frozen_first, first.parameters()):
        assert torch.equal(old, new)  # lr 0
    assert optimizer.state[second.bias]["step"] == 3


def test_state_dict_roundtrip_continues_identically():
    model = small_model()
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    train(model, optimizer, 5)
    clone = small_model()
    clone.load_state_dict(model.state_dict())
    clone_optimizer = AdamW(clone.parameters(), lr=1e-2, weight_decay=0.01)
    # A deep copy, as a checkpoint on disk is: state_dict() hands out the live moment tensors.
    clone_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for a, b in zip(train(model, optimizer, 5, seed=7), train(clone, clone_optimizer, 5, seed=7)):
        assert torch.equal(a, b)


def test_invalid_hyperparameters():
    params = small_model().parameters()
    with pytest.raises(ValueError, match="learning rate"):
        AdamW(params, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        AdamW(small_model().parameters(), betas=(1.0, 0.9))


def test_defaults():
    """The defaults are the BERT recipe's: lr 1e-3, betas (0.9, 0.999), eps 1e-6, no weight
    decay, bias correction on, and the multi-tensor path."""
    group = AdamW(small_model().parameters()).param_groups[0]
    assert group["lr"] == 1e-3 and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-6
    assert group["weight_decay"] == 0.0 and group["correct_bias"] is True and group["foreach"] is True


@pytest.mark.parametrize("path", list(PATHS))
def test_first_step_moves_each_weight_by_lr_against_its_gradient(path):
    """At step 1, m = (1 - beta1) g and sqrt(v) = sqrt(1 - beta2) |g|; the bias correction
    lr * sqrt(1 - beta2) / (1 - beta1) turns the update into lr * g / (|g| + eps / sqrt(1 - beta2)),
    i.e. lr * sign(g) where |g| is large against eps. Without the correction it is
    lr * (1 - beta1) / sqrt(1 - beta2) * sign(g), about 3.16 lr."""
    for correct_bias, scale in ((True, 1.0), (False, 0.1 / 0.001 ** 0.5)):
        weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
        optimizer = AdamW([weight], lr=0.01, eps=1e-8, correct_bias=correct_bias, **PATHS[path])
        weight.grad = torch.tensor([0.5, -4.0, 2.0])
        optimizer.step()
        expected = torch.tensor([1.0, -2.0, 3.0]) - 0.01 * scale * torch.tensor([1.0, -1.0, 1.0])
        torch.testing.assert_close(weight.detach(), expected, rtol=0, atol=1e-6)


def test_step_returns_the_closure_loss():
    weight = torch.nn.Parameter(torch.tensor([2.0]))
    optimizer = AdamW([weight], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (weight**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == 4.0
    assert weight.item() < 2.0  # the closure's gradient was used
    assert optimizer.step() is None


def test_sparse_gradients_are_refused():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        AdamW(embedding.parameters()).step()


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("kwargs", [dict(lr=0.0), dict(eps=0.0), dict(weight_decay=0.0),
                                    dict(betas=(0.0, 0.0)), dict(betas=(0.0, 0.999))])
def test_boundary_hyperparameters_are_accepted(kwargs, path):
    """Zero is a valid lr (a frozen group), eps, weight decay and beta (no averaging)."""
    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = AdamW(model.parameters(), **kwargs, **PATHS[path])
    after = train(model, optimizer, 2)
    assert all(torch.isfinite(p).all() for p in after)
    if kwargs.get("lr") == 0.0:  # (the capturable path divides by the step size: inf, a zero update)
        assert all(torch.equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1e-3), "learning rate"),
    (dict(betas=(1.0, 0.9)), "betas"), (dict(betas=(0.9, 1.0)), "betas"),
    (dict(betas=(-0.1, 0.9)), "betas"), (dict(betas=(0.9, -0.1)), "betas"),
    (dict(eps=-1e-8), "eps"), (dict(weight_decay=-0.01), "weight_decay"),
])
def test_out_of_range_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdamW(small_model().parameters(), **kwargs)


# ------------------------------------------------------------------------------------------
# the capturable path: the same arithmetic with the step counts and the lr on the device
# ------------------------------------------------------------------------------------------

FLOAT32_EPS = torch.finfo(torch.float32).eps  # 2^-23: the spacing of float32 numbers near 1


def rounding_bound(params: list[torch.Tensor], steps: int) -> float:
    """How far two float32 implementations of the same update may drift apart in `steps` steps.

    The capturable path folds the step size into the denominator (m / (d / s) instead of
    s * (m / d)), so each update can differ in its last bit, and then p + update can round to a
    neighbouring float: at most one spacing of p's float32 grid, eps * |p|, per step. Added up
    over the steps (the worst case; the errors are in fact random in sign and far smaller), and
    in training the gradients carry the difference on. Measured on the tests below: 1e-7 to
    5e-7 after 100 training steps, against a bound of about 1e-5.
    """
    largest = max(p.abs().max().item() for p in params)
    return steps * FLOAT32_EPS * max(largest, 1.0)


@pytest.mark.parametrize("weight_decay,correct_bias", [(0.0, True), (0.01, True), (0.01, False)])
def test_capturable_path_equals_reference_loop(weight_decay, correct_bias):
    results = {}
    for path in ("loop", "capturable"):
        model = small_model()
        optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=weight_decay,
                          correct_bias=correct_bias, **PATHS[path])
        results[path] = train(model, optimizer, 100)
    for loop, capturable in zip(results["loop"], results["capturable"]):
        torch.testing.assert_close(capturable, loop, atol=rounding_bound(results["loop"], 100), rtol=0)
    start = [p.detach() for p in small_model().parameters()]
    assert not any(torch.equal(a, b) for a, b in zip(results["capturable"], start))  # it did train


def fixed_gradient_steps(path: str, lrs: list[float], weight_decay: float = 0.01,
                         correct_bias: bool = True) -> tuple[list[torch.Tensor], AdamW]:
    """Steps on fixed random gradients (no feedback from the weights), the group's lr set to
    lrs[k] before step k, as a schedule does; returns the weights and the optimizer."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(6, 5), (5,), (1,)]]
    optimizer = AdamW(params, lr=lrs[0], weight_decay=weight_decay, correct_bias=correct_bias, **PATHS[path])
    generator = torch.Generator().manual_seed(1)
    for lr in lrs:
        optimizer.param_groups[0]["lr"] = lr
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return [p.detach().clone() for p in params], optimizer


@pytest.mark.parametrize("correct_bias", [True, False])
def test_capturable_path_follows_a_changing_learning_rate(correct_bias):
    """A warmup and decay: the lr changes at every step. Without feedback through the gradients,
    the paths stay within a few float32 steps of each other."""
    lrs = [1e-2 * (k + 1) / 4 for k in range(4)] + [1e-2 * (8 - k) / 8 for k in range(8)]
    loop, _ = fixed_gradient_steps("loop", lrs, correct_bias=correct_bias)
    capturable, optimizer = fixed_gradient_steps("capturable", lrs, correct_bias=correct_bias)
    for a, b in zip(capturable, loop):
        torch.testing.assert_close(a, b, atol=rounding_bound(loop, len(lrs)), rtol=0)
    # The counts and the lr live in device tensors (here, the CPU's) that are updated in place.
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert torch.is_tensor(state["step"]) and state["step"].dtype == torch.float64 and state["step"].item() == 12
    assert optimizer._lr_tensors[0].item() == lrs[-1]


def test_capturable_lr_tensor_is_updated_in_place():
    """A CUDA graph holds the addresses it captured: the lr tensor must stay the same tensor
    while its value follows the group's lr (write_learning_rates, what a graph's replay uses)."""
    fresh = AdamW(small_model().parameters(), capturable=True)
    fresh.write_learning_rates()  # before the first step there is no tensor yet: nothing to write
    assert fresh._lr_tensors == {}
    _, optimizer = fixed_gradient_steps("capturable", [1e-2, 2e-2])
    tensor, address = optimizer._lr_tensors[0], optimizer._lr_tensors[0].data_ptr()
    optimizer.param_groups[0]["lr"] = 5e-3
    optimizer.write_learning_rates()
    assert optimizer._lr_tensors[0] is tensor and tensor.data_ptr() == address and tensor.item() == 5e-3
    step = optimizer.state[optimizer.param_groups[0]["params"][0]]["step"]
    for p in optimizer.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert optimizer.state[optimizer.param_groups[0]["params"][0]]["step"] is step  # counted in place
    assert optimizer._lr_tensors[0] is tensor


@pytest.mark.parametrize("saved_by,loaded_by", [("capturable", "capturable"), ("foreach", "capturable"),
                                                ("capturable", "foreach"), ("capturable", "loop")])
def test_state_dict_roundtrip_between_paths(saved_by, loaded_by):
    """A checkpoint written by one path continues in another; within the capturable path, bit for
    bit (the same ops on the same numbers)."""
    model = small_model()
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, **PATHS[saved_by])
    train(model, optimizer, 5)
    clone = small_model()
    clone.load_state_dict(model.state_dict())
    clone_optimizer = AdamW(clone.parameters(), lr=1e-2, weight_decay=0.01, **PATHS[loaded_by])
    clone_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    built = AdamW(clone.parameters(), **PATHS[loaded_by]).defaults
    for group in clone_optimizer.param_groups:  # the loader's own path, not the saved one
        assert (group["foreach"], group["capturable"]) == (built["foreach"], built["capturable"])
    continued = train(model, optimizer, 5, seed=7)
    resumed = train(clone, clone_optimizer, 5, seed=7)
    for a, b in zip(continued, resumed):
        if saved_by == loaded_by:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(b, a, atol=rounding_bound(continued, 10), rtol=0)
    counts = {int(clone_optimizer.state[p]["step"]) for p in clone.parameters()}
    assert counts == {10}
    kinds = {type(clone_optimizer.state[p]["step"]) for p in clone.parameters()}
    assert kinds == ({torch.Tensor} if loaded_by == "capturable" else {int})  # the form the path reads


def test_capturable_flag_is_a_group_default():
    group = AdamW(small_model().parameters()).param_groups[0]
    assert group["capturable"] is False
    assert AdamW(small_model().parameters(), capturable=True).param_groups[0]["capturable"] is True
