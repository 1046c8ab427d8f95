"""step.py: one optimizer step over accumulated micro-batches (as one batch of them all), the update skipped when
the loss or the gradients are not finite, the watchdog that stops a diverging run, and what keeps a CUDA graph
from capturing the step."""

from __future__ import annotations

import contextlib

import pytest
import torch

import optim
import step
from configurator import UserError
from conftest import tiny_gpt
from model import GPT

CPU = torch.device("cpu")


class ListBatches:
    """Batch k is the k-th of a list (the last one again past its end); records the numbers asked for."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches
        self.asked: list[int] = []

    def get(self, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        self.asked.append(k)
        return self.batches[min(k, len(self.batches) - 1)]


def random_batch(seed: int, rows: int = 2, T: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 64, (rows, T + 1), generator=torch.Generator().manual_seed(seed))
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()  # as dataloader.Batches gives them


def model_and_optimizer(**optimizer_kwargs: object) -> tuple[GPT, torch.optim.Optimizer]:
    model = tiny_gpt(block_size=8).train()
    optimizer = optim.adamw(model, 0.1, 1e-2, (0.9, 0.95), "cpu")
    if optimizer_kwargs:  # the same groups, stepped another way (a GPU's fused AdamW runs on CPUs too)
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
        optimizer = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), **optimizer_kwargs)
    return model, optimizer


def plain_step(model: GPT, optimizer: torch.optim.Optimizer, data: ListBatches, accum: int, stride: int = 1,
               grad_clip: float = 1.0) -> step.Step:
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return step.Step(model, optimizer, scaler, contextlib.nullcontext(), data, accum, stride, grad_clip)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_rank_reads_every_world_th_batch():
    # rank 1 of 2 processes, 3 micro-steps per iteration from global batch position 12: batches 12 + m * 2 + 1,
    # and the next iteration's first (12 + 3 * 2 + 1 = 19) read ahead while the device works
    model, optimizer = model_and_optimizer()
    data = ListBatches([random_batch(k) for k in range(20)])
    _, _, following = plain_step(model, optimizer, data, accum=3, stride=2)(13, data.get(13, CPU))
    assert data.asked == [13, 15, 17, 19]
    assert torch.equal(following[0], random_batch(19)[0])


def test_accumulated_micro_steps_update_as_one_batch_of_them_all():
    # two micro-batches of 2 rows, each loss divided by 2: the gradient of the mean loss over the 4 rows
    halves = [random_batch(1), random_batch(2)]
    whole = (torch.cat([halves[0][0], halves[1][0]]), torch.cat([halves[0][1], halves[1][1]]))
    accumulated, opt_a = model_and_optimizer()
    one_batch, opt_b = model_and_optimizer()
    loss_a, applied, _ = plain_step(accumulated, opt_a, ListBatches(halves), accum=2)(0, halves[0])
    loss_b, _, _ = plain_step(one_batch, opt_b, ListBatches([whole]), accum=1)(0, whole)
    assert bool(applied)
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6)  # the mean loss of the same rows
    after = one_batch.state_dict()
    for name, value in accumulated.state_dict().items():
        torch.testing.assert_close(value, after[name], rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in accumulated.parameters())  # cleared for the next step


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
@pytest.mark.parametrize("poison", ["nan_loss", "inf_gradient", "none"])
def test_apply_update_skips_an_update_that_is_not_finite(fused: bool, grad_clip: float, poison: str):
    # the fused AdamW skips inside its kernel (told by found_inf); the others are not called
    model, optimizer = model_and_optimizer(fused=True) if fused else model_and_optimizer()
    x, y = random_batch(0)
    loss = model(x, y)[1]
    loss.backward()
    if poison == "inf_gradient":
        model.lm_head.weight.grad[0, 0] = float("inf")
    if poison == "nan_loss":
        loss = loss * float("nan")
    before = weights(model)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    applied = step.apply_update(model, optimizer, scaler, loss.detach(), grad_clip)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert bool(applied) is (poison == "none")
    assert bool(changed) is (poison == "none")
    assert getattr(optimizer, "found_inf", None) is None  # not left behind for a later step


def test_the_watchdog_says_what_was_skipped_and_stops_a_run_of_skipped_updates(capsys: pytest.CaptureFixture[str]):
    watchdog = step.Watchdog(CPU, max_skipped=3, distributed=False, master=True, checkpoint_path="out/ckpt.pt")
    for applied in (False, True, False, False):  # an applied update ends a run of skipped ones
        watchdog.record(torch.tensor(applied))
    watchdog.check(iter_num=4)
    assert capsys.readouterr().out == ("iter 4: 3 update(s) skipped since the last log line: the loss or the "
                                       "gradient norm was NaN or inf\n")
    watchdog.record(torch.tensor(False))  # the third in a row
    with pytest.raises(UserError, match=r"^the loss or the gradient norm was NaN or inf for 3 steps in a row, up to "
                                        r"iter 5: training diverged\. .*out/ckpt\.pt holds the last evaluation's"):
        watchdog.check(iter_num=5)
    assert capsys.readouterr().out == ("iter 5: 1 update(s) skipped since the last log line: the loss or the "
                                       "gradient norm was NaN or inf\n")  # counted since the last check


def test_the_watchdog_of_another_rank_stops_silently_and_zero_means_never(capsys: pytest.CaptureFixture[str]):
    other = step.Watchdog(CPU, max_skipped=1, distributed=False, master=False, checkpoint_path="ckpt.pt")
    other.record(torch.tensor(False))
    with pytest.raises(UserError, match=r"^$"):  # rank 0 says why
        other.check(iter_num=1)
    never = step.Watchdog(CPU, max_skipped=0, distributed=False, master=True, checkpoint_path="ckpt.pt")
    for _ in range(50):
        never.record(torch.tensor(False))
    never.check(iter_num=50)
    assert capsys.readouterr().out.startswith("iter 50: 50 update(s) skipped")


@pytest.mark.parametrize(("device", "distributed", "dtype", "activation_checkpointing", "blocker"), [
    ("cuda", False, torch.bfloat16, False, None),
    ("cuda", False, torch.float32, False, None),
    ("cpu", False, torch.bfloat16, False, "no CUDA device (cpu)"),
    ("cuda", True, torch.bfloat16, False, "several processes"),
    ("cuda", False, torch.float16, False, "float16"),
    ("cuda", False, torch.bfloat16, True, "activation_checkpointing")])
def test_what_keeps_a_cuda_graph_from_capturing_the_step(device: str, distributed: bool, dtype: torch.dtype,
                                                         activation_checkpointing: bool, blocker: str | None):
    found = step.graph_blocker(torch.device(device), distributed, dtype, activation_checkpointing)
    if blocker is None:
        assert found is None
    else:
        assert found is not None and found.startswith(blocker)
