"""One optimizer step, as train.py runs it and bench.py times it: gradient accumulation over micro-batches (the
next batch read while the device works), clipping, and an update that is skipped when the loss or the gradients
are not finite; the same step captured as one CUDA graph (cuda_graph=True); and the watchdog that stops a run
whose updates keep being skipped. Before them, the step's assembly (Parts): the model placed, its optimizer, then
the model compiled and wrapped for the step, one way for train.py and bench.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import parallel
import runtime
from configurator import UserError
from dataloader import BatchSource
from model import GPT
from optim import set_capturable

StepResult = tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]  # loss, applied, next batch


class Step:
    """step(index, batch): one optimizer step over `accum` micro-batches. `batch` is data's batch number `index`,
    already on the device; each micro-batch after it is `stride` further on (stride = the number of data-parallel
    processes: rank r reads batches r, r + world, ...), and each is read while the device still works on the one
    before. A DDP model syncs gradients on the last micro-step only; so does an FSDP model, keeping whole gradients
    until then (more memory, one reduction per step). Returns the mean loss and whether the update was applied
    (device tensors: reading them waits for the device), and the batch that follows, to start the next step with."""

    steady = True  # whether its steps run at their lasting speed (a CUDA graph's warm-up and capture do not)

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 ctx: Any, data: BatchSource, accum: int, stride: int, grad_clip: float) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.ctx = ctx
        self.data = data
        self.accum = accum
        self.stride = stride
        self.grad_clip = grad_clip

    def __call__(self, index: int, batch: tuple[torch.Tensor, torch.Tensor]) -> StepResult:
        model, accum = self.model, self.accum
        loss_sum = torch.zeros((), device=batch[0].device)
        for m in range(accum):
            sync = model.no_sync() if isinstance(model, DDP) and m < accum - 1 else contextlib.nullcontext()
            if hasattr(model, "set_requires_gradient_sync"):  # FSDP: gradients reduce-scattered after the last
                model.set_requires_gradient_sync(m == accum - 1)
            with sync:
                with self.ctx:
                    loss = model(*batch, return_logits=False)[1] / accum
                batch = self.data.get(index + (m + 1) * self.stride, batch[0].device)
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        applied = apply_update(model, self.optimizer, self.scaler, loss_sum, self.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, applied, batch


def apply_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 loss: torch.Tensor, grad_clip: float) -> torch.Tensor:
    """Clip the gradients and step, unless the loss or the gradient norm is NaN or inf: then the update is skipped,
    and the weights stay as they were. Returns whether it was applied, a device tensor. The fused AdamW (CUDA)
    skips inside its kernel, told by found_inf as GradScaler tells it, and so does optim.Muon: no wait for the
    device."""
    norm = None
    if grad_clip > 0:
        scaler.unscale_(optimizer)  # a no-op unless float16's scaler is on
        norm = parallel.full_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    if scaler.is_enabled():  # float16: the scaler skips updates with inf/NaN gradients itself, and rescales
        scaler.step(optimizer)
        scaler.update()
        return torch.isfinite(loss)
    if norm is None:
        norm = parallel.total_norm([p.grad for p in model.parameters() if p.grad is not None])
    applied = torch.isfinite(loss) & torch.isfinite(norm)  # the norm is the same on every DDP process
    if optimizer.defaults.get("fused") or getattr(optimizer, "skips_on_device", False):
        optimizer.found_inf = (~applied).float()
        try:
            with parallel.implicit_replication(parallel.is_sharded(optimizer.param_groups[0]["params"][0])):
                optimizer.step()
        finally:
            optimizer.found_inf = None
    elif applied:  # other optimizers need the answer on the host: one wait per step (on a CPU, none)
        optimizer.step()
    return applied


class GraphedStep(Step):
    """The step as one CUDA graph (cuda_graph=True; one process): the first WARMUP steps run uncaptured on a side
    stream (they are training steps; capture needs the kernels' workspaces made first, and a compiled model its
    compilation done), the next is captured and every step from then on is a replay: the batch is copied into fixed
    buffers, the loss and the update flag come out of fixed ones. The gradients live in the graph's memory, written
    anew by every replay. The optimizer must be capturable (optim.set_capturable)."""

    WARMUP = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        device = self.optimizer.param_groups[0]["params"][0].device
        self.eager_steps = 0
        self.side = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.outputs: tuple[torch.Tensor, torch.Tensor] | None = None
        if isinstance(self.ctx, torch.autocast):  # autocast's cache of cast weights would be captured stale
            self.ctx = torch.autocast("cuda", self.ctx.fast_dtype, cache_enabled=False)

    @property
    def steady(self) -> bool:
        return self.graph is not None

    def __call__(self, index: int, batch: tuple[torch.Tensor, torch.Tensor]) -> StepResult:
        if self.eager_steps < self.WARMUP:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):  # under the capture's autocast: a compiled model compiles for it
                out = super().__call__(index, batch)
            torch.cuda.current_stream().wait_stream(self.side)
            self.eager_steps += 1
            return out
        batches = [batch] + [self.data.get(index + m * self.stride, batch[0].device) for m in range(1, self.accum)]
        if self.graph is None:
            self.inputs = [(x.clone(), y.clone()) for x, y in batches]
            self.capture()
        else:
            for (x, y), (bx, by) in zip(self.inputs, batches, strict=True):
                x.copy_(bx, non_blocking=True)
                y.copy_(by, non_blocking=True)
        self.graph.replay()
        return *self.outputs, self.data.get(index + self.accum * self.stride, batch[0].device)

    def capture(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates them in the graph's memory
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            loss_sum = torch.zeros((), device=self.inputs[0][0].device)
            for x, y in self.inputs:
                with self.ctx:
                    loss = self.model(x, y, return_logits=False)[1] / self.accum
                loss.backward()
                loss_sum += loss.detach()
            applied = apply_update(self.model, self.optimizer, self.scaler, loss_sum, self.grad_clip)
        self.outputs = (loss_sum, applied)


def graph_blocker(device: torch.device, distributed: bool, dtype: torch.dtype,
                  activation_checkpointing: bool) -> str | None:
    """What keeps cuda_graph=True from capturing this run's step (the step of one GPU), or None."""
    if device.type != "cuda":
        return f"no CUDA device ({device})"
    if distributed:
        return "several processes"
    if dtype == torch.float16:
        return "float16, whose gradient scaler waits on the host"
    if activation_checkpointing:
        return "activation_checkpointing (its recomputation reads the RNG state, which a capture cannot)"
    return None


