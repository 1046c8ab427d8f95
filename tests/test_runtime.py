"""runtime.py on the CPU: what `auto` means for the device and dtype and the one-line refusals of a bad one, the
memory check, autocast, the eager fallback when torch.compile fails (no real compile: a failing compiler is
planted), and the device facts behind MFU. A GPU is stood in for by patching torch.cuda's answers, never used."""

from __future__ import annotations

import contextlib
import functools
import re

import pytest
import torch

import evaluate
import runtime
from configurator import UserError
from conftest import tiny_gpt


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize(("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"),
                                                        (False, False, "cpu")])
def test_auto_device_is_cuda_then_mps_then_the_cpu(monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool,
                                                   expected: str):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert runtime.resolve_device("auto") == torch.device(expected)


@pytest.mark.usefixtures("no_gpu")
def test_a_named_device_that_is_here_is_taken_as_named():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("cpu:0") == torch.device("cpu", 0)


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize(("name", "message"), [
    ("gpu", "unknown device 'gpu' (auto, cpu, cuda, cuda:N, mps)"),
    ("cuda", "device=cuda but CUDA is not available here"),
    ("cuda:1", "device=cuda:1 but CUDA is not available here"),
    ("mps", "device=mps but MPS is not available here"),
    ("cpu:1", "device=cpu:1: the CPU is one device; use device=cpu")])
def test_a_device_that_is_not_here_is_one_line(name: str, message: str):
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        runtime.resolve_device(name)


def test_a_cuda_index_past_the_machine_s_gpus_is_one_line(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"^device=cuda:2 but this machine has 2 CUDA device\(s\)$"):
        runtime.resolve_device("cuda:2")


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_dtype_is_bfloat16_on_a_gpu_that_has_it_else_float16(monkeypatch: pytest.MonkeyPatch, bf16: bool,
                                                                  expected: torch.dtype):
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: bf16)
    assert runtime.resolve_dtype("auto", torch.device("cuda")) == expected


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_auto_dtype_is_float32_off_cuda_even_with_bfloat16(monkeypatch: pytest.MonkeyPatch, device: str):
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: True)
    assert runtime.resolve_dtype("auto", torch.device(device)) == torch.float32


def test_a_dtype_named_is_that_dtype(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: True)
    cpu = torch.device("cpu")
    assert runtime.resolve_dtype("float32", cpu) == torch.float32
    assert runtime.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert runtime.resolve_dtype("float16", torch.device("cuda")) == torch.float16


@pytest.mark.parametrize(("name", "bf16", "message"), [
    ("fp16", True, r"^unknown dtype 'fp16' \(auto, float32, bfloat16, float16\)$"),
    ("bfloat16", False, r"^dtype=bfloat16 but device cpu has no bfloat16 support: use dtype=float16 or float32$"),
    ("float16", True, r"^dtype=float16 needs a CUDA device \(got cpu\): use bfloat16 or float32$")])
def test_a_dtype_the_device_cannot_run_is_one_line(monkeypatch: pytest.MonkeyPatch, name: str, bf16: bool,
                                                   message: str):
    monkeypatch.setattr(runtime, "bf16_supported", lambda device: bf16)
    with pytest.raises(UserError, match=message):
        runtime.resolve_dtype(name, torch.device("cpu"))


def test_the_cpu_s_memory_is_the_machine_s_ram():
    with open("/proc/meminfo", encoding="ascii") as f:
        (total_kb,) = [int(line.split()[1]) for line in f if line.startswith("MemTotal:")]
    assert runtime.memory_bytes(torch.device("cpu")) == total_kb * 1024


def test_check_fits_refuses_only_what_needs_over_twice_the_memory(monkeypatch: pytest.MonkeyPatch):
    cpu = torch.device("cpu")
    have = runtime.memory_bytes(cpu)
    assert have is not None and have > 0
    runtime.check_fits(have, cpu, "the model", "use a smaller preset")
    runtime.check_fits(2 * have, cpu, "the model", "use a smaller preset")  # rough estimates: refused only above
    with pytest.raises(UserError, match=r"^the model needs about [\d,]+ GiB, the device \(cpu\) has [\d,]+ GiB: use a "
                                        r"smaller preset$"):
        runtime.check_fits(2 * have + 1, cpu, "the model", "use a smaller preset")
    monkeypatch.setattr(runtime, "memory_bytes", lambda device: 4 * 2**30)
    with pytest.raises(UserError, match=r"needs about 9 GiB, the device \(cpu\) has 4 GiB"):
        runtime.check_fits(9 * 2**30, cpu, "the model", "use a smaller preset")


def test_check_fits_passes_where_the_memory_cannot_be_told():
    mps = torch.device("mps")  # no call reaches MPS: memory_bytes does not ask it
    assert runtime.memory_bytes(mps) is None
    runtime.check_fits(2**80, mps, "the model", "use a smaller preset")


def test_autocast_is_a_no_op_in_float32_and_bfloat16_matmuls_otherwise():
    cpu = torch.device("cpu")
    a = torch.randn(4, 8)
    b = torch.randn(8, 3)
    with runtime.autocast(cpu, torch.float32):
        plain = a @ b
    assert plain.dtype == torch.float32 and torch.equal(plain, a @ b)
    with runtime.autocast(cpu, torch.bfloat16):
        mixed = a @ b
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed, a.bfloat16() @ b.bfloat16())  # the same matmul, in bfloat16
    assert (a @ b).dtype == torch.float32  # and off again after the block


