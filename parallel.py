"""Spreading one model over several processes beyond DDP: Megatron-style tensor parallelism and FSDP2 sharding, on
PyTorch's own engine (DTensor, fully_shard). model.py knows nothing of it: `parallelize` takes a finished model and
applies tensor parallelism, activation checkpointing, compile, then FSDP, in that order (torchtitan's), on a 2-D
mesh of processes, (dp, tp): rank = dp_rank * tp + tp_rank. It also sets up the processes themselves (`Layout`,
`setup`: one, or one per device under torchrun) and lets them refuse a bad setting together. train.py, bench.py
and checkpoint.py share it.

Tensor parallelism (Shoeybi et al. 2019, Megatron-LM): in each block, the q/k/v projection and the MLP's first
matrix are split by output columns (whole heads per process), the attention and MLP output projections by input
rows, so one all-reduce ends each half-block; the vocabulary is split in the token embedding and the head (whose
logits are gathered for the loss). Norms and the position table are replicated: the processes of a tensor-parallel
group compute them alike on the same inputs.

Two weights stack parts that must be split separately: c_attn holds [q; k; v] and a SwiGLU c_fc holds [W; V]. A
plain split of rows would give one process all of q and the other k and v, so before sharding their rows are put in
rank-major order, [q_0; k_0; v_0; q_1; k_1; v_1]: process r then holds its own heads of each. Checkpoints store the
rows in the model's own order (`reorder_rows`), whatever the degree.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.utils.checkpoint
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import runtime
from configurator import UserError
from fp8 import check_fp8, to_float8
from model import GPT, GPTConfig

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

# torch.distributed.tensor, fsdp and checkpoint take a second to import: here they are imported by the functions
# that shard, so that a run of one process (and sample.py, export.py) never pays for them.


@dataclass
class Layout:
    """How a run is spread over processes, and this process's place in it: its rank among `world` processes (one
    per device under torchrun) and its device."""

    rank: int
    local_rank: int
    world: int
    device: torch.device
    distributed: bool  # started by torchrun: a process group, and the model wrapped in DDP (or sharded)
    tp: int = 1  # tensor-parallel degree: ranks dp * tp .. dp * tp + tp - 1 share a batch and split the model
    mesh: DeviceMesh | None = None  # (dp, tp), for a sharded model (fsdp or tensor parallelism)

    @property
    def master(self) -> bool:  # rank 0 logs and saves
        return self.rank == 0

    @property
    def dp_rank(self) -> int:  # which share of the batch this process reads
        return self.rank // self.tp

    @property
    def dp_world(self) -> int:  # how many shares there are
        return self.world // self.tp

    @property
    def sharded(self) -> bool:
        return self.mesh is not None

    def describe(self, fsdp: bool) -> str:
        """The layout in words: 'DDP 8', 'FSDP 2 x TP 2', 'TP 2', or '1 process'."""
        if fsdp:
            return f"FSDP {self.dp_world}" + (f" x TP {self.tp}" if self.tp > 1 else "")
        if self.tp > 1:
            return f"TP {self.tp}"
        return f"DDP {self.world}" if self.distributed else "1 process"


def setup(device: str, backend: str, tensor_parallel: int, fsdp: bool, accum: int) -> Layout:
    """One process per device under torchrun (which sets RANK, LOCAL_RANK, WORLD_SIZE), with its process group and,
    for a sharded model, the (dp, tp) mesh; else a single process on `device`. backend auto: nccl on GPUs, gloo
    on CPUs. accum, the total micro-steps per iteration, must divide among the data-parallel processes."""
    if backend not in ("auto", "nccl", "gloo"):
        raise UserError(f"backend must be auto, nccl or gloo, got '{backend}'")
    if "RANK" not in os.environ:
        return Layout(0, 0, 1, runtime.resolve_device(device), distributed=False)
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    tp = tensor_parallel
    # before the process group: every process can leave at once (rank 0 says why, once)
    if world % tp:
        raise UserError("" if rank else f"tensor_parallel={tp} must divide the number of processes ({world})")
    if accum % (world // tp):
        shares = f"the number of processes ({world})" if tp == 1 else \
            f"the number of data-parallel processes ({world} / tensor_parallel {tp} = {world // tp})"
        raise UserError("" if rank else f"gradient_accumulation_steps ({accum}) must be divisible by {shares}",
                        together=True)
    if backend == "auto":
        backend = "nccl" if (device == "auto" or device.startswith("cuda")) and torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise UserError("" if rank else "backend=nccl needs CUDA GPUs and a torch built with NCCL, and this machine "
                        "has none: use backend=gloo (or auto)", together=True)
    dist.init_process_group(backend=backend)
    resolved = runtime.resolve_device(f"cuda:{local_rank}" if backend == "nccl" else device)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    mesh = make_mesh(resolved.type, world, tp) if fsdp or tp > 1 else None
    return Layout(rank, local_rank, world, resolved, distributed=True, tp=tp, mesh=mesh)


@contextlib.contextmanager
def alike_everywhere() -> Any:
    """Checks that every process makes alike before the process group exists (the settings, the layout, the
    data's meta file): if they refuse, rank 0 says why and the others stop silently, rather than every process
    printing the same line."""
    try:
        yield
    except UserError as e:  # together: the others leave after rank 0 has said it (process.leave)
        raise UserError(str(e) if os.environ.get("RANK", "0") == "0" else "", together=True) from None


def refuse_together(layout: Layout, check: Callable[..., None], *args: Any) -> None:
    """Run a check that every process makes alike; if it refuses, every process stops, and rank 0 says why."""
    try:
        check(*args)
    except UserError as e:
        raise UserError(str(e) if layout.master else "", together=layout.distributed) from None


def rank_0_decides(layout: Layout, check: Callable[[], None]) -> None:
    """Run a check that only rank 0 makes (its files, its packages) and share the answer: if it refuses, every
    process stops together, rank 0 saying why, rather than the others waiting on it or failing in its place."""
    message = None
    if layout.master:
        try:
            check()
        except UserError as e:
            message = str(e)
    if layout.distributed:
        shared = [message]
        dist.broadcast_object_list(shared, src=0)
        message = shared[0]
    if message is not None:
        raise UserError(message if layout.master else "", together=layout.distributed)


def anyone(layout: Layout, flag: bool) -> bool:
    """Whether any process's flag is up (a stop request, say): the same answer on every process, a collective
    step under torchrun."""
    if not layout.distributed:
        return flag
    vote = torch.tensor(float(flag), device=layout.device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def check_run(layout: Layout, dtype: torch.dtype, fsdp: bool, tp: int, fp8: bool) -> None:
    """Refuse, before a model is built, fp8=True where it cannot run, a sharded layout that cannot be built
    (check_layout), or what that does not combine with."""
    if fp8:
        check_fp8(layout.device)
    check_layout(layout.world, tp, fsdp, layout.distributed)
    if not layout.sharded:
        return
    what = "fsdp=True" if fsdp else f"tensor_parallel={tp}"
    if dtype == torch.float16:
        raise UserError(f"{what} needs dtype bfloat16 or float32: float16's gradient scaler does not take shards")
    if fp8:
        raise UserError(f"fp8=True with {what} is not supported: train FP8 on one GPU or with DDP")


def check_layout(world: int, tp: int, fsdp: bool, distributed: bool) -> None:
    """Refuse, in one line, a layout that cannot be built on these processes: before any process builds a model."""
    if (fsdp or tp > 1) and not distributed:
        what = "fsdp=True" if fsdp else f"tensor_parallel={tp}"
        raise UserError(f"{what} needs several processes: start it with torchrun --nproc_per_node=N train.py ...")
    if world % tp:
        raise UserError(f"tensor_parallel={tp} must divide the number of processes ({world})")
    if fsdp and world // tp < 2:
        raise UserError(f"fsdp=True shards over the data-parallel processes, and there is {world // tp} "
                        f"({world} process(es) / tensor_parallel={tp}): use more processes, or leave fsdp off")
    if 1 < tp < world and not fsdp:
        raise UserError(f"tensor_parallel={tp} on {world} processes needs fsdp=True for the other "
                        f"{world // tp}-way split (tensor parallelism composes with FSDP, not DDP)")


def check_sizes(config: GPTConfig, tp: int) -> None:
    """Refuse, in one line, a tensor-parallel degree that does not divide what it splits."""
    sizes = {"n_head": config.n_head, "n_kv_head": config.kv_heads, "the MLP width": config.hidden,
             "the vocabulary (padded to vocab_multiple)": config.vocab_size}
    for name, size in sizes.items():
        if size % tp:
            raise UserError(f"tensor_parallel={tp} must divide {name} ({size})")
    if config.qk_norm and tp > 1:  # its gains see only this process's heads: their gradient would be a part
        raise UserError(f"qk_norm=True with tensor_parallel={tp} is not supported: train it with FSDP or DDP")
    # the skip and mixing weights would be replicated tensors mixed with the blocks' local outputs, the value tables
    # would need the values' split by heads: none of them is built
    for name, on in (("unet_skips=True", config.unet_skips), ("x0_mix=True", config.x0_mix),
                     (f"value_embeds={config.value_embeds}", config.value_embeds)):
        if on and tp > 1:
            raise UserError(f"{name} with tensor_parallel={tp} is not supported: train it with FSDP or DDP")


def make_mesh(device_type: str, world: int, tp: int) -> DeviceMesh:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device_type, (world // tp, tp), mesh_dim_names=("dp", "tp"))


def stacked_parts(config: GPTConfig) -> dict[str, list[int]]:
    """The weights (by name suffix, bias too) whose rows stack parts that tensor parallelism splits separately."""
    hd = config.head_dim
    parts = {"attn.c_attn": [config.n_head * hd, config.kv_heads * hd, config.kv_heads * hd]}
    if config.mlp == "swiglu":
        parts["mlp.c_fc"] = [config.hidden, config.hidden]
    return parts


def rank_major_rows(parts: list[int], tp: int) -> torch.Tensor:
    """The row order that gives process r the r-th tp-th of every part: [p0_0; p1_0; ...; p0_1; p1_1; ...]."""
    starts = [sum(parts[:i]) for i in range(len(parts))]
    return torch.tensor([start + r * (n // tp) + i for r in range(tp) for start, n in zip(starts, parts)
                         for i in range(n // tp)])


def reorder_rows(state: dict[str, Any], config: GPTConfig, tp: int, to_rank_major: bool) -> dict[str, Any]:
    """A state dict's stacked weights (and any per-parameter dicts of them: AdamW's moments) reordered to the
    rank-major order of tensor_parallel=tp, or back to the model's own order. Other entries are left alone."""
    if tp == 1:
        return state
    out = {}
    for name, value in state.items():
        suffix = next((s for s in stacked_parts(config) if name.endswith((f"{s}.weight", f"{s}.bias"))), None)
        if suffix is None:
            out[name] = value
            continue
        order = rank_major_rows(stacked_parts(config)[suffix], tp)
        if not to_rank_major:
            order = torch.argsort(order)

        def reorder(t: Any, order: torch.Tensor = order) -> Any:
            return t[order.to(t.device)] if isinstance(t, torch.Tensor) and t.dim() > 0 else t

        out[name] = {k: reorder(v) for k, v in value.items()} if isinstance(value, dict) else reorder(value)
    return out


