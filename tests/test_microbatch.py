"""micro_batch: the sizes it accepts, the search for the largest micro-batch that fits (with injected
out-of-memory errors, on the CPU), the probe leaving the model as it found it, and runs split into other
micro-batches training on the same tokens, resumed exactly across a change of micro-batch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import accounting
import checkpoint
import configurator
import microbatch
import optim
import train
from configurator import UserError
from conftest import CharData, tiny_flags, tiny_gpt
from dataloader import Batches, EvalBatches
from microbatch import BatchPlan
from parallel import Layout

# ---------------------------------------------------------------------------------------------- sizes


def test_divisors_are_every_divisor_ascending():
    assert microbatch.divisors(12) == [1, 2, 3, 4, 6, 12]
    assert microbatch.divisors(1) == [1]
    assert microbatch.divisors(49) == [1, 7, 49]
    assert microbatch.divisors(480) == [d for d in range(1, 481) if 480 % d == 0]


def test_micro_batch_empty_is_batch_size_a_number_itself_auto_none():
    assert microbatch.parse("", 12, 480) == 12
    assert microbatch.parse("16", 12, 480) == 16
    assert microbatch.parse(" Auto ", 12, 480) is None
    assert microbatch.parse("7", 12, None) == 7  # the share not known yet: not checked


@pytest.mark.parametrize(("spec", "expected"), [
    ("7", r"^micro_batch=7 does not divide the 24 sequences each process takes a step .* one of 1, 2, 3, 4, 6, 8, "
          r"12, 24$"),
    ("0", "^micro_batch must be auto, a whole number of sequences or empty, got '0'$"),
    ("half", "^micro_batch must be auto, a whole number of sequences or empty, got 'half'$"),
    ("²", "^micro_batch must be auto, a whole number of sequences or empty, got '²'$"),  # a digit to isdigit
    ("2.5", "^micro_batch must be auto"),
])
def test_a_micro_batch_that_cannot_split_the_share_is_refused(spec: str, expected: str):
    with pytest.raises(UserError, match=expected):
        microbatch.parse(spec, 12, 24)


def test_micro_batch_is_a_number_or_a_word_in_flags_and_config_files(tmp_path: Path):
    config = tmp_path / "config.py"
    config.write_text("micro_batch = 4\n")
    assert configurator.load(train.TrainConfig, [str(config)]).micro_batch == 4
    assert configurator.load(train.TrainConfig, ["--micro_batch=auto"]).micro_batch == "auto"
    assert microbatch.parse(configurator.load(train.TrainConfig, ["--micro_batch=4"]).micro_batch, 12, 24) == 4
    with pytest.raises(UserError, match=r"^setting .micro_batch. cannot be None \(expected int \| str\)$"):
        configurator.load(train.TrainConfig, [str(config), "--micro_batch=None"])


def test_the_run_refuses_a_micro_batch_that_does_not_divide_its_share(char_data: CharData, tmp_path: Path):
    with pytest.raises(UserError, match="micro_batch=3 does not divide the 8 sequences"):
        train.main(tiny_flags(char_data, tmp_path / "out", micro_batch=3))


# ---------------------------------------------------------------------------------------------- the search


def linear(base: int, per: int, oom_above: int | None = None) -> tuple[Any, list[int]]:
    """A fake measure: peak = base + per * size, out of memory (None) above oom_above; and the sizes it saw."""
    seen: list[int] = []

    def measure(size: int) -> int | None:
        seen.append(size)
        return None if oom_above is not None and size > oom_above else base + per * size

    return measure, seen


@pytest.mark.parametrize(("share", "budget", "expected"), [
    (480, 1000 + 100 * 47, 40),  # 48 would need 5800 > 5700
    (480, 10**9, 480),  # all of it fits: one micro-step
    (24, 1000 + 100 * 5, 4),
    (7, 1000 + 100 * 6, 1),  # 7 does not fit, and it is the only other divisor
])
def test_search_finds_the_largest_divisor_within_budget_in_few_probes(share: int, budget: int, expected: int):
    measure, seen = linear(1000, 100)
    size, probes = microbatch.search(microbatch.divisors(share), measure, budget)
    assert size == expected
    assert [p.size for p in probes] == seen and len(seen) <= 4 and expected in seen
    fitting = [d for d in microbatch.divisors(share) if 1000 + 100 * d <= budget]
    assert size == max(fitting)  # the oracle: every divisor's peak known


def test_search_recovers_from_out_of_memory_the_line_did_not_predict():
    # the line says up to 90 fit, but the device runs out above 30 (fragmentation, another process)
    measure, seen = linear(1000, 100, oom_above=30)
    size, probes = microbatch.search(microbatch.divisors(480), measure, 1000 + 100 * 90)
    assert size == 30
    assert any(p.peak is None for p in probes) and str(probes[-1]) != ""
    assert len(seen) <= 8 and len(set(seen)) == len(seen)  # bisects, never tries a size twice


def test_search_says_none_when_not_even_one_fits():
    measure, _ = linear(1000, 100, oom_above=0)
    assert microbatch.search([1, 2, 4], measure, 10**9) == (None, [microbatch.Probe(1, None)])
    measure, _ = linear(1000, 100)
    assert microbatch.search([1, 2, 4], measure, 1050)[0] is None  # within memory, but over budget


def test_probes_read_as_size_and_peak():
    assert str(microbatch.Probe(24, 3 * 2**30)) == "24 (3.0 GiB)"
    assert str(microbatch.Probe(48, None)) == "48 (out of memory)"


# ---------------------------------------------------------------------------------------------- the probe


class FakeMemory:
    """A device's memory as find reads it, on the CPU: the peak grows with the last micro-batch the model saw."""

    def __init__(self, capacity: int) -> None:
        self.size = 0
        self.total = capacity

    def reset(self) -> None:
        self.size = 0

    def peak(self) -> int:
        return 1000 + 100 * self.size

    def capacity(self) -> int:
        return self.total


