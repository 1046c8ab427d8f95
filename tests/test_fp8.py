"""fp8.py: fp8=True is refused in one line where it cannot run (no CUDA GPU, a GPU without FP8 matrix multiplies,
no torchao). A GPU is stood in for by patching torch.cuda's answers. The conversion itself needs torchao and an FP8
GPU: bench.py --fp8=True measures it on one."""

from __future__ import annotations

import sys

import pytest
import torch

import fp8
from configurator import UserError


def test_fp8_on_the_cpu_is_one_line():
    with pytest.raises(UserError, match=r"^fp8=True needs a CUDA GPU with FP8 matrix multiplies "
                                        r"\(H100, L4, RTX 40xx\), not cpu$"):
        fp8.check_fp8(torch.device("cpu"))


def test_fp8_on_a_gpu_without_fp8_matmuls_is_one_line(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(UserError, match=r"^fp8=True needs FP8 matrix multiplies \(compute capability 8\.9 or later: "
                                        r"H100, L4, RTX 40xx\); NVIDIA A100-SXM4-80GB has 8\.0$"):
        fp8.check_fp8(torch.device("cuda"))


@pytest.mark.parametrize("capability", [(8, 9), (9, 0)])
def test_fp8_on_an_fp8_gpu_needs_only_torchao(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao fails, as where it is not installed
    with pytest.raises(UserError, match=r"^fp8=True needs the torchao package: pip install torchao$"):
        fp8.check_fp8(torch.device("cuda"))