def _replicated_inputs(module: nn.Module, inputs: tuple, mesh: DeviceMesh) -> tuple:
    from torch.distributed.tensor import DTensor, Replicate

    return tuple(DTensor.from_local(x, mesh, [Replicate()]) if isinstance(x, torch.Tensor) else x for x in inputs)


def _local_output(module: nn.Module, output: Any, mesh: DeviceMesh) -> Any:
    return output.to_local() if is_sharded(output) else output


def apply_tensor_parallel(model: GPT, mesh: DeviceMesh) -> None:
    """Megatron's split over the processes of `mesh`, in place (see the module docstring)."""
    from torch.distributed.tensor import Replicate, distribute_module
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp = mesh.size()
    with torch.no_grad():
        for name, p in model.named_parameters():
            reordered = reorder_rows({name: p}, model.config, tp, to_rank_major=True)[name]
            if reordered is not p:
                p.copy_(reordered)
    block_plan = {"attn.c_attn": ColwiseParallel(), "attn.c_proj": RowwiseParallel(),
                  "mlp.c_fc": ColwiseParallel(), "mlp.c_proj": RowwiseParallel()}
    for block in model.transformer.h:
        parallelize_module(block, mesh, block_plan)
        block.attn.n_head //= tp  # each process now holds these heads: the attention reshapes by them
        block.attn.n_kv_head //= tp
    parallelize_module(model, mesh, {
        "transformer.wte": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        "lm_head": ColwiseParallel(output_layouts=Replicate()),  # the logits gathered: the loss as it is
    })
    if model.config.tie_embeddings:  # each was given its own sharded copy of the shared matrix: one again
        model.transformer.wte.weight = model.lm_head.weight
    for module in model.modules():  # norms, the position table: replicated, so that every parameter is a DTensor
        if any(not is_sharded(p) for p in module.parameters(recurse=False)):  # (one optimizer, one gradient norm)
            distribute_module(module, mesh, input_fn=_replicated_inputs, output_fn=_local_output)


