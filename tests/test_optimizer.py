"""AdamW: the CS224N reference fixture, the two implementations, and torch.optim.AdamW."""

import copy

import numpy as np
import pytest
import torch

from bert import AdamW


def train_fixture_layer(foreach: bool) -> np.ndarray:
    """The exact recipe behind optimizer_test.npy (see ../shared/data/README.md)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2, bias=False)
    optimizer = AdamW(layer.parameters(), lr=1e-3, weight_decay=1e-4, betas=(0.9, 0.999),
                      eps=1e-6, correct_bias=True, foreach=foreach)
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


@pytest.mark.parametrize("foreach", [False, True])
def test_reproduces_reference_fixture(shared_data_dir, foreach):
    expected = np.load(shared_data_dir / "optimizer_test.npy")
    np.testing.assert_allclose(train_fixture_layer(foreach), expected, atol=1e-6, rtol=1e-4)


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
