"""Device, numeric precision and compilation: the hardware side of a run, decided in one place.

- device "auto" picks CUDA when there is a GPU, else the CPU;
- precision "auto" picks bf16 autocast where the hardware runs bf16 matrix products natively
  (GPUs from Ampere on; CPUs with AVX512-BF16 or AMX, where bf16 is about 4x faster than fp32)
  and fp32 elsewhere (a CPU without them emulates bf16, far slower than fp32). Weights and the optimizer stay fp32 (mixed precision): only the matrix
  products run in the low precision. fp16 also needs a GradScaler, since small fp16 gradients
  underflow to zero;
- `--compile` wraps the encoder in torch.compile and falls back to eager with a warning where
  compilation fails (on a CPU it rarely pays: see SPEC.md's measurements).
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


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeSetupError("this GPU has no bf16 support; use --precision fp16 or fp32")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The mixed-precision context for forward passes (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16; disabled (a pass-through) otherwise."""
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
