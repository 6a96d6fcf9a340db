"""Device and precision choices shared by training, sampling and evaluation."""

from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def use_deterministic_algorithms(on: bool) -> None:
    """Deterministic kernels where PyTorch has them (a warning where it has none). On CUDA
    the attention backward and cuBLAS otherwise vary from run to run, so a run stopped and
    resumed differs from an uninterrupted one in the last bits; on the CPU they already agree.
    cuBLAS reads its workspace setting when its first handle is made, so set it first."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on, warn_only=True)


def resolve_device(device: str | torch.device = "auto", key: str = "device") -> torch.device:
    """``auto`` means CUDA when present, else CPU; asking for CUDA without one is an error
    that names ``key``, the setting the value came from."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{key} is {device!r} but no CUDA GPU is visible; "
                         f"use {key}=auto or cpu.")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"{key} must be auto, cpu or cuda[:N]; got {device!r}.")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), the instructions
    oneDNN's bf16 convolutions need. Without them autocast's bf16 convolutions fall back to
    PyTorch's reference kernels: on a 2-core AVX2 EPYC the MNIST CPU recipe trained at 8 images/s
    in bf16 against 89 in fp32 (experiments/mnist_cpu/README.md); with AVX512-BF16 (Zen 4)
    bf16 trained the attention UNet 1.4-1.6x faster than fp32 (experiments/bench)."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, name, None)
        if check is not None and check():
            return True
    return False


CPU_BF16_ENV = "DIFFUSION_CPU_BF16"
"""``0`` keeps ``precision=auto`` at fp32 on every CPU (the same numbers on every machine, as
the test suite runs), ``1`` makes it bf16 on any CPU; unset, the CPU decides
(:func:`cpu_has_native_bf16`)."""


def cpu_auto_bf16() -> bool:
    """Whether ``precision=auto`` is bf16 on this CPU: ``$DIFFUSION_CPU_BF16`` where set, else
    whether the CPU has native bf16 arithmetic."""
    setting = os.environ.get(CPU_BF16_ENV, "").strip()
    if not setting:
        return cpu_has_native_bf16()
    if setting not in ("0", "1"):
        raise ValueError(f"{CPU_BF16_ENV} must be 0 (fp32) or 1 (bf16), or unset to let the "
                         f"CPU decide; got {setting!r}.")
    return setting == "1"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 autocast on CUDA and on CPUs with native bf16 arithmetic
    (:func:`cpu_auto_bf16`), plain fp32 on other CPUs. fp16 (autocast with a
    GradScaler) works on both: torch has fp16 CPU kernels and a CPU GradScaler."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16"
        return "bf16" if device.type == "cpu" and cpu_auto_bf16() else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """Autocast context for a resolved precision; master weights stay fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200)`` or ``the CPU (2 threads)``: where work runs, in words."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"the CPU ({torch.get_num_threads()} threads)"
    return str(device)
