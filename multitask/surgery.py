"""--project-conflicts: gradient surgery between tasks, PCGrad for one task per step.

PCGrad (Yu, Kumar, Gupta, Levine, Hausman & Finn 2020, "Gradient Surgery for Multi-Task
Learning") looks at the tasks' gradients on the shared weights; where two conflict (their dot
product is negative), it removes from each the component that points against the other, i.e.
projects it onto the other's normal plane:

    g_t <- g_t - (g_t . g_u / |g_u|^2) g_u          where g_t . g_u < 0

That needs every task's gradient at the same step. Our samplers give each step one task, so the
other tasks' gradients of this step do not exist; what stands in for them is each task's running
average of its own recent encoder gradients:

    m_u  = decay * m_u + (1 - decay) * g_u          over u's own steps (zeros before its first)
    g_t <- g_t - (min(0, g_t . m_u) / |m_u|^2) m_u  for each other task u, in a fixed order
    m_t  is then updated with this step's g_t as it was before the projection

Only the shared encoder's gradients are projected (each head belongs to one task). The projection
only removes: the step never moves against where another task has recently been pushing.
Why it is here: in issue 15's ablation, the cosine head's STS gradients and QQP's point in
opposite directions (probe cosine -0.2), and QQP's are ten times larger, so QQP's steps undo
what STS learns. A zero m_u (a task not seen yet) changes nothing, and the projection has no
branch that depends on values, so it can run inside a CUDA graph. Scaling m_u changes nothing
either, so the averages need no bias correction.

Cost: one running average per task of the encoder's size (3 x 22.7M floats for MiniLM), and per
step two dot products and two scaled additions over the encoder's gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ConflictProjection:
    def __init__(self, tasks: tuple[str, ...], parameters, decay: float = 0.9):
        self.parameters = [p for p in parameters if p.requires_grad]
        self.tasks, self.decay = tuple(tasks), decay
        self.averages = {t: [torch.zeros_like(p) for p in self.parameters] for t in self.tasks}  # m_t

    def _gradients(self) -> list[Tensor]:
        for p in self.parameters:  # (a weight this step did not reach: a zero gradient)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.parameters]

    @torch.no_grad()
    def project(self, task: str) -> None:
        """Fold this step's encoder gradient (of `task`) into `task`'s running average, then
        project it off the other tasks' recent ones."""
        grads = self._gradients()
        # m_t first, from the gradient as it is: the projection below reads only the other
        # tasks' averages, so no copy of the unprojected gradient is needed.
        torch._foreach_lerp_(self.averages[task], grads, 1.0 - self.decay)  # m_t += (1 - decay)(g - m_t)
        for other in self.tasks:
            if other == task:
                continue
            average = self.averages[other]
            dot = dot_product(grads, average)  # () float32
            squared = torch.stack(torch._foreach_norm(average)).float().pow(2).sum()  # |m_u|^2
            coefficient = dot.clamp(max=0.0) / squared.clamp(min=1e-30)  # 0 without a conflict
            torch._foreach_sub_(grads, torch._foreach_mul(average, coefficient.to(grads[0].dtype)))

    def state_dict(self) -> dict:
        """What a training checkpoint keeps, to resume with the same running averages."""
        return {"averages": {t: [m.cpu() for m in ms] for t, ms in self.averages.items()}}

    def load_state_dict(self, state: dict) -> None:
        for task, saved in state["averages"].items():
            for mine, theirs in zip(self.averages[task], saved):
                mine.copy_(theirs)


def dot_product(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """The dot product of two lists of tensors taken as one long vector, in float32: () tensor."""
    return torch.stack([torch.vdot(x.flatten().float(), y.flatten().float()) for x, y in zip(a, b)]).sum()
