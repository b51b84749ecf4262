"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019), written by hand.

For each parameter p with gradient g, at step t (1-based):

    m = beta1 * m + (1 - beta1) * g              first moment (mean of gradients)
    v = beta2 * v + (1 - beta2) * g^2            second moment (uncentred variance)
    step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t)     if correct_bias, else lr
    p = p - step_size * m / (sqrt(v) + eps)      the Adam update
    p = p - lr * weight_decay * p                decoupled weight decay, after the update

The bias correction is the "efficient" form at the end of section 2 of Kingma & Ba (2015): it
folds both corrections into the step size, so eps is added to the uncorrected sqrt(v). This is
the semantics of the CS224N reference (and of the old `transformers.AdamW`).

How it differs from `torch.optim.AdamW`: torch divides by sqrt(v / (1 - beta2^t)) + eps, i.e.
our eps is torch's eps * sqrt(1 - beta2^t) (equal once t is large, and whenever eps is negligible
against sqrt(v)); and torch decays the weights *before* the update, which differs from ours by
lr^2 * weight_decay * update per step. With eps small against the gradients (e.g. 1e-8) the two
agree to ~1e-6 over hundreds of steps; tests/test_optimizer.py measures it.

Three implementations of the same arithmetic: `foreach=False` is a readable loop over parameters;
`foreach=True` (the default) updates all parameters of a group with torch's multi-tensor
`_foreach_*` kernels, far fewer kernel launches for a model with 200 tensors; `capturable=True`
is the multi-tensor update with the step counts and learning rates held in device tensors, so
that a CUDA graph can capture it (see `_capturable_update`). Tests hold all three equal.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim import Optimizer