def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()  # (B, T) inputs and targets


def test_a_compile_that_works_is_returned_and_its_trial_changes_no_state(monkeypatch: pytest.MonkeyPatch):
    model = tiny_gpt()
    x, y = tiny_batch()
    calls = []

    def fake_compile(module: torch.nn.Module) -> object:  # stands in for torch.compile: a callable over the model
        def compiled(*args: torch.Tensor, **kwargs: bool) -> tuple[torch.Tensor, torch.Tensor]:
            calls.append(torch.rand(1))  # draws from the RNG, as dropout would
            return module(*args, **kwargs)
        return compiled

    monkeypatch.setattr(runtime.torch, "compile", fake_compile)
    rng = torch.random.get_rng_state()
    got = runtime.maybe_compile(model, x, y, runtime.autocast(torch.device("cpu"), torch.float32))
    assert got is not model and len(calls) == 1  # the trial ran through the compiled callable
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


class FixedBatches:
    """One evaluation batch, as EvalBatches hands them out."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.batch, self.n_batches = (x, y), 1

    def get(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch


def test_the_trial_compiles_the_one_graph_that_training_and_evaluation_run(monkeypatch: pytest.MonkeyPatch):
    # dynamo without inductor (backend="eager") counts the graphs it captures, cheaply on the CPU
    from torch._dynamo.utils import counters
    monkeypatch.setattr(runtime.torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    model = tiny_gpt().train()  # as train.py builds it
    x, y = tiny_batch()
    compiled = runtime.maybe_compile(model, x, y, runtime.autocast(torch.device("cpu"), torch.float32))
    assert counters["stats"]["unique_graphs"] == 1
    compiled(x, y, return_logits=False)[1].backward()  # step.Step's call
    evaluate.estimate_loss(compiled, {"val": FixedBatches(x, y)}, torch.device("cpu"), contextlib.nullcontext(),
                           train_graph=True)  # train.py's evaluations of a compiled model without dropout
    assert counters["stats"]["unique_graphs"] == 1  # no second compilation before or after the first step
    torch._dynamo.reset()


def test_a_compile_that_fails_warns_once_and_runs_eager(monkeypatch: pytest.MonkeyPatch):
    model = tiny_gpt()
    x, y = tiny_batch()

    def no_compiler(*args: torch.Tensor, **kwargs: bool) -> None:
        raise RuntimeError("no C compiler found\nsecond line of the reason")

    monkeypatch.setattr(runtime.torch, "compile", lambda module: no_compiler)
    rng = torch.random.get_rng_state()
    with pytest.warns(UserWarning, match=r"^torch.compile failed, running eager: RuntimeError: no C compiler found$") \
            as warned:
        got = runtime.maybe_compile(model, x, y, runtime.autocast(torch.device("cpu"), torch.float32))
    assert got is model and len(warned) == 1
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_compiled_regions_that_fail_are_made_eager_again():
    model = tiny_gpt()
    x, y = tiny_batch()
    with torch.no_grad():
        eager_loss = model(x, y)[1]
    block = model.transformer.h[0]

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported op")

    block._compiled_call_impl = failing  # where Module.compile puts a region's compiled forward
    with pytest.warns(UserWarning, match=r"torch.compile failed, running eager: RuntimeError: unsupported op"):
        got = runtime.maybe_compile(model, x, y, runtime.autocast(torch.device("cpu"), torch.float32),
                                    regions=[block])
    assert got is model and block._compiled_call_impl is None
    with torch.no_grad():
        assert torch.equal(got(x, y)[1], eager_loss)


def test_out_of_memory_in_the_trial_is_not_taken_for_a_compiler_failure(monkeypatch: pytest.MonkeyPatch):
    def out_of_memory(*args: torch.Tensor, **kwargs: bool) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runtime.torch, "compile", lambda module: out_of_memory)
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate"):
        runtime.maybe_compile(tiny_gpt(), *tiny_batch(), runtime.autocast(torch.device("cpu"), torch.float32))


def test_a_cpu_has_no_peak_flops_and_is_named_cpu():
    assert runtime.peak_flops("cpu") is None  # so a CPU run shows no MFU
    assert runtime.peak_flops(torch.device("cpu")) is None
    assert runtime.device_name(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize(("name", "expected"), [
    ("NVIDIA H100 80GB HBM3", 989.4e12),  # NVIDIA's H100 SXM data sheet: 989.4 TFLOP/s dense BF16
    ("NVIDIA A100-SXM4-80GB", 312e12),  # NVIDIA's A100 data sheet: 312 TFLOP/s dense BF16
    ("Some Future GPU", None)])
def test_a_gpu_s_peak_flops_come_from_its_name(monkeypatch: pytest.MonkeyPatch, name: str, expected: float | None):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert runtime.peak_flops("cuda") == expected
    assert runtime.device_name(torch.device("cuda")) == name


def test_tf32_is_turned_on_for_cuda_only():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:  # torch's backend flags are not plain attributes: monkeypatch cannot restore them
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        runtime.enable_tf32(torch.device("cpu"))
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        runtime.enable_tf32(torch.device("cuda"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
