"""Device, numeric precision and compilation: the hardware side of a run, decided in one place.

- device "auto" picks CUDA when there is a GPU, else the CPU;
- precision "auto" picks bf16 autocast where the hardware runs bf16 matrix products natively
  (GPUs from Ampere on; CPUs with AVX512-BF16 or AMX, where bf16 is about 4x faster than fp32);
  on a CUDA GPU without bf16 (T4, V100) it picks fp16 with loss scaling, which their tensor
  cores run several times faster than fp32; on other CPUs fp32 (they emulate bf16 and fp16, far
  slower than fp32). Weights and the optimizer stay fp32 (mixed precision): only the matrix
  products run in the low precision;
- fp16 also needs loss scaling (`grad_scaler`): its smallest normal number is 6e-5, so small
  gradients would underflow to zero. The scaler multiplies the loss by 2^16 before the backward
  pass and divides the gradients by the same before the step. Where a scaled gradient overflows
  (fp16's largest number is 65504), it skips that optimizer step and halves the scale, so a run
  starts with a few skipped steps and then keeps the scale, doubling it only after 2000 steps
  without an overflow. On the tests' tiny model that is three steps (2^16 down to 2^13), all of
  them STS steps: the concat head's gradient, summed over the batch into its bias, is the
  largest. Negligible in a real run; 3 of the 16 STS steps of a 60-step test;
- `--compile` wraps the encoder in torch.compile and falls back to eager with a warning where
  compilation fails (on a CPU it rarely pays: measured on an AVX512-BF16 CPU, it made BERT's
  forward and backward 7% (fp32) and 19% (bf16) slower after 20-35 s of compiling; on an H200 it
  took 26% off a training step).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn


class RuntimeSetupError(Exception):
    """The requested device or precision cannot be had on this machine."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeSetupError("--device cuda was asked for, but PyTorch sees no CUDA GPU "
                                "(install a CUDA build of torch, or use --device cpu)")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bf16 matrix units (AVX512-BF16 or AMX), as oneDNN sees them.

    Without them bf16 is emulated and far slower than fp32 (measured on an AVX2-only machine:
    about 1 GFLOP/s against 60), so "auto" must not pick it there.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_has_native_bf16() -> bool:
    """Whether the current CUDA GPU computes in bf16 natively (compute capability 8.0 on: Ampere).

    Not plain `torch.cuda.is_bf16_supported()`: by default it also answers True where bf16 is
    only emulated (it checks that a bf16 tensor can be made there), which a T4 or V100 can, and
    emulated bf16 gets none of their tensor cores' speed (fp16 does).
    """
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # an older torch, without the argument: ask for Ampere or later directly
        return bool(torch.version.hip) or torch.cuda.get_device_capability() >= (8, 0)


def resolve_precision(name: str, device: torch.device) -> str:
    """The precision a run uses: `name` itself, or for "auto" the fastest one that trains well here.

    "auto" on a CUDA GPU: bf16 where the GPU has it natively (Ampere and later), else fp16, which
    the trainer pairs with a GradScaler (`grad_scaler`): a T4 or V100 has fp16 tensor cores but
    no bf16. On a CPU: bf16 where it runs bf16 natively, else fp32 (fp16 is never picked there:
    without AVX512-FP16 or AMX-FP16 a CPU emulates it, slower than fp32).
    """
    if name != "auto":
        if name == "bf16" and device.type == "cuda" and not cuda_has_native_bf16():
            raise RuntimeSetupError("this GPU has no native bf16 (PyTorch would emulate it, without the "
                                    "tensor cores' speed); use --precision fp16 (with loss scaling) or fp32")
        return name
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The mixed-precision context for forward passes (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (see the module docstring); disabled (a pass-through) otherwise.

    bf16 needs none: it has fp32's exponent range. The scaler steps our AdamW like any torch
    optimizer: it unscales the gradients of the optimizer's param_groups in place, and on an
    overflow does not call AdamW.step at all, so AdamW's step counts (its bias correction) count
    only the steps taken.
    """
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


class CompiledOrEager:
    """Calls a torch.compile'd module, falling back to the eager module if compilation fails.

    Compilation happens lazily at the first call, so that is where a failure shows up. Not an
    nn.Module itself, so holding one does not change the owner's parameter names.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self._compiled = torch.compile(module, dynamic=True)
        self._failed = False

    def __call__(self, *args, **kwargs):
        if not self._failed:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 — any compiler failure means "run eagerly"
                self._failed = True
                warnings.warn(f"torch.compile failed ({err.__class__.__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''}); "
                              f"running without compilation", stacklevel=2)
        return self.module(*args, **kwargs)