def test_find_steps_the_real_model_and_leaves_no_trace(monkeypatch: pytest.MonkeyPatch):
    model = tiny_gpt(dropout=0.1).train()
    optimizer = optim.build(model, "adamw", 1e-2, 0.1, (0.9, 0.95), "cpu")
    before = [p.detach().clone() for p in model.parameters()]
    memory = FakeMemory(capacity=10**6)  # room for hundreds by the line; the device runs out above 3
    forward = model.forward

    def out_of_memory_above_3(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if x.shape[0] > 3:
            raise torch.OutOfMemoryError("injected")
        memory.size = x.shape[0]
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model, "forward", out_of_memory_above_3)
    rng = torch.get_rng_state()
    size, probes, budget = microbatch.find(model, optimizer, torch.autocast("cpu", enabled=False), 12, 64, memory,
                                           reserved=500)
    assert size == 3 and budget == int(microbatch.HEADROOM * 10**6) - 500
    assert {p.size for p in probes if p.peak is None} and all(p.size in (1, 2, 3, 4, 6, 12) for p in probes)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the probe's updates undone
    assert not optimizer.state and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # dropout and the random tokens drew from a fork


def test_find_says_none_when_one_sequence_runs_out_of_memory(monkeypatch: pytest.MonkeyPatch):
    model = tiny_gpt()
    optimizer = optim.build(model, "adamw", 1e-2, 0.1, (0.9, 0.95), "cpu")

    def always(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("injected")

    monkeypatch.setattr(model, "forward", always)
    size, probes, _ = microbatch.find(model, optimizer, torch.autocast("cpu", enabled=False), 12, 64,
                                      FakeMemory(10**6))
    assert size is None and probes == [microbatch.Probe(1, None)]


@pytest.mark.parametrize("message", ["CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)",
                                     "cuDNN error: out of memory"])
def test_a_librarys_allocation_failure_is_a_miss_too(monkeypatch: pytest.MonkeyPatch, message: str):
    model = tiny_gpt()
    optimizer = optim.build(model, "adamw", 1e-2, 0.1, (0.9, 0.95), "cpu")
    forward = model.forward

    def fails_above_3(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if x.shape[0] > 3:
            raise RuntimeError(message)
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model, "forward", fails_above_3)
    size, _, _ = microbatch.find(model, optimizer, torch.autocast("cpu", enabled=False), 12, 64, FakeMemory(10**6))
    assert size == 3


def test_another_error_in_a_probe_is_not_taken_for_memory(monkeypatch: pytest.MonkeyPatch):
    model = tiny_gpt()
    optimizer = optim.build(model, "adamw", 1e-2, 0.1, (0.9, 0.95), "cpu")
    before = [p.detach().clone() for p in model.parameters()]
    forward = model.forward

    def broken_above_3(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if x.shape[0] > 3:
            raise RuntimeError("shape mismatch")  # a bug, not a size: it must surface
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model, "forward", broken_above_3)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        microbatch.find(model, optimizer, torch.autocast("cpu", enabled=False), 12, 64, FakeMemory(10**6))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # put back all the same


def test_auto_on_the_cpu_keeps_batch_size_and_says_so(char_data: CharData, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]):
    auto = train.main(tiny_flags(char_data, tmp_path / "auto", micro_batch="auto"))
    assert "micro_batch=auto: on cpu the micro-batch stays batch_size=8" in capsys.readouterr().out
    assert auto["train_loss"] == train.main(tiny_flags(char_data, tmp_path / "fixed"))["train_loss"]


