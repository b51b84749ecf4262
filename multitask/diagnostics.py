"""How the tasks pull on the shared encoder: gradient norms and gradient cosines.

Multitask learning helps when the tasks' gradients on the shared weights point the same way and
hurts when they conflict or when one task's gradients dwarf the others' (Yu et al. 2020,
"Gradient Surgery for Multi-Task Learning", measure conflict as a negative cosine). Two views:

- `encoder_gradient_norm`: the L2 norm of a step's gradient on the encoder, i.e. how hard that
  step's task pushes. Measured on every step from the gradients the step computed anyway (with
  --mix-tasks, each task's part of them, against a copy taken before its backward pass).
- `task_gradient_cosines`: every --probe-every steps, each task's encoder gradient on one fixed
  probe batch (the first --batch-size examples of its training file, dropout off), and the cosine
  between each pair of tasks. The same batches every time, so changes come from the model.

Neither changes the training: the norm only reads gradients, and the probes run without dropout
(no random draws) and leave no gradient behind.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from multitask.batching import Batch, TokenizedSplit, collate
from multitask.runtime import autocast


def encoder_gradient_norm(encoder: torch.nn.Module, minus: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """||g|| over the encoder's parameters that have a gradient (a device scalar: no sync).

    With `minus` (`encoder_gradients` taken earlier in the step), the norm of what was added
    since: under --mix-tasks, where a step's tasks add their gradients up, one task's own part.
    """
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    if minus is not None:
        earlier = [m for p, m in zip(encoder.parameters(), minus) if p.grad is not None]
        grads = [g if m is None else g - m for g, m in zip(grads, earlier)]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def encoder_gradients(encoder: torch.nn.Module) -> list[torch.Tensor | None]:
    """A copy of the encoder's gradients (None where a parameter has none), for `encoder_gradient_norm`."""
    return [None if p.grad is None else p.grad.clone() for p in encoder.parameters()]


def probe_batches(splits: dict[str, TokenizedSplit], batch_size: int, pad_id: int) -> dict[str, Batch]:
    """The fixed probe batch of each task: the first `batch_size` examples of its split."""
    return {task: collate(split, np.arange(min(batch_size, len(split))), pad_id) for task, split in splits.items()}


def task_gradient_cosines(model, batches: dict[str, Batch], device: torch.device, precision: str) -> dict[str, float]:
    """cos(g_a, g_b) for each pair of tasks, g_t the encoder's gradient of task t's probe loss."""
    was_training = model.training
    model.eval()  # no dropout: the probe is the same computation every time, and draws nothing
    parameters = [p for p in model.bert.parameters() if p.requires_grad]
    gradients = {}
    for task, batch in batches.items():
        model.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = model.loss(batch.to(device))
        loss.backward()
        gradients[task] = torch.cat([p.grad.reshape(-1).float() for p in parameters if p.grad is not None])  # (P,)
    model.zero_grad(set_to_none=True)  # the next training step starts from no gradient, as always
    model.train(was_training)
    return {f"grad_cosine_{a}_{b}": F.cosine_similarity(gradients[a], gradients[b], dim=0).item()
            for a, b in itertools.combinations(gradients, 2)}
