"""The micro-batch: how a process splits its share of a step's sequences (train.py's micro_batch), and the largest
micro-batch that fits the device's memory, found with a few probe steps before training (micro_batch=auto).

A step takes batch_size x gradient_accumulation_steps sequences over all processes: the recipe. Each process runs
its share in micro-batches of one size, which must divide the share; the number of micro-steps follows. The data
order does not depend on the size (dataloader.Batches), so neither do the tokens a step sees: only the memory
and the speed do.

The batch plan (BatchPlan) is that arithmetic computed once for a run: the micro-batch, the micro-steps, the tokens
per step and the micro-batch each process starts a step with; train.py, bench.py and accounting.py read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from configurator import UserError
from parallel import Layout

OUT_OF_MEMORY = ("out of memory", "ALLOC_FAILED")  # what cuBLAS's and cuDNN's allocation failures say
HEADROOM = 0.9  # the share of the device's memory a probed micro-batch may peak at: the compiled step, the
# allocator's fragmentation and evaluation's batches need some of the rest


def divisors(n: int) -> list[int]:
    """n's divisors, ascending."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def parse(spec: int | str, batch_size: int, share: int | None) -> int | None:
    """micro_batch's size: '' is batch_size, a number is itself (it must divide the process's share of a step's
    sequences, where that is known), 'auto' is None (to be found)."""
    text = str(spec).strip().lower()
    if text == "auto":
        return None
    if not text:
        return batch_size
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # isdigit alone takes '²'
        raise UserError(f"micro_batch must be auto, a whole number of sequences or empty, got '{spec}'")
    size = int(text)
    if share is not None and share % size:
        raise UserError(f"micro_batch={size} does not divide the {share} sequences each process takes a step "
                        f"(batch_size x gradient_accumulation_steps / processes); it could be one of "
                        f"{', '.join(map(str, divisors(share)))}")
    return size


@dataclass
class Probe:
    """One tried micro-batch: its peak memory in bytes, None where it ran out of memory."""

    size: int
    peak: int | None

    def __str__(self) -> str:
        return f"{self.size} ({'out of memory' if self.peak is None else f'{self.peak / 2**30:.1f} GiB'})"