def test_auto_is_refused_with_sharded_weights():
    layout = Layout(0, 0, 2, torch.device("cpu"), True, tp=2, mesh=object())  # any mesh: sharded
    with pytest.raises(UserError, match=r"^micro_batch=auto: the probe needs whole weights"):
        microbatch.check("auto", 12, 40, layout)
    microbatch.check("auto", 12, 40, Layout(0, 0, 2, torch.device("cpu"), True))  # DDP: whole weights, probed


def test_the_batch_plan_cuts_a_step_as_the_recipe_says():
    # 6 sequences a batch, 4 batches a step: 24 sequences of 16 tokens over 2 data-parallel shares of 12, each in
    # micro-batches of 3: 4 micro-steps. Share 1 starts a step at micro-batch 1, then 3, 5, 7 (stride 2)
    plan = BatchPlan(batch_size=6, accumulation=4, block_size=16, dp_world=2, dp_rank=1, micro=3)
    assert (plan.share, plan.micro_steps, plan.tokens_per_iter) == (12, 4, 24 * 16)
    assert plan.first_micro_batch(0) == 1
    # after 2 steps (8 batches of 6 = 48 sequences = 16 micro-batches of 3) the next step starts at 16 + 1
    assert plan.first_micro_batch(8) == 17
    plan.check_start(8)  # 48 sequences: a whole number of micro-batches of 3
    with pytest.raises(UserError, match=r"^the checkpoint stopped after 6 sequences of data, not a whole number of "
                                        r"micro-batches of 4"):
        BatchPlan(6, 4, 16, 1, 0, micro=4).check_start(1)


# ---------------------------------------------------------------------------------------------- the same tokens