def graph_wanted(cuda_graph: bool, layout: parallel.Layout, dtype: torch.dtype, activation_checkpointing: bool) -> bool:
    """Whether the step runs as a CUDA graph. cuda_graph=True is a recipe's hint, as compile is: where the step
    cannot be captured (graph_blocker) the run goes on without it, and on a GPU rank 0 says why (a CPU or MPS run
    has no CUDA graph to miss)."""
    blocker = cuda_graph and graph_blocker(layout.device, layout.distributed, dtype, activation_checkpointing)
    if blocker and layout.master and layout.device.type == "cuda":
        print(f"cuda_graph=True: the step runs without a CUDA graph here: {blocker}")
    return cuda_graph and not blocker


class Watchdog:
    """Counts the updates apply_update skipped, on the device; read when a log line syncs anyway. A run of
    max_skipped of them in a row (0: never) means training diverged: the run stops with one line naming the
    checkpoint to resume from."""

    def __init__(self, device: torch.device, max_skipped: int, distributed: bool, master: bool,
                 checkpoint_path: str) -> None:
        self.in_a_row = torch.zeros((), device=device)
        self.since_log = torch.zeros((), device=device)
        self.max_skipped = max_skipped
        self.distributed = distributed
        self.master = master
        self.checkpoint_path = checkpoint_path

    def record(self, applied: torch.Tensor) -> None:
        skipped = (~applied).float()
        self.in_a_row = (self.in_a_row + 1) * skipped
        self.since_log += skipped

    def check(self, iter_num: int) -> None:
        skipped = int(self.since_log.item())
        self.since_log.zero_()
        in_a_row = self.in_a_row.clone()
        if self.distributed:
            dist.all_reduce(in_a_row, op=dist.ReduceOp.MAX)
        in_a_row = int(in_a_row.item())
        if skipped and self.master:
            print(f"iter {iter_num}: {skipped} update(s) skipped since the last log line: the loss or the gradient "
                  "norm was NaN or inf")
        if self.max_skipped and in_a_row >= self.max_skipped:
            if not self.master:
                raise UserError  # rank 0 says why
            raise UserError(f"the loss or the gradient norm was NaN or inf for {in_a_row} steps in a row, up to iter "
                            f"{iter_num}: training diverged. Those updates were skipped, so the weights are still "
                            f"finite; {self.checkpoint_path} holds the last evaluation's state: resume from it with "
                            "a lower learning_rate or more warmup_iters")


# ----------------------------------------------------------------------------------------------------------------
# the step's assembly, as train.py and bench.py make it


@dataclass
class Parts:
    """What a training step is made of: the model placed on the layout (parallel.place: on its device, activation
    checkpointing, FP8 layers, sharded where the layout says), its optimizer, the float16 gradient scaler and the
    autocast context (assemble); then the model compiled and wrapped for the step (stepper). Between the two, a run
    probes its micro-batch and restores a checkpoint's state into the placed model and optimizer."""

    model: GPT
    layout: parallel.Layout
    dtype: torch.dtype
    regions: list[torch.nn.Module]  # what parallel.place compiled in place (a sharded model's blocks)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ctx: contextlib.AbstractContextManager
    compiled: bool

    @classmethod
    def assemble(cls, model: GPT, layout: parallel.Layout, dtype: torch.dtype,
                 build_optimizer: Callable[[GPT], torch.optim.Optimizer], fsdp: bool, activation_checkpointing: bool,
                 compiled: bool, fp8: bool) -> Parts:
        regions = parallel.place(model, layout, dtype, fsdp, activation_checkpointing, compiled, fp8)
        scaler = torch.amp.GradScaler(layout.device.type, enabled=dtype == torch.float16)
        return cls(model, layout, dtype, regions, build_optimizer(model), scaler,
                   runtime.autocast(layout.device, dtype), compiled)

    def stepper(self, data: BatchSource, batch: tuple[torch.Tensor, ...], micro_steps: int, stride: int,
                grad_clip: float, cuda_graph: bool = False) -> tuple[torch.nn.Module, Step]:
        """The model as it is evaluated (compiled, tried on `batch`), and the step that trains it: a CUDA graph's
        replay with cuda_graph (the optimizer made capturable), else hundreds of launches."""
        set_capturable(self.optimizer, self.layout.device, cuda_graph)  # either way: a checkpoint's state may come
        # from the other
        eval_model, step_model = parallel.wrap(self.model, self.layout, self.regions, self.compiled, batch, self.ctx)
        kind = GraphedStep if cuda_graph else Step
        return eval_model, kind(step_model, self.optimizer, self.scaler, self.ctx, data, micro_steps, stride=stride,
                                grad_clip=grad_clip)