def search(sizes: list[int], measure: Callable[[int], int | None], budget: int) -> tuple[int | None, list[Probe]]:
    """The largest of `sizes` (ascending) whose measured peak memory is within `budget`, and the probes that found
    it; None if not even the first fits. Memory grows linearly with the micro-batch: a line through the smallest
    and the largest fit so far says which size to try next, and after a miss the search bisects what is left,
    so that a few probes suffice."""
    probes: list[Probe] = []

    def fits(i: int) -> bool:
        probes.append(Probe(sizes[i], measure(sizes[i])))
        return probes[-1].peak is not None and probes[-1].peak <= budget

    if not fits(0):
        return None, probes
    lo, hi, missed = 0, len(sizes), False  # sizes[lo] fits; sizes[hi] and above do not (or are not tried)
    while hi - lo > 1:
        pick = predicted(sizes, probes, budget, lo, hi)
        if pick <= lo:
            break
        if missed:
            pick = min(pick, (lo + hi) // 2)
        if fits(pick):
            lo = pick
        else:
            hi, missed = pick, True
    return sizes[lo], probes


def predicted(sizes: list[int], probes: list[Probe], budget: int, lo: int, hi: int) -> int:
    """The index of the largest size below sizes[hi] that the line through the smallest and the largest fitting
    probes puts within budget (lo + 1 while only one has fitted: a second point to draw the line through)."""
    fitted = sorted((p.size, p.peak) for p in probes if p.peak is not None and p.peak <= budget)
    (s0, p0), (s1, p1) = fitted[0], fitted[-1]
    if s1 == s0:
        return lo + 1
    slope = (p1 - p0) / (s1 - s0)
    within = [i for i in range(lo + 1, hi) if p0 + slope * (sizes[i] - s0) <= budget]
    return within[-1] if within else lo


class CudaMemory:
    """A GPU's memory, as the probes read it: the peak allocated since a reset, and what this process could hold."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # what a probe that ran out left cached
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def capacity(self) -> int:
        """The bytes this process holds (its cache emptied) and the bytes free."""
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.device)
        return free + torch.cuda.memory_reserved(self.device)


def find(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ctx: Any, share: int, vocab_size: int,
         memory: Any, reserved: int = 0) -> tuple[int | None, list[Probe], int]:
    """The largest divisor of `share` that trains within HEADROOM of the device's memory (CudaMemory), less
    `reserved` bytes for what the probes do not hold (DDP's gradient buckets), measured by one training step of
    random tokens at each size tried, in eager mode (a compiled step keeps no more). Returns it (None: not even 1
    fits), the probes, and the budget. The weights, the optimizer's state (empty: the probes run before a
    checkpoint's is restored) and the random state are left as they were."""
    params = list(model.parameters())
    device, T = params[0].device, model.config.block_size
    saved = [p.detach().to("cpu", copy=True) for p in params]

    def measure(size: int) -> int | None:
        memory.reset()
        try:
            x, y = torch.randint(vocab_size, (2, size, T), device=device)
            with ctx:
                loss = model(x, y, return_logits=False)[1]
            loss.backward()
            optimizer.step()  # its state, made by the first step, is part of every later step's memory
            return memory.peak()
        except torch.OutOfMemoryError:
            return None
        except RuntimeError as e:  # a library's workspace that could not be allocated says so in its own words
            if not any(words in str(e) for words in OUT_OF_MEMORY):
                raise
            return None
        finally:
            optimizer.zero_grad(set_to_none=True)

    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if measure(1) is None:  # makes the optimizer's state before the probes are measured
                return None, [Probe(1, None)], 0
            budget = int(HEADROOM * memory.capacity()) - reserved
            size, probes = search(divisors(share), measure, budget)
    finally:
        optimizer.state.clear()
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return size, probes, budget


# ----------------------------------------------------------------------------------------------------------------
# the batch plan: a run's batch arithmetic, computed once


def share_of_step(batch_size: int, accumulation: int, dp_world: int) -> int:
    """The sequences each data-parallel share takes a step: the recipe's batch_size x gradient_accumulation_steps,
    divided among the shares."""
    return batch_size * accumulation // dp_world


@dataclass(frozen=True)
class BatchPlan:
    """How a step's sequences are cut: the recipe's batch_size x accumulation sequences of block_size tokens over
    every process, each data-parallel share (dp_rank of dp_world) taking its part in micro-batches of `micro`.
    Data-parallel share r reads micro-batches first + r, + r + dp_world, ...: the global batch split across the
    shares (the processes of a tensor-parallel group read the same batches)."""

    batch_size: int  # the recipe's sequences per batch: the data's unit (dataloader's group), and batch_pos's
    accumulation: int  # gradient_accumulation_steps: batches per step, over every process
    block_size: int
    dp_world: int
    dp_rank: int
    micro: int  # sequences per micro-batch and process

    @property
    def share(self) -> int:
        return share_of_step(self.batch_size, self.accumulation, self.dp_world)

    @property
    def micro_steps(self) -> int:
        """Micro-batches each process runs a step."""
        return self.share // self.micro

    @property
    def tokens_per_iter(self) -> int:
        """Tokens per optimizer step, over every process."""
        return self.accumulation * self.batch_size * self.block_size

    def first_micro_batch(self, batch_pos: int) -> int:
        """The index of the micro-batch this share starts a step with, batch_pos counting batches of batch_size
        (check_start: a whole number of micro-batches)."""
        return batch_pos * self.batch_size // self.micro + self.dp_rank

    def check_start(self, batch_pos: int) -> None:
        """Refuse a resume whose data position is no whole number of micro-batches: a checkpoint from a run with
        another gradient_accumulation_steps, resumed in micro-batches that do not divide where it stopped."""
        if batch_pos * self.batch_size % self.micro:
            raise UserError(f"the checkpoint stopped after {batch_pos * self.batch_size:,} sequences of data, not a "
                            f"whole number of micro-batches of {self.micro}: resume with the "
                            "gradient_accumulation_steps it was trained with, or a micro_batch that divides that "
                            "number")


def check(spec: int | str, batch_size: int, accumulation: int, layout: Layout) -> None:
    """Refuse a micro_batch that does not divide each process's share of a step's sequences, or auto where the
    probe cannot run: with sharded weights."""
    share = share_of_step(batch_size, accumulation, layout.dp_world)
    if parse(spec, batch_size, share) is None and layout.sharded:
        raise UserError("micro_batch=auto: the probe needs whole weights on each process, not fsdp or "
                        "tensor_parallel: give micro_batch a number")


def plan(spec: int | str, batch_size: int, accumulation: int, layout: Layout, model: torch.nn.Module,
         optimizer: torch.optim.Optimizer, ctx: Any, vocab_size: int) -> BatchPlan:
    """The run's batch plan, its micro-batch as micro_batch says: batch_size, the number given, or with auto on a
    GPU the largest that fits, probed now on the placed model and agreed by every process (the smallest of
    theirs)."""
    block_size = model.config.block_size

    def made(micro: int) -> BatchPlan:
        return BatchPlan(batch_size, accumulation, block_size, layout.dp_world, layout.dp_rank, micro)

    share = share_of_step(batch_size, accumulation, layout.dp_world)
    size = parse(spec, batch_size, share)
    if size is not None:
        return made(size)
    device = layout.device
    if device.type != "cuda":
        if layout.master:
            print(f"micro_batch=auto: on {device.type} the micro-batch stays batch_size={batch_size} (the probe "
                  "measures a GPU's memory)")
        return made(batch_size)
    buckets = 4 * sum(p.numel() for p in model.parameters()) if layout.distributed else 0  # DDP's, float32
    found, probes, budget = find(model, optimizer, ctx, share, vocab_size, CudaMemory(device), buckets)
    size = found or 0
    if layout.distributed:
        agreed = torch.tensor(size, device=device)
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        size = int(agreed.item())
    if not size:
        raise UserError(f"micro_batch=auto: not even one sequence of {block_size} tokens trains in {device}'s "
                        "memory: try activation_checkpointing=True, a smaller block_size, or fsdp=True over several "
                        "GPUs" if layout.master else "", together=layout.distributed)
    chosen = made(size)
    if layout.master:
        print(f"micro_batch=auto: micro-batches of {size} ({chosen.micro_steps} micro-steps a step per process; "
              f"{chosen.tokens_per_iter:,} tokens a step, as the recipe says). Probed: "
              f"{', '.join(map(str, probes))} against {budget / 2**30:.1f} GiB", flush=True)
    return chosen