def test_batches_of_any_size_read_the_recipes_stream_of_sequences(char_data: CharData):
    path = str(char_data.dir / "train.bin")
    recipe = Batches(path, "uint16", 16, 6, 100, seed=3)
    stream = torch.cat([recipe.read(k)[0] for k in range(4)])  # 24 sequences
    for micro in (1, 2, 3, 4, 8, 12, 24):
        split = Batches(path, "uint16", 16, micro, 100, seed=3, group=6)
        assert torch.equal(torch.cat([split.read(k)[0] for k in range(24 // micro)]), stream)
    evals = EvalBatches(path, "uint16", 16, 6, 100, max_batches=3)
    split_evals = EvalBatches(path, "uint16", 16, 4, 100, max_batches=3, group=6)
    assert split_evals.starts == evals.starts  # 3 batches of the recipe's 6, read 4 at a time


def test_other_micro_batches_train_on_the_same_tokens(char_data: CharData, tmp_path: Path):
    common = {"batch_size": 6, "gradient_accumulation_steps": 2, "eval_interval": 4, "max_iters": 4}
    whole = train.main(tiny_flags(char_data, tmp_path / "whole", **common))
    for micro in (1, 4, 12):
        split = train.main(tiny_flags(char_data, tmp_path / f"micro{micro}", micro_batch=micro, **common))
        assert [it for it, _ in split["train_loss"]] == [1, 2, 3, 4]
        assert np.allclose([v for _, v in split["train_loss"]], [v for _, v in whole["train_loss"]], rtol=1e-5)
        assert np.allclose(split["eval"][-1], whole["eval"][-1], rtol=1e-5)  # the same val tokens too


def test_a_run_resumes_exactly_with_another_micro_batch(char_data: CharData, tmp_path: Path):
    common = {"batch_size": 4, "gradient_accumulation_steps": 3, "eval_interval": 2, "always_save_checkpoint": True}
    straight = train.main(tiny_flags(char_data, tmp_path / "straight", max_iters=4, **common))
    out_dir = tmp_path / "resumed"
    train.main(tiny_flags(char_data, out_dir, max_iters=2, micro_batch=6, **common))
    assert checkpoint.read(str(out_dir)).header.batch_pos == 6  # in the recipe's batches of 4, whatever the split
    resumed = train.main(tiny_flags(char_data, out_dir, max_iters=4, micro_batch=2, init_from="resume", **common))
    assert np.allclose([v for _, v in resumed["train_loss"]], [v for _, v in straight["train_loss"][2:]], rtol=1e-5)


def test_dry_run_tells_the_split(char_data: CharData, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    train.main(tiny_flags(char_data, tmp_path / "out", dry_run=True, micro_batch=2, gradient_accumulation_steps=2))
    out = capsys.readouterr().out
    assert "tokens per iteration: 512 = batch_size 8 x block_size 32 x gradient_accumulation_steps 2" in out
    assert "micro-batches of 2 sequences: 8 micro-steps per data-parallel share" in out
    assert re.search(r"activations of one micro-batch of 2 ", out)
    config = tiny_gpt().config
    auto = accounting.dry_run(config, 8, 2, 1, "auto", torch.float32, False)
    assert "micro_batch=auto: the micro-batch is probed when the run starts" in auto
    # a tensor-parallel pair is one data-parallel share: 4 x 4 sequences, in micro-batches of 8, 2 micro-steps
    split = accounting.dry_run(config, 4, 4, 1, 8, torch.float32, False)
    assert "(4 per data-parallel share x 1 share(s))" in split and "8 sequences: 2 micro-steps" in split


def test_a_resume_that_cannot_start_on_a_micro_batch_is_refused(char_data: CharData, tmp_path: Path):
    out_dir = tmp_path / "out"
    train.main(tiny_flags(char_data, out_dir, batch_size=4, gradient_accumulation_steps=3, max_iters=1,
                          eval_interval=1))  # stopped after 12 sequences
    with pytest.raises(UserError, match=r"^the checkpoint stopped after 12 sequences of data, not a whole number of "
                                        r"micro-batches of 8: resume with the gradient_accumulation_steps"):
        train.main(tiny_flags(char_data, out_dir, batch_size=4, gradient_accumulation_steps=4, micro_batch=8,
                              max_iters=2, init_from="resume"))