class AdamW(Optimizer):
    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        correct_bias: bool = True,
        foreach: bool = True,
        capturable: bool = False,
    ):
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}: must be >= 0")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"invalid betas {betas}: each must be in [0, 1)")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}: must be >= 0")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}: must be >= 0")
        # ("capturable" is also the key under which torch's load_state_dict moves saved step
        # counts onto the parameters' device, as a graph needs them.)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        correct_bias=correct_bias, foreach=foreach, capturable=capturable)
        super().__init__(params, defaults)
        self._scratch: dict[torch.Tensor, torch.Tensor] = {}  # see _scratch_for
        self._lr_tensors: dict[int, torch.Tensor] = {}  # group index -> its lr on the device

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load_state_dict, except that every group keeps this optimizer's own `foreach`
        and `capturable`. torch's would take them from the saved groups with the other settings,
        but which implementation runs is this process's choice, not part of the training state:
        a run resumed without CUDA graphs from a checkpoint written with them takes the path it
        was built with. The saved step counts take that path's form at the next step
        (`_step_count_for_path`)."""
        paths = [(group["foreach"], group["capturable"]) for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, (foreach, capturable) in zip(self.param_groups, paths):
            group["foreach"], group["capturable"] = foreach, capturable

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        capturing = is_capturing()
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                if not self.state[p] and capturing:
                    raise RuntimeError("AdamW.step under CUDA graph capture met a parameter without optimizer "
                                       "state: run one step eagerly first, so that the state exists outside the graph")
                if not self.state[p]:
                    self.state[p]["step"] = 0
                    self.state[p]["exp_avg"] = torch.zeros_like(p)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
                self._step_count_for_path(group, p)
            if group["capturable"]:
                self._capturable_update(group, params, index, capturing)
            elif group["foreach"]:
                self._foreach_update(group, params)
            else:
                for p in params:
                    self._single_update(group, p)
        return loss

    def _step_count_for_path(self, group: dict, p: torch.Tensor) -> None:
        """The step count in the form the group's path reads: a Python int for the loop and foreach
        paths, a float64 scalar on the parameter's device for the capturable one.

        The two meet where a state_dict saved by one path is loaded into another (torch's
        load_state_dict also turns a capturable group's saved counts into float32 device tensors);
        the conversion happens once, at the first step after loading, never inside a graph.
        """
        state = self.state[p]
        step = state["step"]
        if group["capturable"]:
            if not (torch.is_tensor(step) and step.dtype == torch.float64 and step.device == p.device):
                state["step"] = torch.as_tensor(step, dtype=torch.float64).to(p.device)  # ()
        elif torch.is_tensor(step):
            state["step"] = int(step.item())  # (a host sync, once after loading)

    @staticmethod
    def _step_size(group: dict, step: int) -> float:
        beta1, beta2 = group["betas"]
        if not group["correct_bias"]:
            return group["lr"]
        return group["lr"] * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)

    def _single_update(self, group: dict, p: torch.Tensor) -> None:
        """The readable reference: one parameter, the formulas of the module docstring in order."""
        beta1, beta2 = group["betas"]
        state = self.state[p]
        state["step"] += 1
        m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)  # m = beta1 m + (1 - beta1) g
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)  # v = beta2 v + (1 - beta2) g^2
        denominator = v.sqrt().add_(group["eps"])  # sqrt(v) + eps
        p.addcdiv_(m, denominator, value=-self._step_size(group, state["step"]))
        if group["weight_decay"] > 0.0:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])  # p - lr * wd * p

    def _scratch_for(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """One buffer per parameter for sqrt(v) + eps, kept from step to step.

        A fresh tensor of the model's size at every step is costly on a CPU, where each large
        allocation is new memory that the system must map page by page (measured on MiniLM's
        22.7M parameters: about 55 ms of a 200 ms optimizer step, one thread). The buffers are
        not optimizer state: they are not saved, and their contents never outlive a step.
        """
        buffers = []
        for p in params:
            if p not in self._scratch:  # (setdefault would build a new buffer at every call)
                self._scratch[p] = torch.empty_like(p)
            buffers.append(self._scratch[p])
        return buffers

    def _foreach_moments(self, group: dict, params: list[torch.Tensor],
                         states: list[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Both multi-tensor paths' first half: update m and v in place, and return m and
        sqrt(v) + eps (in the scratch buffers)."""
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        torch._foreach_mul_(m, beta1)
        torch._foreach_add_(m, grads, alpha=1.0 - beta1)  # m = beta1 m + (1 - beta1) g
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)  # v = beta2 v + (1 - beta2) g^2
        denominators = self._scratch_for(params)
        torch._foreach_copy_(denominators, v)
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, group["eps"])  # sqrt(v) + eps
        return m, denominators

    def _foreach_update(self, group: dict, params: list[torch.Tensor]) -> None:
        """The same arithmetic for all of a group's parameters at once (multi-tensor kernels)."""
        if not params:
            return
        states = [self.state[p] for p in params]
        for state in states:
            state["step"] += 1
        m, denominators = self._foreach_moments(group, params, states)
        step_sizes = [-self._step_size(group, s["step"]) for s in states]
        torch._foreach_addcdiv_(params, m, denominators, step_sizes)
        if group["weight_decay"] > 0.0:
            torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])

    # ---- the capturable path ------------------------------------------------------------------

    def write_learning_rates(self) -> None:
        """Copy each group's `lr` (a Python float, which schedules set) into its device tensor.

        The capturable path reads the learning rate from that tensor only. An eager step calls
        this itself; a captured step cannot (a CUDA graph would replay the value it saw at
        capture), so whoever replays the graph calls it before each replay: an in-place fill on
        the device, no host sync.
        """
        for index, group in enumerate(self.param_groups):
            if group["capturable"] and index in self._lr_tensors:
                self._lr_tensors[index].fill_(group["lr"])

    def _lr_tensor(self, index: int, group: dict, device: torch.device, capturing: bool) -> torch.Tensor:
        """Group `index`'s learning rate as a float64 scalar on `device`, made once and then
        updated in place (a graph captures its address). float64, like the Python floats the
        other paths use, so that the step sizes are the same numbers."""
        if index not in self._lr_tensors:
            if capturing:
                raise RuntimeError("AdamW.step under CUDA graph capture: the learning-rate tensor does not "
                                   "exist yet; run one step eagerly first")
            self._lr_tensors[index] = torch.tensor(float(group["lr"]), dtype=torch.float64, device=device)
        return self._lr_tensors[index]

    def _capturable_update(self, group: dict, params: list[torch.Tensor], index: int, capturing: bool) -> None:
        """The foreach path's arithmetic with nothing computed on the host from the step count.

        A CUDA graph replays the kernels it captured with the arguments they had at capture, so
        any number the host derives per step (the step count, the bias-corrected step size, the
        learning rate) would be frozen into it, and reading a device number back (`.item()`) is
        not allowed while capturing. Here the step counts (one float64 scalar per parameter, on
        its device, as in the loop) and the group's learning rate live in device tensors, and the
        step size is computed from them with tensor ops:

            step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t)       (one device scalar per parameter)
            p = p - m / ((sqrt(v) + eps) / step_size)               the step size folded into the
                                                                    denominator, as torch's own
                                                                    capturable Adam does
            p = p * (1 - lr * weight_decay)

        Folding the step size into the division rounds differently from the other paths'
        `p - step_size * (m / (sqrt(v) + eps))` (an ulp or so of each update), so the paths agree
        to float32 rounding, not bit for bit (tests/test_optimizer.py bounds it). A learning rate
        of 0 gives infinite denominators and a zero update, as it should.

        Per-parameter scalar tensors take torch's per-tensor route for the division (one kernel
        per parameter); inside a CUDA graph a launch costs about a microsecond. Not yet run on a
        GPU: the kernel count and the time are for the GPU session to measure.
        """
        if not params:
            return
        beta1, beta2 = group["betas"]
        lr = self._lr_tensor(index, group, params[0].device, capturing)
        if not capturing:
            lr.fill_(group["lr"])  # (captured steps: the caller's write_learning_rates)
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]  # float64 device scalars
        torch._foreach_add_(steps, 1.0)
        m, denominators = self._foreach_moments(group, params, states)
        if group["correct_bias"]:
            first = torch._foreach_pow(beta1, steps)  # beta1^t
            torch._foreach_neg_(first)
            torch._foreach_add_(first, 1.0)  # 1 - beta1^t
            second = torch._foreach_pow(beta2, steps)
            torch._foreach_neg_(second)
            torch._foreach_add_(second, 1.0)
            torch._foreach_sqrt_(second)  # sqrt(1 - beta2^t)
            step_sizes = torch._foreach_div(second, first)
            torch._foreach_mul_(step_sizes, lr)  # lr * sqrt(1 - beta2^t) / (1 - beta1^t)
            torch._foreach_div_(denominators, step_sizes)
        else:
            torch._foreach_div_(denominators, lr)  # the step size is lr itself
        torch._foreach_addcdiv_(params, m, denominators, value=-1.0)
        if group["weight_decay"] > 0.0:
            torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])  # p - lr * wd * p


def is_capturing() -> bool:
    """Whether the current CUDA stream is being captured into a graph (False without CUDA; the
    CPU-only build of torch raises where the question is asked directly)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
