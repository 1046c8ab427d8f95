"""FP8 matrix multiplies through torchao's float8 training: the check that the GPU and library support it, and the
conversion.

Its own module because it is one idea apart from the device facts (runtime.py): train.py and bench.py ask for it
with fp8=True, and parallel.py checks it before a model is built and converts the model before it is wrapped.
"""

from __future__ import annotations

import torch

import configurator
from configurator import UserError


def check_fp8(device: torch.device) -> None:
    """Refuse fp8=True, with one line, where it cannot run: without FP8 matrix multiplies (said first: installing
    torchao would not help), or without torchao."""
    if device.type != "cuda":
        raise UserError(f"fp8=True needs a CUDA GPU with FP8 matrix multiplies (H100, L4, RTX 40xx), not {device}")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise UserError(f"fp8=True needs FP8 matrix multiplies (compute capability 8.9 or later: H100, L4, RTX 40xx); "
                        f"{torch.cuda.get_device_name(device)} has {major}.{minor}")
    configurator.require("torchao", "fp8=True", install="torchao")


def to_float8(model: torch.nn.Module) -> None:
    """Swap the model's linear layers, in place, for torchao's Float8Linear: each matrix multiply of the forward
    and backward passes scales its operands to FP8 (one scale per tensor) and multiplies at twice the bf16 rate.
    The output head stays as it is (its logits feed the loss directly, and tied to the embedding it is also a
    lookup table), and so does any layer whose sizes are not multiples of 16 (FP8 matmuls need them). The weights
    and their names do not change: checkpoints are the same either way."""
    from torchao.float8 import convert_to_float8_training

    def eligible(module: torch.nn.Module, name: str) -> bool:
        return name != "lm_head" and module.in_features % 16 == 0 and module.out_features % 16 == 0

    convert_to_float8_training(model, module_filter_fn=eligible)