def apply_fsdp(model: GPT, mesh: DeviceMesh, dtype: torch.dtype) -> None:
    """FSDP2 over the processes of `mesh`: each block a unit (its weights gathered just before it runs, freed after
    it), the rest at the root. Parameters gathered in dtype, gradients reduced in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype != torch.float32 \
        else MixedPrecisionPolicy()
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def parallelize(model: GPT, mesh: DeviceMesh, fsdp: bool, activation_checkpointing: bool, compile: bool,
                dtype: torch.dtype) -> list[nn.Module]:
    """Tensor parallelism (over mesh["tp"], when larger than 1), activation checkpointing, compile, FSDP (over
    mesh["dp"]), in place. Compilation is per block (regional: one graph serves every block, and FSDP's hooks
    stay outside it); returns the compiled blocks, for the caller to try and to undo if compiling fails."""
    if mesh["tp"].size() > 1:
        apply_tensor_parallel(model, mesh["tp"])
    if activation_checkpointing:  # inside each block, so inside FSDP's gathering of its weights (torchtitan's
        # order), where the model's own switch would wrap the sharded block, FSDP's hooks and all
        model.activation_checkpointing = False
        for block in model.transformer.h:
            block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)
    compiled = []
    if compile:
        for block in model.transformer.h:
            block.compile()
            compiled.append(block)
    if fsdp:
        apply_fsdp(model, mesh["dp"], dtype)
    return compiled


def place(model: GPT, layout: Layout, dtype: torch.dtype, fsdp: bool, activation_checkpointing: bool,
          compile: bool, fp8: bool) -> list[nn.Module]:
    """Make the model ready for its optimizer, in place, as train.py and bench.py train it: on this process's
    device, activation checkpointing on if asked, FP8 layers if asked, and on a sharded layout split and sharded
    (parallelize). Returns the regions parallelize compiled (see wrap)."""
    model.activation_checkpointing = activation_checkpointing
    model.to(layout.device)
    if fp8:
        to_float8(model)
    if layout.sharded:
        return parallelize(model, layout.mesh, fsdp, activation_checkpointing, compile, dtype)
    return []


def wrap(model: GPT, layout: Layout, regions: list[nn.Module], compile: bool, batch: tuple[torch.Tensor, ...],
         ctx: Any) -> tuple[nn.Module, nn.Module]:
    """The placed model as it is evaluated and as it is trained: compiled (tried on one batch; eager, with a
    warning, if that fails), and the second wrapped in DDP on a data-parallel layout. A sharded model is already
    both (its regions compiled in place)."""
    eval_model = model
    if compile:
        if layout.master:  # say what the silence is: compiling takes from seconds to minutes
            print("compiling the model (torch.compile; compile=False skips it): the first step waits for it",
                  flush=True)
        eval_model = runtime.maybe_compile(model, *batch, ctx, regions=regions if layout.sharded else None)
    step_model = eval_model
    if layout.distributed and not layout.sharded:
        step_model = DDP(eval_model, device_ids=[layout.local_rank] if layout.device.type == "cuda" else None)
    return eval_model, step_model


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all these tensors together, a plain tensor even when they are shards (DTensors)."""
    return full_tensor(torch.nn.utils.get_total_norm(tensors))


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value as a plain tensor (a norm of shards, say); a plain tensor as it is."""
    return t.full_tensor() if is_sharded(t) else t


def same_shards_as(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """whole, a plain tensor of like's full shape, as a DTensor sharded as like is, where like is one: each process
    keeps its own part of the value they all computed alike (no communication). A plain like: whole itself."""
    if not is_sharded(like):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


def is_sharded(t: Any) -> bool:
    """Whether t is a DTensor. Without importing DTensor: a process whose model has DTensors has imported it."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    return dtensor is not None and isinstance(t, dtensor.DTensor)


def implicit_replication(sharded: bool) -> contextlib.AbstractContextManager:
    """Where the parameters are DTensors, plain tensors beside them (the fused AdamW's found_inf) count as the
    same value on every process."""
    if not sharded:
        return contextlib.nullcontext()
    from torch.distributed.tensor.experimental import implicit_replication

    return implicit_replication()
