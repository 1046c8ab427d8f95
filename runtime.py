"""Run-time device choices shared by train.py, sample.py, bench.py and export.py: which device and dtype `auto`
means here, autocast, TF32, torch.compile with its eager fallback, and the device's peak FLOP/s for MFU.
Nothing is probed at import: every choice is made when a script asks.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any

import torch

from configurator import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Dense bf16 tensor-core peak (FLOP/s, no sparsity) by device-name fragment, from the vendors' data sheets.
PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "H800": 989.4e12, "A100": 312e12, "A800": 312e12,
              "L40S": 362.05e12, "A10G": 70e12, "L4": 121e12, "RTX 4090": 165.2e12, "RTX 3090": 71e12}


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, else Apple MPS, else the CPU. A device named but not present is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (auto, cpu, cuda, cuda:N, mps)") from None
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(device.type)
    if available is not None and not available():
        raise UserError(f"device={name} but {device.type.upper()} is not available here")
    if device.type == "cpu" and device.index not in (None, 0):
        raise UserError(f"device={name}: the CPU is one device; use device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def memory_bytes(device: torch.device) -> int | None:
    """The device's memory: a GPU's, or the machine's RAM for the CPU; None where it cannot be told (MPS)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def check_fits(needed: int, device: torch.device, what: str, advice: str) -> None:
    """Refuse, before any allocation, what needs over twice the device's memory (estimates are rough: only what
    cannot possibly fit is refused)."""
    have = memory_bytes(device)
    if have is not None and needed > 2 * have:
        raise UserError(f"{what} needs about {needed / 2**30:,.0f} GiB, the device ({device}) has "
                        f"{have / 2**30:,.0f} GiB: {advice}")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()  # native bf16 (AVX512-BF16 / AMX / Arm BF16)
    return device.type == "mps"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a GPU that has it, else float16 there; float32 on the CPU and MPS."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if bf16_supported(device) else torch.float16
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}' (auto, {', '.join(DTYPES)})")
    if DTYPES[name] == torch.bfloat16 and not bf16_supported(device):
        raise UserError(f"dtype=bfloat16 but device {device} has no bfloat16 support: use dtype=float16 or float32")
    if DTYPES[name] == torch.float16 and device.type != "cuda":
        raise UserError(f"dtype=float16 needs a CUDA device (got {device}): use bfloat16 or float32")
    return DTYPES[name]


def enable_tf32(device: torch.device) -> None:
    if device.type == "cuda":  # tf32 tensor cores for any float32 matmuls that remain under autocast
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass: matmuls in dtype, weights and optimizer state stay float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def maybe_compile(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: Any,
                  regions: list[torch.nn.Module] | None = None) -> torch.nn.Module:
    """torch.compile the model and run one forward/backward to build it; if that fails, warn once and return
    the eager model. The trial runs under fork_rng and its gradients are dropped, so it changes no state.
    regions: submodules already compiled in place (Module.compile: a sharded model's blocks), tried through the
    model, and made eager again if that fails."""
    try:
        compiled = torch.compile(model) if regions is None else model
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), ctx:
            compiled(x, y, return_logits=False)[1].backward()  # as the step and the evaluations call it: one
            # graph for all (another call, e.g. with the logits, would compile a second graph before the first step)
    except torch.OutOfMemoryError:
        raise  # the batch does not fit: not a compiler problem, and eager would not fit either
    except Exception as e:  # noqa: BLE001 (any compiler failure: no C compiler, unsupported op, ...)
        warn_compile_failed(e, "running eager")
        compiled = model
        for region in regions or []:
            region._compiled_call_impl = None  # what Module.compile set: calls go to the eager forward again
    model.zero_grad(set_to_none=True)
    return compiled


def warn_compile_failed(e: Exception, instead: str) -> None:
    """One warning that torch.compile failed and what runs instead, with the first line of the reason."""
    reason = str(e).splitlines()[0][:200] if str(e) else ""
    warnings.warn(f"torch.compile failed, {instead}: {type(e).__name__}: {reason}", stacklevel=3)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_flops(device: torch.device | str) -> float | None:
    """The device's dense bf16 peak FLOP/s; None on a CPU, MPS, or a GPU not in PEAK_FLOPS."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in PEAK_FLOPS.items():
        if fragment in name:
            return peak
    return None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type

